"""Issue #25: the per-SM claim proven on the flake's own output.

The stand-in's CUDA packages compile one real kernel each, with the host's
nvcc and the -gencode arguments their own build derives from the instance's
cudaPackages.flags (tests/fixtures/nixpkgs/pkgs/development/cuda-modules/
device-code). So the chain matrix row -> nixpkgs instance -> flags -> nvcc ->
fatbin is closed here, with the commands a user runs: `invoke build`, then
`invoke audit result-<variant> --check`.

- Every x86_64 variant of the default set, built in one `invoke build`: the
  audit passes with figures for its SM alone (the torch-wheel row: torch
  carries every SM and is exempted, the rest one). An SM the host nvcc cannot
  compile for (CUDA 13.0: 6.1, 7.0) still builds, and every package records
  that it could not, and why; the audit then finds no device code.
- The mistakes the flake guards against, made on purpose with the read-back
  guard taken out (support.mutated_project): forward-compat PTX left on, a
  second capability in the instance, bitsandbytes built for every arch. The
  same `--check` fails naming the foreign code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import support

from vllm_variants.matrix import Matrix

pytestmark = [pytest.mark.nix, pytest.mark.nvcc]

MATRIX = Matrix.load(support.REPO / "nix" / "variants.toml")
X86_DEFAULT = [v for v in MATRIX.default_set if v.system == "x86_64-linux"]
SM90 = MATRIX.by_name("vllm-python312-cuda12_9-sm90")
SM90_CUDA128 = MATRIX.by_name("vllm-python312-cuda12_8-sm90")
SITE = "lib/python3.12/site-packages"


def invoke(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=root, capture_output=True, text=True, env=support.nix_env()
    )


def audit_json(root: Path, variant_name: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """`invoke audit result-<variant> --check --json` in the checkout: (the process, the report)."""
    proc = invoke(root, "audit", f"result-{variant_name}", "--check", "--json", "--reader", "fatbin")
    return proc, json.loads(proc.stdout) if proc.stdout.strip() else {}


def record(link: Path, module: str) -> dict:
    return json.loads((link / SITE / module / "_nix_build.json").read_text())


def arch_flags(link: Path) -> str | None:
    """torch._C._cuda_getArchFlags() in the result: what smoke check 4 reads."""
    proc = subprocess.run(
        [link / "bin" / "python", "-c", "import json, torch; print(json.dumps(torch._C._cuda_getArchFlags()))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def libraries(report: dict) -> dict[str, list[tuple[str, str]]]:
    """{library under site-packages: [(kind, arch), ...]}."""
    return {
        lib["path"].removeprefix(SITE + "/"): [(e["kind"], e["arch"]) for e in lib["entries"]]
        for lib in report["libraries"]
    }


def expected_libraries(variant) -> set[str]:
    cuda = variant.cuda.replace(".", "")
    return {
        "torch/lib/libtorch_cuda.so",
        "vllm/_C.abi3.so",
        "xformers/_C.so",
        f"bitsandbytes/libbitsandbytes_cuda{cuda}.so",
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The default set's x86_64 variants, in one `invoke build` against the stand-in."""
    root = support.make_project(tmp_path_factory.mktemp("device-code") / "checkout")
    names = ",".join(v.name for v in X86_DEFAULT)
    proc = invoke(root, "build", "--sm", names, "--nixpkgs", str(support.STANDIN))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return root


def test_the_default_set_covers_every_x86_sm_and_the_torch_wheel_row():
    """The parametrization below is the default set: every x86_64 SM of the matrix, and the wheel row."""
    assert {v.sm for v in X86_DEFAULT} == {row.sm for row in MATRIX.variants if row.system == "x86_64-linux"}
    assert any(v.torch_wheel for v in X86_DEFAULT)


