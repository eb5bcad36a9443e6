"""smoke/check.py on its own: any python3, no Nix (issue #3).

The same script runs inside every built result (tests/test_smoke.py) and on
the GPU machine under its own CUDA PyTorch, without vllm; that run's output is
kept as tests/fixtures/gpu/h100/smoke-check.json.
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
from vllm_variants.smoke import report as reporting
from vllm_variants.smoke.check import CHECKS, sass_runs_on, version_tuple
from vllm_variants.smoke.report import Options, ResultReport, SmokeReport

CHECK = support.REPO / "src" / "vllm_variants" / "smoke" / "check.py"
FIXTURES = support.REPO / "tests" / "fixtures"
VARIANT_SM90 = FIXTURES / "smoke" / "variant-sm90.json"
H100 = FIXTURES / "gpu" / "h100"
GPU_CAPTURE = H100 / "smoke-check.json"
HAS_NVIDIA_DRIVER = os.path.exists("/proc/driver/nvidia/version")


def run_check(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict]:
    proc = subprocess.run(
        [sys.executable, str(CHECK), *args], capture_output=True, text=True, env=env, cwd=support.REPO
    )
    return proc, (json.loads(proc.stdout) if proc.stdout.strip() else {})


def by_id(report: dict) -> dict[int, dict]:
    assert [(c["id"], c["name"]) for c in report["checks"]] == list(CHECKS)
    return {c["id"]: c for c in report["checks"]}


def test_committed_variant_record_is_the_matrix_row():
    """The metadata the GPU-machine run is given: the sm90 row, as `invoke variants --json` prints it."""
    matrix = Matrix.load(support.REPO / "nix" / "variants.toml")
    assert json.loads(VARIANT_SM90.read_text()) == matrix.by_name("vllm-python312-cuda12_9-sm90").to_json()


def test_without_torch_or_vllm_every_check_still_reports():
    proc, report = run_check("--variant-json", str(VARIANT_SM90), "--generate")
    assert proc.returncode == 1 and report["ok"] is False
    checks = by_id(report)
    assert checks[1]["reason"] == "import vllm failed: ModuleNotFoundError: No module named 'vllm'"
    assert checks[2]["reason"].startswith("cannot import vllm (check 1): ")
    assert checks[3]["reason"] == "import torch failed: ModuleNotFoundError: No module named 'torch'"
    assert checks[4]["status"] == "fail" and checks[4]["reason"].startswith("torch did not import (check 3)")
    assert checks[5]["status"] == "fail"
    if not HAS_NVIDIA_DRIVER:
        assert (checks[6]["status"], checks[6]["no_gpu"]) == ("fail", True)
        assert checks[6]["reason"].startswith("no GPU: no NVIDIA driver found (pynvml: ")
    assert (checks[7]["status"], checks[7]["no_gpu"]) == ("fail", True)
    assert report["variant"]["name"] == "vllm-python312-cuda12_9-sm90"


def test_stdout_holds_only_the_report_whatever_the_checked_packages_print(tmp_path):
    """vllm logs to stdout; a C library may write to fd 1: both end up on stderr."""
    fake = tmp_path / "site"
    (fake / "vllm").mkdir(parents=True)
    (fake / "vllm" / "__init__.py").write_text(
        "import os\nprint('INFO vllm says hello on stdout')\nos.write(1, b'raw fd 1 write\\n')\n"
        "raise ImportError('broken on purpose')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(fake)}
    progress = tmp_path / "progress.jsonl"
    proc, report = run_check("--variant-json", str(VARIANT_SM90), "--progress", str(progress), env=env)
    assert "INFO vllm says hello on stdout" in proc.stderr and "raw fd 1 write" in proc.stderr
    assert by_id(report)[1]["reason"] == "import vllm failed: ImportError: broken on purpose"
    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    assert lines == report["checks"]


@pytest.mark.parametrize(("found", "status"), [("0.15.1+cu129", "pass"), ("0.16.0", "fail")])
def test_check_1_compares_vllm_with_the_version_the_result_claims(tmp_path, found, status):
    """A vllm other than the result's (say a pip one on PYTHONPATH) fails check 1; a local tag does not."""
    fake = tmp_path / "site" / "vllm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"__version__ = {found!r}\n")
    claimed = {**json.loads(VARIANT_SM90.read_text()), "versions": {"vllm": "0.15.1"}}
    variant = tmp_path / "variant.json"
    variant.write_text(json.dumps(claimed))
    _, report = run_check("--variant-json", str(variant), env={**os.environ, "PYTHONPATH": str(fake.parent)})
    check = by_id(report)[1]
    assert check["status"] == status
    if status == "fail":
        assert check["reason"] == f"imported vllm 0.16.0 where the result claims 0.15.1 (from {fake})"


