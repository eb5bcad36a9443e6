"""Read the CUDA device code in an ELF library without cuobjdump.

nvcc puts a library's device code in the `.nv_fatbin` section of the host
ELF file: one or more fatbin containers, one per translation unit (and one
more per library for the runtime's registration), each

    container header, 16 bytes:  u32 magic 0xBA55ED50, u16 version (1),
                                 u16 header size, u64 size of the entries
    entries, back to back:       u16 kind (1 PTX, 2 ELF cubin), u16 version,
                                 u32 header size (64, or more from SM 100 on),
                                 u64 payload size (padded to 8 bytes),
                                 u32 compressed size, u32 -, u16 minor, u16 major,
                                 u32 SM (90), u32 name offset, u32 name length,
                                 u64 flags, u64 -, u64 uncompressed size;
                                 then the payload (a cubin or PTX text).

Flags: 0x8000 zstd-compressed payload (0x2000 LZ4 before CUDA 12.x),
0x100000 an arch-specific target (sm_90a), 0x200000 a family target (sm_100f).
Containers are padded with zeros between them. Layout learned from cuobjdump's
behaviour as documented by public readers (LLVM's CUDA offloading code,
n-eiling/cuda-fatbin-decompression, nvopen-tools' format notes) and checked
byte for byte against nvcc 13.0 output and cuobjdump's listings of the same
libraries (tests/fixtures/gpu/h100, tests/test_fatbin.py).

ELF64 little-endian hosts only (every CUDA Linux target); 32-bit or
big-endian files are reported as unsupported, never misread.

Memory is bounded whatever a file claims (issue #12: a crafted 40 GB
.nv_fatbin): the reader never holds more than one window of WINDOW bytes of
the section, plus the section header table and the section name table, each
refused beyond TABLE_LIMIT. So at most 2 x 16 MiB + 1 MiB, whatever the
file's size. A file on disk is read with pread, not through a mapping: a
scan through a mapping leaves every page it touched in the process's
resident set, 40 GB of them for that crafted file.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast

from .errors import AuditError

ELF_MAGIC = b"\x7fELF"
FATBIN_MAGIC = 0xBA55ED50
_FATBIN_MAGIC_BYTES = struct.pack("<I", FATBIN_MAGIC)
FATBIN_SECTION = ".nv_fatbin"

KIND_PTX, KIND_ELF = 1, 2
EM_CUDA = 190  # e_machine of a cubin
FLAG_LEGACY_COMPRESSED = 0x1000
FLAG_LZ4 = 0x2000
FLAG_ZSTD = 0x8000
FLAG_ARCH_SPECIFIC = 0x100000  # sm_90a
FLAG_FAMILY = 0x200000  # sm_100f

_SECTION = struct.Struct("<IIQQQQIIQQ")
_CONTAINER = struct.Struct("<IHHQ")
_ENTRY = struct.Struct("<HHIQIIHHIIIQQQ")  # 64 bytes
SHT_NOBITS = 8
SHN_XINDEX = 0xFFFF

Buffer = bytes | bytearray | memoryview | mmap.mmap
WINDOW = 1 << 20  # bytes read at a time while scanning a section
TABLE_LIMIT = 16 << 20  # section header / name tables larger than this are refused (real ones are < 64 KiB)


class InvalidBinary(AuditError):
    """A file that claims to be an ELF library (or holds a fatbin) but does not parse."""


class Unsupported(AuditError):
    """An ELF file this reader does not handle (32-bit, big-endian)."""


@dataclass(frozen=True)
class CodeEntry:
    """One piece of device code: a cubin (SASS) or PTX for one architecture."""

    kind: str  # "sass" (an ELF cubin), "ptx", or "other"
    arch: str  # cuobjdump's spelling: "sm_90", "sm_90a", "sm_100f"
    stored_bytes: int | None = None  # entry header + payload, as held in the file
    payload_bytes: int | None = None
    uncompressed_bytes: int | None = None
    compression: str | None = None  # "zstd", "lz4", "legacy" or None
    offset: int | None = None  # of the payload, in the file
    container: int | None = None

    @property
    def sm(self) -> str:
        """The SM number without suffix: 'sm_90a' -> '90'."""
        match = re.match(r"sm_(\d+)", self.arch)
        return match.group(1) if match else self.arch

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "arch": self.arch,
            "bytes": self.stored_bytes,
            "uncompressed_bytes": self.uncompressed_bytes,
            "compression": self.compression,
        }


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int


@dataclass(frozen=True)
class DeviceCode:
    """What one library's .nv_fatbin holds."""

    entries: tuple[CodeEntry, ...]
    section_bytes: int
    containers: int
    unread_bytes: int  # bytes between containers that were neither padding nor a container


