"""Time `devserver image build --target local` with the real driver, and the skipped rebuild of the same inputs.

Usage (root): ``.venv/bin/python bench/image_build.py [--cold] [--targets local,gce,...] [--tasks]``

Runs the real CLI on the built-in local spec (Debian 12, Debian's NVIDIA driver built by DKMS, CUDA, Docker +
containerd). NVIDIA's container-toolkit repository is unreachable here, so the signed TEST FIXTURE stand-in is served
for the toolkit (devtools/fixture_repo.py), as in the tests. ``--cold`` uses an empty cache (base and
provisioned tree built from scratch); otherwise the cache of the tests is used. Prints one JSON object: wall seconds
per target build, the manifest's per-phase timings and sizes, and the wall time of the skipped rebuild.
``--tasks`` builds the first target in-process instead of through the CLI and adds, per playbook phase, the slowest
tasks (wall time from a task's start to the next one's).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devserver import versions  # noqa: E402
from devserver.runner import TaskEvent  # noqa: E402
from devtools import fixture_repo  # noqa: E402

PORT = 33979  # the e2e test's: same spec, same cache


def cli(*args: str) -> tuple[float, dict[str, object]]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "devserver", *args, "--json"], capture_output=True, text=True, cwd=ROOT
    )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout)


def in_process(
    spec_file: Path, target: str, out_dir: Path, cache: Path
) -> tuple[float, dict[str, object], dict[str, list[tuple[str, float]]]]:
    """Build through devserver.images.build (what the CLI calls), timing every task of the playbook phases."""
    from devserver.images import build
    from devserver.loader import load_spec_bytes
    from devserver.plan import resolve

    resolved = resolve(load_spec_bytes(spec_file.read_bytes()))
    options = build.BuildOptions(target=target, out_dir=out_dir, cache_dir=cache)
    per_task: dict[str, dict[str, float]] = {}
    last: list[object] = ["", "", time.monotonic()]

    def progress(phase: str, what: str | TaskEvent) -> None:
        now = time.monotonic()
        if isinstance(what, str) and phase in ("provision", "finish"):
            if last[0] == phase:
                tasks = per_task.setdefault(phase, {})
                tasks[str(last[1])] = tasks.get(str(last[1]), 0.0) + now - float(last[2])
            last[:] = [phase, what, now]
        elif last[0] and phase != last[0]:
            last[:] = ["", "", now]

    started = time.monotonic()
    result = build.build(resolved, options, progress)
    seconds = time.monotonic() - started
    slowest = {
        phase: [(task, round(t, 1)) for task, t in sorted(tasks.items(), key=lambda item: -item[1])[:25]]
        for phase, tasks in per_task.items()
    }
    return seconds, result.manifest.model_dump(mode="json"), slowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="empty cache: base and provisioned tree from scratch")
    parser.add_argument("--targets", default="local", help="comma-separated targets, built in this order")
    parser.add_argument("--tasks", action="store_true", help="the first build in-process, with its slowest tasks")
    args = parser.parse_args()
    test_cache = Path.home() / ".cache" / "devserver-tests"
    with tempfile.TemporaryDirectory(prefix="devserver-bench-") as work:
        cache = Path(work) / "cache" if args.cold else test_cache / "images"
        repo_root = fixture_repo.build_fixture_repo(
            test_cache / "nvidia-fixture-repo", toolkit_version=versions.CONTAINER_TOOLKIT
        )
        with fixture_repo.serve(repo_root, "127.0.0.1", port=PORT) as repo:
            spec = yaml.safe_load((ROOT / "examples" / "local.yaml").read_text())
            spec["repositories"] = repo.toolkit_repositories()
            spec_file = Path(work) / "devserver.yaml"
            spec_file.write_text(yaml.safe_dump(spec))
            common = ["--spec", str(spec_file), "--out", str(Path(work) / "artifacts"), "--cache-dir", str(cache)]
            report: dict[str, object] = {"cold": args.cold}
            for index, target in enumerate(args.targets.split(",")):
                if args.tasks and index == 0:
                    seconds, manifest, slowest = in_process(spec_file, target, Path(work) / "artifacts", cache)
                    report["slowest_tasks_s"] = slowest
                else:
                    seconds, payload = cli("image", "build", "--target", target, *common)
                    manifest = payload["manifest"]
                assert isinstance(manifest, dict)
                report[target] = {
                    "wall_s": round(seconds, 1),
                    "phases_s": manifest["timings"],
                    "disks": [
                        {k: d[k] for k in ("path", "virtual_size", "allocated", "file_size")} for d in manifest["disks"]
                    ],
                }
            first = args.targets.split(",")[0]
            seconds, payload = cli("image", "build", "--target", first, *common)
            report["rebuild_same_inputs_s"] = round(seconds, 2)
            report["rebuild_skipped"] = payload["skipped"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
