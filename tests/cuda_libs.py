"""Real CUDA libraries for the audit tests, compiled by nvcc during the test run.

The one recipe for tests/fixtures/cuda/*: the same commands made the libraries
whose cuobjdump listings are in tests/fixtures/gpu/h100 (capture.sh), so the
fatbin reader can be compared with cuobjdump where there is no cuobjdump.

    python tests/cuda_libs.py OUTDIR     # build them all into OUTDIR (the GPU machine uses this)

nvcc (CUDA 13.0, compile-only) is on the developers' machines and on CI; a
test that needs it fails, never skips, when it is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SOURCES = Path(__file__).resolve().parent / "fixtures" / "cuda"
NVCC = ["nvcc", "-shared", "-Xcompiler", "-fPIC", "-cudart", "shared"]


def _gencode(*pairs: str) -> list[str]:
    args = []
    for pair in pairs:
        args += ["-gencode", pair]
    return args


# name -> nvcc -gencode arguments
CUDA_LIBS = {
    "libone_sm90": _gencode("arch=compute_90,code=sm_90"),
    "libmulti": _gencode(*(f"arch=compute_{sm},code=sm_{sm}" for sm in (80, 90, 100, 120))),
    "libptx_only": _gencode("arch=compute_90,code=compute_90"),
    "libmixed": _gencode("arch=compute_80,code=sm_80", "arch=compute_90,code=compute_90"),
    "libsm90a": _gencode("arch=compute_90a,code=sm_90a"),
}
# Family targets (CUDA 12.9+), as vllm 0.33.0 ships them: cuobjdump lists the
# sm_100f cubin as sm_100 and the compute_120f PTX as sm_120f. Its listings
# come from cuobjdump 13.5 (tests/fixtures/gpu/cuobjdump-13.5), not the H100 run.
FAMILY_LIBS = {
    "libfamily": _gencode(
        "arch=compute_100f,code=sm_100f", "arch=compute_120f,code=sm_120f", "arch=compute_120f,code=compute_120f"
    ),
}
PLAIN = "libplain"  # gcc, no CUDA code
ALL = (*CUDA_LIBS, *FAMILY_LIBS, PLAIN)


class NvccMissing(AssertionError):
    """A failure, not a skip: CI has nvcc, and so must anyone running these tests."""


def commands(dest: Path) -> dict[str, list[str]]:
    """name -> the argv that builds dest/<name>.so."""
    kernels = str(SOURCES / "kernels.cu")
    argv = {
        name: [*NVCC, *gencode, "-o", str(dest / f"{name}.so"), kernels]
        for name, gencode in {**CUDA_LIBS, **FAMILY_LIBS}.items()
    }
    argv[PLAIN] = ["gcc", "-shared", "-fPIC", "-o", str(dest / f"{PLAIN}.so"), str(SOURCES / "plain.c")]
    return argv


def build(dest: Path) -> dict[str, Path]:
    """Compile every library into dest; returns name -> path."""
    for tool in ("nvcc", "gcc"):
        if not shutil.which(tool):
            raise NvccMissing(
                f"{tool} is not on PATH; the audit tests compile real CUDA libraries with it "
                "(CUDA 13.0 nvcc, compile-only, is enough; CI has it)"
            )
    dest.mkdir(parents=True, exist_ok=True)
    for name, argv in commands(dest).items():
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssertionError(f"building {name} failed: {' '.join(argv)}\n{proc.stdout}\n{proc.stderr}")
    return {name: dest / f"{name}.so" for name in ALL}


if __name__ == "__main__":
    built = build(Path(sys.argv[1]))
    print("\n".join(str(p) for p in built.values()))