@pytest.mark.parametrize("variant", X86_DEFAULT, ids=lambda v: v.name)
def test_audit_check_on_each_built_variant(built, variant):
    """An SM the host nvcc targets: --check passes, every library holds that SM alone and
    SM figures count all of it. One it cannot: recorded per package, nothing compiled."""
    link = built / f"result-{variant.name}"
    proc, report = audit_json(built, variant.name)
    if variant.sm_number not in support.host_nvcc_sms():
        assert proc.returncode == 1
        assert proc.stderr.startswith(f"error: no CUDA device code in result-{variant.name}: "), proc.stderr
        for module in ("torch", "xformers"):
            (entry,) = record(link, module)["deviceCode"]
            assert entry["library"] is None and entry["compiled"] == []
            assert f"cannot target sm_{variant.sm}" in entry["why"], entry
        (vllm,) = record(link, "vllm")["deviceCode"]
        assert vllm["library"] is None and "selects no CUDA architecture" in vllm["why"], vllm
        assert arch_flags(link) is None
        return
    assert proc.returncode == 0, proc.stderr
    sm = f"sm_{variant.sm}"
    libs = libraries(report)
    assert set(libs) == expected_libraries(variant)
    assert report["foreign"] == [] and report["own_sms"] == [variant.sm]
    if variant.torch_wheel:
        assert report["torch_exempt"]
        assert len({arch for _, arch in libs.pop("torch/lib/libtorch_cuda.so")}) > 1  # every SM of the wheel
        assert report["per_sm"][variant.sm]["exact"] < report["total_bytes"]
    else:
        assert list(report["archs"]) == [sm]
        assert report["per_sm"][variant.sm] == {
            "exact": report["total_bytes"],
            "runs": report["total_bytes"],
            "jit_ptx": 0,
            "total": report["total_bytes"],
        }
        assert report["total_bytes"] > 0
        assert arch_flags(link) == sm
    for path, entries in libs.items():
        assert entries and set(entries) == {("sass", sm)}, (path, entries)


def test_audit_screen_on_a_stand_in_build_shows_real_figures(built):
    """The newcomer path (docs/checking.md): no real build, and still real figures."""
    proc = invoke(built, "audit", f"result-{SM90.name}", "--reader", "fatbin")
    assert proc.returncode == 0, proc.stderr
    assert f"(variant {SM90.name}: SM 90)" in proc.stdout
    assert "SM 90: runs " in proc.stdout and "of CUDA code (100.0 %); built for exactly SM 90: " in proc.stdout
    assert "torch/lib/libtorch_cuda.so" in proc.stdout and "never used" not in proc.stdout


# -- the real cuobjdump on the same kind of libraries ------------------------------------

# tests/fixtures/gpu/audit_standin.py, run on an H100 machine with cuobjdump 13.0
# over the libraries of stand-in results built here (the flake as it is, and
# each mutation below): both readers agreed on every library.
CUOBJDUMP = json.loads((support.REPO / "tests" / "fixtures" / "gpu" / "h100" / "audit-standin.json").read_text())
RECORDED = {
    "sm90": SM90,
    "sm100": MATRIX.by_name("vllm-python312-cuda12_9-sm100"),
    "sm120": MATRIX.by_name("vllm-python312-cuda12_9-sm120"),
    "sm90-torchbin": next(v for v in X86_DEFAULT if v.torch_wheel),
}


def test_cuobjdump_on_a_gpu_machine_agreed_with_the_fatbin_reader_on_every_stand_in_library():
    cases = CUOBJDUMP["cases"]
    assert CUOBJDUMP["cuobjdump"].startswith("Build cuda_13.0")
    assert all(case["readers_agree"] for case in cases.values())
    assert {name: case["foreign"]["cuobjdump"] for name, case in cases.items()} == {
        "sm90": [],
        "sm100": [],
        "sm120": [],
        "sm90-torchbin": [],
        "sm90-forward-compat": ["sm_90"],
        "sm90-second-capability": ["sm_80"],
        "sm90-bitsandbytes-every-arch": ["sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_100", "sm_120"],
    }


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_this_build_carries_what_cuobjdump_listed_on_the_gpu_machine(built, case):
    """What the suite's builds carry now, read here with the fatbin headers, is
    what cuobjdump listed for the same variant there: a change in the flags the
    flake hands nvcc shows up as a difference from real cuobjdump output."""
    variant = RECORDED[case]
    _, report = audit_json(built, variant.name)
    here = {path: sorted([kind, arch] for kind, arch in entries) for path, entries in libraries(report).items()}
    assert here == CUOBJDUMP["cases"][case]["entries"]["cuobjdump"]


