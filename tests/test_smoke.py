"""`nox -s smoke` / `invoke smoke` against results really built from the
stand-in flake (issue #3).

The stand-in's torch sees a GPU only when VLLM_VARIANTS_STANDIN_GPUS names one,
and its pynvml reports a driver only with VLLM_VARIANTS_STANDIN_DRIVER
(tests/fixtures/nixpkgs/README.md); its LLM cannot run a model (no kernels).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import support

from vllm_variants.errors import SelectionError, SmokeFailed
from vllm_variants.matrix import Matrix
from vllm_variants.project import Project
from vllm_variants.smoke.check import CHECKS
from vllm_variants.smoke.session import JUNIT_XML, REPORT_JSON, smoke

pytestmark = pytest.mark.nix

MATRIX = Matrix.load(support.REPO / "nix" / "variants.toml")
SM90 = MATRIX.by_name("vllm-python312-cuda12_9-sm90")
SM80 = MATRIX.by_name("vllm-python312-cuda12_9-sm80")
SM90_WHEEL = MATRIX.by_name("vllm-python312-cuda12_8-sm90-torchbin")
H100 = "NVIDIA H100 80GB HBM3:9.0"
A100 = "NVIDIA A100-SXM4-80GB:8.0"
A10 = "NVIDIA A10:8.6"
DRIVER = "575.57.08"
IMPORT_ERROR = "libcudart.so.12: cannot open shared object file: No such file or directory"
GPU_CHECKS = {3, 4, 6}


def build(flake: str, variants, standin: Path) -> list[Path]:
    installables = [f"{flake}#{v.attr_path()}" for v in variants]
    proc = support.nix("build", "--json", "--no-link", *installables, *support.override(standin))
    return [Path(item["outputs"]["out"]) for item in json.loads(proc.stdout)]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Path]:
    """sm90, sm80 and sm90 torch-bin results, and an sm90 result whose `import vllm` is broken."""
    tmp = tmp_path_factory.mktemp("smoke")
    flake = support.flake_ref(support.make_project(tmp / "flake", git_init=False))
    sm90, sm80, wheel = build(flake, [SM90, SM80, SM90_WHEEL], support.STANDIN)
    broken_standin = support.copy_standin(tmp / "nixpkgs-broken", vllmImportError=IMPORT_ERROR)
    (broken,) = build(flake, [SM90], broken_standin)
    return {"sm90": sm90, "sm80": sm80, "broken": broken, "wheel": wheel}


@pytest.fixture
def checkout(tmp_path, results):
    """A checkout whose result-* links point at the given built results."""

    def make(*keys: str, **links: Path) -> Path:
        root = support.make_project(tmp_path / "checkout", git_init=False)
        names = {"sm90": SM90.name, "sm80": SM80.name, "broken": f"{SM90.name}-broken", "wheel": SM90_WHEEL.name}
        for key in keys:
            (root / f"result-{names[key]}").symlink_to(results[key])
        for name, target in links.items():
            (root / name).symlink_to(target)
        return root

    return make


@pytest.fixture
def hardware(monkeypatch):
    """Simulate a GPU and a driver for the stand-in (None: none of it)."""

    def set_(gpus: str | None = None, driver: str | None = None) -> None:
        for name, value in (("VLLM_VARIANTS_STANDIN_GPUS", gpus), ("VLLM_VARIANTS_STANDIN_DRIVER", driver)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)

    return set_


def run_smoke(root: Path, *results: str, **kwargs) -> tuple[dict, str, SmokeFailed | None]:
    """smoke() in-process: (smoke-report.json, the tables, the failure if any)."""
    out = io.StringIO()
    failure = None
    try:
        smoke(Project(root), results, out=out, cwd=root, **kwargs)
    except SmokeFailed as exc:
        failure = exc
    return json.loads((root / REPORT_JSON).read_text()), out.getvalue(), failure


def checks_of(report: dict, index: int = 0) -> dict[int, dict]:
    checks = report["results"][index]["checks"]
    assert [(c["id"], c["name"]) for c in checks] == list(CHECKS)  # all seven, in order, every time
    return {c["id"]: c for c in checks}


def statuses(checks: dict[int, dict]) -> dict[int, str]:
    return {i: c["status"] for i, c in checks.items()}


# -- the checks ---------------------------------------------------------------


def test_every_check_passes_with_a_gpu_and_a_driver(checkout, hardware):
    hardware(gpus=H100, driver=DRIVER)
    report, tables, failure = run_smoke(checkout("sm90"))
    assert failure is None and report["ok"]
    checks = checks_of(report)
    assert statuses(checks) == {1: "pass", 2: "pass", 3: "pass", 4: "pass", 5: "pass", 6: "pass", 7: "skip"}
    assert checks[1]["details"]["version"] == "0.15.1"
    assert checks[2]["reason"] == "vllm.entrypoints.llm.LLM"
    assert checks[3]["details"]["torch"] == "2.9.1" and checks[3]["details"]["cuda"] == "12.9"
    assert checks[3]["details"]["gpus"] == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "capability": "9.0"}]
    assert checks[4]["details"]["torch_arch_flags"] == ["sm_90"]
    assert checks[5]["details"]["required"] == ["modelopt", "modelopt_fp4"]
    assert checks[6]["details"] == {"driver": DRIVER, "source": "pynvml", "min_driver": 575}
    assert "not requested" in checks[7]["reason"]
    assert report["results"][0]["variant"]["name"] == SM90.name
    assert "NVIDIA H100 80GB HBM3" in tables


def test_a_torch_wheel_row_passes_with_torch_as_the_one_exception(checkout, hardware):
    """Issue #14: torch-bin carries every SM: the checks accept exactly that for a
    torch = "wheel" row, and nothing more. It says CUDA 12.8 (its wheel's build), the
    row's own line (issue #23): check 3 needs no exception for it."""
    root = checkout("wheel")
    hardware(gpus=H100, driver=DRIVER)
    report, _, failure = run_smoke(root)
    assert failure is None and report["ok"], report
    checks = checks_of(report)
    assert checks[3]["details"]["torch"] == "2.9.0" and checks[3]["details"]["cuda"] == SM90_WHEEL.cuda == "12.8"
    assert "wheel_built_with_cuda" not in checks[3]["details"]
    assert checks[6]["details"]["min_driver"] == SM90_WHEEL.min_driver == 570
    flags = checks[4]["details"]["torch_arch_flags"]
    assert "sm_90" in flags and len(flags) > 1
    # the same wheel on a GPU it carries no SASS for (a P40, 6.1) still fails check 4
    hardware(gpus="Tesla P40:6.1", driver=DRIVER)
    report, _, failure = run_smoke(root)
    assert failure is not None and checks_of(report)[4]["status"] == "fail"


@pytest.mark.parametrize("generate", [False, True], ids=["checks", "generate"])
def test_without_a_gpu_the_gpu_checks_say_no_gpu_and_fail(checkout, hardware, generate):
    hardware()
    root = checkout("sm90")
    report, tables, failure = run_smoke(root, generate=generate)
    no_gpu = GPU_CHECKS | ({7} if generate else set())
    checks = checks_of(report)
    for i, check in checks.items():
        if i in no_gpu:
            assert (check["status"], check["no_gpu"]) == ("fail", True), check
            assert check["reason"].startswith("no GPU: ")
        else:
            assert check["no_gpu"] is False
    assert statuses(checks)[1] == statuses(checks)[2] == statuses(checks)[5] == "pass"
    assert failure is not None and "--allow-no-gpu" in str(failure) and "\n" not in str(failure)
    assert tables.count("no GPU") >= 2 * len(no_gpu)  # the status column and the reason

    report, _, failure = run_smoke(root, generate=generate, allow_no_gpu=True)
    assert failure is None and report["ok"] and report["allow_no_gpu"]
    for i, check in checks_of(report).items():
        if i in no_gpu:
            assert (check["status"], check["no_gpu"]) == ("skip", True)
            assert check["reason"].startswith("no GPU: ")


def test_without_a_gpu_the_first_no_gpu_row_names_allow_no_gpu(checkout, hardware):
    """Issue #22: on a build host the way out (--allow-no-gpu) was only on the last
    line, after the tables; it goes where the first "no GPU" is, and only there."""
    hardware()
    root = checkout("sm90", "sm80")
    _, tables, failure = run_smoke(root)
    assert failure is not None
    rows = [line for line in tables.splitlines() if "no GPU" in line]
    assert "--allow-no-gpu" in rows[0], rows[0]
    assert tables.count("--allow-no-gpu") == 1  # once, not on every row of every result


def test_broken_vllm_import_fails_check_1_and_still_reports_the_rest(checkout, hardware):
    hardware(gpus=H100, driver=DRIVER)
    report, _, failure = run_smoke(checkout("broken"))
    assert failure is not None
    checks = checks_of(report)
    assert checks[1]["status"] == "fail"
    assert checks[1]["reason"] == f"import vllm failed: ImportError: {IMPORT_ERROR}"
    assert statuses(checks) == {1: "fail", 2: "fail", 3: "pass", 4: "pass", 5: "fail", 6: "pass", 7: "skip"}
    assert "check 1" in checks[2]["reason"] and "check 1" in checks[5]["reason"]
    assert report["results"][0]["exit_code"] == 1 and report["results"][0]["error"] is None


def test_sm90_result_on_an_sm80_gpu_fails_check_4(checkout, hardware):
    """Two results at once: the sm80 one passes on the A100, the sm90 one cannot run there."""
    hardware(gpus=A100, driver=DRIVER)
    report, _, failure = run_smoke(checkout("sm90", "sm80"))
    by_name = {r["name"]: i for i, r in enumerate(report["results"])}
    sm90, sm80 = checks_of(report, by_name[SM90.name]), checks_of(report, by_name[SM80.name])
    assert statuses(sm80) == {1: "pass", 2: "pass", 3: "pass", 4: "pass", 5: "pass", 6: "pass", 7: "skip"}
    assert statuses(sm90) == {**statuses(sm80), 4: "fail"}
    reason = sm90[4]["reason"]
    assert "\n" not in reason
    assert reason.startswith("the sm90 build will not run on GPU 0, NVIDIA A100-SXM4-80GB (capability 8.0)")
    assert "invoke build --sm 80" in reason
    assert failure is not None and f"{SM90.name}: 4 variant vs GPU" in str(failure)
    assert SM80.name not in str(failure)


def test_sm80_result_on_an_sm86_gpu_fails_check_4_saying_it_would_run(checkout, hardware):
    """Capability 8.0 SASS runs on an 8.6 GPU, but the variant is not built for it: say both."""
    hardware(gpus=A10, driver=DRIVER)
    report, _, failure = run_smoke(checkout("sm80"))
    check = checks_of(report)[4]
    assert check["status"] == "fail" and failure is not None
    assert check["reason"] == (
        "the sm80 build is not built for GPU 0, NVIDIA A10 (capability 8.6): its capability 8.0 SASS runs there, "
        "but no kernel is compiled for that GPU; use the sm86 variant (invoke build --sm 86)"
    )


@pytest.fixture(scope="module")
def mutants(tmp_path_factory) -> dict[str, Path]:
    """sm90 results of the flake broken on purpose (its read-back guard out): a second
    capability in the instance; forward-compat PTX left on (support.mutated_project)."""
    tmp = tmp_path_factory.mktemp("mutants")
    edits = {
        "second": ("cudaCapabilities = [ variant.capability ];", 'cudaCapabilities = [ variant.capability "8.0" ];'),
        "forward": ("cudaForwardCompat = false;", ""),
    }
    built = {}
    for key, edit in edits.items():
        root = support.mutated_project(tmp / key, {"nix/variant.nix": [edit]})
        (built[key],) = build(support.flake_ref(root), [SM90], support.STANDIN)
    return built


@pytest.mark.nvcc
def test_check_4_reads_torchs_arch_list_from_its_compiled_kernel(tmp_path, mutants, hardware):
    """Issue #25: torch's arch list comes from the kernel its build compiled (the stand-in
    reads torch/lib/libtorch_cuda.so, as real torch reports its own CUDA_ARCH_FLAGS). A
    second capability shows there; nccl's forward-compat PTX, linked into the same
    library, is not torch's own (the audit catches that one: tests/test_device_code.py)."""
    hardware(gpus=H100, driver=DRIVER)
    for key, status in (("second", "fail"), ("forward", "pass")):
        root = support.make_project(tmp_path / key, git_init=False)
        (root / f"result-{SM90.name}").symlink_to(mutants[key])
        report, _, failure = run_smoke(root)
        check = checks_of(report)[4]
        assert check["status"] == status, (key, check)
        if status == "fail":
            assert check["details"]["torch_arch_flags"] == ["sm_80", "sm_90"]
            assert check["reason"] == "torch was compiled for sm_80 sm_90, not sm_90 alone: not this variant's torch"
            assert failure is not None
        else:
            assert check["details"]["torch_arch_flags"] == ["sm_90"] and failure is None


@pytest.mark.parametrize("gpus", [H100, None], ids=["gpu", "no-gpu"])
def test_a_driver_below_the_minimum_fails_check_6(checkout, hardware, gpus):
    """Also without a visible GPU: a driver too old for CUDA 12.9 is why torch sees none."""
    hardware(gpus=gpus, driver="550.54.15")
    report, _, failure = run_smoke(checkout("sm90"), allow_no_gpu=True)
    check = checks_of(report)[6]
    assert (check["status"], check["no_gpu"]) == ("fail", False)
    assert check["reason"] == "driver 550.54.15 is older than 575, the minimum for CUDA 12.9: upgrade the NVIDIA driver"
    assert failure is not None


def test_generate_on_a_simulated_gpu_fails_with_a_clear_reason(checkout, hardware):
    hardware(gpus=H100, driver=DRIVER)
    report, _, failure = run_smoke(checkout("sm90"), generate=True)
    check = checks_of(report)[7]
    assert check["status"] == "fail"
    assert check["reason"] == (
        "the engine did not start: RuntimeError: the vllm-variants stand-in has no kernels to run a model with"
    )
    assert check["details"]["model"]["num_hidden_layers"] == 2
    assert statuses(checks_of(report)) == {1: "pass", 2: "pass", 3: "pass", 4: "pass", 5: "pass", 6: "pass", 7: "fail"}


def test_a_check_process_that_dies_keeps_what_it_finished(checkout, hardware, results, tmp_path):
    """A crash in check 7 (here: a tempfile module that segfaults, found first
    on PYTHONPATH) leaves checks 1-6 and fails 7 naming the signal."""
    hardware(gpus=H100, driver=DRIVER)
    crash = tmp_path / "crash"
    crash.mkdir()
    (crash / "tempfile.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    wrapped = tmp_path / "wrapped-result"
    (wrapped / "bin").mkdir(parents=True)
    (wrapped / "share").symlink_to(results["sm90"] / "share")
    python = wrapped / "bin" / "python"
    python.write_text(
        f'#!/bin/sh\nPYTHONPATH={crash}${{PYTHONPATH:+:$PYTHONPATH}} exec {results["sm90"]}/bin/python "$@"\n'
    )
    python.chmod(0o755)
    root = checkout()
    report, _, failure = run_smoke(root, str(wrapped), generate=True)
    result = report["results"][0]
    checks = checks_of(report)
    assert statuses(checks) == {1: "pass", 2: "pass", 3: "pass", 4: "pass", 5: "pass", 6: "pass", 7: "fail"}
    assert checks[7]["reason"] == "not reported: the check process was killed by SIGSEGV"
    assert result["exit_code"] == -11 and "SIGSEGV" in result["error"]
    assert failure is not None


def test_a_result_this_machine_cannot_run_is_its_own_failure(checkout, hardware, results, tmp_path):
    """An aarch64 result's bin/python on x86_64 (here: an ELF no loader takes):
    that result fails with one line, the others are still checked."""
    hardware(gpus=H100, driver=DRIVER)
    foreign = tmp_path / "aarch64-result"
    (foreign / "bin").mkdir(parents=True)
    (foreign / "share").symlink_to(results["sm90"] / "share")
    python = foreign / "bin" / "python"
    python.write_bytes(b"\x7fELF" + bytes(range(60)) + b"\xff" * 64)
    python.chmod(0o755)
    root = checkout("sm90")
    report, _, failure = run_smoke(root, str(foreign), SM90.name)
    first, second = report["results"]
    assert first["error"] == (f"cannot run '{python}': not a program this machine can run (built for another system?)")
    assert all(c["status"] == "fail" for c in first["checks"])
    assert second["store_path"] == str(results["sm90"]) and second["error"] is None
    assert failure is not None


# -- selection ------------------------------------------------------------------


def test_names_sms_and_paths_select_results_once_each(checkout, hardware, results):
    hardware(gpus=H100, driver=DRIVER)
    root = checkout("sm90", "sm80")
    report, _, _ = run_smoke(root, "90", f"result-{SM90.name}", str(root / f"result-{SM80.name}"), SM90.name)
    assert [r["name"] for r in report["results"]] == [SM90.name, SM80.name]
    assert [r["store_path"] for r in report["results"]] == [str(results["sm90"]), str(results["sm80"])]


@pytest.mark.parametrize(
    ("links", "args", "message"),
    [
        ({}, (), "no result-* links in "),
        ({"sm90": True}, ("80",), f"{SM80.name} is not built here (no result-{SM80.name} in "),
        ({"sm90": True}, ("nope/result",), "no result at nope/result: give a result path, a variant name or an SM"),
        ({"sm90": True}, ("999",), "unknown SM '999'; valid SMs: 61, 70, 75"),
        ({"plain-dir": True}, (), "is not a built result: it has no bin/python"),
    ],
    ids=["no-links", "not-built", "bad-path", "bad-sm", "not-a-result"],
)
def test_bad_selection_is_one_line_and_writes_nothing(checkout, tmp_path, links, args, message):
    root = checkout(*[key for key in links if key == "sm90"])
    if "plain-dir" in links:
        (tmp_path / "not-a-result").mkdir()
        (root / "result-dir").symlink_to(tmp_path / "not-a-result")
    with pytest.raises(SelectionError) as info:
        smoke(Project(root), args, out=io.StringIO(), cwd=root)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (root / REPORT_JSON).exists() and not (root / JUNIT_XML).exists()


def test_a_dangling_result_link_fails_that_result_and_the_others_are_checked(checkout, hardware, tmp_path):
    """A garbage-collected result is one failed result, not the end of the run (issue #11)."""
    hardware(gpus=H100, driver=DRIVER)
    root = checkout("sm90")
    gone = tmp_path / "collected-store-path"
    (root / "result-gone").symlink_to(gone)
    report, tables, failure = run_smoke(root)
    assert [r["name"] for r in report["results"]] == ["result-gone", SM90.name]
    dangling, sm90 = report["results"]
    assert dangling["ok"] is False
    assert (
        dangling["error"] == f"{root / 'result-gone'} points to {gone}, which no longer exists "
        "(garbage-collected?); rebuild it"
    )
    assert {c["status"] for c in dangling["checks"]} == {"fail"} and len(dangling["checks"]) == len(CHECKS)
    assert sm90["ok"] is True and sm90["error"] is None
    assert failure is not None and str(failure).startswith("smoke failed, 7 of 14 checks: result-gone: 1 ")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_to_smoke_stops_the_checks_and_exits_at_once(checkout, tmp_path, signum):
    """SIGINT or SIGTERM sent to `invoke smoke` itself (not its group) while checks
    run: no check process outlives it, and it exits 130 or 143 without waiting
    for the checks' 900 s timeout (issue #11). The checks are slow because the
    results' own Python sleeps in a sitecustomize module (the invoking one does not)."""
    root = checkout("sm90", "sm80")
    slow = tmp_path / "slow-site"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        f"import os, sys, time\nif os.path.realpath(sys.executable) != {os.path.realpath(sys.executable)!r}:\n"
        "    time.sleep(300)\n"
    )
    env = {**support.nix_env(), "PYTHONPATH": str(slow)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "smoke", "--allow-no-gpu"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # both results' check processes started
            checks = [p for p in support.descendants(proc.pid) if b"import check" in support.cmdline(p)]
            if len(checks) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(checks) == 2, "the checks never started"
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)  # far less than the 300 s the checks sleep
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, stderr
    assert stderr.splitlines()[-1] == "interrupted" and "Traceback" not in stderr
    assert [p for p in checks if support.alive(p)] == [], "a check process outlived smoke"
    assert not (root / REPORT_JSON).exists()


# -- reports and the two front doors -----------------------------------------------------

ROW = re.compile(r"^│\s*(\d)\s*│\s*(.+?)\s*│\s*(pass|FAIL|skip|no GPU)\s*│\s*(.*?)\s*│$")


def test_json_and_junit_are_valid_and_match_the_table(checkout, hardware):
    """`invoke smoke` for real, two results at once: the table, the JSON and the JUnit agree."""
    hardware(gpus=H100, driver=DRIVER)
    root = checkout("sm90", "broken")
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "smoke", "--generate"], cwd=root, capture_output=True, text=True
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: smoke failed, ")

    report = json.loads((root / REPORT_JSON).read_text())
    suites = ET.parse(root / JUNIT_XML).getroot()
    assert suites.tag == "testsuites"
    assert [s.get("name") for s in suites] == [r["name"] for r in report["results"]]
    assert int(suites.get("tests")) == report["summary"]["checks"] == 14
    assert int(suites.get("failures")) == report["summary"]["fail"]
    assert int(suites.get("skipped")) == report["summary"]["skip"]

    # the table: one row per check, in the result order, status as the JSON says
    rows = [m.groups() for m in map(ROW.match, proc.stdout.splitlines()) if m]
    expected_rows = []
    for result, suite in zip(report["results"], suites):
        cases = suite.findall("testcase")
        assert len(cases) == 7
        for check, case in zip(result["checks"], cases):
            assert case.get("name") == f"{check['id']} {check['name']}"
            assert case.get("classname") == f"smoke.{result['name']}"
            failure, skipped = case.find("failure"), case.find("skipped")
            if check["status"] == "fail":
                assert failure is not None and skipped is None
                assert failure.get("message") == check["reason"]
            elif check["status"] == "skip":
                assert skipped is not None and failure is None and skipped.get("message") == check["reason"]
            else:
                assert failure is None and skipped is None and case.findtext("system-out") == check["reason"]
            status = {"pass": "pass", "fail": "FAIL", "skip": "skip"}[check["status"]]
            expected_rows.append((str(check["id"]), check["name"], status, check["reason"][:40]))
    assert [(i, n, s, r[:40]) for i, n, s, r in rows] == expected_rows
    # both claim the sm90 variant: the second is told apart by its path
    broken_link = root / f"result-{SM90.name}-broken"
    assert [r["name"] for r in report["results"]] == [SM90.name, f"{SM90.name} [{broken_link}]"]
    assert [r["checks"][0]["status"] for r in report["results"]] == ["pass", "fail"]
    assert [r["ok"] for r in report["results"]] == [False, False]  # check 7: the stand-in has no kernels


