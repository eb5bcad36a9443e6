"""`invoke doctor` with the real Nix: this machine as it is (no GPU), and with a replayed H100.

Outputs no capture holds (an old driver, a driver that is not loaded) are the
captured H100 lines with one field changed, or nvidia-smi's own message; each
test says which.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import gpu_replay
import pytest
import support

from vllm_variants.doctor import DoctorFailed, diagnose, show
from vllm_variants.errors import PreflightError
from vllm_variants.nix import Nix
from vllm_variants.project import Project
from vllm_variants.resources import GIB, Host, nvcc_jobs

pytestmark = pytest.mark.nix

PROJECT = Project(support.REPO)
X86 = "x86_64-linux"


def run_doctor(tmp_path, *, config: str = "", smi: Path | None = None, host: Host | None = None, system=X86):
    env = support.nix_env(config)
    return diagnose(
        PROJECT,
        nix=Nix(env=env),
        env=env,
        smi=str(smi or tmp_path / "no-nvidia-smi"),
        host=host or Host(cores=16, mem_bytes=64 * GIB),
        system=system,
    )


def errors(report) -> list[str]:
    return [p.text for p in report.problems if p.severity == "error"]


def test_this_machine_without_a_gpu_builds_and_warns(tmp_path):
    report = run_doctor(tmp_path)
    data = report.to_json()
    assert data["ok"] is True and errors(report) == []
    assert data["nix"]["version"] == Nix(env=support.nix_env()).version_text and data["nix"]["flakes"] is True
    assert data["build"]["system"] == X86 and data["build"]["big_parallel"] is True
    assert data["build"]["systems"][X86] == {"local": True, "builders": [], "buildable": True}
    nix_cores = int(Nix(env=support.nix_env()).setting("cores") or 0)
    assert data["host"]["nix_cores"] == (min(nix_cores, 16) if nix_cores else 16)
    assert data["host"]["nvcc_jobs"] == nvcc_jobs(data["host"]["nix_cores"], 64 * GIB, 8)  # the flake's rule
    assert data["gpus"] == []
    assert [p["text"] for p in data["problems"]] == [
        "no NVIDIA GPU found (nvidia-smi is not on PATH): this machine can build variants; run them where a GPU "
        "is, or install the NVIDIA driver (>= 570)"  # the default set's lowest: the torch-bin row's CUDA 12.8
    ]


def test_replayed_h100_gets_the_sm90_variant_and_its_driver_is_fine(tmp_path):
    report = run_doctor(tmp_path, smi=gpu_replay.smi(tmp_path))
    assert report.ok
    (gpu,) = report.gpus
    assert gpu["variant"] == "vllm-python312-cuda12_9-sm90" and gpu["driver"] == "580.159.04"
    assert (gpu["min_driver"], gpu["driver_ok"], gpu["driver_cuda"]) == (575, True, "13.0")
    assert report.problems == []


def test_old_driver_blocks_running(tmp_path):
    # The captured H100 line with the driver replaced by a 550 one (CUDA 12.4).
    old = gpu_replay.capture("query-gpu-csv-noheader.txt").output.replace(b"580.159.04", b"550.54.15")
    header = (
        gpu_replay.capture("nvidia-smi.txt")
        .output.replace(b"580.159.04", b"550.54.15 ")
        .replace(b"CUDA Version: 13.0", b"CUDA Version: 12.4")
    )
    report = run_doctor(tmp_path, smi=gpu_replay.smi(tmp_path, old, header=header))
    assert not report.ok
    assert errors(report) == [
        "GPU 0 (NVIDIA H100 80GB HBM3) has driver 550.54.15, older than the 575 that CUDA "
        "12.9 needs: install NVIDIA driver >= 575"
    ]
    assert report.gpus[0]["driver_ok"] is False and report.gpus[0]["driver_cuda"] == "12.4"


def test_driver_not_loaded_blocks_and_old_query_fields_still_name_the_gpus(tmp_path):
    not_loaded = (
        b"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        b"Make sure that the latest NVIDIA driver is installed and running.\n\n"
    )
    report = run_doctor(tmp_path, smi=gpu_replay.smi(tmp_path / "a", not_loaded, status=9))
    assert len(errors(report)) == 1 and errors(report)[0].startswith(
        "nvidia-smi failed (exit 9): NVIDIA-SMI has failed"
    )
    # The real answer to a field the driver does not know; `-L` (captured) still names the GPU.
    bad = gpu_replay.capture("query-gpu-bad-field.txt")
    report = run_doctor(tmp_path, smi=gpu_replay.smi(tmp_path / "b", bad.output, status=bad.exit))
    assert errors(report)[0].startswith("nvidia-smi does not know the query field 'not_a_field'")
    assert report.gpus == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "capability": None, "variant": None}]


def test_gpu_without_variant_blocks(tmp_path):
    p100 = b"0, Tesla P100-PCIE-16GB, 6.0, 580.159.04, 16384\n"  # the captured format, another GPU
    report = run_doctor(tmp_path, smi=gpu_replay.smi(tmp_path, p100))
    assert not report.ok and "has no x86_64-linux variant; nearest: vllm-python312-cuda12_9-sm61" in errors(report)[0]


def test_arm64_gpu_needs_an_aarch64_builder(tmp_path):
    report = run_doctor(tmp_path, config="builders =", smi=gpu_replay.smi(tmp_path), system="aarch64-linux")
    assert report.gpus[0]["variant"] == "vllm-python312-cuda12_9-sm90-arm64"
    assert any("no machine can build aarch64-linux variants" in e for e in errors(report))
    report = run_doctor(
        tmp_path,
        config="builders = ssh-ng://gh200 aarch64-linux - 4 1 big-parallel",
        smi=gpu_replay.smi(tmp_path / "b"),
        system="aarch64-linux",
    )
    assert report.ok and report.build["systems"]["aarch64-linux"]["builders"] == ["ssh-ng://gh200"]


def test_flakes_off_and_no_big_parallel_block_building(tmp_path):
    report = run_doctor(tmp_path, config="experimental-features =\nsystem-features = kvm")
    assert report.nix["flakes"] is False and report.build["big_parallel"] is False
    texts = errors(report)
    assert texts[0] == (
        "Nix's experimental feature 'flakes' is not enabled: add 'experimental-features = "
        "nix-command flakes' to ~/.config/nix/nix.conf (or /etc/nix/nix.conf, then restart "
        "nix-daemon)"
    )
    assert texts[1].startswith("this Nix lacks the big-parallel system feature")
    assert any(t.startswith("no machine can build x86_64-linux variants") for t in texts)


def test_flakes_without_nix_command_in_nix_conf_is_fine(tmp_path):
    """The tool turns nix-command on in each call; only flakes are the user's to enable."""
    report = run_doctor(tmp_path, config="experimental-features = flakes")
    assert report.nix["flakes"] is True and errors(report) == []