# -- the mistakes the flake guards against ----------------------------------------------


def build_mutant(tmp_path: Path, edits: dict, variant) -> Path:
    """A checkout with the flake broken on purpose (guard out), `variant` built and linked as result-<variant>."""
    root = support.mutated_project(tmp_path / "mutant", edits)
    link = root / f"result-{variant.name}"
    support.nix("build", "--out-link", link, f"{support.flake_ref(root)}#{variant.attr_path()}", *support.override())
    return root


def check_fails(root: Path, variant) -> tuple[str, dict]:
    proc, report = audit_json(root, variant.name)
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"error: result-{variant.name} carries code SM 90 never uses: "), line
    return line, report


def test_forward_compat_left_on_fails_the_audit_on_nccls_ptx_in_torch(tmp_path):
    """cudaForwardCompat (true unless the flake says false) adds the compute_90 PTX to
    flags.gencode; nccl builds from it and torch links nccl statically. torch's own list
    (smoke check 4) does not change: only the audit sees it."""
    root = build_mutant(tmp_path, {"nix/variant.nix": [("cudaForwardCompat = false;", "")]}, SM90)
    line, report = check_fails(root, SM90)
    assert "sm_90 PTX (" in line and line.endswith(", beside SASS that runs)"), line
    assert ("ptx", "sm_90") in libraries(report)["torch/lib/libtorch_cuda.so"]
    assert report["foreign"] == ["sm_90"]
    assert arch_flags(root / f"result-{SM90.name}") == "sm_90"


def test_a_second_capability_in_the_instance_fails_the_audit_naming_it(tmp_path):
    edit = ("cudaCapabilities = [ variant.capability ];", 'cudaCapabilities = [ variant.capability "8.0" ];')
    root = build_mutant(tmp_path, {"nix/variant.nix": [edit]}, SM90)
    line, report = check_fails(root, SM90)
    assert "sm_80 SASS (" in line
    libs = libraries(report)
    for path in ("torch/lib/libtorch_cuda.so", "vllm/_C.abi3.so", "xformers/_C.so"):
        assert ("sass", "sm_80") in libs[path], (path, libs[path])
    assert arch_flags(root / f"result-{SM90.name}") == "sm_80 sm_90"


def test_bitsandbytes_for_every_arch_fails_the_audit_naming_each(tmp_path):
    """Without the flake's COMPUTE_CAPABILITY default bitsandbytes builds every arch CMake
    knows for the line (under 12.9 it does not build at all: the CCCL bug). The host nvcc
    compiles those it targets and records the others as not compiled, with why."""
    edit = ('postPatch = (old.postPatch or "") + bitsandbytesOneSm;', "")
    root = build_mutant(tmp_path, {"nix/overlays/bitsandbytes.nix": [edit]}, SM90_CUDA128)
    line, report = check_fails(root, SM90_CUDA128)
    host = support.host_nvcc_sms()
    for sm in ("75", "80", "86", "89", "100"):
        if sm in host:
            assert f"sm_{sm} SASS (" in line, line
    assert "sm_120 PTX (" in line or "120" not in host
    runs = record(root / f"result-{SM90_CUDA128.name}", "bitsandbytes")["deviceCode"]
    assert [r["read"]["COMPUTE_CAPABILITY"] for r in runs] == ["${POSSIBLE_CAPABILITIES}"] * 2
    refused = {r["gencode"] for r in runs[0]["refused"]}
    assert {g for g in refused if "compute_61" in g or "compute_70" in g}, refused
    assert all("cannot target" in r["why"] for r in runs[0]["refused"])
    assert os.path.basename(runs[0]["library"]) == "libbitsandbytes_cuda128.so"
