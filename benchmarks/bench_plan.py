#!/usr/bin/env python3
"""The plan and the build at real scale, as ratios measured in one run (issue #13).

On a copy of this project whose nix/variants.toml holds N generated rows, and
a copy of the stand-in with its syntheticClosure knob on (--shared
CUDA-independent derivations in every variant's closure, one store path for
all of them; --per-sm built per capability under torch: about a thousand
derivations per variant, as a real closure has):

  raw dry run   nix build --dry-run of the N variants' attributes    the baseline
  plan          python -m invoke build --all --dry-run --eval-jobs N  target <= 1.3x raw
  build         python -m invoke build --all (a fresh salt: everything builds; --build)

Each is timed (wall, median of --runs for the plan and the raw dry run, run
interleaved) with the peak memory (max RSS) of Nix and of our own Python
process, read apart with getrusage: RUSAGE_SELF is ours, RUSAGE_CHILDREN the
largest Nix process. Every evaluation is a real one (eval-cache = false).
Growth per variant: time(N_max) / time(N_min) against N_max / N_min, which a
linear cost cannot exceed (a quadratic step would square it): target <=.

The N rows are distinct variants the stand-in evaluates, made as a growing
matrix would: every capability the stand-in's torch, vllm and CUDA tables
accept (with the CUDA version each needs), times python312/python313, times
CUDA 12.8/12.9, times torch source/wheel, on x86_64-linux (so nothing needs a
remote builder); the first N in that order. A row with one more SM is one
more nixpkgs instance, exactly what a longer matrix costs.

Also measured, with --matrix-rows: nix/matrix.nix and vllm_variants.matrix
reading R and 4R synthetic rows (pure data: no nixpkgs), target <= 6x (4x is
linear, 16x quadratic); and the evaluation memory of one nixpkgs instance
(NIX_SHOW_STATS: totalBytes per instance, from 1 and from N instances in
one process), which README's "Evaluation memory" projects to the real pin.

With --substituter URL every nix call has that binary cache (issue #13 measured
one that does not answer: each Nix process that asks it retries for seconds).
Offline (the default), a raw dry run of 10 variants takes well under a second
and Invoke's own start-up (about 0.17 s) and the derivation graph weigh more.

Usage: python benchmarks/bench_plan.py [--variants 10,150] [--runs 3] [--build]
       [--shared 1000] [--per-sm 30] [--matrix-rows 1000] [--substituter URL] [--no-targets]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "fixtures" / "nixpkgs"
PROJECT_FILES = ("flake.nix", "flake.lock", "nix", "tasks.py", "noxfile.py", "README.md", ".gitignore")
PLAN_TARGET = 1.3
MATRIX_TARGET = 6.0

# (capability, oldest CUDA that has it) accepted by the stand-in's torch and vllm
# lists and its CUDA capability table (tests/fixtures/nixpkgs).
CAPABILITIES = [
    ("7.0", "12.8"),
    ("7.2", "12.8"),
    ("7.5", "12.8"),
    ("8.0", "12.8"),
    ("8.6", "12.8"),
    ("8.7", "12.8"),
    ("8.9", "12.8"),
    ("9.0", "12.8"),
    ("9.0a", "12.8"),
    ("10.0", "12.8"),
    ("10.0a", "12.8"),
    ("12.0", "12.8"),
    ("12.0a", "12.8"),
    ("5.0", "12.8"),
    ("5.2", "12.8"),
    ("6.0", "12.8"),
    ("6.1", "12.8"),
    ("10.3", "12.9"),
    ("10.3a", "12.9"),
    ("12.1", "12.9"),
    ("12.1a", "12.9"),
]

# Our process and Nix's, apart: run invoke in-process, then read getrusage.
INVOKE_MEASURED = r"""
import json, resource, sys
from invoke.main import program
try:
    program.run(["invoke", *sys.argv[2:]], exit=False)
finally:
    with open(sys.argv[1], "w") as f:
        json.dump({"self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   "nix_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}, f)
