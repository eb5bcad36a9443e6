"""`invoke audit` on real nvcc output: libraries, directories, wheels, a Nix result.

Libraries come from tests/cuda_libs.py (compiled during the run); the
cuobjdump path replays the listings captured on an H100 for the same
libraries (tests/gpu_replay.py), since CI has no cuobjdump.
"""

from __future__ import annotations

import collections
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import gpu_replay
import pytest
import support
from cuda_libs import CUDA_LIBS

from vllm_variants.audit import audit, own_sms_for, render, require_cuda, show, variant_in_path
from vllm_variants.errors import AuditError, NoCudaCode, PreflightError, SelectionError, ToolMissing
from vllm_variants.fatbin import InvalidBinary, read_path
from vllm_variants.matrix import Matrix

MATRIX = Matrix.load(support.REPO / "nix" / "variants.toml")
SM90 = MATRIX.by_name("vllm-python312-cuda12_9-sm90")
SM80 = MATRIX.by_name("vllm-python312-cuda12_9-sm80")


def summary(report) -> dict[str, tuple[int, int, bool]]:
    return {arch: (row["sass"], row["ptx"], row["foreign"]) for arch, row in report.archs().items()}


@pytest.mark.parametrize(
    "name, archs",
    [
        ("libone_sm90", {"sm_90": (2, 0, False)}),
        ("libmulti", {"sm_80": (2, 0, True), "sm_90": (2, 0, False), "sm_100": (2, 0, True), "sm_120": (2, 0, True)}),
        ("libptx_only", {"sm_90": (0, 1, False)}),
        ("libmixed", {"sm_80": (2, 0, True), "sm_90": (0, 1, False)}),
        ("libsm90a", {"sm_90a": (2, 0, False)}),  # arch-specific Hopper code is SM 90's own
    ],
)
def test_each_library_for_the_sm90_variant(cuda_libs, name, archs):
    report = audit(cuda_libs[name], variant=SM90, reader="fatbin")
    assert [lib.path for lib in report.libraries] == [str(cuda_libs[name])]
    assert summary(report) == archs
    assert report.foreign == [a for a, (_, _, foreign) in archs.items() if foreign]
    code = read_path(cuda_libs[name])
    assert report.total_bytes == sum(e.stored_bytes for e in code.entries)
    assert report.own_bytes == sum(e.stored_bytes for e in code.entries if e.sm == "90")
    assert report.libraries[0].fatbin_bytes == code.section_bytes
    assert report.libraries[0].file_bytes == cuda_libs[name].stat().st_size


def test_an_arch_specific_variant_owns_its_sm(cuda_libs):
    variant = support.sm90a_matrix().by_name("vllm-python312-cuda12_9-sm90a")
    assert summary(audit(cuda_libs["libsm90a"], variant=variant, reader="fatbin")) == {"sm_90a": (2, 0, False)}
    assert audit(cuda_libs["libmulti"], variant=variant, reader="fatbin").foreign == ["sm_80", "sm_100", "sm_120"]


def test_foreign_is_relative_to_the_variant(cuda_libs):
    report = audit(cuda_libs["libmixed"], variant=SM80, reader="fatbin")
    assert report.foreign == ["sm_90"]  # the compute_90 PTX
    ptx = next(e for e in report.entries() if e.kind == "ptx")
    assert report.own_bytes == report.total_bytes - ptx.stored_bytes
    assert audit(cuda_libs["libmixed"], reader="fatbin").foreign == []  # no variant: nothing to flag


def test_requested_sm_bytes_against_the_total(cuda_libs):
    out = io.StringIO()
    report = show(str(cuda_libs["libmulti"]), sm="sm_90", reader="fatbin", out=out)
    own, total = report.own_bytes, report.total_bytes
    assert 0 < own < total
    from vllm_variants.audit import human

    sm90 = sum(e.stored_bytes for e in report.entries() if e.arch == "sm_90")
    assert own == sm90
    assert (
        f"SM 90: runs {human(sm90)} of {human(total)} of CUDA code ({100 * sm90 / total:.1f} %); "
        f"built for exactly SM 90: {human(sm90)}; JIT-able PTX: 0 B"
    ) in out.getvalue()
    assert (
        f"not used by SM 90: {human(total - own)} ({100 * (total - own) / total:.1f} %; sm_80, sm_100, sm_120)"
        in out.getvalue()
    )


