"""Today's audit code on what real GPU machines saw: an H100's cuobjdump listings, an H200's fatbin headers.

tests/fixtures/gpu/h100 holds cuobjdump 13.0's listings from an H100 machine
(capture.sh, capture_audit.py): of the libraries tests/cuda_libs.py compiles,
and of torch 2.11.0+cu130's libtorch_cuda.so. tests/fixtures/gpu/h200 holds
what an H200 machine's fatbin reader found in torch's and the nvidia wheels'
CUDA libraries, entry by entry, and whether cuobjdump 13.0 listed the same
(capture_h200.sh). Each test below runs today's parser, reconciler or
figures on those captures, so each fails when that code breaks; the one
test that only reads a capture says so in its name.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter

import gpu_replay
import pytest
import support
from cuda_libs import CUDA_LIBS, PLAIN

from vllm_variants.audit import AuditReport as Report
from vllm_variants.audit import Library, parse_cuobjdump, reconcile
from vllm_variants.fatbin import CodeEntry as Entry
from vllm_variants.fatbin import read_path

GPU = support.REPO / "tests" / "fixtures" / "gpu"
H100_AUDIT = json.loads(gzip.open(GPU / "h100" / "audit-h100.json.gz").read())
H200 = json.loads(gzip.open(GPU / "h200" / "readers-h200.json.gz").read())


def h200_library(name: str) -> Library:
    """One library as the H200's fatbin reader listed it (kind, arch, stored bytes, container)."""
    record = next(r for r in H200["libs"] if r["p"].endswith("/" + name))
    entries = [Entry(kind, arch, stored_bytes=size, container=container) for kind, arch, size, container in record["e"]]
    return Library(name, record["size"], sum(e.stored_bytes for e in entries), entries, "fatbin")


def h100_listing(name: str) -> tuple[list[str], list[str]]:
    return (
        parse_cuobjdump(gpu_replay.capture(f"cuobjdump-elf-{name}.txt").output.decode()),
        parse_cuobjdump(gpu_replay.capture(f"cuobjdump-ptx-{name}.txt").output.decode()),
    )


@pytest.mark.parametrize("name", [*CUDA_LIBS, PLAIN])
def test_todays_reader_agrees_with_the_h100s_cuobjdump_on_the_same_builds(cuda_libs, name):
    code = read_path(cuda_libs[name])
    entries = code.entries if code else ()
    sass, ptx = h100_listing(name)
    assert reconcile(entries, sass, ptx) == (list(entries), None)
    assert (len(entries) == 0) == (name == PLAIN)


def test_the_h200s_torch_headers_match_the_h100s_cuobjdump_listing():
    """Two machines, two readers, one torch build: libtorch_cuda.so's 2789 cubins in the same order."""
    listed = gzip.open(GPU / "h100" / "cuobjdump-elf-torch-libtorch_cuda.so.txt.gz").read().decode()
    sass = parse_cuobjdump(listed)
    assert len(sass) == 2789 and sass == re.findall(r"\.(sm_\w+)\.cubin$", listed, re.MULTILINE)
    library = h200_library("libtorch_cuda.so")
    assert reconcile(library.entries, sass, []) == (library.entries, None)
    # the H100's stored audit of the same file: the same sizes, entry for entry
    h100 = H100_AUDIT["libraries"]["torch-libtorch_cuda.so"]["audit_sm90"]["fatbin"]["libraries"][0]["entries"]
    assert [e["bytes"] for e in h100] == [e.stored_bytes for e in library.entries]


def test_reconcile_catches_an_h100_listing_with_one_cubin_missing():
    library = h200_library("libtorch_cuda.so")
    sass = [e.arch for e in library.entries if e.kind == "sass"]
    _, disagreement = reconcile(library.entries, sass[:-1], [])
    assert disagreement == "cuobjdump lists 2788 cubins and 0 PTX, the fatbin headers 2789 and 0"


def test_a_fat_torch_spends_most_of_its_cuda_bytes_on_other_sms():
    libs = [h200_library(n) for n in ("libtorch_cuda.so", "libtorch_cuda_linalg.so", "libtorch_nvshmem.so")]
    report = Report("torch/lib", "torch/lib", "fatbin", own_sms=("90",), libraries=libs)
    h100 = report.figures("90")
    sm90 = sum(e.stored_bytes for lib in libs for e in lib.entries if e.arch in ("sm_90", "sm_90a"))
    assert h100.exact == h100.runs == sm90 and h100.jit_ptx == 0
    assert 0 < h100.runs < 0.25 * h100.total
    # an RTX 3090 (8.6) runs the sm_80 and sm_86 cubins; a B300 (10.3) only the sm_100 ones (sm_100a is 10.0's)
    by_arch = Counter()
    for lib in libs:
        for e in lib.entries:
            by_arch[e.arch] += e.stored_bytes
    assert report.figures("86").runs == by_arch["sm_80"] + by_arch["sm_86"]
    assert report.figures("86").exact == by_arch["sm_86"]
    assert report.figures("103").runs == by_arch["sm_100"] + by_arch["sm_103a"]


def test_family_cubins_of_cudnn_run_across_their_family():
    """cuDNN 9 ships sm_100f and sm_120f cubins: a B300 (10.3) and a DGX Spark (12.1) run them."""
    library = h200_library("libcudnn_engines_precompiled.so.9")
    report = Report("cudnn", "cudnn", "fatbin", libraries=[library])
    sizes = Counter()
    for e in library.entries:
        sizes[e.kind, e.arch] += e.stored_bytes
    assert sizes["sass", "sm_100f"] > 0 and sizes["sass", "sm_120f"] > 0
    assert report.figures("103").exact == sizes["sass", "sm_103"] > 0
    assert report.figures("121").jit_ptx == sizes["ptx", "sm_121"] > 0 and report.figures("120").jit_ptx == 0
    assert report.figures("103").runs == sum(
        v for (kind, arch), v in sizes.items() if kind == "sass" and arch.startswith("sm_10") and arch != "sm_100a"
    )
    assert report.figures("121").runs == sum(
        v for (kind, arch), v in sizes.items() if kind == "sass" and arch.startswith("sm_12") and arch != "sm_120a"
    )


def test_the_h200_capture_says_both_readers_agreed_on_all_20_libraries():
    """A capture check only: the H200 run's verdicts (cuobjdump 13.0 against the fatbin headers, family-blind)."""
    assert H200["torch"] == "2.11.0+cu130" and H200["left"] == []
    assert len(H200["libs"]) == 20 and all(r.get("agree") is True for r in H200["libs"])
    families = {e[1] for r in H200["libs"] for e in r["e"] if e[1].endswith("f")}
    assert families == {"sm_100f", "sm_120f"}


def test_cuobjdump_13_0_spells_family_targets_as_13_5_does():
    """The H200's cuobjdump 13.0 and the 13.5 listing the family test replays: the same lines."""
    h200 = (GPU / "h200" / "cuobjdump-13.0-libfamily.txt").read_text().splitlines()
    listed = [line for line in h200 if line.startswith(("ELF file", "PTX file"))]
    local = [
        gpu_replay.capture(f"cuobjdump-{kind}-libfamily.txt", gpu_replay.CUOBJDUMP_13_5).output.decode()
        for kind in ("elf", "ptx")
    ]
    assert listed == "".join(local).splitlines()
    assert parse_cuobjdump("\n".join(listed)) == ["sm_100", "sm_120", "sm_100", "sm_120", "sm_120f"]
