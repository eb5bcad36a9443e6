"""`invoke audit`: which GPU architectures a build, wheel or library carries.

For every CUDA-carrying library in the target (a result link, a store path,
a directory, an ELF library or a wheel) it lists the SASS architectures and
PTX versions the library holds and their sizes. With a variant (or SMs) it
flags every architecture that is not the variant's own and shows the bytes
spent on the requested SM against the total: the check behind "a variant
carries only its SM", and what a fat wheel spends on SMs the user does not own.

Readers: cuobjdump (`--list-elf`/`--list-ptx`) where one is found, else this
package's own fatbin reader (vllm_variants.fatbin); sizes always come from the
fatbin headers, and with cuobjdump its listing must agree with them.

Library API (smoke calls it): audit(target, variant=..., reader=...) -> Report.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .errors import AuditError, NoCudaCode, SelectionError, ToolMissing
from .fatbin import ELF_MAGIC, DeviceCode, Entry, InvalidBinary, Unsupported, mapped, read_device_code
from .matrix import Matrix, Variant, normalise_sm, sm_number
from .resources import format_bytes
from .runner import HINTS, run

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


def cuobjdump_listing(cuobjdump: str, path: Path) -> tuple[list[str], list[str]]:
    """(cubin architectures, PTX architectures) as cuobjdump lists them."""
    found = []
    for flag in ("--list-elf", "--list-ptx"):
        proc = run([cuobjdump, flag, path], check=False)
        text = proc.stdout + proc.stderr
        if proc.returncode != 0 and "does not contain device code" not in text:
            said = next((line.strip() for line in text.splitlines() if line.strip()), "")
            raise AuditError(f"cuobjdump {flag} {path} failed (exit {proc.returncode}): {said}")
        found.append(parse_cuobjdump(text))
    return found[0], found[1]


def find_cuobjdump(explicit: str | None = None) -> str | None:
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise ToolMissing(explicit, HINTS["cuobjdump"])
        return explicit
    return shutil.which("cuobjdump")


# -- the report -----------------------------------------------------------------


@dataclass
class Library:
    path: str  # as shown: relative to the target; 'x.whl!pkg/lib.so' inside a wheel
    file_bytes: int
    fatbin_bytes: int
    entries: list[Entry]
    reader: str  # "fatbin" or "cuobjdump"
    note: str | None = None

    def to_json(self, own_sms: Sequence[str]) -> dict[str, Any]:
        return {
            "path": self.path,
            "file_bytes": self.file_bytes,
            "fatbin_bytes": self.fatbin_bytes,
            "reader": self.reader,
            "note": self.note,
            "archs": summarise(self.entries, own_sms),
            "entries": [e.to_json() for e in self.entries],
        }


def _arch_key(arch: str) -> tuple[int, str]:
    match = re.match(r"sm_(\d+)(.*)", arch)
    return (int(match.group(1)), match.group(2)) if match else (10**6, arch)


def is_foreign(entry: Entry, own_sms: Sequence[str]) -> bool:
    """Code for an SM other than the own ones (never, when no own SM is known)."""
    return bool(own_sms) and entry.sm not in own_sms


def summarise(entries: Iterable[Entry], own_sms: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{arch: {sass, ptx, bytes, foreign}} in SM order; foreign only when own SMs are known."""
    summary: dict[str, dict[str, Any]] = {}
    for entry in entries:
        row = summary.setdefault(entry.arch, {"sass": 0, "ptx": 0, "other": 0, "bytes": 0,
                                              "foreign": is_foreign(entry, own_sms)})
        row[entry.kind] += 1
        row["bytes"] = None if row["bytes"] is None or entry.stored_bytes is None else row["bytes"] + entry.stored_bytes
    return {arch: summary[arch] for arch in sorted(summary, key=_arch_key)}


@dataclass
class Report:
    target: str
    resolved: str
    reader: str
    own_sms: tuple[str, ...] = ()
    variant: str | None = None
    libraries: list[Library] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    examined: int = 0  # ELF files looked into
    reader_note: str | None = None

    def entries(self) -> Iterator[Entry]:
        for library in self.libraries:
            yield from library.entries

    def archs(self) -> dict[str, dict[str, Any]]:
        return summarise(self.entries(), self.own_sms)


    @property
    def foreign(self) -> list[str]:
        """Architectures present that are not the variant's (empty when none was given)."""
        return [arch for arch, row in self.archs().items() if row["foreign"]]

    @property
    def total_bytes(self) -> int:
        return sum(e.stored_bytes or 0 for e in self.entries())

    @property
    def own_bytes(self) -> int | None:
        if not self.own_sms:
            return None
        return sum(e.stored_bytes or 0 for e in self.entries() if not is_foreign(e, self.own_sms))

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
            "total_bytes": self.total_bytes,
            "own_bytes": self.own_bytes,
            "foreign_bytes": None if self.own_bytes is None else self.total_bytes - self.own_bytes,
            "foreign": self.foreign,
            "sizes_complete": self.sizes_complete,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


