"""Wall time of `devserver --help` and `devserver validate examples/gce.yaml` (goals: ≤ 0.3 s and ≤ 0.5 s).

Run: .venv/bin/python bench/cli_startup.py [--runs N]
Each command runs as a fresh process, the way a user types it; prints min / median / max over N runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVSERVER = Path(sys.executable).with_name("devserver")
COMMANDS = {
    "devserver --help": [str(DEVSERVER), "--help"],
    "devserver validate examples/gce.yaml": [str(DEVSERVER), "validate", "examples/gce.yaml"],
    "devserver plan (built-in local)": [str(DEVSERVER), "plan"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    for label, argv in COMMANDS.items():
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)  # warm the page cache
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        print(
            f"{label:40s} min {min(times):.3f} s  median {statistics.median(times):.3f} s  max {max(times):.3f} s"
            f"  ({args.runs} runs)"
        )


if __name__ == "__main__":
    main()
