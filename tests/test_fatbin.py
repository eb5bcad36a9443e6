"""The fatbin reader against nvcc's real output and cuobjdump's real listings.

The libraries are compiled here with nvcc (tests/cuda_libs.py); the listings
are cuobjdump's, captured on an H100 for libraries built by the same
commands (tests/fixtures/gpu/h100). The reader must list what cuobjdump
lists, in the same order, and its sizes must account for every byte of the
.nv_fatbin section that binutils' readelf reports.
"""

from __future__ import annotations

import collections
import shutil
import struct
import subprocess

import gpu_replay
import pytest
from cuda_libs import CUDA_LIBS

from vllm_variants.audit import parse_cuobjdump
from vllm_variants.errors import AuditError
from vllm_variants.fatbin import (
    EM_CUDA,
    InvalidBinary,
    Unsupported,
    elf_sections,
    read_device_code,
    read_path,
)

EXPECTED = {  # (cubin archs, PTX archs) as cuobjdump lists them on the H100
    "libone_sm90": (["sm_90", "sm_90"], []),
    "libmulti": (["sm_80", "sm_90", "sm_100", "sm_120"] * 2, []),
    "libptx_only": ([], ["sm_90"]),
    "libmixed": (["sm_80", "sm_80"], ["sm_90"]),
    "libsm90a": (["sm_90a", "sm_90a"], []),
    "libplain": ([], []),
}


def listed(name: str) -> tuple[list[str], list[str]]:
    return (
        parse_cuobjdump(gpu_replay.capture(f"cuobjdump-elf-{name}.txt").output.decode()),
        parse_cuobjdump(gpu_replay.capture(f"cuobjdump-ptx-{name}.txt").output.decode()),
    )


@pytest.mark.parametrize("name", EXPECTED)
def test_captured_cuobjdump_listings_parse(name):
    assert listed(name) == EXPECTED[name]


def test_every_compiled_library_has_a_captured_listing():
    assert set(EXPECTED) == {*CUDA_LIBS, "libplain"}


@pytest.mark.parametrize("name", EXPECTED)
def test_reader_lists_what_cuobjdump_lists(cuda_libs, name):
    code = read_path(cuda_libs[name])
    entries = code.entries if code else ()
    ours = ([e.arch for e in entries if e.kind == "sass"], [e.arch for e in entries if e.kind == "ptx"])
    assert ours == listed(name)
    assert (code is None) == (name == "libplain")


def readelf_fatbin_size(path) -> int:
    if not shutil.which("readelf"):
        raise AssertionError("binutils' readelf is needed to check the section sizes (apt install binutils)")
    out = subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.replace("[ ", "[").split()
        if ".nv_fatbin" in fields:
            at = fields.index(".nv_fatbin")
            return int(fields[at + 4], 16)  # Name Type Address Off Size
    raise AssertionError(f"readelf shows no .nv_fatbin in {path}")


@pytest.mark.parametrize("name", CUDA_LIBS)
def test_sizes_account_for_the_whole_section(cuda_libs, name):
    code = read_path(cuda_libs[name])
    assert code.section_bytes == readelf_fatbin_size(cuda_libs[name])
    assert code.unread_bytes == 0
    assert sum(e.stored_bytes for e in code.entries) + 16 * code.containers == code.section_bytes


@pytest.mark.parametrize("name", ["libone_sm90", "libmulti", "libmixed", "libsm90a"])
def test_each_cubin_is_an_elf_for_the_sm_its_header_names(cuda_libs, name):
    """The SM comes from the fatbin entry header; the cubin's own ELF header must agree.

    Uncompressed cubins (nvcc 13's default) are ELF files for EM_CUDA whose
    e_flags carry the SM in bits 8..15 (ELF ABI version 8).
    """
    data = cuda_libs[name].read_bytes()
    for entry in read_device_code(data).entries:
        payload = data[entry.offset : entry.offset + entry.payload_bytes]
        if entry.kind == "ptx":
            assert entry.compression == "zstd" and payload[:4] == b"\x28\xb5\x2f\xfd"  # zstd frame magic
            assert entry.uncompressed_bytes > entry.payload_bytes
            continue
        assert entry.compression is None and payload[:4] == b"\x7fELF"
        (machine,) = struct.unpack_from("<H", payload, 18)
        (flags,) = struct.unpack_from("<I", payload, 48)
        assert (machine, payload[8], (flags >> 8) & 0xFF) == (EM_CUDA, 8, int(entry.sm))