# -- walking the target ------------------------------------------------------------


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

    def elf(self, path: Path, shown: str, *, strict: bool) -> None:
        """Audit one ELF file; in a walk (strict=False) a bad file is skipped with its reason."""
        self.examined += 1
        try:
            with mapped(path) as data:
                code = read_device_code(data)
                file_bytes = len(data)
        except Unsupported as exc:
            error = Unsupported(f"{shown} is {exc}; only 64-bit little-endian libraries are read")
            return self._bad(shown, str(exc), error, strict=strict)
        except InvalidBinary as exc:
            return self._bad(shown, str(exc), InvalidBinary(f"{shown} is not a valid ELF library: {exc}"), strict=strict)
        except OSError as exc:
            error = AuditError(f"cannot read {shown}: {exc.strerror}")
            return self._bad(shown, f"cannot read it: {exc.strerror}", error, strict=strict)
        if code is None:
            return
        if code.entries or code.unread_bytes:
            self.libraries.append(self._library(path, shown, file_bytes, code))

    def _library(self, path: Path, shown: str, file_bytes: int, code: DeviceCode) -> Library:
        entries, note = list(code.entries), None
        if code.unread_bytes:
            note = f"{code.unread_bytes} bytes of .nv_fatbin were not understood"
        if self.cuobjdump is None:
            return Library(shown, file_bytes, code.section_bytes, entries, "fatbin", note)
        sass, ptx = cuobjdump_listing(self.cuobjdump, path)
        own_sass = [e.arch for e in entries if e.kind == "sass"]
        own_ptx = [e.arch for e in entries if e.kind == "ptx"]
        if (sass, ptx) != (own_sass, own_ptx):
            # cuobjdump is the authority on what is there; the sizes came from
            # headers it does not agree with, so they are unknown.
            entries = [Entry("sass", a) for a in sass] + [Entry("ptx", a) for a in ptx]
            note = (
                f"cuobjdump lists {len(sass)} cubins and {len(ptx)} PTX, the fatbin headers "
                f"{len(own_sass)} and {len(own_ptx)}: sizes unknown"
            )
        return Library(shown, file_bytes, code.section_bytes, entries, "cuobjdump", note)

    def wheel(self, path: Path, prefix: str, *, strict: bool) -> None:
        """Audit the ELF members of a wheel (a zip file), each extracted to a temporary file."""
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a valid zip file"
            return self._bad(prefix.rstrip("!"), why, AuditError(f"cannot open the wheel {path}: {why}"), strict=strict)
        with archive, tempfile.TemporaryDirectory(prefix="vllm-variants-audit-") as scratch:
            for info in archive.infolist():
                if info.is_dir() or _skip_name(info.filename) or info.file_size < 64:
                    continue
                with archive.open(info) as member:
                    if member.read(4) != ELF_MAGIC:
                        continue
                extracted = Path(archive.extract(info, scratch))
                try:
                    self.elf(extracted, f"{prefix}{info.filename}", strict=False)
                finally:
                    extracted.unlink()

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

    def _walk_error(self, root: Path):
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


def _skip_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in _TEXT_SUFFIXES


