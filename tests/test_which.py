"""GPUs to variants: one GPU, mixed SMs, arm64 hosts, SMs with no variant, no GPU.

One GPU is the H100 capture replayed; the other GPU sets are lines in the
captured format written here (no such machine was at hand).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import gpu_replay
import pytest
import support

from vllm_variants.errors import SelectionError
from vllm_variants.gpus import GPU, parse_query
from vllm_variants.matching import auto_variants, host_system, local_variants, match, nearest
from vllm_variants.matrix import Matrix, tomllib
from vllm_variants.project import Project
from vllm_variants.which import show

MATRIX = Matrix.load(support.REPO / "nix" / "variants.toml")
X86, ARM = "x86_64-linux", "aarch64-linux"


def gpus(text: str) -> list[GPU]:
    return parse_query(text)


def test_host_system_names_the_nix_system():
    kernel = "linux" if sys.platform.startswith("linux") else sys.platform
    assert [host_system(m) for m in ("x86_64", "AMD64", "aarch64", "arm64")] == [
        f"x86_64-{kernel}",
        f"x86_64-{kernel}",
        f"aarch64-{kernel}",
        f"aarch64-{kernel}",
    ]


def test_one_gpu_from_the_replayed_h100(tmp_path):
    found = auto_variants(MATRIX, smi=str(gpu_replay.smi(tmp_path)), system=X86)
    assert [v.name for v in found] == ["vllm-python312-cuda12_9-sm90"]


def test_mixed_sms_each_listed_each_variant_once():
    mixed = gpus(
        "0, NVIDIA H100 80GB HBM3, 9.0, 580.159.04, 81559\n1, NVIDIA L4, 8.9, 580.159.04, 23034\n"
        "2, NVIDIA H100 80GB HBM3, 9.0, 580.159.04, 81559\n"
    )
    assert [(m.gpu.index, m.variant.sm) for m in match(MATRIX, mixed, X86)] == [(0, "90"), (1, "89"), (2, "90")]
    assert [v.sm for v in local_variants(MATRIX, mixed, X86)] == ["89", "90"]  # matrix order, once each


def test_arm64_host_gets_the_arm64_variant():
    gh200 = gpus("0, NVIDIA GH200 480GB, 9.0, 580.159.04, 97871\n")
    assert [v.name for v in local_variants(MATRIX, gh200, ARM)] == ["vllm-python312-cuda12_9-sm90-arm64"]
    assert [v.name for v in local_variants(MATRIX, gh200, X86)] == ["vllm-python312-cuda12_9-sm90"]


def test_the_new_sms_map_their_gpus_to_the_default_line():
    """Issue #15: B300 / GB300 (10.3), DGX Spark GB10 (12.1), P40 (6.1); Jetson Thor (11.0)
    is listed but disabled at this pin, with the reason."""
    assert (
        match(MATRIX, gpus("0, NVIDIA B300 SXM6 AC, 10.3, 580.159.04, 275040\n"), X86)[0].variant.name
        == "vllm-python312-cuda12_9-sm103"
    )
    assert (
        match(MATRIX, gpus("0, NVIDIA GB300, 10.3, 580.159.04, 275040\n"), ARM)[0].variant.name
        == "vllm-python312-cuda12_9-sm103-arm64"
    )
    assert (
        match(MATRIX, gpus("0, NVIDIA GB10, 12.1, 580.95.05, [N/A]\n"), ARM)[0].variant.name
        == "vllm-python312-cuda12_9-sm121-arm64"
    )
    assert (
        match(MATRIX, gpus("0, Tesla P40, 6.1, 580.159.04, 23040\n"), X86)[0].variant.name
        == "vllm-python312-cuda12_9-sm61"
    )
    (thor,) = match(MATRIX, gpus("0, NVIDIA Thor, 11.0, 580.00, [N/A]\n"), ARM)
    assert thor.variant is None and "capability 11.0 needs CUDA 13.0 or newer" in thor.problem


def test_unknown_sm_names_the_nearest_choices_and_how_to_add_one():
    p100 = gpus("0, Tesla P100-PCIE-16GB, 6.0, 580.159.04, 16384\n")
    with pytest.raises(SelectionError) as exc:
        local_variants(MATRIX, p100, X86)
    text = str(exc.value)
    assert "\n" not in text
    assert text.startswith(
        "GPU 0 (Tesla P100-PCIE-16GB, capability 6.0) has no x86_64-linux variant; nearest: "
        "vllm-python312-cuda12_9-sm61 (SM 61 code does not run on 6.0); "
        "vllm-python312-cuda12_9-sm70 (SM 70 code does not run on 6.0); to add it"
    )
    assert 'append one [[sm]] table to nix/variants.toml (sm = "60", capability = "6.0"' in text


def test_nearest_is_by_capability_and_compatibility_first():
    pascal = gpus("0, Tesla P100-PCIE-16GB, 6.0, 580.159.04, 16384\n")[0]
    assert [(v.sm, runs) for v, runs in nearest(MATRIX, pascal, X86)] == [("61", False), ("70", False)]
    orin = gpus("0, Orin, 8.7, 540.4.0, [N/A]\n")[0]
    assert [(v.sm, runs) for v, runs in nearest(MATRIX, orin, X86)] == [("86", True), ("80", True)]


def test_an_arch_specific_variant_serves_its_gpu():
    """A user's sm = "90a" row: an H100 reports 9.0 and gets it; an 8.9 GPU cannot run its code."""
    matrix = support.sm90a_matrix()
    h100 = gpus("0, NVIDIA H100 80GB HBM3, 9.0, 580.159.04, 81559\n")
    (m,) = match(matrix, h100, X86)
    assert m.variant is not None and m.variant.name == "vllm-python312-cuda12_9-sm90a"
    l4 = gpus("0, NVIDIA L4, 8.9, 580.159.04, 23034\n")[0]
    assert ("90a", False) in [(v.sm, runs) for v, runs in nearest(matrix, l4, X86, count=9)]