def test_doctor_and_build_preflight_say_the_same(tmp_path):
    env = support.nix_env("experimental-features =")
    report = diagnose(
        PROJECT,
        nix=Nix(env=env),
        env=env,
        smi=str(tmp_path / "no-nvidia-smi"),
        host=Host(cores=16, mem_bytes=64 * GIB),
        system=X86,
    )
    with pytest.raises(PreflightError) as raised:
        Nix(env=env).preflight()
    assert errors(report)[0] == str(raised.value)


def test_missing_nix_blocks(tmp_path):
    report = diagnose(
        PROJECT,
        nix=Nix(executable=str(tmp_path / "nix")),
        smi=str(tmp_path / "nvidia-smi"),
        host=Host(cores=2, mem_bytes=4 * GIB),
        system=X86,
    )
    assert errors(report) == [
        "nix is not installed (not on PATH): install Nix >= 2.18 (https://nixos.org/download) and enable flakes"
    ]
    assert report.host["nvcc_jobs"] == 1 and any("only 4.0 GiB of RAM" in p.text for p in report.problems)


def test_screen_shows_each_section_and_fails_on_errors(tmp_path):
    out = io.StringIO()
    env = support.nix_env()
    show(
        PROJECT,
        out=out,
        nix=Nix(env=env),
        env=env,
        smi=str(gpu_replay.smi(tmp_path)),
        system=X86,
        host=Host(cores=16, mem_bytes=64 * GIB),
    )
    text = out.getvalue()
    for label in ("Nix", "This system", "Builds for", "big-parallel", "Cores / RAM", "GPUs"):
        assert f"\n{label} " in text
    assert (
        "GPU 0: NVIDIA H100 80GB HBM3, capability 9.0, driver 580.159.04 (CUDA 13.0) -> "
        "vllm-python312-cuda12_9-sm90 (driver >= 575: ok)" in text
    )
    out = io.StringIO()
    with pytest.raises(DoctorFailed, match="^1 problem\\(s\\) block building or running"):
        show(
            PROJECT,
            out=out,
            nix=Nix(env=env),
            env=env,
            system=X86,
            smi=str(gpu_replay.smi(tmp_path / "b", b"0, Tesla P100-PCIE-16GB, 6.0, 580.159.04, 16384\n")),
        )
    assert "append one [[sm]] table" in out.getvalue()  # printed as text, not read as markup


def invoke_doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "doctor", "--json"], cwd=support.REPO, env=env, capture_output=True, text=True
    )


def test_invoke_doctor_exit_codes(tmp_path):
    nix_dir = str(Path(support.nix_executable()).parent)
    python_dir = str(Path(sys.executable).parent)
    proc = invoke_doctor({**support.nix_env(), "PATH": f"{python_dir}:{nix_dir}"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    gpu_replay.smi(tmp_path)
    proc = invoke_doctor({**support.nix_env(), "PATH": f"{tmp_path}:{python_dir}:{nix_dir}"})
    data = json.loads(proc.stdout)
    assert proc.returncode == 0 and data["gpus"][0]["sm"] == "90"
    proc = invoke_doctor({**support.nix_env("experimental-features ="), "PATH": f"{python_dir}:{nix_dir}"})
    assert proc.returncode == 1 and json.loads(proc.stdout)["ok"] is False
    assert proc.stderr.splitlines() == ["error: 1 problem(s) block building or running (listed above)"]