def audit(
    target: Path | str,
    *,
    variant: Variant | None = None,
    own_sms: Sequence[str] = (),
    reader: str = "auto",
    cuobjdump: str | None = None,
) -> Report:
    """Audit a result link, store path, directory, ELF library or wheel.

    own_sms ('90', ...) default to the variant's SM; entries of any other SM
    are foreign. reader: 'auto' (cuobjdump if found, else the fatbin headers),
    'fatbin' or 'cuobjdump'. Raises AuditError (one line) for a missing,
    unreadable or invalid target; a target without CUDA code gives a Report
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
    if not os.path.lexists(path):
        raise AuditError(f"{shown}: no such file or directory")
    if not path.exists():
        raise AuditError(f"{shown} is a dangling link (to {os.readlink(path)}): build it again")
    resolved = path.resolve()
    sms = tuple(dict.fromkeys(own_sms or ((variant.sm_number,) if variant else ())))
    auditor = _Auditor("cuobjdump" if tool else "fatbin", tool)
    if resolved.is_dir():
        auditor.tree(resolved)
    else:
        auditor.file(resolved, shown, strict=True)
    note = None
    if tool is None and reader == "auto":
        note = "cuobjdump not found: read from the fatbin headers"
    return Report(
        target=shown,
        resolved=str(resolved),
        reader=auditor.reader,
        own_sms=sms,
        variant=variant.name if variant else None,
        libraries=auditor.libraries,
        skipped=auditor.skipped,
        examined=auditor.examined,
        reader_note=note,
    )


def require_cuda(report: Report) -> Report:
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
        names.append(path.resolve().name)
    # Longest first: 'sm100-arm64' must not read as 'sm100'.
    for variant in sorted(matrix.variants, key=lambda v: len(v.name), reverse=True):
        if any(re.search(re.escape(variant.name) + r"(?![\w-])", name) for name in names):
            return variant
    return None


def own_sms_for(
    matrix: Matrix | None, target: Path | str, *, sm: str | None = None, variant: str | None = None,
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
    if sm == "auto":
        if matrix is None:
            raise SelectionError("--sm auto needs a vllm-variants checkout (for nix/variants.toml)")
        from .which import auto_variants

        found = auto_variants(matrix, smi=smi)
        return tuple(dict.fromkeys(v.sm_number for v in found)), (found[0] if len(found) == 1 else None)
    if sm:
        sms = []
        for token in sm.split(","):
            normal = normalise_sm(token.strip())
            if normal is None:
                raise SelectionError(f"'{token}' is not an SM; give a number like 90, sm_90, 9.0, or 'auto'")
            sms.append(sm_number(normal))
        return tuple(dict.fromkeys(sms)), None
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


def requested_line(report: Report) -> str | None:
    """'SM 90: 7.0 KiB of 33.4 KiB of CUDA code (21%); 26.4 KiB for other architectures (...)'."""
    if not report.own_sms:
        return None
    total, own = report.total_bytes, report.own_bytes or 0
    share = f" ({100 * own / total:.0f}%)" if total else ""
    line = f"SM {', '.join(report.own_sms)}: {human(own)} of {human(total)} of {_code(report)}{share}"
    if report.foreign:
        line += f"; {human(total - own)} for other architectures ({', '.join(report.foreign)})"
    return line


def _code(report: Report) -> str:
    """'CUDA code', or which part of it the byte counts cover when some sizes are unknown."""
    if report.sizes_complete:
        return "CUDA code"
    unknown = sum(1 for lib in report.libraries if any(e.stored_bytes is None for e in lib.entries))
    return f"the CUDA code of known size (unknown in {unknown} of {len(report.libraries)} libraries)"


def render(report: Report, out: TextIO) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=out, highlight=False)
    if not console.is_terminal:
        console.width = 160
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
        size = None if None in sizes else sum(sizes)  # unknown where cuobjdump and the headers disagreed
        name = escape(library.path) + (f"\n[dim]{escape(library.note)}[/]" if library.note else "")
        table.add_row(name, _cell(archs, "sass"), _cell(archs, "ptx"), human(size))
    console.print(table)
    summary = Table()
    for column in ("Architecture", "SASS", "PTX", "Bytes", ""):
        summary.add_column(column, justify="right" if column in ("SASS", "PTX", "Bytes") else "left")
    foreign = "not this variant's SM" if report.variant else f"not SM {', '.join(report.own_sms)}"
    for arch, row in report.archs().items():
        mark = f"[bold red]{foreign}[/]" if row["foreign"] else ""
        summary.add_row(arch, str(row["sass"]), str(row["ptx"]), human(row["bytes"]), mark)
    console.print(summary)
    line = requested_line(report)
    console.print(line or f"{human(report.total_bytes)} of {_code(report)} in {len(report.libraries)} libraries")
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
) -> Report:
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
        if report.foreign:
            raise AuditError(
                f"{target} carries code for architectures other than SM {', '.join(report.own_sms)}: "
                + ", ".join(f"{arch} ({human(row['bytes'])})" for arch, row in report.archs().items() if row["foreign"])
            )
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
    parser.add_argument("--check", action="store_true", help="exit 1 when code for another SM is found")
    args = parser.parse_args(argv)

    def go() -> None:
        try:
            matrix: Matrix | None = Project.find().matrix
        except PreflightError:
            matrix = None  # outside a checkout: --sm still works
        show(args.target, matrix=matrix, sm=args.sm, variant=args.variant, as_json=args.json,
             reader=args.reader, cuobjdump=args.cuobjdump, check=args.check)

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())