def test_sm_built_only_for_the_other_system_says_so():
    a100_on_arm = gpus("0, NVIDIA A100-SXM4-80GB, 8.0, 580.159.04, 81920\n")
    (m,) = match(MATRIX, a100_on_arm, ARM)
    assert m.variant is None and "(SM 80 is built only for x86_64-linux)" in m.problem
    assert "nearest: vllm-python312-cuda12_9-sm90-arm64" in m.problem


def test_disabled_variant_gives_its_reason():
    data = tomllib.loads((support.REPO / "nix" / "variants.toml").read_text())
    next(row for row in data["sm"] if row["sm"] == "89")["disabled"] = "broken at this pin"
    matrix = Matrix.from_toml(data)
    (m,) = match(matrix, gpus("0, NVIDIA L4, 8.9, 580.159.04, 23034\n"), X86)
    assert m.variant is None and m.problem.endswith(
        "vllm-python312-cuda12_9-sm89 is disabled in nix/variants.toml: broken at this pin"
    )


def test_no_gpu_says_so(tmp_path):
    with pytest.raises(SelectionError, match="^no NVIDIA GPU found \\(nvidia-smi lists none\\)"):
        local_variants(MATRIX, [], X86)
    with pytest.raises(SelectionError, match="nvidia-smi is not on PATH"):
        auto_variants(MATRIX, smi=str(tmp_path / "nvidia-smi"))
    no_devices = gpu_replay.smi(tmp_path, b"No devices were found\n", status=6)
    with pytest.raises(SelectionError, match="nvidia-smi lists none"):
        auto_variants(MATRIX, smi=str(no_devices))


def test_show_lists_each_gpu_and_json(tmp_path):
    smi = str(gpu_replay.smi(tmp_path))
    out = io.StringIO()
    show(Project(support.REPO), smi=smi, system=X86, out=out)
    assert out.getvalue() == (
        "GPU 0: NVIDIA H100 80GB HBM3 (capability 9.0, driver 580.159.04) -> "
        "vllm-python312-cuda12_9-sm90 (invoke build --sm 90)\n"
    )
    out = io.StringIO()
    show(Project(support.REPO), smi=smi, system=ARM, out=out, as_json=True)
    data = json.loads(out.getvalue())
    assert data["system"] == ARM
    assert data["gpus"][0]["variant"] == "vllm-python312-cuda12_9-sm90-arm64"
    assert data["gpus"][0]["gpu"]["driver"] == "580.159.04" and data["gpus"][0]["min_driver"] == 575


def test_show_prints_every_unmatched_gpu_as_one_error_line(tmp_path):
    two_unknown = b"0, Tesla K80, 3.7, 470.256.02, 11441\n1, Tesla P100-PCIE-16GB, 6.0, 580.159.04, 16384\n"
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SelectionError, match="^GPU 1 \\(Tesla P100"):
        show(Project(support.REPO), smi=str(gpu_replay.smi(tmp_path, two_unknown)), system=X86, out=out, err=err)
    assert out.getvalue().count("-> no variant") == 2
    assert err.getvalue().startswith("error: GPU 0 (Tesla K80") and err.getvalue().count("\n") == 1


def which_cli(tmp_path, *args: str, path: str) -> subprocess.CompletedProcess[str]:
    env = {**support.nix_env(), "PATH": path}
    return subprocess.run(
        [sys.executable, "-m", "invoke", "which", *args], cwd=support.REPO, env=env, capture_output=True, text=True
    )


def test_invoke_which_with_a_replayed_gpu_and_without_one(tmp_path):
    bin_dir = tmp_path / "bin"
    gpu_replay.smi(bin_dir)
    python_bin = str(__import__("pathlib").Path(sys.executable).parent)
    proc = which_cli(tmp_path, "--json", path=f"{bin_dir}:{python_bin}")
    assert proc.returncode == 0, proc.stderr
    assert [g["variant"] for g in json.loads(proc.stdout)["gpus"]] == [
        f"vllm-python312-cuda12_9-sm90{'-arm64' if host_system().startswith('aarch64') else ''}"
    ]
    proc = which_cli(tmp_path, path=python_bin)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: no NVIDIA GPU found (nvidia-smi is not on PATH: no NVIDIA driver here); name the variant instead, "
        "e.g. --sm 90 (`invoke variants` lists them)"
    ]


def test_python_m_which_with_a_replayed_gpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vllm_variants.which", "--json", "--nvidia-smi", str(gpu_replay.smi(tmp_path))],
        cwd=support.REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["gpus"][0]["gpu"]["name"] == "NVIDIA H100 80GB HBM3"
