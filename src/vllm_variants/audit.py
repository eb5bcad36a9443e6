"""`invoke audit`: which GPU architectures a build, wheel or library carries.

For every CUDA-carrying library in the target (a result link, a store path,
a directory, an ELF library or a wheel) it lists the SASS architectures and
PTX versions the library holds and their sizes. With a variant (or SMs) it
says, per SM, three figures (issue #12): SASS built for exactly that SM, SASS
that GPU runs (vllm_variants.compat: sm_80 runs on 8.6, sm_90a only on 9.0,
sm_100f on 10.0 and 10.3), and PTX it can JIT-compile; and it flags the code
no own SM ever uses: the check behind "a variant carries only its SM", and
what a fat wheel spends on GPUs the user does not own.

Readers: cuobjdump (`--list-elf`/`--list-ptx`) where one is found, else this
package's own fatbin reader (vllm_variants.fatbin). Sizes and exact targets
always come from the fatbin headers (cuobjdump spells sm_100f as sm_100).
Where cuobjdump fails on a library, that library is read from the headers and
the report says so; where the two disagree, the report keeps what either
lists and `--check` fails: a disagreement never reads as "nothing there".

Wheels are read in place: a stored member straight from the wheel file, a
compressed one streamed (once whole, which checks its CRC, then up to the end
of its .nv_fatbin), so no temporary copy and no extra disk. Only the
cuobjdump reader needs a member on disk: it extracts each ELF member to a
temporary file in turn (disk: the largest member, 308 MB for vllm 0.33.0).

Library API (`show`, behind `invoke audit`, calls it): audit(target, variant=..., reader=...) -> AuditReport.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from . import compat, lifecycle, userfiles
from .errors import AuditError, NoCudaCode, PreflightError, SelectionError, ToolMissing
from .fatbin import (
    ELF_MAGIC,
    CodeEntry,
    DeviceCode,
    FileSource,
    InvalidBinary,
    Source,
    StreamSource,
    Unsupported,
    read_device_code,
)
from .matrix import Matrix, Variant, normalise_sm, sm_number
from .options import Selection
from .resources import format_bytes
from .runner import HINTS, require_tool, run

READERS = ("auto", "fatbin", "cuobjdump")
# Files that are never ELF libraries; skipping them keeps a walk of a Python
# environment (tens of thousands of files) to the few hundred that can be.
_TEXT_SUFFIXES = frozenset(
    ".py .pyc .pyi .pyx .pxd .txt .md .rst .json .toml .yaml .yml .cfg .ini .h .hpp .cuh .cu .c .cc .cpp "
    ".html .js .css .csv .typed .pem .sh .nix .jinja .j2 .svg .png .jpg .gz .xz .bz2 .zst .tar .pth".split()
)
_LISTED = re.compile(r"^(ELF|PTX) file\s+\d+: (.+)$")
_LISTED_ARCH = re.compile(r"\.(sm_\d+[a-z]?)\.(cubin|ptx)$")


# -- cuobjdump ----------------------------------------------------------------


def parse_cuobjdump(text: str) -> list[str]:
    """Architectures, in order, from `cuobjdump --list-elf` or `--list-ptx` output.

    'ELF file    2: libmulti.2.sm_90.cubin' -> 'sm_90'; its "info" lines
    (no ELF/PTX found, no device code) add nothing.
    """
    archs = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("cuobjdump info"):
            continue
        listed = _LISTED.match(line)
        arch = _LISTED_ARCH.search(listed.group(2)) if listed else None
        if not arch:
            raise AuditError(f"cannot read cuobjdump output line {line!r}")
        archs.append(arch.group(1))
    return archs


class CuobjdumpFailed(AuditError):
    """cuobjdump could not list one library (the audit goes on with the fatbin headers for it)."""


def cuobjdump_listing(cuobjdump: str, path: Path, shown: str | None = None) -> tuple[list[str], list[str]]:
    """(cubin architectures, PTX architectures) as cuobjdump lists them; errors name `shown` (the user's file)."""
    found = []
    for flag in ("--list-elf", "--list-ptx"):
        proc = run([cuobjdump, flag, path], check=False)
        text = proc.stdout + proc.stderr
        if proc.returncode != 0 and "does not contain device code" not in text:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            said = next((line for line in lines if "fatal" in line.lower()), lines[-1] if lines else "")
            raise CuobjdumpFailed(
                f"cuobjdump {flag} {shown or path} failed (exit {proc.returncode}): "
                + said.replace(str(path), shown or str(path))
            )
        try:
            found.append(parse_cuobjdump(text))
        except AuditError as exc:
            raise CuobjdumpFailed(f"cuobjdump {flag} {shown or path}: {exc}") from None
    return found[0], found[1]


def find_cuobjdump(explicit: str | None = None) -> str | None:
    """The cuobjdump to use: `explicit` (a path, or a name looked up on PATH), else the one on PATH, else None."""
    if not explicit:
        return shutil.which("cuobjdump")
    if os.sep not in explicit:
        return require_tool(explicit, HINTS["cuobjdump"])
    if not os.path.lexists(explicit):
        raise PreflightError(
            f"--cuobjdump {explicit}: no such file; give the path of cuobjdump "
            f"({HINTS['cuobjdump']}), or --reader fatbin"
        )
    if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
        raise PreflightError(
            f"--cuobjdump {explicit}: not an executable file; give the path of cuobjdump, or --reader fatbin"
        )
    return explicit


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


# -- reading one library ------------------------------------------------------------


def _family_blind(arch: str) -> str:
    """'sm_100f' -> 'sm_100': cuobjdump 13 lists a family cubin (header: sm_100f) as sm_100, its PTX as sm_100f."""
    return arch[:-1] if arch.endswith("f") else arch


def reconcile(
    entries: Sequence[CodeEntry], sass: Sequence[str], ptx: Sequence[str]
) -> tuple[list[CodeEntry], str | None]:
    """The headers' entries against cuobjdump's listing: (entries, None) when they agree.

    They agree when cuobjdump lists the same targets in the same order, the
    family suffix aside; the headers' exact targets and sizes are kept. Else
    the disagreement, and the entries either reader lists (cuobjdump's extra
    ones with unknown size): fail closed, so an empty or short listing never
    hides code the headers show, nor the reverse.
    """
    ours = {kind: [e.arch for e in entries if e.kind == kind] for kind in ("sass", "ptx")}
    theirs = {"sass": list(sass), "ptx": list(ptx)}
    if all(list(map(_family_blind, ours[k])) == list(map(_family_blind, theirs[k])) for k in ours):
        return list(entries), None
    extra = []
    for kind, listed in theirs.items():
        missing = Counter(map(_family_blind, listed)) - Counter(map(_family_blind, ours[kind]))
        for arch in listed:
            if missing[_family_blind(arch)] > 0:
                missing[_family_blind(arch)] -= 1
                extra.append(CodeEntry(kind, arch))
    counts = (
        f"cuobjdump lists {len(sass)} cubins and {len(ptx)} PTX, the fatbin headers "
        f"{len(ours['sass'])} and {len(ours['ptx'])}"
    )
    if not extra:
        same = len(sass) == len(ours["sass"]) and len(ptx) == len(ours["ptx"])
        return list(entries), counts + ("; the same targets in another order" if same else "")
    return list(entries) + extra, f"{counts}; {len(extra)} listed only by cuobjdump (size unknown)"


class _Auditor:
    def __init__(self, reader: str, cuobjdump: str | None) -> None:
        self.reader = reader
        self.cuobjdump = cuobjdump
        self.libraries: list[Library] = []
        self.skipped: list[tuple[str, str]] = []
        self.examined = 0

    def _bad(self, shown: str, reason: str, error: AuditError, *, strict: bool) -> None:
        """The target itself is bad: raise error. A file inside it: skip it, keeping the reason."""
        if strict:
            raise error
        self.skipped.append((shown, reason))

    def _read(self, source: Source, shown: str, *, strict: bool) -> DeviceCode | None:
        """The device code of one ELF file, or None (no code, or a bad file skipped in a walk)."""
        self.examined += 1
        try:
            return read_device_code(source)
        except Unsupported as exc:
            error = Unsupported(f"{shown} is {exc}; only 64-bit little-endian libraries are read")
            self._bad(shown, str(exc), error, strict=strict)
        except InvalidBinary as exc:
            self._bad(shown, str(exc), InvalidBinary(f"{shown} is not a valid ELF library: {exc}"), strict=strict)
        except OSError as exc:
            self._bad(
                shown,
                f"cannot read it: {exc.strerror}",
                AuditError(f"cannot read {shown}: {exc.strerror}"),
                strict=strict,
            )
        return None

    def elf(self, path: Path, shown: str, *, strict: bool) -> None:
        """Audit one ELF file on disk; in a walk (strict=False) a bad file is skipped with its reason."""
        try:
            handle = open(path, "rb")
        except OSError as exc:
            error = AuditError(f"cannot read {shown}: {exc.strerror}")
            return self._bad(shown, f"cannot read it: {exc.strerror}", error, strict=strict)
        with handle:
            size = os.fstat(handle.fileno()).st_size
            code = self._read(FileSource(handle, size), shown, strict=strict)
        self._add(code, shown, size, path)

    def _add(self, code: DeviceCode | None, shown: str, file_bytes: int, path: Path | None) -> None:
        if code is None or not (code.entries or code.unread_bytes):
            return
        entries, note, disagreement, reader = list(code.entries), None, None, "fatbin"
        if code.unread_bytes:
            note = f"{code.unread_bytes} bytes of .nv_fatbin were not understood"
        if self.cuobjdump is not None and path is not None:
            try:
                sass, ptx = cuobjdump_listing(self.cuobjdump, path, shown)
            except CuobjdumpFailed as exc:
                # bitsandbytes' libbitsandbytes_cuda121.so: "fatal: Invalid ELF"
                # from cuobjdump on a library the headers read whole.
                note = f"{exc}; read from the fatbin headers instead"
            else:
                reader = "cuobjdump"
                entries, disagreement = reconcile(entries, sass, ptx)
        self.libraries.append(Library(shown, file_bytes, code.section_bytes, entries, reader, note, disagreement))

    def wheel(self, path: Path, prefix: str, *, strict: bool) -> None:
        """Audit the ELF members of a wheel (a zip file) in place; a corrupted member is skipped with its reason."""
        try:
            archive = zipfile.ZipFile(path)
            raw = open(path, "rb")
        except (zipfile.BadZipFile, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a valid zip file"
            return self._bad(prefix.rstrip("!"), why, AuditError(f"cannot open the wheel {path}: {why}"), strict=strict)
        with archive, raw:
            for info in archive.infolist():
                if info.is_dir() or _skip_name(info.filename) or info.file_size < 64:
                    continue
                shown = f"{prefix}{info.filename}"
                try:
                    self._member(archive, raw, info, shown)
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                    # a bad CRC, a damaged deflate stream, an unknown compression
                    self.skipped.append((shown, f"damaged in the wheel: {exc}"))

    def _member(self, archive: zipfile.ZipFile, raw: Any, info: zipfile.ZipInfo, shown: str) -> None:
        with archive.open(info) as member:
            if member.read(4) != ELF_MAGIC:
                return
        if self.cuobjdump is not None:  # cuobjdump reads files: this member goes to disk, alone
            with lifecycle.temporary_directory(prefix="vllm-variants-audit-") as scratch:
                extracted = Path(archive.extract(info, scratch))
                with open(extracted, "rb") as handle:
                    code = self._read(FileSource(handle, info.file_size), shown, strict=False)
                return self._add(code, shown, info.file_size, extracted)
        if info.compress_type == zipfile.ZIP_STORED:
            with archive.open(info) as member:  # the CRC, before trusting its bytes
                while member.read(1 << 20):
                    pass
            code = self._read(FileSource(raw, info.file_size, _data_offset(raw, info)), shown, strict=False)
        else:
            with archive.open(info) as member:
                try:
                    source = StreamSource(member, info.file_size)
                except InvalidBinary as exc:
                    self.skipped.append((shown, str(exc)))
                    return
                code = self._read(source, shown, strict=False)
        self._add(code, shown, info.file_size, None)

    def tree(self, root: Path) -> None:
        """Walk a directory, following symlinks (a Nix result is a tree of links), each file once."""
        seen: set[tuple[int, int]] = set()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=self._walk_error(root)):
            here = os.stat(dirpath)
            if (here.st_dev, here.st_ino) in seen:
                dirnames[:] = []
                continue
            seen.add((here.st_dev, here.st_ino))
            dirnames.sort()
            for name in sorted(filenames):
                if _skip_name(name):
                    continue
                path = Path(dirpath, name)
                shown = str(path.relative_to(root))
                try:
                    info = os.stat(path)
                except OSError as exc:  # a dangling link, or no permission
                    self.skipped.append((shown, f"cannot read it: {exc.strerror}"))
                    continue
                if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) in seen:
                    continue
                seen.add((info.st_dev, info.st_ino))
                self.file(path, shown, strict=False)

    def _walk_error(self, root: Path) -> Callable[[OSError], None]:
        def record(exc: OSError) -> None:
            where = Path(exc.filename).relative_to(root) if exc.filename else root
            self.skipped.append((str(where), f"cannot read it: {exc.strerror}"))

        return record

    def file(self, path: Path, shown: str, *, strict: bool) -> None:
        try:
            with open(path, "rb") as handle:
                magic = handle.read(4)
        except OSError as exc:
            error = AuditError(f"cannot read {shown}: {exc.strerror}")
            return self._bad(shown, f"cannot read it: {exc.strerror}", error, strict=strict)
        if magic == ELF_MAGIC:
            self.elf(path, shown, strict=strict)
        elif path.suffix == ".whl":
            self.wheel(path, "" if strict else f"{shown}!", strict=strict)
        elif strict:
            raise AuditError(f"{shown} is neither an ELF library (.so) nor a wheel (.whl), nor a directory")


