"""The matrix and its queries: the variants of nix/variants.toml, validated by
vllm_variants.matrix.schema, and what the commands ask of them (the default
set, a variant by name or SM, the --python/--cuda lines)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SelectionError
from . import schema
from .pin import version_key
from .variant import Variant


@dataclass(frozen=True)
class Matrix:
    variants: tuple[Variant, ...]
    systems: Mapping[str, str]  # system -> name suffix
    ram_per_job_gib: int
    source: Path | None = field(default=None, compare=False)
    default_python: str | None = None  # the default line: [defaults] python and cuda
    default_cuda: str | None = None

    # -- loading -----------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str) -> Matrix:
        path = Path(path)
        data, _ = schema.parse(path, str(path))
        return cls.from_toml(data, source=path)

    @classmethod
    def from_toml(cls, data: Mapping[str, Any], source: Path | None = None) -> Matrix:
        """The matrix a parsed file describes, validated (vllm_variants.matrix.schema)."""
        layout = schema.read(data, str(source or "variants.toml"))
        return cls(
            layout.variants,
            layout.systems,
            layout.ram_per_job_gib,
            source,
            layout.default_python,
            layout.default_cuda,
        )

    # -- queries -----------------------------------------------------------

    @property
    def enabled(self) -> tuple[Variant, ...]:
        """Every valid variant: each is buildable by name or by selectors."""
        return tuple(v for v in self.variants if v.enabled)

    @property
    def default_set(self) -> tuple[Variant, ...]:
        """What --all, `invoke matrix` and hydraJobs build unless told otherwise."""
        return tuple(v for v in self.variants if v.enabled and v.default)

    def by_name(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise SelectionError(
            f"unknown variant '{name}'; the default set: {', '.join(v.name for v in self.default_set)} "
            "(`invoke variants --all` lists every one)"
        )

    def to_json(self) -> dict[str, dict[str, Any]]:
        """{name: record}, exactly what `nix eval --json .#lib.variants` prints."""
        return {v.name: v.to_json() for v in self.variants}

    def valid_sms_text(self) -> str:
        """'70, 75, ... (x86_64-linux); 90, 100 (aarch64-linux, with --arm64)'."""
        parts = []
        for system in self.systems:
            sms = unique(v.sm for v in self.enabled if v.system == system)
            if sms:
                hint = ", with --arm64" if system.startswith("aarch64-") else ""
                parts.append(f"{', '.join(sms)} ({system}{hint})")
        return "; ".join(parts)

    # -- resolving requests -----------------------------------------------

    def lines(self, python: str | None = None, cuda: str | None = None) -> tuple[str | None, str | None]:
        """--python / --cuda as the matrix spells them ('313' -> 'python313', '12.8'), checked."""
        if python is not None:
            digits = re.sub(r"^(python|py)", "", python.strip().lower()).replace(".", "")
            python = f"python{digits}"
            valid = unique(v.python for v in self.variants)
            if python not in valid:
                raise SelectionError(
                    f"unknown Python line '{python}'; valid: "
                    f"{', '.join(p.removeprefix('python') for p in valid)} (e.g. --python 313)"
                )
        if cuda is not None:
            cuda = cuda.strip()
            valid = sorted(unique(v.cuda for v in self.variants), key=version_key)
            if cuda not in valid:
                raise SelectionError(f"unknown CUDA line '{cuda}'; valid: {', '.join(valid)} (e.g. --cuda 12.8)")
        return python, cuda

    def on_line(self, variant: Variant, python: str | None, cuda: str | None) -> bool:
        """On the asked-for line: an axis not asked for takes the default line's value;
        nothing asked for is the default set."""
        if python is None and cuda is None:
            return variant.default
        return variant.python == (python or self.default_python) and variant.cuda == (cuda or self.default_cuda)

    def resolve(
        self, token: str, *, arm64: bool = False, python: str | None = None, cuda: str | None = None
    ) -> Variant:
        """One variant from '90', 'sm90', 'SM90', '9.0' or a full name (on the --python/--cuda line)."""
        python, cuda = self.lines(python, cuda)
        text = token.strip()
        if text.startswith("vllm-"):
            variant = self.by_name(text)
            if arm64 and not variant.arm64:
                raise SelectionError(f"--arm64 conflicts with '{text}', an {variant.system} variant")
            return self._usable(variant)
        sm = normalise_sm(text)
        if sm is None:
            raise SelectionError(
                f"'{token}' is not an SM; give a number like 90, sm90 or a full variant name; "
                f"valid SMs: {self.valid_sms_text()}"
            )
        same_sm = [v for v in self.variants if v.sm == sm]
        if not same_sm:
            raise SelectionError(f"unknown SM '{sm}'; valid SMs: {self.valid_sms_text()}")
        wanted = [v for v in same_sm if v.arm64 == arm64]
        if not wanted:
            if arm64:
                arm = unique(v.sm for v in self.enabled if v.arm64)
                raise SelectionError(f"SM {sm} has no arm64 variant; arm64 variants exist for SM {', '.join(arm)}")
            raise SelectionError(
                f"SM {sm} exists only for arm64; add --arm64 "
                f"(x86_64 SMs: {', '.join(unique(v.sm for v in self.enabled if not v.arm64))})"
            )
        on_line = [v for v in wanted if self.on_line(v, python, cuda)]
        if not on_line:
            asked = " ".join(x for x in (python, f"CUDA {cuda}" if cuda else None) if x)
            raise SelectionError(
                f"SM {sm} has no variant on {asked or 'the default line'}; it has: {', '.join(v.name for v in wanted)}"
            )
        wanted = on_line
        if len(wanted) > 1:  # an SM's own torch is the default line; a torch-bin row goes by name
            wanted = [v for v in wanted if not v.torch_wheel] or wanted
        if len(wanted) > 1:
            raise SelectionError(
                f"SM {sm} matches several variants ({', '.join(v.name for v in wanted)}); give the full name"
            )
        return self._usable(wanted[0])

    def _usable(self, variant: Variant) -> Variant:
        if variant.disabled:
            raise SelectionError(f"{variant.name} is disabled in the matrix: {variant.disabled}")
        return variant


def normalise_sm(text: str) -> str | None:
    """'90', 'sm90', 'SM_90a', '9.0' -> '90' / '90a'; None when it is not an SM."""
    lowered = text.lower()
    if lowered.startswith("sm_"):
        lowered = lowered[3:]
    elif lowered.startswith("sm"):
        lowered = lowered[2:]
    if schema.CAPABILITY_PATTERN.match(lowered):
        lowered = lowered.replace(".", "")
    return lowered if schema.SM_PATTERN.match(lowered) else None


def unique(items: Iterable[str]) -> list[str]:
    """`items` without repeats, in their first order."""
    return list(dict.fromkeys(items))
