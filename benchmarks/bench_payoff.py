#!/usr/bin/env python3
"""What a fat CUDA wheel spends on GPUs you do not own, per SM of the matrix, from real PyPI wheels.

Downloads pinned wheels with pip (`pip download --no-deps`; CI and the tests
never do), audits each with `python -m vllm_variants.audit --json` and prints,
per SM of nix/variants.toml, a Markdown table:

  runs here    SASS that a GPU of that SM executes (vllm_variants.compat: sm_80
               on 8.6, sm_90a only on 9.0, sm_100f on 10.0 and 10.3)
  share        that, against all device code in the wheel
  exact        SASS built for exactly that SM
  JIT PTX      PTX that GPU could JIT-compile (used only where no SASS runs)

and, per wheel, its size, all its device code, and the audit's wall time and
peak memory (the audit process's own maximum resident set, from wait4). With
--compare-readers it also audits with cuobjdump and says whether the two
readers agree on every library.

Usage: python benchmarks/bench_payoff.py [--dest DIR] [--wheel SPEC ...] [--compare-readers]
                                         [--cuobjdump PATH]
  defaults: --dest ~/.cache/vllm-variants/payoff --wheel vllm==0.33.0 --wheel bitsandbytes==0.50.2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vllm_variants.matrix import Matrix  # noqa: E402
from vllm_variants.resources import format_bytes  # noqa: E402
from vllm_variants.runner import run  # noqa: E402

WHEELS = ("vllm==0.33.0", "bitsandbytes==0.50.2")
# manylinux x86_64 wheels only: what a Linux GPU box installs
PLATFORM = [
    "--only-binary=:all:",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_24_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
]


def download(spec: str, dest: Path) -> Path:
    """The wheel for spec in dest, fetched by pip unless already there."""
    name, _, version = spec.partition("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    found = sorted(dest.glob(f"{stem}*.whl"))
    if not found:
        run([sys.executable, "-m", "pip", "download", "--no-deps", *PLATFORM, "-d", dest, spec], echo=True)
        found = sorted(dest.glob(f"{stem}*.whl"))
    if not found:
        raise SystemExit(f"pip downloaded no wheel named {stem}*.whl into {dest}")
    return found[0]


def audit_json(wheel: Path, sms: list[str], reader: str, cuobjdump: str | None) -> tuple[dict, float, int]:
    """(the audit's JSON, wall seconds, peak RSS in bytes) of one audit process."""
    argv = [
        sys.executable,
        "-m",
        "vllm_variants.audit",
        str(wheel),
        "--sm",
        ",".join(sms),
        "--json",
        "--reader",
        reader,
    ]
    if cuobjdump:
        argv += ["--cuobjdump", cuobjdump]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    # Popen + wait4, not the runner: wait4 gives this one process's peak memory.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"audit of {wheel} failed (exit {proc.returncode}): {stderr.decode()[-500:]}")
    peak = usage.ru_maxrss * 1024  # KiB on Linux
    return json.loads(stdout), seconds, peak


def mib(n: int) -> str:
    return format_bytes(n)


def table(data: dict, sms: list[str]) -> list[str]:
    total = data["total_bytes"]
    lines = ["| SM | runs here | share | exact | JIT PTX |", "| --- | ---: | ---: | ---: | ---: |"]
    for sm in sms:
        f = data["per_sm"][sm]
        share = f"{100 * f['runs'] / total:.1f} %" if total else "-"
        lines.append(f"| {sm} | {mib(f['runs'])} | {share} | {mib(f['exact'])} | {mib(f['jit_ptx'])} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=Path.home() / ".cache" / "vllm-variants" / "payoff")
    parser.add_argument("--wheel", action="append", help="a pinned wheel, NAME==VERSION (repeatable)")
    parser.add_argument("--compare-readers", action="store_true", help="also audit with cuobjdump and compare")
    parser.add_argument("--cuobjdump", help="the cuobjdump for --compare-readers (default: the one on PATH)")
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    matrix = Matrix.load(ROOT / "nix" / "variants.toml")
    sms = sorted({v.sm_number for v in matrix.enabled}, key=int)
    for spec in args.wheel or WHEELS:
        wheel = download(spec, args.dest)
        # a bare process first, so the timed one finds the wheel in the page cache like every later run
        audit_json(wheel, sms, "fatbin", None)
        data, seconds, peak = audit_json(wheel, sms, "fatbin", None)
        print(f"\n### {spec}: {wheel.name}\n")
        print(
            f"wheel {mib(wheel.stat().st_size)}; device code {mib(data['total_bytes'])} in "
            f"{len(data['libraries'])} libraries; audit (fatbin reader) {seconds:.1f} s, peak RSS {mib(peak)}\n"
        )
        print("\n".join(table(data, sms)))
        if data["skipped"]:
            print("\nskipped: " + "; ".join(f"{s['path']}: {s['reason']}" for s in data["skipped"]))
        if args.compare_readers:
            other, seconds, peak = audit_json(wheel, sms, "cuobjdump", args.cuobjdump)
            fell_back = [lib["path"] for lib in other["libraries"] if lib["reader"] != "cuobjdump"]
            same = other["per_sm"] == data["per_sm"] and other["total_bytes"] == data["total_bytes"]
            print(
                f"\ncuobjdump reader: {len(other['libraries'])} libraries, {len(other['disagreements'])} "
                f"disagreements, {len(fell_back)} read from the headers after cuobjdump failed"
                + (f" ({', '.join(fell_back)})" if fell_back else "")
                + f"; figures {'identical' if same else 'DIFFERENT'}; {seconds:.1f} s, peak RSS {mib(peak)} "
                "(the larger of the audit process and the cuobjdump runs it waits for)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