def test_check_fails_on_code_the_gpu_never_uses(cuda_libs):
    with pytest.raises(AuditError, match="carries code SM 90 never uses: sm_80 SASS \\(.*\\), sm_100 SASS \\("):
        show(str(cuda_libs["libmulti"]), variant="90", reader="fatbin", check=True, matrix=MATRIX, out=io.StringIO())
    show(str(cuda_libs["libsm90a"]), variant="90", reader="fatbin", check=True, matrix=MATRIX, out=io.StringIO())
    # compute_90 PTX is JIT-compiled on 9.0 (its container has no SASS that runs there): used
    show(str(cuda_libs["libmixed"]), sm="90", reader="fatbin", check=False, out=io.StringIO())
    with pytest.raises(SelectionError, match="--check needs the variant's SM"):
        show(str(cuda_libs["libsm90a"]), reader="fatbin", check=True, out=io.StringIO())


def test_directory_walk_follows_links_once_and_skips_non_libraries(cuda_libs, tmp_path):
    tree = tmp_path / "tree"
    (tree / "lib" / "deep").mkdir(parents=True)
    for name in ("libone_sm90", "libmulti", "libplain"):
        shutil.copy(cuda_libs[name], tree / "lib" / f"{name}.so")
    os.symlink(tree / "lib" / "libmulti.so", tree / "lib" / "deep" / "libmulti-again.so")  # same file
    os.symlink(cuda_libs["libmixed"], tree / "lib" / "deep" / "libmixed.so")  # a link out of the tree
    os.symlink(tree / "lib", tree / "lib" / "deep" / "loop")  # a cycle
    (tree / "notes.txt").write_text("no code")
    (tree / "lib" / "broken.so").write_bytes(b"\x7fELF" + b"\0" * 10)
    report = audit(tree, variant=SM90, reader="fatbin")
    assert [lib.path for lib in report.libraries] == ["lib/libmulti.so", "lib/libone_sm90.so", "lib/deep/libmixed.so"]
    assert report.examined == 5  # four real libraries and the broken one
    assert report.skipped == [("lib/broken.so", "not an ELF file (too short or no ELF magic)")]
    assert report.foreign == ["sm_80", "sm_100", "sm_120"]


def make_wheel(path: Path, members: dict[str, Path]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr("fatpkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: false\n")
        wheel.writestr("fatpkg/__init__.py", "")
        for name, source in members.items():
            wheel.write(source, name)
    return path


def test_wheel_members_are_audited(cuda_libs, tmp_path):
    wheel = make_wheel(
        tmp_path / "fatpkg-1.0-cp312-cp312-linux_x86_64.whl",
        {"fatpkg/_C.so": cuda_libs["libmulti"], "fatpkg.libs/libplain.so": cuda_libs["libplain"]},
    )
    report = audit(wheel, own_sms=["120"], reader="fatbin")
    assert [lib.path for lib in report.libraries] == ["fatpkg/_C.so"]
    assert report.examined == 2
    assert report.foreign == ["sm_80", "sm_90", "sm_100"]
    assert report.total_bytes == audit(cuda_libs["libmulti"], reader="fatbin").total_bytes
    # A wheelhouse: the wheel inside a directory is opened too.
    report = audit(tmp_path, reader="fatbin")
    assert [lib.path for lib in report.libraries] == ["fatpkg-1.0-cp312-cp312-linux_x86_64.whl!fatpkg/_C.so"]


def test_broken_wheel_is_one_line(tmp_path):
    bad = tmp_path / "bad-1.0-py3-none-any.whl"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(AuditError, match=f"^cannot open the wheel {bad}: not a valid zip file$"):
        audit(bad, reader="fatbin")


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def linked(path: Path, to: Path) -> Path:
    path.symlink_to(to)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.so", "{p}/missing.so: no such file or directory (ENOENT)"),
        (
            lambda p: linked(p / "dangling.so", p / "gone"),
            "{p}/dangling.so is a dangling link (to {p}/gone): build it again",
        ),
        (
            lambda p: written(p / "notes.txt", b"x"),
            "{p}/notes.txt is neither an ELF library (.so) nor a wheel (.whl), nor a directory",
        ),
        (
            lambda p: written(p / "short.so", b"\x7fELF\x02\x01"),
            "{p}/short.so is not a valid ELF library: not an ELF file (too short or no ELF magic)",
        ),
    ],
)
def test_bad_targets_are_one_line(tmp_path, make, message):
    with pytest.raises(AuditError) as exc:
        audit(make(tmp_path), reader="fatbin")
    assert str(exc.value) == message.format(p=tmp_path)


