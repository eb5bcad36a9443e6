"""The selection: which variants a command line asks for, as one record.

--sm (with `auto`), --arm64, --system, --all, --python and --cuda are one
record, `Selection`: tasks.py declares the flags and their help once, parses
them into it once, at the task boundary, and hands it to the command, which
asks it for its variants (Mic92/nix-fast-build's one Options record is the
model). No command reads those flags itself, and `--sm auto` is resolved in
one place (Selection.detected).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import SelectionError
from .options import comma_list

if TYPE_CHECKING:
    from .matrix import Matrix, Variant


@dataclass(frozen=True)
class Selection:
    """Which variants a command line asks for, parsed (Selection.parse) and not yet
    resolved: the matrix answers `variants()`, the local GPUs `--sm auto`."""

    sms: tuple[str, ...] = ()  # --sm's SMs and variant names, comma lists split, `auto` taken out
    auto: bool = False  # --sm auto: this machine's GPUs' variants
    arm64: bool = False
    systems: tuple[str, ...] = ()
    all: bool = False
    python: str | None = None  # --python 313: that Python line instead of the default one
    cuda: str | None = None  # --cuda 12.8

    @classmethod
    def parse(
        cls,
        *,
        sm: Iterable[str] | None = (),
        arm64: bool = False,
        system: Iterable[str] | None = (),
        all: bool = False,
        python: str | None = None,
        cuda: str | None = None,
    ) -> Selection:
        """The flags as the command line gave them (--sm and --system repeatable)."""
        tokens = _sm_tokens(sm or ())
        systems = tuple(system or ())
        _refuse_conflicts(tokens, systems=systems, all=all, arm64=arm64)
        named = tuple(t for t in tokens if t.lower() != "auto")
        return cls(named, len(named) < len(tokens), bool(arm64), systems, bool(all), python, cuda)

    def detected(self, matrix: Matrix, *, smi: str = "nvidia-smi") -> list[Variant]:
        """`--sm auto`: the variants of this machine's GPUs (vllm_variants.matching), the
        one place it is resolved; SelectionError (one line) when there is no GPU or a GPU
        has no variant."""
        from .matching import auto_variants  # nvidia-smi runs only for `auto`

        return auto_variants(matrix, smi=smi)

    def variants(self, matrix: Matrix, *, none_means_all: bool = False, smi: str = "nvidia-smi") -> list[Variant]:
        """The variants asked for, in matrix order, no duplicates.

        `--system` selects the variants of those systems and `--all` every one, of
        the default set, or of the --python/--cuda line when one is given.
        `none_means_all`: asking for nothing selects every enabled variant
        instead of being refused (commands that only look: the CI matrix,
        `publish --check`, `invoke eval`)."""
        chosen: set[str] = set()
        if self.auto:
            chosen.update(v.name for v in self.detected(matrix, smi=smi))
        if self.sms or self.systems or self.all or not chosen:
            chosen.update(v.name for v in self._from_the_matrix(matrix, none_means_all))
        return [v for v in matrix.variants if v.name in chosen]

    def _from_the_matrix(self, matrix: Matrix, none_means_all: bool) -> list[Variant]:
        python, cuda = matrix.lines(self.python, self.cuda)
        pool = [v for v in matrix.enabled if matrix.on_line(v, python, cuda)]
        everything = self.all or (none_means_all and not (self.sms or self.systems))
        if not (self.sms or self.systems or everything):
            raise SelectionError(
                "no variant selected; use --sm SM (e.g. --sm 90, --sm 100 --arm64), --system SYSTEM or --all"
            )
        chosen: set[str] = set()
        if everything:
            chosen.update(v.name for v in pool)
        for system in self.systems:
            if system not in matrix.systems:
                raise SelectionError(f"unknown system '{system}'; valid: {', '.join(matrix.systems)}")
            chosen.update(v.name for v in pool if v.system == system)
        for token in self.sms:
            chosen.add(matrix.resolve(token, arm64=self.arm64, python=python, cuda=cuda).name)
        if not chosen:  # --all or --system over a line the matrix enables nothing on
            where = f" for {', '.join(self.systems)}" if self.systems else ""
            line = ", ".join(x for x in (python, cuda and f"CUDA {cuda}") if x) or "the default set"
            raise SelectionError(
                f"nothing to select: {matrix.source or 'the matrix'} enables no variant{where} in {line}"
                + "; `invoke variants --all` lists every combination with the reason it is disabled"
            )
        return [v for v in matrix.variants if v.name in chosen]


def _sm_tokens(sms: Iterable[str]) -> list[str]:
    """The SMs of --sm values ('80,89' counts two); a value naming none is refused, not ignored."""
    tokens = []
    for item in sms:
        words = comma_list(item)
        if not words:
            raise SelectionError(f"--sm '{item}' names no SM; give one like --sm 90 (or 80,89,90)")
        tokens += words
    return tokens


def _refuse_conflicts(tokens: Sequence[str], *, systems: Sequence[str], all: bool, arm64: bool) -> None:
    """--sm, --system and --all each select on their own: together they would
    silently build (or list) their union, hours nobody asked for (issue #11)."""
    given = [flag for flag, used in (("--sm", tokens), ("--all", all), ("--system", systems)) if used]
    if len(given) > 1:
        raise SelectionError(
            f"{given[0]} and {given[1]} conflict: each selects variants on its own; give one of "
            "--sm SM, --system SYSTEM or --all"
        )
    if arm64 and not tokens:
        raise SelectionError(
            "--arm64 applies to --sm only (--sm 90 --arm64 is the GH200 variant); "
            "for every arm64 variant use --system aarch64-linux"
        )
