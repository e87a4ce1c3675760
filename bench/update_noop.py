"""Wall time of a no-op `devserver update` on a converged test host, and what dominates it.

Run as root from the repository root: .venv/bin/python bench/update_noop.py [--runs N] [--host NAME]
It boots a fresh Debian 12 test host (devtools/testhost), converges it once with the built-in local spec
(the real Debian driver, CUDA, Docker and containerd — minutes), then times through the real CLI, N runs each:
the no-op update (the converge stamp and the host state match: no playbook; goal ≤ 3 s), the same with
`--converge` (the playbook runs and changes nothing; was the no-op before the stamp), and `devserver doctor` over
SSH (goal ≤ 2 s). Then it breaks one `--converge` run down by phase: SSH preflight, fact gathering, and each role
(wall time between task starts, read from ansible-runner's events), and lists the slowest tasks.

--host NAME uses a host made by `scripts/testhost up NAME` instead and leaves it up, so that a second run (after a
role change) skips the boot and, once converged, the first converge too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devserver.hosts import Host  # noqa: E402
from devserver.loader import load_spec_bytes  # noqa: E402
from devserver.plan import resolve  # noqa: E402
from devserver.remote import preflight  # noqa: E402
from devserver.runner import TaskEvent  # noqa: E402
from devserver.update import update  # noqa: E402
from devtools import fixture_repo  # noqa: E402
from devtools import testhost as th  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--host", help="a running host of `scripts/testhost up NAME` (kept up afterwards)")
    parser.add_argument("--tasks", action="store_true", help="list every task that ran, not only the slowest")
    parser.add_argument("--no-mitogen", action="store_true", help="time Ansible's own SSH connection instead")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    cache = th.default_cache_dir()
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        workdir = Path(work)
        if args.host:
            host = th.TestHost.load(th.default_workdir() / args.host)
        else:
            th.build_rootfs(cache)
            host = th.up("bench", workdir, cache)
        try:
            repo_root = fixture_repo.build_fixture_repo(cache / "nvidia-fixture-repo", toolkit_version=_pin())
            with fixture_repo.serve(repo_root, host.host_address) as repo:
                spec = yaml.safe_load((ROOT / "examples" / "local.yaml").read_text())
                spec["disks"]["data"] = {"size_gb": 2}
                spec["repositories"] = {
                    "apt_proxy": host.apt_proxy,
                    "apt_proxy_bypass": [host.host_address],
                    **repo.toolkit_repositories(),
                }
                spec_path = workdir / "devserver.yaml"
                spec_path.write_text(yaml.safe_dump(spec))
                argv = [
                    sys.executable, "-m", "devserver", "update", f"{host.user}@{host.address}", "--spec",
                    str(spec_path), "--key", str(host.private_key), "--known-hosts", str(host.known_hosts),
                    "--data-device", host.data_device, "--json", *(["--no-mitogen"] if args.no_mitogen else []),
                ]  # fmt: skip
                # as tests/roles/test_update.py does; only once, so a reused host's merged file stays as it is
                settings = json.dumps(th.DOCKERD_NETWORK_SETTINGS)
                daemon_json = "/etc/docker/daemon.json"
                host.ssh(
                    f"sudo grep -qs iptables {daemon_json} || "
                    f"(sudo mkdir -p /etc/docker && echo '{settings}' | sudo tee {daemon_json} >/dev/null)"
                )
                started = time.perf_counter()
                _update(argv)
                print(f"first converge: {time.perf_counter() - started:.0f} s")
                doctor = [
                    sys.executable, "-m", "devserver", "doctor", f"{host.user}@{host.address}", "--spec",
                    str(spec_path), "--key", str(host.private_key), "--known-hosts", str(host.known_hosts), "--json",
                ]  # fmt: skip
                for what, command, ok in (
                    ("no-op update (up to date: stamp and host state)", argv, (0,)),
                    ("no-op update --converge (the playbook, changed=0)", [*argv, "--converge"], (0,)),
                    ("devserver doctor over SSH (no GPU: one finding)", doctor, (0, 1)),
                ):
                    times = [_timed(command, ok) for _ in range(args.runs)]
                    print(
                        f"{what}, {args.runs} runs: median {statistics.median(times):.2f} s, "
                        f"min {min(times):.2f} s, max {max(times):.2f} s"
                    )
                _breakdown(host, spec_path, every_task=args.tasks, mitogen=not args.no_mitogen)
        finally:
            if not args.host:
                th.down(host)


def _update(argv: list[str], ok: tuple[int, ...] = (0,)) -> None:
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode not in ok:
        sys.exit(f"{argv[3]} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


def _timed(argv: list[str], ok: tuple[int, ...]) -> float:
    started = time.perf_counter()
    _update(argv, ok)
    return time.perf_counter() - started


def _pin() -> str:
    from devserver import versions

    return versions.CONTAINER_TOOLKIT


def _breakdown(host: th.TestHost, spec_path: Path, *, every_task: bool, mitogen: bool) -> None:
    resolved = resolve(load_spec_bytes(spec_path.read_bytes()))
    target = Host(host.address, host.address, host.user, key_file=host.private_key)
    started = time.perf_counter()
    preflight(target, known_hosts=host.known_hosts)
    print(f"  preflight (SSH + sudo + os-release): {time.perf_counter() - started:.1f} s")
    per_phase: dict[str, float] = defaultdict(float)
    per_task: dict[str, float] = defaultdict(float)
    outcome: dict[str, str] = {}
    last = [time.perf_counter(), "start-up", "start-up"]

    def on_event(event: TaskEvent | str) -> None:
        if isinstance(event, str):
            now = time.perf_counter()
            per_phase[str(last[1])] += now - float(last[0])
            per_task[str(last[2])] += now - float(last[0])
            role = event.split(" : ")[0] if " : " in event else event
            last[0], last[1], last[2] = now, role, event
        else:
            outcome[event.task] = event.status

    started = time.perf_counter()
    summary = update(
        [target],
        resolved,
        check=False,
        diff=False,
        only=[],
        data_device=host.data_device,
        known_hosts=host.known_hosts,
        mitogen=mitogen,
        converge=True,
        on_event=on_event,
    )
    per_phase[str(last[1])] += time.perf_counter() - float(last[0])
    print(f"  one no-op update --converge in-process: {time.perf_counter() - started:.1f} s, changed={summary.changed}")
    for phase, seconds in sorted(per_phase.items(), key=lambda item: -item[1]):
        print(f"    {phase:40s} {seconds:5.1f} s")
    ran = [task for task in per_task if outcome.get(task) != "skipped"]
    print(f"  tasks started: {len(per_task)}, of which not skipped: {len(ran)}; slowest:")
    shown = ran if every_task else sorted(per_task, key=lambda task: -per_task[task])[:15]
    for task in shown:
        print(f"    {per_task[task]:5.2f} s  {task}")


if __name__ == "__main__":
    main()