def test_unreadable_file_is_one_line_alone_and_skipped_in_a_walk(tmp_path):
    """/proc/self/mem fails every read from offset 0 with EIO, even for root (tests may run as root)."""
    with pytest.raises(AuditError, match="^cannot read /proc/self/mem: Input/output error$"):
        audit("/proc/self/mem", reader="fatbin")
    (tmp_path / "mem.so").symlink_to("/proc/self/mem")
    report = audit(tmp_path, reader="fatbin")
    assert report.skipped == [("mem.so", "cannot read it: Input/output error")] and report.libraries == []


def test_no_cuda_code_names_what_could_not_be_read(tmp_path):
    """A folder whose only library is unreadable says so, not merely "no CUDA code"."""
    (tmp_path / "mem.so").symlink_to("/proc/self/mem")
    with pytest.raises(NoCudaCode) as exc:
        require_cuda(audit(tmp_path, reader="fatbin"))
    assert str(exc.value) == (
        f"no CUDA device code in {tmp_path}: 0 ELF file(s) examined, none with a .nv_fatbin "
        "section; 1 could not be read (first: mem.so: cannot read it: Input/output error)"
    )


def test_no_cuda_code_is_one_line(cuda_libs, tmp_path):
    with pytest.raises(
        NoCudaCode, match=f"^{cuda_libs['libplain']} holds no CUDA device code \\(no .nv_fatbin section\\)$"
    ):
        require_cuda(audit(cuda_libs["libplain"], reader="fatbin"))
    (tmp_path / "d").mkdir()
    shutil.copy(cuda_libs["libplain"], tmp_path / "d")
    with pytest.raises(NoCudaCode, match="^no CUDA device code in .*/d: 1 ELF file\\(s\\) examined, none with"):
        require_cuda(audit(tmp_path / "d", reader="fatbin"))


# -- cuobjdump as the reader (replayed) ---------------------------------------------


def test_cuobjdump_reader_agrees_and_keeps_the_sizes(cuda_libs, tmp_path, monkeypatch):
    tool = gpu_replay.cuobjdump(tmp_path, {name: cuda_libs[name] for name in CUDA_LIBS})
    for name in CUDA_LIBS:
        by_cuobjdump = audit(cuda_libs[name], reader="cuobjdump", cuobjdump=str(tool), variant=SM90)
        by_headers = audit(cuda_libs[name], reader="fatbin", variant=SM90)
        assert by_cuobjdump.reader == "cuobjdump" and by_cuobjdump.libraries[0].note is None
        assert by_cuobjdump.to_json()["archs"] == by_headers.to_json()["archs"]
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert audit(cuda_libs["libmulti"]).reader == "cuobjdump"  # auto: the one on PATH


def test_family_targets_agree_and_keep_the_headers_spelling(cuda_libs, tmp_path):
    """cuobjdump lists the sm_100f cubin as sm_100 (its PTX as sm_120f): the same code, the headers' name kept."""
    tool = gpu_replay.cuobjdump(tmp_path, {"libfamily": cuda_libs["libfamily"]}, gpu_replay.CUOBJDUMP_13_5)
    report = audit(cuda_libs["libfamily"], reader="cuobjdump", cuobjdump=str(tool), own_sms=["103", "121"])
    library = report.libraries[0]
    assert (library.reader, library.note, library.disagreement) == ("cuobjdump", None, None)
    assert [e.arch for e in library.entries] == ["sm_100f", "sm_120f", "sm_100f", "sm_120f", "sm_120f"]
    assert (
        report.sizes_complete
        and report.archs() == audit(cuda_libs["libfamily"], reader="fatbin", own_sms=["103", "121"]).archs()
    )
    # sm_100f runs on 10.3, sm_120f on 12.1; the compute_120f PTX sits beside that sm_120f SASS, so it is never used
    sizes = collections.Counter()
    for e in library.entries:
        sizes[e.kind, e.arch] += e.stored_bytes
    assert report.foreign == ["sm_120f"] and report.own_bytes == report.total_bytes - sizes["ptx", "sm_120f"]
    assert [e["use"] for e in report.to_json()["libraries"][0]["entries"]] == [
        "runs",
        "runs",
        "runs",
        "shadowed",
        "runs",
    ]
    assert report.figures("103").runs == sizes["sass", "sm_100f"] and report.figures("103").jit_ptx == 0
    assert report.figures("121").jit_ptx == sizes["ptx", "sm_120f"]