def test_missing_metadata_fails_the_checks_that_need_it(tmp_path):
    _, report = run_check("--variant-json", str(tmp_path / "absent.json"), "--allow-no-gpu")
    checks = by_id(report)
    assert checks[4]["reason"] == f"no variant metadata at {tmp_path / 'absent.json'} (not a vllm-variants result?)"
    assert report["variant"] is None


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["--help"], 0, "usage: check.py"),
        (["--bogus"], 2, "check.py: unknown argument '--bogus'"),
        (["--variant-json"], 2, "check.py: --variant-json needs a value"),
    ],
)
def test_arguments(args, code, text):
    proc = subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True)
    assert proc.returncode == code
    assert text in proc.stdout + proc.stderr


def test_the_h100_capture_holds_a_real_gpu_run():
    """A capture check only: what the GPU machine's run recorded (python3 3.12, its own CUDA PyTorch, no vllm,
    --generate). test_todays_checks_on_the_h100s_torch runs today's checks on the same facts."""
    # captured on the GPU machine (the device command is in issue #3's report); missing, this fails
    report = json.loads(GPU_CAPTURE.read_text())
    checks = by_id(report)
    # no vllm on that machine: 1, 2 and 5 fail, and say so
    assert checks[1]["status"] == "fail" and "No module named 'vllm'" in checks[1]["reason"]
    assert checks[2]["status"] == checks[5]["status"] == "fail"
    # 3 sees the real GPU, as nvidia-smi and torch.txt (captured apart) do
    torch_txt = json.loads((H100 / "torch.txt").read_text())
    assert checks[3]["status"] == "pass", checks[3]
    assert checks[3]["details"]["available"] is True
    gpu = checks[3]["details"]["gpus"][0]
    assert (gpu["name"], gpu["capability"]) == ("NVIDIA H100 80GB HBM3", "9.0")
    assert (gpu["name"], gpu["capability"]) == (torch_txt["name"], ".".join(map(str, torch_txt["capability"])))
    # 4: the H100 is the 9.0 the sm90 record claims; a pip torch carries more archs than sm_90
    assert "will not run on" not in checks[4]["reason"]
    assert checks[4]["details"]["gpus"][0]["capability"] == checks[4]["details"]["claimed_capability"] == "9.0"
    if checks[4]["status"] == "fail":
        assert checks[4]["reason"].endswith("not sm_90 alone: not this variant's torch")
    # 6: a real driver, new enough for CUDA 12.9
    assert checks[6]["status"] == "pass" and version_tuple(checks[6]["details"]["driver"]) >= (575,)
    # 7: a GPU is there, vllm is not
    assert checks[7]["status"] == "fail" and checks[7]["reason"].startswith("cannot import vllm (check 1)")
    # the runner's reports take it as it is
    result = ResultReport(
        name="h100",
        result=Path("h100"),
        store_path="h100",
        variant=report["variant"],
        checks=report["checks"],
        exit_code=1,
        seconds=report["seconds"],
    )
    suite = reporting.junit_tree(SmokeReport([result], Options(generate=True))).getroot()[0]
    assert [case.get("name") for case in suite.iter("testcase")] == [f"{i} {n}" for i, n in CHECKS]


# A torch that answers what the H100's torch 2.11.0+cu130 answered (tests/fixtures/gpu/h100/torch.txt).
H100_TORCH = """\
import json, os
_facts = json.load(open(os.environ["H100_TORCH_FACTS"]))
__version__ = _facts["torch"]
class version:
    cuda = _facts["cuda"]
class cuda:
    is_available = staticmethod(lambda: _facts["available"])
    device_count = staticmethod(lambda: _facts["device_count"])
    get_device_capability = staticmethod(lambda index: tuple(_facts["capability"]))
    get_device_name = staticmethod(lambda index: _facts["name"])
class _C:
    _cuda_getArchFlags = staticmethod(lambda: _facts["arch_flags"])
"""


