"""Wall time of a no-op `devserver update` on a converged test host (goal ≤ 15 s), and what dominates it.

Run as root from the repository root: .venv/bin/python bench/update_noop.py [--runs N] [--keep]
It boots a fresh Debian 12 test host (tests/support/testhost.py), converges it once with the built-in local spec
(the real Debian driver, CUDA, Docker and containerd — minutes), then times N no-op updates through the real CLI and
breaks one of them down by phase: SSH preflight, fact gathering, and each role (wall time between task starts, read
from ansible-runner's events).
"""

from __future__ import annotations

import argparse
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

from devserver.loader import load_spec_bytes  # noqa: E402
from devserver.plan import resolve  # noqa: E402
from devserver.remote import preflight  # noqa: E402
from devserver.runner import TaskEvent  # noqa: E402
from devserver.targets import Host  # noqa: E402
from devserver.update import update  # noqa: E402
from tests.support import fixture_repo  # noqa: E402
from tests.support import testhost as th  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cache = th.default_cache_dir()
    th.build_rootfs(cache)
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        workdir = Path(work)
        host = th.up("bench", workdir, cache)
        try:
            repo_root = fixture_repo.build_fixture_repo(cache / "nvidia-fixture-repo", toolkit_version=_pin())
            with fixture_repo.serve(repo_root, host.host_address) as repo:
                spec = yaml.safe_load((ROOT / "examples" / "local.yaml").read_text())
                spec["disks"]["data"] = {"size_gb": 2}
                spec["repositories"] = {
                    "apt_proxy": host.apt_proxy,
                    "apt_proxy_bypass": [host.host_address],
                    "container_toolkit_repo": repo.toolkit_url,
                    "container_toolkit_key_url": repo.key_url,
                    "container_toolkit_key_fingerprint": repo.fingerprint,
                }
                spec_path = workdir / "devserver.yaml"
                spec_path.write_text(yaml.safe_dump(spec))
                argv = [
                    sys.executable, "-m", "devserver", "update", f"{host.user}@{host.address}", "--spec",
                    str(spec_path), "--key", str(host.private_key), "--known-hosts", str(host.known_hosts),
                    "--data-device", host.data_device, "--json",
                ]  # fmt: skip
                started = time.perf_counter()
                subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)
                print(f"first converge: {time.perf_counter() - started:.0f} s")
                times = []
                for _ in range(args.runs):
                    started = time.perf_counter()
                    subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)
                    times.append(time.perf_counter() - started)
                print(
                    f"no-op update (CLI, {args.runs} runs): median {statistics.median(times):.1f} s, "
                    f"min {min(times):.1f} s, max {max(times):.1f} s"
                )
                _breakdown(host, spec_path)
        finally:
            th.down(host)


def _pin() -> str:
    from devserver import versions

    return versions.CONTAINER_TOOLKIT


def _breakdown(host: th.TestHost, spec_path: Path) -> None:
    resolved = resolve(load_spec_bytes(spec_path.read_bytes()))
    target = Host(host.address, host.address, host.user, key_file=host.private_key)
    started = time.perf_counter()
    preflight(target, known_hosts=host.known_hosts)
    print(f"  preflight (SSH + sudo + os-release): {time.perf_counter() - started:.1f} s")
    per_phase: dict[str, float] = defaultdict(float)
    last = [time.perf_counter(), "start-up"]

    def on_event(event: TaskEvent | str) -> None:
        if isinstance(event, str):
            now = time.perf_counter()
            per_phase[str(last[1])] += now - float(last[0])
            role = event.split(" : ")[0] if " : " in event else event
            last[0], last[1] = now, role

    started = time.perf_counter()
    summary = update(
        [target],
        resolved,
        check=False,
        diff=False,
        only=[],
        data_device=host.data_device,
        known_hosts=host.known_hosts,
        on_event=on_event,
    )
    per_phase[str(last[1])] += time.perf_counter() - float(last[0])
    print(f"  one no-op update in-process: {time.perf_counter() - started:.1f} s, changed={summary.changed}")
    for phase, seconds in sorted(per_phase.items(), key=lambda item: -item[1]):
        print(f"    {phase:40s} {seconds:5.1f} s")


if __name__ == "__main__":
    main()