def arch_name(sm: int, flags: int) -> str:
    suffix = "a" if flags & FLAG_ARCH_SPECIFIC else "f" if flags & FLAG_FAMILY else ""
    return f"sm_{sm}{suffix}"


def _compression(flags: int) -> str | None:
    if flags & FLAG_ZSTD:
        return "zstd"
    if flags & FLAG_LZ4:
        return "lz4"
    if flags & FLAG_LEGACY_COMPRESSED:
        return "legacy"
    return None


class Source(Protocol):
    """Random access to a file's bytes, one bounded read at a time."""

    size: int

    def read(self, offset: int, n: int) -> bytes:
        """Exactly n bytes at offset (the callers keep n bounded and inside size)."""
        ...


class BufferSource:
    """A file's bytes already in memory or mapped (tests, small files)."""

    def __init__(self, data: Buffer) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, n: int) -> bytes:
        return bytes(self.data[offset : offset + n])


class FileSource:
    """size bytes of an open file from base on: a library on disk, or a stored (uncompressed) wheel member."""

    def __init__(self, handle: IO[bytes], size: int, base: int = 0) -> None:
        self.fd, self.size, self.base = handle.fileno(), size, base

    def read(self, offset: int, n: int) -> bytes:
        chunks, at, left = [], self.base + offset, n
        while left > 0:
            chunk = os.pread(self.fd, left, at)
            if not chunk:
                raise InvalidBinary(
                    f"it ends at byte {at - self.base} although {offset + n} were expected (truncated?)"
                )
            chunks.append(chunk)
            at, left = at + len(chunk), left - len(chunk)
        return b"".join(chunks)


class StreamSource:
    """A compressed wheel member, read without extracting it: its head and tail are kept, the rest streamed.

    Reading the whole stream once on construction checks its CRC (zipfile
    raises BadZipFile at the end of a corrupted member) and keeps the last
    `tail` bytes, where the ELF section headers and names are. A read before
    the tail seeks the stream: forward seeks decompress and discard, so a
    sequential walk of the fatbin costs a second, partial pass and no disk.
    """

    def __init__(self, stream: IO[bytes], size: int, tail: int = 4 << 20) -> None:
        self.stream, self.size = stream, size
        self.tail_start = max(0, size - tail)
        self.head = stream.read(min(size, 64)) if self.tail_start else b""
        at = len(self.head)
        while at < self.tail_start:
            chunk = stream.read(min(self.tail_start - at, WINDOW))
            if not chunk:
                break
            at += len(chunk)
        self.tail = stream.read()
        if at + len(self.tail) < size:
            raise InvalidBinary(f"it ends after {at + len(self.tail)} of its {size} bytes (truncated wheel?)")

    def read(self, offset: int, n: int) -> bytes:
        if offset + n <= len(self.head):
            return self.head[offset : offset + n]
        if offset >= self.tail_start:
            return self.tail[offset - self.tail_start : offset - self.tail_start + n]
        # Forward by reading WINDOW at a time: zipfile's own seek reads 16 MiB
        # chunks; backward means decompressing again from the start.
        at = self.stream.tell()
        if offset < at:
            self.stream.seek(0)
            at = 0
        while at < offset:
            skipped = len(self.stream.read(min(offset - at, WINDOW)))
            if not skipped:
                break
            at += skipped
        data = self.stream.read(n)
        if len(data) < n:
            raise InvalidBinary(f"it ends before byte {offset + n} (truncated?)")
        return data