def test_todays_checks_on_the_h100s_torch(tmp_path):
    """check.py as it is today, given a torch that replays the H100's answers: checks 3 and 4 say what the real run said."""
    if not GPU_CAPTURE.exists():
        pytest.fail(f"{GPU_CAPTURE.relative_to(support.REPO)} is missing")
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(H100_TORCH)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "H100_TORCH_FACTS": str(H100 / "torch.txt")}
    _, today = run_check("--variant-json", str(VARIANT_SM90), env=env)
    captured = by_id(json.loads(GPU_CAPTURE.read_text()))
    for check_id in (3, 4):
        ours = by_id(today)[check_id]
        assert (ours["status"], ours["reason"]) == (captured[check_id]["status"], captured[check_id]["reason"])
        assert ours["details"] == captured[check_id]["details"]


@pytest.mark.parametrize(
    ("built", "gpu", "runs"),
    [
        ("8.0", "8.6", True),
        ("8.0", "8.9", True),
        ("8.6", "8.0", False),
        ("9.0", "8.0", False),
        ("8.0", "9.0", False),
        ("9.0a", "9.0", True),
        ("9.0a", "9.0a", True),
        ("10.0a", "10.3", False),
        ("10.0", "10.3", True),
        ("12.0", "12.1", True),
        ("10.0f", "10.3", True),
        ("10.3f", "10.0", False),
        ("12.0f", "12.1", True),
        ("12.0f", "10.0", False),
        ("sm_90a", "9.0", True),
        ("sm_80", "sm_86", True),
    ],
)
def test_sass_compatibility_rule(built, gpu, runs):
    assert sass_runs_on(built, gpu) is runs


def test_check_py_and_the_package_share_one_rule():
    """check.py run as a top-level module (as inside a result) loads vllm_variants/compat.py by path."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import check; "
            "print(check.sass_runs_on.__module__, check.sass_runs_on('8.0', '8.6'))",
            str(CHECK.parent),
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        cwd="/",
    )
    assert proc.stdout.split() == ["vllm_variants_compat", "True"], proc.stderr
    from vllm_variants import compat
    from vllm_variants.smoke import check

    assert check.sass_runs_on is compat.sass_runs_on


def test_junit_carries_any_text_the_checked_packages_printed():
    """Colour codes and control characters from torch or vllm must not make the XML unreadable."""
    import xml.etree.ElementTree as ET

    checks = [
        {"id": i, "name": n, "status": "fail", "reason": f"\x1b[31mboom\x1b[0m {i}\x00\x07 done"} for i, n in CHECKS
    ]
    result = ResultReport(
        name="sm90\x1b",
        result=Path("r\x01"),
        store_path="/nix/store/x",
        variant=None,
        checks=checks,
        exit_code=1,
        seconds=1.0,
        stderr_tail="\x1b[1mWARNING\x1b[0m \x0c tail",
    )
    text = ET.tostring(reporting.junit_tree(SmokeReport([result], Options())).getroot(), encoding="unicode")
    root = ET.fromstring(text)  # parses again
    failures = [f.get("message") for f in root.iter("failure")]
    assert failures[0] == "boom 1\ufffd\ufffd done" and len(failures) == len(CHECKS)
    assert root.find("./testsuite/system-err").text == "WARNING \ufffd tail"


@pytest.mark.parametrize(("claimed", "status"), [("12.8", "pass"), ("12.9", "fail")])
def test_check_3_holds_a_torch_wheel_row_to_the_cuda_line_it_claims(tmp_path, claimed, status):
    """Issue #23: a torch = "wheel" row lives on its wheel's CUDA line, so check 3 makes no
    exception for it: torch-bin saying CUDA 12.8 in a result that claims 12.9 fails."""
    facts = {**json.loads((H100 / "torch.txt").read_text()), "torch": "2.9.0", "cuda": "12.8"}
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(H100_TORCH)
    variant = tmp_path / "variant.json"
    row = {**json.loads(VARIANT_SM90.read_text()), "torch": "wheel", "cuda": claimed}
    variant.write_text(json.dumps({**row, "versions": {"torch": "2.9.0", "cuda": claimed}}))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "H100_TORCH_FACTS": str(tmp_path / "facts.json")}
    _, report = run_check("--variant-json", str(variant), env=env)
    check = by_id(report)[3]
    assert check["status"] == status, check
    assert "wheel_built_with_cuda" not in check["details"]
    if status == "fail":
        assert check["reason"] == "cuda 12.8 where the result claims 12.9"
