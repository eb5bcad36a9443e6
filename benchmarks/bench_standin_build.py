#!/usr/bin/env python3
"""What the stand-in's real kernels cost a build (issue #25), per package, as ratios in one run.

The stand-in's CUDA packages (nccl, torch, vllm, xformers, bitsandbytes)
compile one real kernel each with the host's nvcc. This builds one variant of
this checkout against copies of the stand-in three times, each a new salt (so
every Python package really builds) and each with its own compile cache
directory (knobs.json nvccCache):

  cold     an empty cache: every kernel compiled (nccl, whose derivation the
           cache directory changes, too)
  cached   the same cache, a new salt: the Python packages rebuild, their
           compiles are cache hits (what the suite's salted builds cost)
  none     nvccCache null: compiled again, no cache involved (a check that the
           cold figures are the compiles, not the cache's bookkeeping)

Each derivation's build time is read from `nix build -L`: from the first to
the last line its builder printed (Nix's own scheduling between builds is not
in it), so torch's figure includes linking nccl's archive. The totals are the
wall time of each `nix build`. Ratios: cold / cached per package.

Usage: python benchmarks/bench_standin_build.py [--variant vllm-python312-cuda12_9-sm90]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "fixtures" / "nixpkgs"
PROJECT_FILES = ("flake.nix", "flake.lock", "nix", "tasks.py", "noxfile.py", "README.md", ".gitignore")
PACKAGES = ("nccl", "torch", "xformers", "bitsandbytes", "flashinfer", "vllm")
LINE = re.compile(r"^(?:python3\.\d+-)?([a-z-]+?)(?:-[0-9][^>]*)?> ")


def nix_env() -> dict[str, str]:
    env = dict(os.environ)
    env["NIX_CONFIG"] = (
        "substituters =\nexperimental-features = nix-command flakes\nwarn-dirty = false\nflake-registry =\n"
        f"build-hook = {shutil.which('nix')} __build-remote\n"
    )
    return env


def standin_copy(dest: Path, **knobs) -> Path:
    shutil.copytree(STANDIN, dest)
    data = json.loads((dest / "knobs.json").read_text())
    data.update(knobs)
    (dest / "knobs.json").write_text(json.dumps(data, indent=2) + "\n")
    return dest


def build(project: Path, standin: Path, variant: str) -> tuple[float, dict[str, float]]:
    """(wall seconds, {package: seconds from its builder's first line to its last})."""
    argv = [
        "nix",
        "build",
        "-L",
        "--no-link",
        f"path:{project}#packages.x86_64-linux.{variant}",
        "--override-input",
        "nixpkgs",
        f"path:{standin}",
    ]
    seen: dict[str, list[float]] = {}
    start = time.monotonic()
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=nix_env())
    assert proc.stderr is not None
    for line in proc.stderr:
        match = LINE.match(line)
        if match and match.group(1) in PACKAGES:
            now = time.monotonic()
            seen.setdefault(match.group(1), [now, now])[1] = now
    if proc.wait() != 0:
        sys.exit(f"nix build {variant} failed (exit {proc.returncode})")
    return time.monotonic() - start, {name: last - first for name, (first, last) in seen.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="vllm-python312-cuda12_9-sm90")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-standin-build-") as tmp:
        work = Path(tmp)
        project = work / "project"
        project.mkdir()
        for name in PROJECT_FILES:
            source = ROOT / name
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, project / name)
        cache = str(work / f"nvcc-cache-{uuid.uuid4()}")
        runs = {}
        for label, knobs in (("cold", {"nvccCache": cache}), ("cached", {"nvccCache": cache}), ("none", {})):
            knobs = {"nvccCache": None, **knobs, "salt": f"bench-{label}-{uuid.uuid4()}"}
            runs[label] = build(project, standin_copy(work / f"nixpkgs-{label}", **knobs), args.variant)
    print(f"{args.variant}: one build each, a new salt (every Python package builds)")
    print(f"{'package':<14}{'cold':>9}{'cached':>9}{'none':>9}{'cold/cached':>13}")
    for name in PACKAGES:
        times = [runs[label][1].get(name) for label in ("cold", "cached", "none")]
        cells = "".join(f"{t:>8.2f}s" if t is not None else f"{'-':>9}" for t in times)
        ratio = f"{times[0] / times[1]:>12.1f}x" if times[0] and times[1] else f"{'-':>13}"
        print(f"{name:<14}{cells}{ratio}")
    walls = [runs[label][0] for label in ("cold", "cached", "none")]
    print(f"{'total (wall)':<14}" + "".join(f"{t:>8.2f}s" for t in walls) + f"{walls[0] / walls[1]:>12.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