def cuobjdump_saying(tmp_path: Path, libs: dict[str, Path], elf: bytes, ptx: bytes = b"", status: int = 0) -> Path:
    """A cuobjdump that answers every library in libs with the same listings and exit status."""
    answers = {}
    for path in libs.values():
        answers[("--list-elf", str(path))] = (elf, status)
        answers[("--list-ptx", str(path))] = (ptx, status)
    return gpu_replay.fake_tool(tmp_path, "cuobjdump", answers)


def test_an_empty_cuobjdump_listing_fails_closed(cuda_libs, tmp_path):
    """A cuobjdump that prints nothing must not turn the headers' cubins into "nothing there"."""
    tool = cuobjdump_saying(tmp_path, {"x": cuda_libs["libmulti"]}, b"")
    report = audit(cuda_libs["libmulti"], reader="cuobjdump", cuobjdump=str(tool), variant=SM90)
    library = report.libraries[0]
    assert library.disagreement == "cuobjdump lists 0 cubins and 0 PTX, the fatbin headers 8 and 0"
    assert len(library.entries) == 8 and report.foreign == ["sm_80", "sm_100", "sm_120"]
    with pytest.raises(AuditError, match="cuobjdump and the fatbin headers disagree on 1 libraries .*libone_sm90.so"):
        show(
            str(cuda_libs["libone_sm90"]),
            sm="90",
            reader="cuobjdump",
            cuobjdump=str(cuobjdump_saying(tmp_path / "two", {"x": cuda_libs["libone_sm90"]}, b"")),
            check=True,
            out=io.StringIO(),
        )


def test_cuobjdump_listing_more_than_the_headers_adds_that_code(cuda_libs, tmp_path):
    lying = {"libmulti": cuda_libs["libone_sm90"]}  # answers for libone_sm90 with libmulti's listing
    tool = gpu_replay.cuobjdump(tmp_path, lying)
    report = audit(cuda_libs["libone_sm90"], reader="cuobjdump", cuobjdump=str(tool), variant=SM90)
    assert report.foreign == ["sm_80", "sm_100", "sm_120"]
    assert report.libraries[0].disagreement == (
        "cuobjdump lists 8 cubins and 0 PTX, the fatbin headers 2 and 0; 6 listed only by cuobjdump (size unknown)"
    )
    assert not report.sizes_complete and report.to_json()["archs"]["sm_80"]["bytes"] is None
    assert report.to_json()["archs"]["sm_90"]["bytes"] == audit(cuda_libs["libone_sm90"], reader="fatbin").total_bytes
    out = io.StringIO()
    render(report, out)
    lines = out.getvalue().splitlines()
    row = next(line for line in lines if line.startswith(f"│ {cuda_libs['libone_sm90']}"))
    assert row.rstrip(" │").endswith("?") and " 0 B" not in row  # the library's size is unknown, not nothing
    assert any(line.startswith("cuobjdump and the fatbin headers disagree on 1 of 1 libraries") for line in lines)


def test_cuobjdump_failing_on_one_library_falls_back_to_the_headers_for_it(cuda_libs, tmp_path):
    """bitsandbytes 0.50.2's libbitsandbytes_cuda121.so: cuobjdump 13.5 lists one cubin, then gives up."""
    fails = cuda_libs["libmulti"]
    wheel = make_wheel(
        tmp_path / "fatpkg-1.0-cp312-cp312-linux_x86_64.whl",
        {"fatpkg/_bad.so": fails, "fatpkg/_good.so": cuda_libs["libone_sm90"]},
    )
    real = gpu_replay.cuobjdump(tmp_path / "real", {"libone_sm90": cuda_libs["libone_sm90"]})
    script = tmp_path / "cuobjdump"
    # the member is extracted for cuobjdump under a temporary name: answer by the content, as cuobjdump would
    script.write_text(
        "#!/bin/sh\n"
        f'if cmp -s "$2" {fails}; then\n'
        '  echo "ELF file    1: _bad.1.sm_80.cubin"; echo "cuobjdump fatal   : Invalid ELF in \'$2\'" >&2; exit 1\n'
        f'fi\nexec {real} "$1" {cuda_libs["libone_sm90"]}\n'
    )
    script.chmod(0o755)
    report = audit(wheel, reader="cuobjdump", cuobjdump=str(script), own_sms=["90"])
    bad, good = report.libraries
    assert (bad.path, bad.reader, good.reader) == ("fatpkg/_bad.so", "fatbin", "cuobjdump")
    assert bad.note == (
        "cuobjdump --list-elf fatpkg/_bad.so failed (exit 1): cuobjdump fatal   : Invalid ELF in "
        "'fatpkg/_bad.so'; read from the fatbin headers instead"
    )
    assert "vllm-variants-audit-" not in json.dumps(report.to_json())  # never a temporary path
    assert [e.arch for e in bad.entries] == ["sm_80", "sm_90", "sm_100", "sm_120"] * 2
    assert report.reader_note == "cuobjdump failed on 1 of 2 libraries, read from the fatbin headers"