def _source(data: Buffer | Source) -> Source:
    # duck-typed as before: anything with read() and size is a Source
    if hasattr(data, "read") and hasattr(data, "size"):
        return cast(Source, data)
    return BufferSource(data)


def _table(source: Source, offset: int, size: int, what: str) -> bytes:
    if size > TABLE_LIMIT:
        raise InvalidBinary(f"its {what} claims {size} bytes, more than the {TABLE_LIMIT >> 20} MiB this reader reads")
    if offset + size > source.size:
        raise InvalidBinary(f"its {what} lies past the end of the file (truncated?)")
    return source.read(offset, size)


def elf_sections(data: Buffer | Source) -> dict[str, Section]:
    """Section headers of an ELF64 little-endian file, by name (first of a name wins)."""
    source = _source(data)
    size = source.size
    header = source.read(0, 64) if size >= 64 else b""
    if len(header) < 64 or header[:4] != ELF_MAGIC:
        raise InvalidBinary("not an ELF file (too short or no ELF magic)")
    if header[4] != 2:
        raise Unsupported("a 32-bit ELF file (CUDA libraries are 64-bit)")
    if header[5] != 1:
        raise Unsupported("a big-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", header, 0x28)  # e_shoff
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", header, 0x3A)
    if shoff == 0:
        return {}  # no section headers: nothing to find
    if shentsize < _SECTION.size or shoff + _SECTION.size > size:
        raise InvalidBinary("its section header table lies past the end of the file (truncated?)")
    first = _SECTION.unpack(source.read(shoff, _SECTION.size))
    if shnum == 0:  # more than 0xff00 sections: the count is in section 0 (ELF gABI)
        shnum = first[5]
    if shstrndx == SHN_XINDEX:
        shstrndx = first[6]
    if shoff + shnum * shentsize > size:
        raise InvalidBinary(f"its {shnum} section headers run past the end of the file (truncated?)")
    table = _table(source, shoff, shnum * shentsize, "section header table")
    raw = [_SECTION.unpack_from(table, i * shentsize) for i in range(shnum)]
    if not 0 <= shstrndx < shnum:
        raise InvalidBinary(f"its section name table index {shstrndx} is out of range")
    names_offset, names_size = raw[shstrndx][4], raw[shstrndx][5]
    names = _table(source, names_offset, names_size, "section name table")
    sections: dict[str, Section] = {}
    for name_index, sh_type, _flags, _addr, offset, sh_size, *_ in raw:
        if name_index >= names_size:
            raise InvalidBinary(f"a section name offset ({name_index}) lies outside the name table")
        end = names.find(b"\0", name_index)
        name = names[name_index : end if end >= 0 else names_size].decode("utf-8", "replace")
        sections.setdefault(name, Section(name, sh_type, offset, sh_size))
    return sections


def _skip_to_container(source: Source, pos: int, end: int) -> tuple[int, bool]:
    """(offset of the next container magic at or after pos, or end; whether anything but zeros lies before it).

    One WINDOW at a time, so a section claiming 40 GB costs time, not memory.
    """
    overlap = len(_FATBIN_MAGIC_BYTES) - 1
    data_seen = False
    at = pos
    while at < end:
        stop = min(end, at + WINDOW)
        window = source.read(at, stop - at + min(overlap, end - stop))
        first = 1 if at == pos else 0
        # One byte first: memchr, some 10x faster than the four-byte search over zeros.
        found = window.find(_FATBIN_MAGIC_BYTES, first) if window.find(_FATBIN_MAGIC_BYTES[:1], first) >= 0 else -1
        if 0 <= found:
            return at + found, data_seen or bool(window[:found].strip(b"\0"))
        data_seen = data_seen or bool(window[: stop - at].strip(b"\0"))
        at = stop
    return end, data_seen