"""
RAW_MEASURED = r"""
import json, resource, subprocess, sys
rc = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "nix_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}, f)
sys.exit(rc)
"""


def rows(n: int) -> list[dict[str, str]]:
    found = []
    for torch in ("source", "wheel"):
        for cuda in ("12.9", "12.8"):
            for python in ("python312", "python313"):
                for cap, min_cuda in CAPABILITIES:
                    if cuda >= min_cuda:
                        found.append(
                            {
                                "sm": cap.replace(".", ""),
                                "capability": cap,
                                "python": python,
                                "cuda": cuda,
                                "torch": torch,
                            }
                        )
    if n > len(found):
        raise SystemExit(f"at most {len(found)} distinct variants can be generated, not {n}")
    return found[:n]


def variants_toml(selected: list[dict[str, str]]) -> str:
    text = (ROOT / "nix" / "variants.toml").read_text()
    # the settings only: no [pin] facts (the rows are the stand-in's own) and no [[sm]] product
    head = text[: text.index("\n[pin]\n")]
    tables = []
    for row in selected:
        minimum = 575 if row["cuda"] == "12.9" else 570
        tables.append(
            "\n".join(
                [
                    "[[variant]]",
                    f'sm = "{row["sm"]}"',
                    f'capability = "{row["capability"]}"',
                    'arch = "bench"',
                    f'gpus = ["bench {row["capability"]}"]',
                    'system = "x86_64-linux"',
                    f'python = "{row["python"]}"',
                    f'cuda = "{row["cuda"]}"',
                    f"min_driver = {minimum}",
                    f'torch = "{row["torch"]}"',
                    "",
                ]
            )
        )
    return head + "\n\n" + "\n".join(tables)


def expand(toml: Path, expanded: Path) -> None:
    """What `invoke variants --write` writes: the flake reads the TOML's expansion."""
    from vllm_variants.matrix import generated

    expanded.write_text(generated.render(*generated.expand(toml)))


def project(tmp: Path, n: int) -> Path:
    root = tmp / f"project-{n}"
    root.mkdir()
    for name in PROJECT_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, root / name)
    (root / "nix" / "variants.toml").write_text(variants_toml(rows(n)))
    expand(root / "nix" / "variants.toml", root / "nix" / "variants.json")
    git = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@invalid",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@invalid",
    }
    for argv in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(argv, cwd=root, env=git, check=True)
    return root


def standin(tmp: Path, shared: int, per_sm: int, salt: str) -> Path:
    dest = tmp / f"nixpkgs-{salt}"
    shutil.copytree(STANDIN, dest)
    knobs = json.loads((dest / "knobs.json").read_text())
    knobs.update(syntheticClosure={"shared": shared, "perSm": per_sm}, salt=salt)
    (dest / "knobs.json").write_text(json.dumps(knobs, indent=2) + "\n")
    return dest


SUBSTITUTER = ""  # --substituter


def nix_env(extra: str = "") -> dict[str, str]:
    config = "\n".join(
        [
            f"substituters = {SUBSTITUTER}",
            "experimental-features = nix-command flakes",
            "warn-dirty = false",
            "flake-registry =",
            "eval-cache = false",
            extra,
        ]
    )
    return {**os.environ, "NIX_CONFIG": config + "\n"}