def test_cuobjdump_asked_for_but_missing(cuda_libs, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match="'cuobjdump' was not found on PATH: .*cuda_cuobjdump.*--reader fatbin"):
        audit(cuda_libs["libmulti"], reader="cuobjdump")
    with pytest.raises(PreflightError) as exc:
        audit(cuda_libs["libmulti"], cuobjdump="/nonexistent/cuobjdump")
    assert str(exc.value).startswith("--cuobjdump /nonexistent/cuobjdump: no such file; give the path of cuobjdump")
    (tmp_path / "cuobjdump").write_text("not executable")
    with pytest.raises(PreflightError, match=f"^--cuobjdump {tmp_path}/cuobjdump: not an executable file"):
        audit(cuda_libs["libmulti"], cuobjdump=str(tmp_path / "cuobjdump"))
    with pytest.raises(ToolMissing, match="'cuobjdump-13' was not found on PATH"):
        audit(cuda_libs["libmulti"], cuobjdump="cuobjdump-13")


# -- choosing the variant --------------------------------------------------------


def test_variant_from_the_result_link_name(cuda_libs, tmp_path):
    store = tmp_path / "store" / "abc123-vllm-python312-cuda12_9-sm100-arm64"
    store.mkdir(parents=True)
    shutil.copy(cuda_libs["libmulti"], store / "libmulti.so")
    assert variant_in_path(MATRIX, store).name == "vllm-python312-cuda12_9-sm100-arm64"
    link = tmp_path / "result-vllm-python312-cuda12_9-sm90"
    link.symlink_to(tmp_path / "store")
    sms, variant = own_sms_for(MATRIX, link)
    assert (sms, variant.name) == (("90",), "vllm-python312-cuda12_9-sm90")
    assert own_sms_for(MATRIX, tmp_path) == ((), None)
    with pytest.raises(SelectionError, match="'x86' is not an SM"):
        own_sms_for(MATRIX, link, sm="x86")
    assert own_sms_for(MATRIX, link, sm="sm_90a,8.0")[0] == ("90", "80")


def test_sm_auto_uses_the_local_gpus(tmp_path):
    smi = gpu_replay.smi(tmp_path)
    sms, variant = own_sms_for(MATRIX, tmp_path, sm="auto", smi=str(smi))
    assert sms == ("90",) and variant.sm == "90"


# -- a real Nix result, and the task ----------------------------------------------


@pytest.mark.nix
@pytest.mark.nvcc
def test_standin_result_carries_device_code_for_its_sm_alone(tmp_path):
    """The stand-in's CUDA packages compile a real kernel each (issue #25): a built result
    holds their libraries, with SM 90 code and nothing else (tests/test_device_code.py
    audits every SM, and the flake's mistakes)."""
    root = support.make_project(tmp_path / "p")
    link = root / "result-vllm-python312-cuda12_9-sm90"
    support.nix("build", f"{support.flake_ref(root)}#{SM90.attr_path()}", "--out-link", link, *support.override())
    sms, variant = own_sms_for(MATRIX, link)  # named by the link
    report = require_cuda(audit(link, variant=variant, own_sms=sms, reader="fatbin"))
    assert report.variant == SM90.name and report.resolved.startswith("/nix/store/")
    site = "lib/python3.12/site-packages/"
    assert sorted(lib.path.removeprefix(site) for lib in report.libraries) == [
        "bitsandbytes/libbitsandbytes_cuda129.so",
        "torch/lib/libtorch_cuda.so",
        "vllm/_C.abi3.so",
        "xformers/_C.so",
    ]
    assert summary(report) == {"sm_90": (5, 0, False)}  # torch's own kernel and nccl's, linked in
    assert report.foreign == [] and report.own_bytes == report.total_bytes > 0