def read_fatbin(data: Buffer | Source, start: int, size: int) -> DeviceCode:
    """Every entry of the fatbin containers in data[start:start+size], read in place."""
    source = _source(data)
    end = start + size
    if end > source.size:
        raise InvalidBinary(
            f"its {FATBIN_SECTION} section claims {size} bytes at offset {start}, past the end of the "
            f"{source.size}-byte file (truncated?)"
        )
    entries: list[CodeEntry] = []
    unread = 0
    containers = 0
    pos = start
    while pos < end:
        head = source.read(pos, _CONTAINER.size) if end - pos >= _CONTAINER.size else b""
        if not head or _CONTAINER.unpack(head)[0] != FATBIN_MAGIC:
            # Zeros between containers are alignment padding. Anything else is
            # not understood: count it and resume at the next container.
            stop, data_seen = _skip_to_container(source, pos, end)
            if data_seen:
                unread += stop - pos
            pos = stop
            continue
        _magic, version, header_size, fat_size = _CONTAINER.unpack(head)
        where = f"the fatbin container at offset {pos - start:#x} of {FATBIN_SECTION}"
        if version != 1 or header_size < _CONTAINER.size:
            raise InvalidBinary(f"{where} has version {version} and header size {header_size} (expected 1 and >= 16)")
        container_end = pos + header_size + fat_size
        if container_end > end:
            raise InvalidBinary(f"{where} claims {fat_size} bytes, past the end of the section")
        at = pos + header_size
        while at < container_end:
            if container_end - at < _ENTRY.size:
                raise InvalidBinary(f"{where} ends inside an entry header")
            (
                kind,
                _version,
                entry_header,
                payload,
                compressed,
                _unknown,
                _minor,
                _major,
                sm,
                _name_offset,
                _name_size,
                flags,
                _zero,
                uncompressed,
            ) = _ENTRY.unpack(source.read(at, _ENTRY.size))
            if entry_header < _ENTRY.size or at + entry_header + payload > container_end:
                raise InvalidBinary(
                    f"{where} has an entry at {at - start:#x} of {entry_header}+{payload} bytes "
                    "that does not fit in the container"
                )
            compression = _compression(flags)
            entries.append(
                CodeEntry(
                    kind={KIND_ELF: "sass", KIND_PTX: "ptx"}.get(kind, "other"),
                    arch=arch_name(sm, flags),
                    stored_bytes=entry_header + payload,
                    payload_bytes=payload,
                    uncompressed_bytes=(uncompressed or None) if compression else payload,
                    compression=compression,
                    offset=at + entry_header,
                    container=containers,
                )
            )
            at += entry_header + payload
        containers += 1
        pos = container_end
    return DeviceCode(tuple(entries), size, containers, unread)


def read_device_code(data: Buffer | Source) -> DeviceCode | None:
    """The device code of an ELF file; None when it has no .nv_fatbin section."""
    source = _source(data)
    section = elf_sections(source).get(FATBIN_SECTION)
    if section is None or section.type == SHT_NOBITS:
        return None
    return read_fatbin(source, section.offset, section.size)


@contextmanager
def mapped(path: Path | str) -> Iterator[Buffer]:
    """The file's bytes, memory-mapped (libtorch_cuda.so is ~450 MB)."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            yield view


def read_path(path: Path | str) -> DeviceCode | None:
    """read_device_code() of a file on disk, read with pread (bounded memory; see the module's docstring)."""
    with open(path, "rb") as handle:
        return read_device_code(FileSource(handle, os.fstat(handle.fileno()).st_size))