@pytest.mark.parametrize("allow", [True, False], ids=["allow-no-gpu", "no-gpu-fails"])
def test_nox_session_runs_for_real(checkout, hardware, allow, tmp_path):
    hardware()
    root = checkout("sm90")
    args = ["sm90", "--report-dir", str(tmp_path / "reports"), *(["--allow-no-gpu"] if allow else [])]
    proc = subprocess.run(
        [sys.executable, "-m", "nox", "-f", "noxfile.py", "-s", "smoke", "--", *args],
        cwd=root,
        capture_output=True,
        text=True,
    )
    report = json.loads((tmp_path / "reports" / REPORT_JSON).read_text())
    assert report["ok"] is allow and report["allow_no_gpu"] is allow
    ET.parse(tmp_path / "reports" / JUNIT_XML)
    assert proc.returncode == (0 if allow else 1), proc.stderr
    if not allow:
        assert "Session smoke aborted: error: smoke failed, 3 of 7 checks" in proc.stderr
    assert not (root / ".nox").exists()  # venv_backend="none": no virtualenv


def test_nox_posargs_errors_are_one_line(checkout):
    root = checkout("sm90")
    proc = subprocess.run(
        [sys.executable, "-m", "nox", "-f", "noxfile.py", "-s", "smoke", "--", "--bogus"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    line = next(line for line in proc.stderr.splitlines() if "aborted" in line)
    assert "unrecognized arguments: --bogus; usage: nox -s smoke -- " in line


def test_invoke_help_describes_every_parameter():
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "--help", "smoke"],
        cwd=support.REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in ("--results", "--generate", "--allow-no-gpu", "--jobs", "--report-dir"):
        line = next(line for line in proc.stdout.splitlines() if flag in line)
        assert len(line.split(flag, 1)[1].strip()) > 10, line


def test_benchmark_script_runs(results):
    proc = subprocess.run(
        [
            sys.executable,
            str(support.REPO / "benchmarks" / "bench_smoke.py"),
            str(results["sm90"]),
            "--runs",
            "1",
            "--no-targets",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert re.search(r"check / import vllm: \d+\.\d+x \(target <= 1\.3x\)", proc.stdout), proc.stdout
    assert "invoke smoke / import vllm:" in proc.stdout


# -- hostile data from a result (issue #21) ------------------------------------------


def _hostile_result(root: Path, report: dict, variant_json: bytes) -> Path:
    """A "result" whose Python prints `report` as its check report: what a broken
    or crafted build could hand the session."""
    result = root / "hostile"
    (result / "bin").mkdir(parents=True)
    (result / "share" / "vllm-variants").mkdir(parents=True)
    (result / "share" / "vllm-variants" / "variant.json").write_bytes(variant_json)
    data = root / "report.json"
    data.write_text(json.dumps(report))
    python = result / "bin" / "python"
    python.write_text(f"#!/bin/sh\ncat {data}\nexit 1\n")
    python.chmod(0o755)
    return result


def test_a_malformed_check_report_is_typed_and_bounded(tmp_path):
    """A non-numeric `seconds` or a missing `name` raised TypeError; a huge field
    went whole into both report files. Each field is now typed and bounded
    before it is kept."""
    root = support.make_project(tmp_path / "checkout", git_init=False)
    big = "x" * (1024 * 1024)
    report = {
        "schema": 1,
        "variant": {"name": big},
        "checks": [
            {"id": 1, "status": "pass", "seconds": "abc", "reason": big},  # no name, seconds not a number
            {"id": 2, "status": "fail", "seconds": None, "details": {"blob": big}},
            {"id": 3, "status": "bogus"},
            "not a record",
            {"id": 4, "status": "skip", "seconds": float("1e308") * 10, "no_gpu": "yes"},
        ],
    }
    result = _hostile_result(tmp_path, report, json.dumps({"name": big}).encode())
    session, _, failure = run_smoke(root, str(result))
    assert failure is not None
    files = [root / REPORT_JSON, root / JUNIT_XML]
    assert all(f.stat().st_size < 200 * 1024 for f in files), [f.stat().st_size for f in files]
    (checks,) = [r["checks"] for r in session["results"]]
    assert [(c["id"], c["name"]) for c in checks] == list(CHECKS)
    assert checks[0]["status"] == "pass" and checks[0]["seconds"] == 0.0
    assert checks[0]["reason"].startswith("xxx") and checks[0]["reason"].endswith(" more characters)")
    assert checks[1]["status"] == "fail" and checks[1]["details"] == {"omitted": "more than 65536 bytes of details"}
    assert checks[2]["status"] == "fail" and checks[2]["reason"].startswith("not reported")
    assert checks[3]["status"] == "skip" and checks[3]["seconds"] == 0.0 and checks[3]["no_gpu"] is False
    assert len(session["results"][0]["name"]) < 300
    ET.parse(root / JUNIT_XML)  # still a file CI can read


def test_a_check_report_past_its_bound_is_refused_not_read(tmp_path):
    """A 30 MB variant name ran 150 s and wrote 240 MB of reports."""
    root = support.make_project(tmp_path / "checkout", git_init=False)
    huge = "x" * (30 * 1024 * 1024)
    result = _hostile_result(tmp_path, {"schema": 1, "variant": {"name": huge}, "checks": []}, b"{}")
    session, _, failure = run_smoke(root, str(result))
    assert failure is not None
    assert all(f.stat().st_size < 100 * 1024 for f in (root / REPORT_JSON, root / JUNIT_XML))
    (result_report,) = session["results"]
    assert result_report["error"] == "its report was more than 16 MiB, more than a report may be"
    assert {c["status"] for c in result_report["checks"]} == {"fail"}
