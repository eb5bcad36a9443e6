#!/usr/bin/env python3
"""How instant the task surface feels, as ratios measured in one run.

  invoke --list    vs  python -c "import invoke"   target <= 1.25x
  invoke variants  vs  invoke --list                target <= 1.5x

Commands run interleaved (so machine noise hits all of them alike), each
--runs times; the median wall time of each is compared. Exits 1 when a ratio
misses its target (unless --no-targets).

Usage: python benchmarks/bench_tasks.py [--runs 30] [--no-targets]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = {
    "import invoke": [sys.executable, "-c", "import invoke"],
    "invoke --list": [sys.executable, "-m", "invoke", "--list"],
    "invoke variants": [sys.executable, "-m", "invoke", "variants"],
}
# (measured, baseline, target ratio)
TARGETS = [
    ("invoke --list", "import invoke", 1.25),
    ("invoke variants", "invoke --list", 1.5),
]


def measure(runs: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for argv in COMMANDS.values():  # warm the page cache once
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)
    for _ in range(runs):
        for name, argv in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="runs of each command (default 30)")
    parser.add_argument("--no-targets", action="store_true", help="report only; never exit 1")
    args = parser.parse_args()

    medians = measure(args.runs)
    for name, seconds in medians.items():
        print(f"{name:<16} {seconds * 1000:8.1f} ms  (median of {args.runs})")
    missed = False
    for measured, baseline, target in TARGETS:
        ratio = medians[measured] / medians[baseline]
        ok = ratio <= target
        missed |= not ok
        print(f"{measured} / {baseline}: {ratio:.2f}x (target <= {target}x) {'ok' if ok else 'MISSED'}")
    return 1 if missed and not args.no_targets else 0


if __name__ == "__main__":
    sys.exit(main())
