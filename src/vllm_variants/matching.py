"""Which variant runs on which GPU: the rules behind `invoke which`, `invoke doctor`
and `--sm auto` (every command's selection, vllm_variants.selection.Selection).

A GPU maps to the enabled variant of its SM for this machine's system (an
arm64 host gets the arm64 variant). A GPU whose SM has no variant gets one
line naming the nearest supported choices by capability and how to add a
variant to nix/variants.toml; no GPU at all is said as such.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .compat import base_capability, sass_runs_on
from .errors import SelectionError, ToolMissing
from .gpus import GPU, detect
from .matrix import Matrix, Variant, unique
from .runner import CannotRun

_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def host_system(machine: str | None = None) -> str:
    """The Nix system of this host: 'x86_64-linux', 'aarch64-linux', ..."""
    machine = (machine or platform.machine()).lower()
    kernel = "linux" if sys.platform.startswith("linux") else sys.platform
    return f"{_MACHINES.get(machine, machine)}-{kernel}"


@dataclass(frozen=True)
class Match:
    """One GPU and the variant to run on it (None: no variant; `problem` says why)."""

    gpu: GPU
    variant: Variant | None
    problem: str | None = None

    def to_json(self) -> dict:
        return {
            "gpu": self.gpu.to_json(),
            "variant": self.variant.name if self.variant else None,
            "min_driver": self.variant.min_driver if self.variant else None,
            "problem": self.problem,
        }


def _capability_number(capability: str) -> int:
    major, minor = base_capability(capability).split(".")
    return int(major) * 10 + int(minor)


def nearest(matrix: Matrix, gpu: GPU, system: str, count: int = 2) -> list[tuple[Variant, bool]]:
    """The closest enabled variants of `system` by capability, each with whether its code runs on `gpu`."""
    wanted = _capability_number(gpu.capability)
    candidates = [v for v in matrix.default_set if v.system == system]

    def rank(v: Variant) -> tuple[bool, int]:
        return not sass_runs_on(v.capability, gpu.capability), abs(_capability_number(v.capability) - wanted)

    ranked = sorted(candidates, key=rank)
    return [(v, sass_runs_on(v.capability, gpu.capability)) for v in ranked[:count]]


def _no_variant(matrix: Matrix, gpu: GPU, system: str) -> str:
    """One line: no variant for this GPU, the nearest choices, how to add one."""
    what = f"GPU {gpu.index} ({gpu.name}, capability {gpu.capability}) has no {system} variant"
    elsewhere = unique(v.system for v in matrix.enabled if v.sm_number == gpu.sm and v.system != system)
    if elsewhere:
        what += f" (SM {gpu.sm} is built only for {', '.join(elsewhere)})"
    choices = []
    for variant, runs in nearest(matrix, gpu, system):
        verdict = "its SM {} code runs on {}" if runs else "SM {} code does not run on {}"
        choices.append(f"{variant.name} ({verdict.format(variant.sm, gpu.capability)})")
    nearest_text = f"nearest: {'; '.join(choices)}" if choices else f"no variant is built for {system} at all"
    add = (
        f"to add it, append one [[sm]] table to nix/variants.toml "
        f'(sm = "{gpu.sm}", capability = "{gpu.capability}", arch = "...", gpus = ["{gpu.name}"], '
        f'system = "{system}")'
    )
    return f"{what}; {nearest_text}; {add}"


def match(matrix: Matrix, gpus: Sequence[GPU], system: str | None = None) -> list[Match]:
    """Each GPU with its variant for `system` (default: this host's)."""
    system = system or host_system()
    matches = []
    for gpu in gpus:
        # the default line first (an SM has a variant per Python and CUDA line), its own torch first
        same = sorted(
            (v for v in matrix.variants if v.sm_number == gpu.sm and v.system == system),
            key=lambda v: (not v.default, v.torch_wheel),
        )
        if not same:
            matches.append(Match(gpu, None, _no_variant(matrix, gpu, system)))
        elif same[0].disabled:
            matches.append(
                Match(
                    gpu,
                    None,
                    f"GPU {gpu.index} ({gpu.name}): {same[0].name} is disabled in "
                    f"nix/variants.toml: {same[0].disabled}",
                )
            )
        else:
            matches.append(Match(gpu, same[0]))
    return matches


NO_GPU = "no NVIDIA GPU found"


def no_gpu_message(reason: str) -> str:
    return f"{NO_GPU} ({reason}); name the variant instead, e.g. --sm 90 (`invoke variants` lists them)"


def local_variants(matrix: Matrix, gpus: Sequence[GPU], system: str | None = None) -> list[Variant]:
    """The variants for these GPUs, in matrix order, each once (`invoke build --sm auto`).

    Raises SelectionError (one line) when there is no GPU or a GPU has no variant.
    """
    if not gpus:
        raise SelectionError(no_gpu_message("nvidia-smi lists none"))
    matches = match(matrix, gpus, system)
    for m in matches:
        if m.variant is None:
            raise SelectionError(m.problem or f"GPU {m.gpu.index} has no variant")
    names = {m.variant.name for m in matches if m.variant}
    return [v for v in matrix.variants if v.name in names]


def detect_gpus(smi: str, env: Mapping[str, str] | None = None) -> tuple[list[GPU], str]:
    """(GPUs, why there are none): a missing nvidia-smi means no driver, so no GPU."""
    try:
        return detect(smi, env=env), "nvidia-smi lists none"
    except CannotRun:  # there, but not runnable: say that, not "no driver"
        raise
    except ToolMissing:
        return [], "nvidia-smi is not on PATH: no NVIDIA driver here"


def auto_variants(matrix: Matrix, *, smi: str = "nvidia-smi", system: str | None = None) -> list[Variant]:
    """`--sm auto`: detect the GPUs and return their variants (SelectionError/GpuError when none)."""
    gpus, none_because = detect_gpus(smi)
    if not gpus:
        raise SelectionError(no_gpu_message(none_because))
    return local_variants(matrix, gpus, system)