def invoke_audit(*args: str, env=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "audit", *args],
        cwd=support.REPO,
        capture_output=True,
        text=True,
        env=env or {**os.environ, "PATH": str(Path(sys.executable).parent)},
    )


def test_invoke_audit_json_and_exit_codes(cuda_libs, tmp_path):
    proc = invoke_audit(str(cuda_libs["libmixed"]), "--variant", "vllm-python312-cuda12_9-sm80", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["reader"] == "fatbin" and data["variant"] == "vllm-python312-cuda12_9-sm80"
    ptx_bytes = data["libraries"][0]["entries"][2]["bytes"]
    assert data["foreign"] == ["sm_90"] and data["archs"]["sm_90"] == {
        "sass": 0,
        "ptx": 1,
        "other": 0,
        "bytes": ptx_bytes,
        "unused_bytes": ptx_bytes,
        "foreign": True,
    }
    assert [e["use"] for e in data["libraries"][0]["entries"]] == ["exact", "exact", "never"]
    assert data["per_sm"]["80"] == {
        "exact": data["total_bytes"] - ptx_bytes,
        "runs": data["total_bytes"] - ptx_bytes,
        "jit_ptx": 0,
        "total": data["total_bytes"],
    }
    assert [e["compression"] for e in data["libraries"][0]["entries"]] == [None, None, "zstd"]
    for args, line in [
        ((str(tmp_path / "nope.so"),), f"error: {tmp_path}/nope.so: no such file or directory"),
        (
            (str(cuda_libs["libplain"]),),
            f"error: {cuda_libs['libplain']} holds no CUDA device code (no .nv_fatbin section)",
        ),
        ((str(cuda_libs["libmulti"]), "--sm", "90", "--check"), "error: "),
    ]:
        proc = invoke_audit(*args)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.splitlines()[0].startswith(line) and len(proc.stderr.splitlines()) == 1


def test_python_m_audit_outside_a_checkout(cuda_libs, tmp_path):
    """What the GPU machine runs: no Invoke, no checkout around the cwd (so no matrix), --sm still works."""

    def audit_m(*args):
        return subprocess.run(
            [sys.executable, "-m", "vllm_variants.audit", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(support.REPO / "src")},
        )

    proc = audit_m(str(cuda_libs["libmulti"]), "--sm", "90", "--json", "--reader", "fatbin")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["own_sms"], data["variant"], data["foreign"]) == (["90"], None, ["sm_80", "sm_100", "sm_120"])
    proc = audit_m(str(cuda_libs["libmulti"]), "--variant", "90")
    assert proc.returncode == 1 and proc.stderr == (
        "error: --variant needs a vllm-variants checkout (for nix/variants.toml); use --sm\n"
    )


def test_screen_prints_names_as_text_not_markup(cuda_libs, tmp_path):
    (tmp_path / "[bold]").mkdir()
    shutil.copy(cuda_libs["libmixed"], tmp_path / "[bold]" / "lib[red].so")
    out = io.StringIO()
    show(str(tmp_path), sm="80", reader="fatbin", out=out)
    text = out.getvalue()
    assert "[bold]/lib[red].so" in text and "sm_90" in text and "never used by SM 80" in text


# -- damaged and oversized input: one line each, memory bounded ---------------------


def corrupt_crc(wheel: Path, name: str) -> None:
    """Give the member `name` a wrong CRC-32, in its local header and in the central directory."""
    data = bytearray(wheel.read_bytes())
    with zipfile.ZipFile(wheel) as archive:
        info, start = archive.getinfo(name), archive.start_dir
    wrong = (info.CRC ^ 0x5A5A5A5A).to_bytes(4, "little")
    data[info.header_offset + 14 : info.header_offset + 18] = wrong
    at = start
    while data[at : at + 4] == b"PK\x01\x02":
        size_n, size_x, size_c = (int.from_bytes(data[at + o : at + o + 2], "little") for o in (28, 30, 32))
        if data[at + 46 : at + 46 + size_n].decode() == name:
            data[at + 16 : at + 20] = wrong
        at += 46 + size_n + size_x + size_c
    wheel.write_bytes(bytes(data))