def test_torch_listing_parses_2789_cubins_and_no_ptx():
    """libtorch_cuda.so of torch 2.11+cu130 as cuobjdump lists it (the reader's check on it runs on the GPU machine)."""
    cubins = parse_cuobjdump(gpu_replay.capture("cuobjdump-elf-torch-libtorch_cuda.so.txt.gz").output.decode())
    assert len(cubins) == 2789
    assert collections.Counter(cubins) == {
        "sm_75": 444,
        "sm_80": 444,
        "sm_86": 444,
        "sm_89": 1,
        "sm_90": 444,
        "sm_90a": 4,
        "sm_100": 444,
        "sm_100a": 59,
        "sm_103a": 59,
        "sm_120": 444,
        "sm_120a": 1,
        "sm_121a": 1,
    }
    assert parse_cuobjdump(gpu_replay.capture("cuobjdump-ptx-torch-libtorch_cuda.so.txt.gz").output.decode()) == []
    assert parse_cuobjdump(gpu_replay.capture("cuobjdump-elf-torch-libc10_cuda.so.txt.gz").output.decode()) == []


def test_cuobjdump_output_it_cannot_read_is_an_error():
    with pytest.raises(AuditError, match="cannot read cuobjdump output line 'Segmentation fault'"):
        parse_cuobjdump("ELF file    1: x.1.sm_80.cubin\nSegmentation fault\n")


# -- damaged input: one clear line, never a misreading ---------------------------


def test_not_elf_and_truncated_elf(cuda_libs):
    with pytest.raises(InvalidBinary, match="not an ELF file"):
        elf_sections(b"#!/bin/sh\n" + b"\0" * 100)
    data = cuda_libs["libmulti"].read_bytes()
    with pytest.raises(InvalidBinary, match="section header.* past the end of the file \\(truncated\\?\\)"):
        read_device_code(data[: len(data) // 2])


def test_32_bit_and_big_endian_are_unsupported(cuda_libs):
    data = bytearray(cuda_libs["libplain"].read_bytes())
    data[4] = 1
    with pytest.raises(Unsupported, match="32-bit"):
        elf_sections(data)
    data[4], data[5] = 2, 2
    with pytest.raises(Unsupported, match="big-endian"):
        elf_sections(data)


def fatbin_offset(data: bytes) -> int:
    return elf_sections(data)[".nv_fatbin"].offset


def test_a_container_claiming_too_much_is_invalid(cuda_libs):
    data = bytearray(cuda_libs["libone_sm90"].read_bytes())
    start = fatbin_offset(data)
    struct.pack_into("<Q", data, start + 8, 10**9)  # the first container's size
    with pytest.raises(InvalidBinary, match="container at offset 0x0 of .nv_fatbin claims 1000000000 bytes"):
        read_device_code(data)


def test_an_entry_overrunning_its_container_is_invalid(cuda_libs):
    data = bytearray(cuda_libs["libone_sm90"].read_bytes())
    start = fatbin_offset(data)
    struct.pack_into("<Q", data, start + 16 + 8, 10**6)  # the first entry's payload size
    with pytest.raises(InvalidBinary, match="entry at 0x10 of 64\\+1000000 bytes that does not fit"):
        read_device_code(data)


def test_bytes_between_containers_are_counted_not_guessed(cuda_libs):
    """Garbage where a container should start: skipped to the next container and reported."""
    data = bytearray(cuda_libs["libone_sm90"].read_bytes())
    start = fatbin_offset(data)
    first_size = 16 + struct.unpack_from("<Q", data, start + 8)[0]
    data[start : start + first_size] = b"\xee" * first_size
    code = read_device_code(data)
    assert code.unread_bytes == first_size
    assert [e.arch for e in code.entries] == ["sm_90"] and code.containers == 1
