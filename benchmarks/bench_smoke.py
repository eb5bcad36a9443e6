#!/usr/bin/env python3
"""What the smoke of one result costs over a bare `import vllm`, as ratios measured in one run.

Three commands, all against the same RESULT (a built variant, or a stand-in
result: see below), run interleaved --runs times each; medians compared:

  import vllm    RESULT/bin/python -c "import vllm"                    the baseline
  check          RESULT/bin/python running smoke/check.py --variant-json RESULT/share/vllm-variants/
                   variant.json --allow-no-gpu --progress TMP          the ONE process smoke runs per
                                                                       result (session.check_argv): all
                                                                       seven checks
  invoke smoke   python -m invoke smoke -r RESULT --allow-no-gpu --report-dir TMP
                                                                       end to end: task start-up, the
                                                                       check process, tables, JSON, JUnit

  check / import vllm          target <= 1.3x (exit 1 when missed, unless --no-targets)
  invoke smoke / import vllm   reported: it adds a fixed start-up cost (Python, invoke, rich;
                               printed in ms) that does not grow with vllm's import time

check.py is imported, so it comes from cached bytecode; with
PYTHONDONTWRITEBYTECODE set no cache is written and every run compiles it
(about 5 ms, printed as a note).

Against the stand-in the import is a few tens of ms, so fixed costs weigh far
more than against a real vllm (seconds). Environment variables pass through:
set VLLM_VARIANTS_STANDIN_GPUS / _DRIVER to time the checks' GPU paths on a
stand-in result. A stand-in result, built offline from this checkout:

  NIX_CONFIG=$'substituters =\\nexperimental-features = nix-command flakes' nix build \\
    .#packages.x86_64-linux.vllm-python312-cuda12_9-sm90 --override-input nixpkgs path:tests/fixtures/nixpkgs

Usage: python benchmarks/bench_smoke.py RESULT [--runs 20] [--no-targets]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.3


def commands(result: Path, tmp: Path) -> dict[str, list[str]]:
    sys.path.insert(0, str(ROOT / "src"))
    from vllm_variants.smoke.session import Options, check_argv

    check = check_argv(result, tmp / "progress.jsonl", Options(allow_no_gpu=True))
    return {
        "import vllm": [str(result / "bin" / "python"), "-c", "import vllm"],
        "check": [str(arg) for arg in check],
        "invoke smoke": [
            sys.executable,
            "-m",
            "invoke",
            "smoke",
            "-r",
            str(result),
            "--allow-no-gpu",
            "--report-dir",
            str(tmp),
        ],
    }


def run(name: str, argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    # import vllm must succeed; the smoke may report failed checks (exit 1), never crash.
    if proc.returncode not in ((0,) if name == "import vllm" else (0, 1)):
        raise SystemExit(f"{name} exited {proc.returncode}: {' '.join(argv)}\n{proc.stderr[-2000:]}")
    return seconds


def measure(result: Path, runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
        argvs = commands(result, Path(tmp))
        for name, argv in argvs.items():  # warm the page cache once
            run(name, argv)
        samples: dict[str, list[float]] = {name: [] for name in argvs}
        for _ in range(runs):
            for name, argv in argvs.items():
                samples[name].append(run(name, argv))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path, help="a built result (e.g. result-vllm-python312-cuda12_9-sm90)")
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    parser.add_argument("--no-targets", action="store_true", help="report only; never exit 1")
    args = parser.parse_args()
    result = args.result.absolute()
    if not (result / "bin" / "python").exists():
        parser.error(f"{result} is not a built result (no bin/python)")

    medians = measure(result, args.runs)
    for name, seconds in medians.items():
        print(f"{name:<13} {seconds * 1000:8.1f} ms  (median of {args.runs})")
    base = medians["import vllm"]
    ratio = medians["check"] / base
    ok = ratio <= TARGET
    print(f"check / import vllm: {ratio:.2f}x (target <= {TARGET}x) {'ok' if ok else 'MISSED'}")
    fixed = (medians["invoke smoke"] - medians["check"]) * 1000
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("note: PYTHONDONTWRITEBYTECODE is set: without a cached pyc, check.py is compiled on every run (~5 ms)")
    print(
        f"invoke smoke / import vllm: {medians['invoke smoke'] / base:.2f}x "
        f"(fixed start-up and reporting cost: {fixed:.0f} ms)"
    )
    return 1 if not ok and not args.no_targets else 0


if __name__ == "__main__":
    sys.exit(main())
