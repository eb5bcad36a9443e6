"""The usage model and the report: how the own SMs use each entry of device code, and the figures per SM."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from .. import compat
from ..fatbin import (
    CodeEntry,
)

# -- the report -----------------------------------------------------------------

# How the own SMs use one entry, best first: SASS built for exactly one of
# them; SASS that runs on one (compat.sass_runs_on); PTX one can JIT-compile
# where no SASS of the same container runs there; PTX beside SASS that runs
# (the driver loads the SASS, so the PTX is never used); code none can use.
EXACT, RUNS, JIT, SHADOWED, NEVER = "exact", "runs", "jit", "shadowed", "never"
_RANK = (EXACT, RUNS, JIT, SHADOWED, NEVER)
UNUSED = (SHADOWED, NEVER)


def _runs(entry: CodeEntry, sm: str) -> bool:
    try:
        return compat.runs_on(entry.kind, entry.arch, sm)
    except ValueError:  # an SM spelling no rule covers: nothing runs it
        return False


def _same_target(entry: CodeEntry, sm: str) -> bool:
    try:
        return compat.parse(entry.arch)[:2] == compat.parse(sm)[:2]
    except ValueError:
        return False


def usage(entries: Sequence[CodeEntry], own_sms: Sequence[str]) -> list[str | None]:
    """For each entry, how the own SMs use it (EXACT ... NEVER); None for each when no own SM is known.

    A fatbin container is one translation unit built for several targets;
    the driver loads a SASS entry of it that runs on the GPU and JIT-compiles
    its PTX only when there is none (CUDA C Programming Guide, "Application
    Compatibility": https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#application-compatibility).
    """
    if not own_sms:
        return [None] * len(entries)
    runnable = {
        (e.container, sm)
        for e in entries
        if e.kind == "sass" and e.container is not None
        for sm in own_sms
        if _runs(e, sm)
    }
    verdicts: list[str | None] = []
    for entry in entries:
        best = NEVER
        for sm in own_sms:
            if not _runs(entry, sm):
                verdict = NEVER
            elif entry.kind == "sass":
                verdict = EXACT if _same_target(entry, sm) else RUNS
            else:
                verdict = SHADOWED if (entry.container, sm) in runnable else JIT
            best = min(best, verdict, key=_RANK.index)
        verdicts.append(best)
    return verdicts


@dataclass
class Library:
    path: str  # as shown: relative to the target; 'x.whl!pkg/lib.so' inside a wheel
    file_bytes: int
    fatbin_bytes: int
    entries: list[CodeEntry]
    reader: str  # "fatbin" or "cuobjdump"
    note: str | None = None
    disagreement: str | None = None  # how cuobjdump and the headers differ, when they do

    def to_json(self, own_sms: Sequence[str]) -> dict[str, Any]:
        uses = usage(self.entries, own_sms)
        return {
            "path": self.path,
            "file_bytes": self.file_bytes,
            "fatbin_bytes": self.fatbin_bytes,
            "reader": self.reader,
            "note": self.note,
            "disagreement": self.disagreement,
            "archs": summarise(self.entries, own_sms),
            "entries": [{**e.to_json(), "use": use} for e, use in zip(self.entries, uses)],
        }


def is_torch_library(path: str) -> bool:
    """A library of the Python package torch ('.../site-packages/torch/lib/libtorch_cuda.so')."""
    parts = PurePosixPath(path.replace("!", "/")).parts
    return any(a == "site-packages" and b == "torch" for a, b in zip(parts, parts[1:])) or (
        bool(parts) and parts[0] == "torch"
    )


def _arch_key(arch: str) -> tuple[int, str]:
    match = re.match(r"sm_(\d+)(.*)", arch)
    return (int(match.group(1)), match.group(2)) if match else (10**6, arch)


def _used(libraries: Iterable[Library], own_sms: Sequence[str]) -> Iterator[tuple[CodeEntry, str | None]]:
    for library in libraries:
        yield from zip(library.entries, usage(library.entries, own_sms))


def summarise(
    entries: Sequence[CodeEntry], own_sms: Sequence[str], uses: Sequence[str | None] | None = None
) -> dict[str, dict[str, Any]]:
    """{arch: {sass, ptx, other, bytes, unused_bytes, foreign}} in SM order.

    foreign: some of the row's code is used by no own SM (never without own SMs).
    """
    uses = usage(entries, own_sms) if uses is None else uses
    summary: dict[str, dict[str, Any]] = {}
    for entry, use in zip(entries, uses):
        row = summary.setdefault(
            entry.arch, {"sass": 0, "ptx": 0, "other": 0, "bytes": 0, "unused_bytes": 0, "foreign": False}
        )
        row[entry.kind] += 1
        row["bytes"] = _add(row["bytes"], entry.stored_bytes)
        if use in UNUSED:
            row["foreign"] = True
            row["unused_bytes"] = _add(row["unused_bytes"], entry.stored_bytes)
    return {arch: summary[arch] for arch in sorted(summary, key=_arch_key)}


def _add(total: int | None, more: int | None) -> int | None:
    return None if total is None or more is None else total + more


@dataclass(frozen=True)
class SmFigures:
    """What one GPU of this SM gets from the target's device code, in bytes."""

    sm: str
    exact: int  # SASS built for exactly this SM (sm_90 and sm_90a on 9.0)
    runs: int  # SASS this GPU runs: exact, and older minors of its major (sm_80 on 8.6)
    jit_ptx: int  # PTX this GPU can JIT-compile (compute_80 on 9.0)
    total: int

    def to_json(self) -> dict[str, Any]:
        return {"exact": self.exact, "runs": self.runs, "jit_ptx": self.jit_ptx, "total": self.total}


@dataclass
class AuditReport:
    target: str
    resolved: str
    reader: str
    own_sms: tuple[str, ...] = ()
    variant: str | None = None
    libraries: list[Library] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    examined: int = 0  # ELF files looked into
    reader_note: str | None = None
    # A torch = "wheel" variant (issue #14): its torch is nixpkgs' torch-bin, the
    # upstream wheel with every SM's kernels, the one package --check exempts.
    torch_exempt: bool = False

    def checked_libraries(self) -> list[Library]:
        """The libraries --check holds to the own SMs: all but an exempt torch's."""
        return [lib for lib in self.libraries if not (self.torch_exempt and is_torch_library(lib.path))]

    def entries(self) -> Iterator[CodeEntry]:
        for library in self.libraries:
            yield from library.entries

    def archs(self, libraries: Iterable[Library] | None = None) -> dict[str, dict[str, Any]]:
        """summarise() of the libraries' code (all of them by default), each entry's use read once."""
        pairs = list(_used(self.libraries if libraries is None else libraries, self.own_sms))
        return summarise([e for e, _ in pairs], self.own_sms, [u for _, u in pairs])

    def figures(self, sm: str) -> SmFigures:
        """The three figures of issue #12 for one SM (any SM, not only the own ones)."""
        exact = runs = jit = 0
        for entry in self.entries():
            size = entry.stored_bytes or 0
            if entry.kind == "sass" and _runs(entry, sm):
                runs += size
                exact += size if _same_target(entry, sm) else 0
            elif entry.kind == "ptx" and _runs(entry, sm):
                jit += size
        return SmFigures(sm, exact, runs, jit, self.total_bytes)

    @property
    def foreign(self) -> list[str]:
        """Architectures with code no own SM uses (empty when none was given), torch-bin's aside."""
        return [arch for arch, row in self.archs(self.checked_libraries()).items() if row["foreign"]]

    @property
    def disagreements(self) -> list[Library]:
        return [lib for lib in self.libraries if lib.disagreement]

    @property
    def total_bytes(self) -> int:
        return sum(e.stored_bytes or 0 for e in self.entries())

    @property
    def own_bytes(self) -> int | None:
        """Bytes the own SMs use (SASS that runs, PTX they would JIT); None without own SMs."""
        if not self.own_sms:
            return None
        return sum(e.stored_bytes or 0 for e, use in _used(self.libraries, self.own_sms) if use not in UNUSED)

    @property
    def sizes_complete(self) -> bool:
        return all(e.stored_bytes is not None for e in self.entries())

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "resolved": self.resolved,
            "reader": self.reader,
            "reader_note": self.reader_note,
            "variant": self.variant,
            "own_sms": list(self.own_sms),
            "examined_elf_files": self.examined,
            "libraries": [lib.to_json(self.own_sms) for lib in self.libraries],
            "archs": self.archs(),
            "per_sm": {sm: self.figures(sm).to_json() for sm in self.own_sms},
            "total_bytes": self.total_bytes,
            "own_bytes": self.own_bytes,
            "foreign_bytes": None if self.own_bytes is None else self.total_bytes - self.own_bytes,
            "foreign": self.foreign,
            "torch_exempt": self.torch_exempt,
            "disagreements": [{"path": lib.path, "disagreement": lib.disagreement} for lib in self.disagreements],
            "sizes_complete": self.sizes_complete,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }
