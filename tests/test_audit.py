"""`invoke audit` on real nvcc output: libraries, directories, wheels, a Nix result.

Libraries come from tests/cuda_libs.py (compiled during the run); the
cuobjdump path replays the listings captured on an H100 for the same
libraries (tests/gpu_replay.py), since CI has no cuobjdump.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import gpu_replay
import pytest
import support
from cuda_libs import CUDA_LIBS

from vllm_variants.audit import audit, own_sms_for, render, require_cuda, show, variant_in_path
from vllm_variants.errors import AuditError, NoCudaCode, SelectionError, ToolMissing
from vllm_variants.fatbin import read_path
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

    assert (f"SM 90: {human(own)} of {human(total)} of CUDA code ({100 * own / total:.0f}%); "
            f"{human(total - own)} for other architectures (sm_80, sm_100, sm_120)") in out.getvalue()


def test_check_fails_on_foreign_code_only(cuda_libs):
    with pytest.raises(AuditError, match="carries code for architectures other than SM 90: sm_80 \\("):
        show(str(cuda_libs["libmulti"]), variant="90", reader="fatbin", check=True, matrix=MATRIX, out=io.StringIO())
    show(str(cuda_libs["libsm90a"]), variant="90", reader="fatbin", check=True, matrix=MATRIX, out=io.StringIO())
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
    wheel = make_wheel(tmp_path / "fatpkg-1.0-cp312-cp312-linux_x86_64.whl",
                       {"fatpkg/_C.so": cuda_libs["libmulti"], "fatpkg.libs/libplain.so": cuda_libs["libplain"]})
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
        (lambda p: p / "missing.so", "{p}/missing.so: no such file or directory"),
        (lambda p: linked(p / "dangling.so", p / "gone"), "{p}/dangling.so is a dangling link (to {p}/gone): build it again"),
        (lambda p: written(p / "notes.txt", b"x"),
         "{p}/notes.txt is neither an ELF library (.so) nor a wheel (.whl), nor a directory"),
        (lambda p: written(p / "short.so", b"\x7fELF\x02\x01"),
         "{p}/short.so is not a valid ELF library: not an ELF file (too short or no ELF magic)"),
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
    assert str(exc.value) == (f"no CUDA device code in {tmp_path}: 0 ELF file(s) examined, none with a .nv_fatbin "
                              "section; 1 could not be read (first: mem.so: cannot read it: Input/output error)")


def test_no_cuda_code_is_one_line(cuda_libs, tmp_path):
    with pytest.raises(NoCudaCode, match=f"^{cuda_libs['libplain']} holds no CUDA device code \\(no .nv_fatbin section\\)$"):
        require_cuda(audit(cuda_libs["libplain"], reader="fatbin"))
    (tmp_path / "d").mkdir()
    shutil.copy(cuda_libs["libplain"], tmp_path / "d")
    with pytest.raises(NoCudaCode, match="^no CUDA device code in .*/d: 1 ELF file\\(s\\) examined, none with"):
        require_cuda(audit(tmp_path / "d", reader="fatbin"))


# -- cuobjdump as the reader (replayed) ---------------------------------------------


def test_cuobjdump_reader_agrees_and_keeps_the_sizes(cuda_libs, tmp_path, monkeypatch):
    tool = gpu_replay.cuobjdump(tmp_path, cuda_libs)
    for name in CUDA_LIBS:
        by_cuobjdump = audit(cuda_libs[name], reader="cuobjdump", cuobjdump=str(tool), variant=SM90)
        by_headers = audit(cuda_libs[name], reader="fatbin", variant=SM90)
        assert by_cuobjdump.reader == "cuobjdump" and by_cuobjdump.libraries[0].note is None
        assert by_cuobjdump.to_json()["archs"] == by_headers.to_json()["archs"]
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert audit(cuda_libs["libmulti"]).reader == "cuobjdump"  # auto: the one on PATH


def test_cuobjdump_disagreeing_with_the_headers_wins_and_sizes_become_unknown(cuda_libs, tmp_path):
    lying = {"libmulti": cuda_libs["libone_sm90"]}  # answers for libone_sm90 with libmulti's listing
    tool = gpu_replay.cuobjdump(tmp_path, lying)
    report = audit(cuda_libs["libone_sm90"], reader="cuobjdump", cuobjdump=str(tool), variant=SM90)
    assert report.foreign == ["sm_80", "sm_100", "sm_120"]
    assert report.libraries[0].note == "cuobjdump lists 8 cubins and 0 PTX, the fatbin headers 2 and 0: sizes unknown"
    assert not report.sizes_complete and report.to_json()["archs"]["sm_90"]["bytes"] is None
    out = io.StringIO()
    render(report, out)
    lines = out.getvalue().splitlines()
    row = next(line for line in lines if line.startswith(f"│ {cuda_libs['libone_sm90']}"))
    assert row.rstrip(" │").endswith("?") and " 0 B" not in row  # the library's size is unknown, not nothing
    assert any(line.startswith("SM 90: 0 B of 0 B of the CUDA code of known size (unknown in 1 of 1 libraries);")
               for line in lines)


def test_cuobjdump_asked_for_but_missing(cuda_libs, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match="'cuobjdump' was not found on PATH: .*cuda_cuobjdump.*--reader fatbin"):
        audit(cuda_libs["libmulti"], reader="cuobjdump")
    with pytest.raises(ToolMissing, match=f"'{tmp_path}/cuobjdump' was not found on PATH"):
        audit(cuda_libs["libmulti"], cuobjdump=str(tmp_path / "cuobjdump"))


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
def test_standin_result_has_no_cuda_code(tmp_path):
    root = support.make_project(tmp_path / "p")
    link = root / "result-vllm-python312-cuda12_9-sm90"
    support.nix("build", f"{support.flake_ref(root)}#{SM90.attr_path()}", "--out-link", link, *support.override())
    sms, variant = own_sms_for(MATRIX, link)  # named by the link
    report = audit(link, variant=variant, own_sms=sms, reader="fatbin")
    assert report.variant == SM90.name and report.resolved.startswith("/nix/store/")
    with pytest.raises(NoCudaCode) as exc:
        require_cuda(report)
    assert str(exc.value) == (f"no CUDA device code in {link}: {report.examined} ELF file(s) examined, "
                              "none with a .nv_fatbin section")


def invoke_audit(*args: str, env=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", "audit", *args], cwd=support.REPO, capture_output=True,
                          text=True, env=env or {**os.environ, "PATH": str(Path(sys.executable).parent)})


def test_invoke_audit_json_and_exit_codes(cuda_libs, tmp_path):
    proc = invoke_audit(str(cuda_libs["libmixed"]), "--variant", "vllm-python312-cuda12_9-sm80", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["reader"] == "fatbin" and data["variant"] == "vllm-python312-cuda12_9-sm80"
    assert data["foreign"] == ["sm_90"] and data["archs"]["sm_90"] == {
        "sass": 0, "ptx": 1, "other": 0, "bytes": data["libraries"][0]["entries"][2]["bytes"], "foreign": True}
    assert [e["compression"] for e in data["libraries"][0]["entries"]] == [None, None, "zstd"]
    for args, line in [
        ((str(tmp_path / "nope.so"),), f"error: {tmp_path}/nope.so: no such file or directory"),
        ((str(cuda_libs["libplain"]),), f"error: {cuda_libs['libplain']} holds no CUDA device code (no .nv_fatbin section)"),
        ((str(cuda_libs["libmulti"]), "--sm", "90", "--check"), "error: "),
    ]:
        proc = invoke_audit(*args)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.splitlines()[0].startswith(line) and len(proc.stderr.splitlines()) == 1


def test_python_m_audit_outside_a_checkout(cuda_libs, tmp_path):
    """What the GPU machine runs: no Invoke, no checkout around the cwd (so no matrix), --sm still works."""
    def audit_m(*args):
        return subprocess.run([sys.executable, "-m", "vllm_variants.audit", *args], cwd=tmp_path, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(support.REPO / "src")})

    proc = audit_m(str(cuda_libs["libmulti"]), "--sm", "90", "--json", "--reader", "fatbin")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["own_sms"], data["variant"], data["foreign"]) == (["90"], None, ["sm_80", "sm_100", "sm_120"])
    proc = audit_m(str(cuda_libs["libmulti"]), "--variant", "90")
    assert proc.returncode == 1 and proc.stderr == (
        "error: --variant needs a vllm-variants checkout (for nix/variants.toml); use --sm\n")


def test_screen_prints_names_as_text_not_markup(cuda_libs, tmp_path):
    (tmp_path / "[bold]").mkdir()
    shutil.copy(cuda_libs["libmixed"], tmp_path / "[bold]" / "lib[red].so")
    out = io.StringIO()
    show(str(tmp_path), sm="80", reader="fatbin", out=out)
    text = out.getvalue()
    assert "[bold]/lib[red].so" in text and "sm_90" in text and "not SM 80" in text