def _data_offset(raw: Any, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start in the wheel: after its local header (APPNOTE.TXT 4.3.7)."""
    header = os.pread(raw.fileno(), 30, info.header_offset)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"no local file header at offset {info.header_offset}")
    name_size, extra_size = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_size + extra_size


def _skip_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in _TEXT_SUFFIXES


def audit(
    target: Path | str,
    *,
    variant: Variant | None = None,
    own_sms: Sequence[str] = (),
    reader: str = "auto",
    cuobjdump: str | None = None,
) -> AuditReport:
    """Audit a result link, store path, directory, ELF library or wheel.

    own_sms ('90', ...) default to the variant's SM; entries of any other SM
    are foreign. reader: 'auto' (cuobjdump if found, else the fatbin headers),
    'fatbin' or 'cuobjdump'. Raises AuditError (one line) for a missing,
    unreadable or invalid target; a target without CUDA code gives a AuditReport
    with no libraries (see require_cuda).
    """
    if reader not in READERS:
        raise AuditError(f"unknown reader '{reader}'; valid: {', '.join(READERS)}")
    tool = None
    if reader in ("auto", "cuobjdump"):
        tool = find_cuobjdump(cuobjdump)
        if tool is None and reader == "cuobjdump":
            raise ToolMissing("cuobjdump", HINTS["cuobjdump"] + "; or use --reader fatbin")
    shown = str(target)
    path = Path(target)
    if path.is_symlink() and not os.path.lexists(os.path.join(path.parent, os.readlink(path))):
        raise AuditError(f"{shown} is a dangling link (to {os.readlink(path)}): build it again")
    try:  # a FIFO would hang the read, a symlink loop would raise in resolve()
        userfiles.file_or_directory(path, shown)
    except userfiles.UserFileError as exc:
        raise AuditError(str(exc)) from None
    resolved = userfiles.real(path)
    sms = tuple(dict.fromkeys(own_sms or ((variant.sm_number,) if variant else ())))
    auditor = _Auditor("cuobjdump" if tool else "fatbin", tool)
    if resolved.is_dir():
        auditor.tree(resolved)
    else:
        auditor.file(resolved, shown, strict=True)
    note = None
    if tool is None and reader == "auto":
        note = "cuobjdump not found: read from the fatbin headers"
    fell_back = sum(1 for lib in auditor.libraries if lib.reader != auditor.reader)
    if fell_back:
        note = f"cuobjdump failed on {fell_back} of {len(auditor.libraries)} libraries, read from the fatbin headers"
    return AuditReport(
        target=shown,
        resolved=str(resolved),
        reader=auditor.reader,
        own_sms=sms,
        variant=variant.name if variant else None,
        libraries=auditor.libraries,
        skipped=auditor.skipped,
        examined=auditor.examined,
        reader_note=note,
        torch_exempt=bool(variant and variant.torch_wheel),
    )


def require_cuda(report: AuditReport) -> AuditReport:
    """The report, or NoCudaCode (one line) when the target holds no device code."""
    if not report.libraries:
        if Path(report.resolved).is_file() and not report.resolved.endswith(".whl"):
            raise NoCudaCode(f"{report.target} holds no CUDA device code (no .nv_fatbin section)")
        unread = ""
        if report.skipped:
            path, reason = report.skipped[0]
            unread = f"; {len(report.skipped)} could not be read (first: {path}: {reason})"
        raise NoCudaCode(
            f"no CUDA device code in {report.target}: {report.examined} ELF file(s) examined, "
            f"none with a .nv_fatbin section{unread}"
        )
    return report


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


# -- output --------------------------------------------------------------------


def human(n: int | None) -> str:
    return format_bytes(n, unknown="?")


def _cell(archs: dict[str, dict[str, Any]], kind: str) -> str:
    parts = []
    for arch, row in archs.items():
        if row[kind]:
            count = f" x{row[kind]}" if row[kind] > 1 else ""
            text = f"{arch}{count}"
            parts.append(f"[bold red]{text}[/]" if row["foreign"] else text)
    return ", ".join(parts) or "-"


def _share(part: int, total: int) -> str:
    return f"{100 * part / total:.1f} %" if total else "-"


def sm_line(report: AuditReport, sm: str) -> str:
    """'SM 86: runs 290.9 MiB of 510.9 MiB of CUDA code (56.9 %); built for exactly SM 86: 3.1 MiB; JIT-able PTX: ...'."""
    f = report.figures(sm)
    return (
        f"SM {sm}: runs {human(f.runs)} of {human(f.total)} of {_code(report)} ({_share(f.runs, f.total)}); "
        f"built for exactly SM {sm}: {human(f.exact)}; JIT-able PTX: {human(f.jit_ptx)}"
    )


def requested_line(report: AuditReport) -> str | None:
    """One line per own SM (sm_line), then what none of them uses; None without own SMs."""
    if not report.own_sms:
        return None
    lines = [sm_line(report, sm) for sm in report.own_sms]
    total, used = report.total_bytes, report.own_bytes or 0
    if report.foreign:
        lines.append(
            f"not used by SM {', '.join(report.own_sms)}: {human(total - used)} ({_share(total - used, total)}"
            f"; {', '.join(report.foreign)})"
        )
    return "\n".join(lines)


def _code(report: AuditReport) -> str:
    """'CUDA code', or which part of it the byte counts cover when some sizes are unknown."""
    if report.sizes_complete:
        return "CUDA code"
    unknown = sum(1 for lib in report.libraries if any(e.stored_bytes is None for e in lib.entries))
    return f"the CUDA code of known size (unknown in {unknown} of {len(report.libraries)} libraries)"


def unused_text(report: AuditReport) -> str:
    """'sm_80 SASS (1.2 KiB), sm_90 PTX (3.4 KiB, beside SASS that runs)': what --check fails on."""
    groups: dict[tuple[str, str, str], int | None] = {}
    for entry, use in _used(report.checked_libraries(), report.own_sms):
        if use in UNUSED:
            key = (entry.arch, entry.kind, use)
            groups[key] = _add(groups.get(key, 0), entry.stored_bytes)
    parts = []
    for (arch, kind, use), size in sorted(groups.items(), key=lambda item: _arch_key(item[0][0])):
        why = ", beside SASS that runs" if use == SHADOWED else ""
        parts.append(f"{arch} {kind.upper() if kind != 'other' else 'other code'} ({human(size)}{why})")
    return ", ".join(parts)


def render(report: AuditReport, out: TextIO) -> None:
    from rich.markup import escape
    from rich.table import Table

    from .console import console_for

    console = console_for(out, highlight=False)
    where = report.target if report.target == report.resolved else f"{report.target} -> {report.resolved}"
    title = f"CUDA code in {where}"
    if report.variant:
        title += f" (variant {report.variant}: SM {', '.join(report.own_sms)})"
    elif report.own_sms:
        title += f" (SM {', '.join(report.own_sms)})"
    console.print(f"[bold]{escape(title)}[/]", soft_wrap=True)
    table = Table()
    table.add_column("Library", overflow="fold")
    table.add_column("SASS (cubins)")
    table.add_column("PTX")
    table.add_column("CUDA bytes", justify="right")
    for library in report.libraries:
        archs = summarise(library.entries, report.own_sms)
        sizes = [e.stored_bytes for e in library.entries]
        size = (
            None if None in sizes else sum(s for s in sizes if s is not None)
        )  # unknown where cuobjdump and the headers disagreed
        name = escape(library.path) + (f"\n[dim]{escape(library.note)}[/]" if library.note else "")
        if report.torch_exempt and is_torch_library(library.path):
            name += "\n[dim]torch-bin, the upstream wheel: every SM; the one library --check exempts[/]"
        if library.disagreement:
            name += f"\n[bold red]readers disagree: {escape(library.disagreement)}[/]"
        table.add_row(name, _cell(archs, "sass"), _cell(archs, "ptx"), human(size))
    console.print(table)
    summary = Table()
    for column in ("Architecture", "SASS", "PTX", "Bytes", ""):
        summary.add_column(column, justify="right" if column in ("SASS", "PTX", "Bytes") else "left")
    gpu = "this variant's GPU" if report.variant else f"SM {', '.join(report.own_sms)}"
    for arch, row in report.archs().items():
        whole = row["unused_bytes"] == row["bytes"]
        mark = f"[bold red]{'never' if whole else 'partly'} used by {gpu}[/]" if row["foreign"] else ""
        summary.add_row(arch, str(row["sass"]), str(row["ptx"]), human(row["bytes"]), mark)
    console.print(summary)
    line = requested_line(report)
    console.print(
        escape(line or f"{human(report.total_bytes)} of {_code(report)} in {len(report.libraries)} libraries")
    )
    if report.disagreements:
        console.print(
            f"[bold red]cuobjdump and the fatbin headers disagree on {len(report.disagreements)} "
            f"of {len(report.libraries)} libraries[/] (both listings kept; --check fails)"
        )
    reader = f"reader: {report.reader}" + (f" ({report.reader_note})" if report.reader_note else "")
    console.print(f"[dim]{escape(reader)}; {report.examined} ELF file(s) examined[/]")
    for path, reason in report.skipped:
        console.print(f"[yellow]skipped[/] {escape(path)}: {escape(reason)}")


def _refuse_empty(target: str, *, sm: str | None, variant: str | None) -> None:
    """An empty PATH, --sm or --variant (an unset variable) is refused, not read as
    the working directory or as no SM given (issue #11: the CLI's edge only)."""
    if not str(target).strip():
        raise AuditError(f"PATH '{target}' is empty; give a result link, store path, directory, .so or .whl")
    for flag, value, what in (("--sm", sm, "an SM such as 90"), ("--variant", variant, "a variant name")):
        if value is not None and not value.strip():
            raise SelectionError(f"{flag} '{value}' is empty; give {what}, or leave {flag} out")


def show(
    target: str,
    *,
    matrix: Matrix | None = None,
    sm: str | None = None,
    variant: str | None = None,
    as_json: bool = False,
    reader: str = "auto",
    cuobjdump: str | None = None,
    check: bool = False,
    out: TextIO | None = None,
) -> AuditReport:
    """`invoke audit`: print the report; NoCudaCode without device code; with check, fail on foreign code."""
    out = out or sys.stdout
    _refuse_empty(target, sm=sm, variant=variant)
    sms, chosen = own_sms_for(matrix, target, sm=sm, variant=variant)
    report = require_cuda(audit(target, variant=chosen, own_sms=sms, reader=reader, cuobjdump=cuobjdump))
    if as_json:
        json.dump(report.to_json(), out, indent=2)
        out.write("\n")
    else:
        render(report, out)
    if check:
        if not report.own_sms:
            raise SelectionError("--check needs the variant's SM: give --variant or --sm")
        if report.disagreements:
            first = report.disagreements[0]
            raise AuditError(
                f"{target}: cuobjdump and the fatbin headers disagree on {len(report.disagreements)} "
                f"libraries (first: {first.path}: {first.disagreement}); nothing is checked on a "
                "disagreement, see --reader fatbin/cuobjdump"
            )
        if report.foreign:
            raise AuditError(f"{target} carries code SM {', '.join(report.own_sms)} never uses: {unused_text(report)}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m vllm_variants.audit TARGET [--sm SM] [--json] ...` where Invoke is not installed."""
    import argparse

    from .boundary import main as run_main
    from .errors import PreflightError
    from .project import Project

    parser = argparse.ArgumentParser(prog="python -m vllm_variants.audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="result link, store path, directory, .so or .whl")
    parser.add_argument("--sm", help="the SM(s) you own, e.g. 90 or 80,90, or 'auto' for this machine's GPUs")
    parser.add_argument("--variant", help="a variant name (or SM) from nix/variants.toml")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--reader", choices=READERS, default="auto", help="how to read the device code")
    parser.add_argument("--cuobjdump", help="the cuobjdump to use (default: the one on PATH)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when some code is never used by the SM(s), or the two readers disagree",
    )
    args = parser.parse_args(argv)

    def go() -> None:
        try:
            matrix: Matrix | None = Project.find().matrix
        except PreflightError:
            matrix = None  # outside a checkout: --sm still works
        show(
            args.target,
            matrix=matrix,
            sm=args.sm,
            variant=args.variant,
            as_json=args.json,
            reader=args.reader,
            cuobjdump=args.cuobjdump,
            check=args.check,
        )

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())