def measured(script: str, args: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("r", suffix=".json") as report:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", script, report.name, *map(str, args)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(
                f"{' '.join(map(str, args[:6]))} ... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            )
        data = json.loads(Path(report.name).read_text())
    return {"wall_s": wall, **data, "stdout": proc.stdout}


def plan_case(tmp: Path, n: int, runs: int, args) -> dict[str, object]:
    root = project(tmp, n)
    nixpkgs = standin(tmp, args.shared, args.per_sm, f"plan-{uuid.uuid4()}")
    env = nix_env()
    attrs = [
        f"{root}#packages.x86_64-linux.{name}"
        for name in json.loads(
            subprocess.run(
                [sys.executable, "-m", "invoke", "variants", "--json"],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
    ]
    raw_argv = [
        shutil.which("nix") or "nix",
        "build",
        "--dry-run",
        "--json",
        *attrs,
        "--override-input",
        "nixpkgs",
        f"path:{nixpkgs}",
        "--no-write-lock-file",
    ]
    plan_args = ["build", "--all", "--dry-run", "--nixpkgs", str(nixpkgs), "--eval-jobs", str(n)]
    raw, plan = [], []
    measured(RAW_MEASURED, raw_argv, root, env)  # warm: the stand-in copied into the store once
    for _ in range(runs):
        raw.append(measured(RAW_MEASURED, raw_argv, root, env))
        plan.append(measured(INVOKE_MEASURED, plan_args, root, env))
    stats = instance_stats(root, nixpkgs, attrs)
    derivations = next((line for line in plan[-1]["stdout"].splitlines() if "all together" in line), "")
    return {
        "n": n,
        "raw_s": statistics.median(r["wall_s"] for r in raw),
        "plan_s": statistics.median(p["wall_s"] for p in plan),
        "raw_nix_mib": max(r["nix_kib"] for r in raw) / 1024,
        "plan_nix_mib": max(p["nix_kib"] for p in plan) / 1024,
        "plan_self_mib": max(p["self_kib"] for p in plan) / 1024,
        "together": derivations.strip(),
        **stats,
        "root": root,
    }


def instance_stats(root: Path, nixpkgs: Path, attrs: list[str]) -> dict[str, float]:
    """NIX_SHOW_STATS of one instance and of all N in one process: bytes per instance."""
    found = {}
    for label, chosen in (("one", attrs[:1]), ("all", attrs)):
        with tempfile.NamedTemporaryFile("r", suffix=".json") as stats:
            subprocess.run(
                [
                    "nix",
                    "build",
                    "--dry-run",
                    *chosen,
                    "--override-input",
                    "nixpkgs",
                    f"path:{nixpkgs}",
                    "--no-write-lock-file",
                ],
                cwd=root,
                capture_output=True,
                check=True,
                env={**nix_env(), "NIX_SHOW_STATS": "1", "NIX_SHOW_STATS_PATH": stats.name},
            )
            found[label] = json.loads(Path(stats.name).read_text())["gc"]["totalBytes"]
    return {"instance_mib_one": found["one"] / 2**20, "instance_mib_all": found["all"] / len(attrs) / 2**20}


def build_case(tmp: Path, root: Path, n: int, args) -> dict[str, float]:
    nixpkgs = standin(tmp, args.shared, args.per_sm, f"build-{uuid.uuid4()}")
    result = measured(
        INVOKE_MEASURED,
        [
            "build",
            "--all",
            "--nixpkgs",
            str(nixpkgs),
            "--eval-jobs",
            str(n),
            "--max-jobs",
            str(args.max_jobs),
            "--cores",
            "1",
        ],
        root,
        nix_env(),
    )
    built = sum(1 for _ in root.glob("result-*"))
    for link in root.glob("result-*"):
        link.unlink()
    return {
        "build_s": result["wall_s"],
        "build_nix_mib": result["nix_kib"] / 1024,
        "build_self_mib": result["self_kib"] / 1024,
        "linked": built,
    }


def matrix_case(tmp: Path, n_rows: int) -> dict[str, float]:
    """nix/matrix.nix (reading the rows' expansion) and vllm_variants.matrix over R synthetic rows (pure data)."""
    text = (ROOT / "nix" / "variants.toml").read_text()
    # the settings only: no [pin] facts (the rows are the stand-in's own) and no [[sm]] product
    head = text[: text.index("\n[pin]\n")]
    tables = []
    for i in range(n_rows):  # distinct names: SMs 100..999, plain, "a" and "f", each with either torch
        sm, suffix, torch = str(100 + i % 900), ["", "a", "f"][(i // 900) % 3], ["source", "wheel"][i // 2700]
        tables.append(
            f'[[variant]]\nsm = "{sm}{suffix}"\ncapability = "{sm[:2]}.{sm[2:]}{suffix}"\narch = "x"\n'
            f'gpus = ["x"]\nsystem = "x86_64-linux"\ntorch = "{torch}"\n'
        )
    path = tmp / f"variants-{n_rows}.toml"
    path.write_text(head + "\n\n" + "\n".join(tables))
    expanded = tmp / f"variants-{n_rows}.json"
    expand(path, expanded)
    start = time.perf_counter()
    subprocess.run(
        [
            "nix",
            "eval",
            "--impure",
            "--json",
            "--expr",
            f"builtins.length (builtins.attrNames (import {ROOT}/nix/matrix.nix "
            f"{{ generated = {expanded}; source = {path}; }}).variants)",
        ],
        env=nix_env(),
        capture_output=True,
        check=True,
    )
    nix_s = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from vllm_variants.matrix import Matrix; Matrix.load(__import__('pathlib').Path(sys.argv[1]))",
            str(path),
        ],
        check=True,
    )
    return {"nix_s": nix_s, "python_s": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="10,150", help="variant counts, comma-separated (default 10,150)")
    parser.add_argument("--runs", type=int, default=3, help="runs of the plan and the raw dry run (default 3)")
    parser.add_argument("--build", action="store_true", help="also build every variant (fresh derivations)")
    parser.add_argument("--max-jobs", type=int, default=8, help="--max-jobs of the build (default 8)")
    parser.add_argument("--shared", type=int, default=1000, help="shared synthetic derivations (default 1000)")
    parser.add_argument("--per-sm", type=int, default=30, help="per-capability synthetic derivations (default 30)")
    parser.add_argument("--matrix-rows", type=int, default=1000, help="rows for the matrix check (0: skip)")
    parser.add_argument(
        "--substituter",
        default="",
        help="a binary cache every nix call asks (default none: "
        "offline); e.g. http://127.0.0.1:9, one that does not answer, as issue #13 measured",
    )
    parser.add_argument("--no-targets", action="store_true", help="report only; never exit 1")
    args = parser.parse_args()
    global SUBSTITUTER
    SUBSTITUTER = args.substituter
    counts = sorted(int(n) for n in args.variants.split(","))

    missed = False
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp_name:
        tmp = Path(tmp_name)
        cases = []
        for n in counts:
            case = plan_case(tmp, n, args.runs, args)
            if args.build:
                case.update(build_case(tmp, case["root"], n, args))
            cases.append(case)
            ratio = case["plan_s"] / case["raw_s"]
            ok = ratio <= PLAN_TARGET
            missed |= not ok
            print(
                f"{n:4d} variants: raw dry run {case['raw_s']:.2f} s (nix {case['raw_nix_mib']:.0f} MiB); "
                f"plan {case['plan_s']:.2f} s (nix {case['plan_nix_mib']:.0f} MiB, ours "
                f"{case['plan_self_mib']:.0f} MiB): {ratio:.2f}x (target <= {PLAN_TARGET}x) "
                f"{'ok' if ok else 'MISSED'}"
            )
            print(f"      {case['together']}")
            print(
                f"      evaluation: {case['instance_mib_one']:.1f} MiB allocated for 1 instance, "
                f"{case['instance_mib_all']:.1f} MiB per instance with {n} in one process (NIX_SHOW_STATS)"
            )
            if args.build:
                print(
                    f"      build: {case['build_s']:.1f} s (nix {case['build_nix_mib']:.0f} MiB, ours "
                    f"{case['build_self_mib']:.0f} MiB), {case['linked']} result links"
                )
        if len(cases) > 1:
            small, large = cases[0], cases[-1]
            scale = large["n"] / small["n"]
            keys = [("plan_s", "plan"), ("raw_s", "raw dry run")] + ([("build_s", "build")] if args.build else [])
            for key, label in keys:
                growth = large[key] / small[key]
                per_variant = (large[key] - small[key]) / (large["n"] - small["n"])
                ok = growth <= scale
                missed |= not ok
                print(
                    f"growth {small['n']} -> {large['n']} variants ({scale:.0f}x): {label} {growth:.1f}x, "
                    f"{per_variant * 1000:.0f} ms per added variant (target <= {scale:.0f}x: linear) "
                    f"{'ok' if ok else 'MISSED'}"
                )
            for key, label in (("plan_self_mib", "our process"), ("plan_nix_mib", "nix")):
                print(
                    f"memory {small['n']} -> {large['n']} variants: {label} {small[key]:.0f} -> {large[key]:.0f} MiB "
                    f"({(large[key] - small[key]) / (large['n'] - small['n']):.2f} MiB per added variant)"
                )
        if args.matrix_rows:
            one, four = matrix_case(tmp, args.matrix_rows), matrix_case(tmp, 4 * args.matrix_rows)
            for key, label in (("nix_s", "nix/matrix.nix"), ("python_s", "vllm_variants.matrix")):
                growth = four[key] / one[key]
                ok = growth <= MATRIX_TARGET
                missed |= not ok
                print(
                    f"{label}: {args.matrix_rows} rows {one[key]:.2f} s, {4 * args.matrix_rows} rows "
                    f"{four[key]:.2f} s: {growth:.1f}x (target <= {MATRIX_TARGET}x; 4x linear, 16x quadratic) "
                    f"{'ok' if ok else 'MISSED'}"
                )
    return 1 if missed and not args.no_targets else 0


if __name__ == "__main__":
    sys.exit(main())
