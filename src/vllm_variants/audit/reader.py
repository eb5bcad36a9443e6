"""Reading a target: every CUDA-carrying library of a result, store path, directory, ELF library or wheel,
from the fatbin headers and, where one is found, cuobjdump (the two reconciled)."""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import lifecycle, userfiles
from ..errors import AuditError, NoCudaCode, ToolMissing
from ..fatbin import (
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
from ..matrix import Variant
from ..runner import HINTS
from .cuobjdump import CuobjdumpFailed, cuobjdump_listing, find_cuobjdump
from .report import AuditReport, Library

READERS = ("auto", "fatbin", "cuobjdump")
# Files that are never ELF libraries; skipping them keeps a walk of a Python
# environment (tens of thousands of files) to the few hundred that can be.
_TEXT_SUFFIXES = frozenset(
    ".py .pyc .pyi .pyx .pxd .txt .md .rst .json .toml .yaml .yml .cfg .ini .h .hpp .cuh .cu .c .cc .cpp "
    ".html .js .css .csv .typed .pem .sh .nix .jinja .j2 .svg .png .jpg .gz .xz .bz2 .zst .tar .pth".split()
)


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
