"""Choosing the own SMs: from --sm (a list, or `auto`), --variant, or the variant a path names."""

from __future__ import annotations

import re
from pathlib import Path

from .. import userfiles
from ..errors import SelectionError
from ..matrix import Matrix, Variant, normalise_sm, sm_number
from ..selection import Selection

# -- choosing the own SMs ------------------------------------------------------


def variant_in_path(matrix: Matrix, target: Path | str) -> Variant | None:
    """The variant named by a result link or store path ('result-vllm-...-sm90', '/nix/store/...-vllm-...-sm90')."""
    path = Path(target)
    names = [path.name]
    if path.is_symlink() or path.exists():
        names.append(userfiles.real(path).name)
    # Longest first: 'sm100-arm64' must not read as 'sm100'.
    for variant in sorted(matrix.variants, key=lambda v: len(v.name), reverse=True):
        if any(re.search(re.escape(variant.name) + r"(?![\w-])", name) for name in names):
            return variant
    return None


def own_sms_for(
    matrix: Matrix | None,
    target: Path | str,
    *,
    sm: str | None = None,
    variant: str | None = None,
    smi: str = "nvidia-smi",
) -> tuple[tuple[str, ...], Variant | None]:
    """(own SMs, variant) from --sm (a list, or 'auto' for the local GPUs), --variant, or the path's name."""
    if sm and variant:
        raise SelectionError("give --sm or --variant, not both")
    if variant:
        if matrix is None:
            raise SelectionError("--variant needs a vllm-variants checkout (for nix/variants.toml); use --sm")
        chosen = matrix.resolve(variant, arm64=variant.endswith("-arm64"))
        return (chosen.sm_number,), chosen
    if sm:
        selection = Selection.parse(sm=[sm])
        detected: list[Variant] = []
        if selection.auto:
            if matrix is None:
                raise SelectionError("--sm auto needs a vllm-variants checkout (for nix/variants.toml)")
            detected = selection.detected(matrix, smi=smi)
        sms = [v.sm_number for v in detected]
        named = selection.sms
        for token in named:
            normal = normalise_sm(token)
            if normal is None:
                raise SelectionError(f"'{token}' is not an SM; give a number like 90, sm_90, 9.0, or 'auto'")
            sms.append(sm_number(normal))
        return tuple(dict.fromkeys(sms)), (detected[0] if len(detected) == 1 and not named else None)
    found = variant_in_path(matrix, target) if matrix else None
    return ((found.sm_number,) if found else ()), found
