"""The audit's fatbin reader against cuobjdump, on a real H100 machine.

tests/fixtures/gpu/h100/audit-h100.json.gz was written there by
tests/fixtures/gpu/capture_audit.py: both readers on the test libraries and on
torch 2.11's own CUDA libraries. The earlier, independent cuobjdump capture
(capture.sh) of the same torch library must list the same cubins.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter

import support

H100 = support.REPO / "tests" / "fixtures" / "gpu" / "h100"
CAPTURE = json.loads(gzip.open(H100 / "audit-h100.json.gz").read())


def test_the_readers_agree_on_every_library_there():
    libraries = CAPTURE["libraries"]
    assert {"libone_sm90", "libmulti", "libptx_only", "libmixed", "libsm90a", "libplain",
            "torch-libtorch_cuda.so", "torch-libc10_cuda.so"} <= set(libraries)
    disagree = [name for name, lib in libraries.items() if not lib["listing"]["agree"]]
    assert disagree == []


def test_torch_cubins_match_the_independent_cuobjdump_capture():
    listed = gzip.open(H100 / "cuobjdump-elf-torch-libtorch_cuda.so.txt.gz").read().decode()
    archs = re.findall(r"^ELF file +\d+: libtorch_cuda\.\d+\.(sm_\w+)\.cubin$", listed, re.MULTILINE)
    ours = CAPTURE["libraries"]["torch-libtorch_cuda.so"]["listing"]["fatbin"]
    assert len(archs) == 2789
    assert ours["elf"] == archs and ours["ptx"] == []
    assert Counter(archs)["sm_90"] > 0


def test_a_fat_torch_spends_most_of_its_cuda_bytes_on_other_sms():
    folder = CAPTURE["torch_lib_folder_sm90"]
    assert folder["fatbin_line"] == folder["cuobjdump_line"]
    match = re.search(r"SM 90: .* \((\d+)%\)", folder["fatbin_line"])
    assert match and int(match.group(1)) < 50, folder["fatbin_line"]