def test_a_corrupted_member_is_one_line_and_the_others_are_audited(cuda_libs, tmp_path):
    wheel = make_wheel(
        tmp_path / "fatpkg-1.0-cp312-cp312-linux_x86_64.whl",
        {"fatpkg/_bad.so": cuda_libs["libmulti"], "fatpkg/_good.so": cuda_libs["libone_sm90"]},
    )
    corrupt_crc(wheel, "fatpkg/_bad.so")
    with zipfile.ZipFile(wheel, "a", compression=zipfile.ZIP_STORED) as archive:  # an uncompressed member too
        archive.write(cuda_libs["libmixed"], "fatpkg/_stored.so")
    data = bytearray(wheel.read_bytes())
    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo("fatpkg/_stored.so")
    middle = info.header_offset + 30 + len(info.filename) + info.file_size // 2
    data[middle] ^= 0xFF  # a flipped byte in the stored member's bytes
    wheel.write_bytes(bytes(data))
    for target, prefix in ((wheel, ""), (tmp_path, f"{wheel.name}!")):  # alone, and inside a directory walk
        report = audit(target, reader="fatbin", own_sms=["90"])
        assert [lib.path for lib in report.libraries] == [f"{prefix}fatpkg/_good.so"]
        assert report.skipped == [
            (f"{prefix}fatpkg/_bad.so", "damaged in the wheel: Bad CRC-32 for file 'fatpkg/_bad.so'"),
            (f"{prefix}fatpkg/_stored.so", "damaged in the wheel: Bad CRC-32 for file 'fatpkg/_stored.so'"),
        ]
    proc = invoke_audit(str(wheel), "--sm", "90")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "skipped fatpkg/_bad.so: damaged in the wheel: Bad CRC-32 for file 'fatpkg/_bad.so'" in proc.stdout


def test_wheel_members_are_read_in_place_stored_or_deflated(cuda_libs, tmp_path, monkeypatch):
    """No temporary copy: the fatbin reader reads a stored member from the wheel and streams a deflated one."""
    wheel = make_wheel(
        tmp_path / "fatpkg-1.0-cp312-cp312-linux_x86_64.whl", {"fatpkg/_deflated.so": cuda_libs["libmulti"]}
    )
    with zipfile.ZipFile(wheel, "a", compression=zipfile.ZIP_STORED) as archive:
        archive.write(cuda_libs["libmixed"], "fatpkg/_stored.so")

    def no_temporary_files(*args, **kwargs):
        raise AssertionError("the fatbin reader made a temporary copy")

    monkeypatch.setattr(zipfile.ZipFile, "extract", no_temporary_files)
    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_temporary_files)
    report = audit(wheel, reader="fatbin")
    assert [lib.path for lib in report.libraries] == ["fatpkg/_deflated.so", "fatpkg/_stored.so"]
    for library, name in zip(report.libraries, ("libmulti", "libmixed")):
        assert [e.to_json() for e in library.entries] == [e.to_json() for e in read_path(cuda_libs[name]).entries]


def grow_fatbin_section(source: Path, dest: Path, claim: int, *, sparse: bool) -> Path:
    """source with its .nv_fatbin section header claiming `claim` bytes; sparse: the file grows to hold them."""
    data = bytearray(source.read_bytes())
    shoff = int.from_bytes(data[0x28:0x30], "little")
    shentsize, shnum = (int.from_bytes(data[o : o + 2], "little") for o in (0x3A, 0x3C))
    section = read_path(source)
    fatbin = next(
        i
        for i in range(shnum)
        if int.from_bytes(data[shoff + i * shentsize + 32 : shoff + i * shentsize + 40], "little")
        == section.section_bytes
        and int.from_bytes(data[shoff + i * shentsize + 4 : shoff + i * shentsize + 8], "little") == 1
    )
    at = shoff + fatbin * shentsize + 32  # sh_size
    offset = int.from_bytes(data[at - 8 : at], "little")
    data[at : at + 8] = claim.to_bytes(8, "little")
    dest.write_bytes(bytes(data))
    if sparse:
        os.truncate(dest, offset + claim)
    return dest


