"""Which GPU can run which device code: the one rule, for audit, `invoke which` and the smoke check.

NVIDIA's rules, as this module applies them to a GPU of compute capability G.g:

- SASS (a cubin) for sm_XY runs on every GPU of the same major with an equal or
  higher minor: sm_80 runs on 8.0, 8.6 and 8.9, never on 9.0 (CUDA C Programming
  Guide, "Binary Compatibility":
  https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#binary-compatibility).
- An arch-specific cubin (sm_90a, sm_100a) runs only on exactly that capability
  (same guide, "Feature Availability" / arch-specific features:
  https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#feature-availability).
- A family-specific cubin (sm_100f, sm_120f, new in CUDA 12.9) runs on the GPUs
  of its family: the same major with an equal or higher minor, so sm_100f on
  10.0 and 10.3, sm_103f on 10.3 only, sm_120f on 12.0 and 12.1
  (https://developer.nvidia.com/blog/nvidia-blackwell-and-nvidia-cuda-12-9-introduce-family-specific-architecture-features/).
- PTX for compute_XY is JIT-compiled by the driver on any GPU of capability
  X.Y or higher, across majors (guide, "PTX Compatibility":
  https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#ptx-compatibility);
  compute_XYa PTX only on X.Y, compute_XYf PTX only inside its family.

And the order of driver and CUDA versions (version_tuple), which the smoke
check and `invoke doctor` compare.

Standard library only, and no import from this package: smoke/check.py loads
this file by its path inside a built result's own Python, where
vllm_variants is not installed.
"""

from __future__ import annotations

import re

# 'sm_90a', 'compute_100f', 'sm90', '90a', '9.0a', '12.1'
_TARGET = re.compile(r"^(?:sm_?|compute_?)?(?:(\d{1,2})\.(\d)|(\d{1,2})(\d))([af]?)$")


def parse(target: object) -> tuple[int, int, str]:
    """(major, minor, suffix) of an SM or capability: 'sm_100f' -> (10, 0, 'f'), '8.6' -> (8, 6, '').

    Raises ValueError for anything else.
    """
    match = _TARGET.match(str(target).strip().lower())
    if not match:
        raise ValueError("%r is not an SM or compute capability (e.g. sm_90a, 8.6, 100f)" % (target,))
    major, minor = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
    return int(major), int(minor), match.group(5)


def base_capability(capability: object) -> str:
    """'9.0a' -> '9.0': the suffix names a code target, not a different GPU."""
    major, minor, _ = parse(capability)
    return "%d.%d" % (major, minor)


def sm_of(capability: object) -> str:
    """'9.0a' -> '90', '12.1' -> '121': the SM number a GPU of that capability reports."""
    major, minor, _ = parse(capability)
    return "%d%d" % (major, minor)


def sass_runs_on(target: object, gpu: object) -> bool:
    """Whether SASS built for `target` (sm_90a, 8.0, 100f) runs on a GPU of capability `gpu`."""
    major, minor, suffix = parse(target)
    g_major, g_minor, _ = parse(gpu)
    if suffix == "a":
        return (major, minor) == (g_major, g_minor)
    # plain and family cubins alike: the same major, an equal or higher minor
    return major == g_major and minor <= g_minor


def ptx_jits_on(target: object, gpu: object) -> bool:
    """Whether PTX for `target` (compute_90, sm_80 as cuobjdump spells it) can be JIT-compiled on `gpu`."""
    major, minor, suffix = parse(target)
    g_major, g_minor, _ = parse(gpu)
    if suffix == "a":
        return (major, minor) == (g_major, g_minor)
    if suffix == "f":
        return major == g_major and minor <= g_minor
    return (major, minor) <= (g_major, g_minor)


def runs_on(kind: str, target: object, gpu: object) -> bool:
    """Whether code of `kind` ('sass' or 'ptx') for `target` can execute on `gpu`; other kinds never."""
    if kind == "sass":
        return sass_runs_on(target, gpu)
    if kind == "ptx":
        return ptx_jits_on(target, gpu)
    return False


def version_tuple(text: object) -> tuple[int, ...]:
    """'575.51.03' -> (575, 51, 3), '12.9' -> (12, 9): a driver or CUDA version in
    numeric order (a part's other characters are dropped; a part of none is 0)."""
    parts = []
    for part in str(text).split("."):
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)
