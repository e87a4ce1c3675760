"""Wall time of the four clouds' Pulumi stack tests under mocks (goal ≤ 10 s together).

Run from the repository root: .venv/bin/python bench/stack_tests.py [--runs N]
Runs `pytest tests/stacks` N times in fresh processes and prints pytest's own session time (collection, the stack
programs under pulumi.runtime.set_mocks, the policies) and the process wall time (interpreter start-up and the
provider SDK imports included), median, min and max of each.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    argv = [sys.executable, "-m", "pytest", "tests/stacks", "-q", "-p", "no:cacheprovider"]
    session: list[float] = []
    wall: list[float] = []
    for _ in range(args.runs):
        started = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
        wall.append(time.perf_counter() - started)
        found = re.search(r"(\d+) passed.* in ([0-9.]+)s", proc.stdout)
        if proc.returncode != 0 or not found:
            sys.exit(f"pytest tests/stacks failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
        session.append(float(found.group(2)))
    print(f"tests/stacks: {found.group(1)} tests, {args.runs} runs")
    for label, values in (("pytest session", session), ("process wall", wall)):
        print(
            f"  {label:15s} median {statistics.median(values):5.1f} s, "
            f"min {min(values):5.1f} s, max {max(values):5.1f} s"
        )


if __name__ == "__main__":
    main()
