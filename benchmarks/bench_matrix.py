"""How reading the matrix grows with its size (issue #15): linear, no quadratic step.

Generates matrices of N synthetic [[sm]] rows (every one on 3 Python x 2 CUDA
lines, as the Flox product is) and times, in one run, per variant:
  - python:  vllm_variants.matrix.Matrix.load (what `invoke variants` does);
  - invoke:  `invoke variants --json` in a checkout holding that matrix;
  - nix:     nix/matrix.nix's records (what `nix eval .#lib.variants` prints):
             it reads nix/variants.json, the expansion `invoke variants --write`
             makes of the TOML (written here before timing).
Growth is the per-variant time at the largest size over the smallest: about 1
for linear, about the size ratio for quadratic.

    python benchmarks/bench_matrix.py [--sizes 14,112,448]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vllm_variants.matrix import Matrix, generated  # noqa: E402

HEAD = """defaults = { python = "python312", cuda = "12.9", torch = "source" }
axes = { python = ["python311", "python312", "python313"], cuda = ["12.8", "12.9"] }
cuda = { "12.8" = { min_driver = 570 }, "12.9" = { min_driver = 575 } }
build = { ram_per_job_gib = 8 }
systems = { x86_64-linux = { suffix = "" }, aarch64-linux = { suffix = "-arm64" } }
"""


def matrix_text(sms: int) -> str:
    rows = []
    for index in range(sms):  # capability AB.C <-> sm ABC: 900 distinct SMs
        major, minor = 10 + index // 10, index % 10
        rows.append(
            f'[[sm]]\nsm = "{major}{minor}"\ncapability = "{major}.{minor}"\narch = "X"\n'
            f'gpus = ["GPU {index}"]\nsystem = "x86_64-linux"\n'
        )
    return HEAD + "\n".join(rows)


def best(run, repeat: int) -> float:
    return min(_timed(run) for _ in range(repeat))


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="14,112,448", help="numbers of [[sm]] rows (x6 variants each)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    nix = shutil.which("nix")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for sms in sizes:
            root = Path(tmp) / f"p{sms}"
            (root / "nix").mkdir(parents=True)
            for name in ("tasks.py", "flake.nix"):
                shutil.copy(REPO / name, root / name)
            shutil.copy(REPO / "nix" / "matrix.nix", root / "nix" / "matrix.nix")
            toml = root / "nix" / "variants.toml"
            toml.write_text(matrix_text(sms))
            variants = len(Matrix.load(toml).variants)
            row = {
                "variants": variants,
                "python": best(lambda toml=toml: Matrix.load(toml), args.repeat),
                "invoke": best(
                    lambda root=root: subprocess.run(
                        [sys.executable, "-m", "invoke", "variants", "--json"],
                        cwd=root,
                        check=True,
                        capture_output=True,
                    ),
                    args.repeat,
                ),
            }
            if nix:
                expanded = root / "nix" / "variants.json"
                expanded.write_text(generated.render(*generated.expand(toml)))
                expr = (
                    f"builtins.length (builtins.attrNames (import {root}/nix/matrix.nix "
                    f"{{ generated = {expanded}; source = {toml}; }}).variants)"
                )
                row["nix"] = best(
                    lambda expr=expr: subprocess.run(
                        [nix, "eval", "--impure", "--expr", expr], check=True, capture_output=True
                    ),
                    args.repeat,
                )
            results.append(row)
    keys = [k for k in ("python", "invoke", "nix") if k in results[0]]
    print(f"{'variants':>9} " + " ".join(f"{k + ' s':>10} {k + ' ms/var':>12}" for k in keys))
    for row in results:
        cells = " ".join(f"{row[k]:>10.3f} {1000 * row[k] / row['variants']:>12.3f}" for k in keys)
        print(f"{row['variants']:>9} {cells}")
    first, last = results[0], results[-1]
    for key in keys:
        # the fixed start-up cost (interpreter, nix) is subtracted: the marginal cost per variant
        marginal = (last[key] - first[key]) / (last["variants"] - first["variants"])
        middle = results[len(results) // 2]
        early = (middle[key] - first[key]) / max(1, middle["variants"] - first["variants"])
        growth = marginal / early if early > 0 else float("nan")
        print(
            f"{key}: marginal {1000 * marginal:.3f} ms/variant; growth of the marginal cost "
            f"({first['variants']}->{middle['variants']} vs {middle['variants']}->{last['variants']}): "
            f"{growth:.2f}x (1 = linear)"
        )
    print(f"each cell: the best of {args.repeat} runs; [[sm]] rows {sizes}")


if __name__ == "__main__":
    main()