def test_a_section_claiming_gigabytes_is_read_in_bounded_memory(cuda_libs, tmp_path):
    """The crafted ELF of issue #12, 1 GiB here (40 GB takes only longer): under a 128 MiB data limit.

    The file is sparse, so the claim is in bounds and every byte of it is read;
    copying it into memory (what the padding check did) fails the limit.
    """
    crafted = grow_fatbin_section(cuda_libs["libone_sm90"], tmp_path / "libhuge.so", 1 << 30, sparse=True)
    script = (
        "import json, resource, sys; resource.setrlimit(resource.RLIMIT_DATA, (128 << 20, 128 << 20)); "
        "from vllm_variants.audit import audit; r = audit(sys.argv[1], reader='fatbin', own_sms=['90']); "
        "print(json.dumps([r.libraries[0].note, r.total_bytes, len(r.libraries[0].entries)]))"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(crafted)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    note, total, entries = json.loads(proc.stdout)
    assert entries == 2 and total == audit(cuda_libs["libone_sm90"], reader="fatbin").total_bytes
    assert note.endswith("bytes of .nv_fatbin were not understood")


def test_a_section_past_the_end_of_the_file_is_one_line(cuda_libs, tmp_path):
    crafted = grow_fatbin_section(cuda_libs["libone_sm90"], tmp_path / "libpast.so", 40 * 10**9, sparse=False)
    with pytest.raises(InvalidBinary) as exc:
        audit(crafted, reader="fatbin")
    assert str(exc.value).startswith(
        f"{crafted} is not a valid ELF library: its .nv_fatbin section claims 40000000000 bytes at offset "
    )
    assert str(exc.value).endswith(f"past the end of the {crafted.stat().st_size}-byte file (truncated?)")
    proc = invoke_audit(str(crafted))
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr


def test_reconcile_names_each_way_the_readers_can_differ():
    from vllm_variants.audit import reconcile
    from vllm_variants.fatbin import CodeEntry as Entry

    headers = [Entry("sass", "sm_80", 10), Entry("sass", "sm_100f", 20), Entry("ptx", "sm_120f", 30)]
    assert reconcile(headers, ["sm_80", "sm_100"], ["sm_120f"]) == (headers, None)  # cuobjdump's family spelling
    assert reconcile(headers, ["sm_100", "sm_80"], ["sm_120f"])[1] == (
        "cuobjdump lists 2 cubins and 1 PTX, the fatbin headers 2 and 1; the same targets in another order"
    )
    entries, why = reconcile(headers, ["sm_80", "sm_100", "sm_90a"], ["sm_120f"])
    assert entries == [*headers, Entry("sass", "sm_90a")] and why.endswith("1 listed only by cuobjdump (size unknown)")
    assert reconcile(headers, [], [])[1] == "cuobjdump lists 0 cubins and 0 PTX, the fatbin headers 2 and 1"


def test_check_exempts_torch_of_a_torch_wheel_row_and_nothing_else(cuda_libs, tmp_path):
    """Issue #14: a torch = "wheel" variant's torch is torch-bin, every SM's kernels: the
    one exception --check makes. Its other packages, and a source row's torch, are held to the SM."""
    tree = tmp_path / "result"
    site = tree / "lib" / "python3.12" / "site-packages"
    (site / "torch" / "lib").mkdir(parents=True)
    (site / "vllm").mkdir()
    shutil.copy(cuda_libs["libmulti"], site / "torch" / "lib" / "libtorch_cuda.so")
    shutil.copy(cuda_libs["libone_sm90"], site / "vllm" / "_C.so")
    wheel = "vllm-python312-cuda12_8-sm90-torchbin"
    report = show(str(tree), variant=wheel, reader="fatbin", check=True, matrix=MATRIX, out=io.StringIO())
    assert report.torch_exempt and report.foreign == []
    assert set(report.archs()) == {"sm_80", "sm_90", "sm_100", "sm_120"}  # still counted, only not refused
    with pytest.raises(AuditError, match="carries code SM 90 never uses: sm_80 SASS"):
        show(str(tree), variant="90", reader="fatbin", check=True, matrix=MATRIX, out=io.StringIO())
    shutil.copy(cuda_libs["libmulti"], site / "vllm" / "_C.so")  # foreign code outside torch
    with pytest.raises(AuditError, match="carries code SM 90 never uses"):
        show(str(tree), variant=wheel, reader="fatbin", check=True, matrix=MATRIX, out=io.StringIO())
