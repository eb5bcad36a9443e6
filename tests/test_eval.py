"""`invoke eval`: every selected variant evaluated in one Nix process against
the stand-in, what nixpkgs resolved printed per variant, failures one line each."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import support

from vllm_variants.errors import BuildError
from vllm_variants.eval_task import main
from vllm_variants.matrix import Matrix
from vllm_variants.nix import Nix
from vllm_variants.project import Project
from vllm_variants.selection import Selection

pytestmark = pytest.mark.nix

MATRIX = Matrix.load(support.REPO / "nix" / "variants.toml")
B200 = MATRIX.resolve("100")
NO_BLACKWELL = ["7.0", "7.5", "8.0", "8.6", "8.9", "9.0", "9.0a"]


def run_eval(project, *, standin=support.STANDIN, sm=(), **kwargs):
    nix = support.recording_nix(env=support.nix_env())
    out = io.StringIO()
    try:
        selection = Selection.parse(sm=sm)
        results = main(
            Project(project), selection=selection, nixpkgs=str(standin), as_json=True, nix=nix, out=out, **kwargs
        )
        error = None
    except BuildError as caught:
        results, error = None, caught
    return json.loads(out.getvalue()), nix.commands, results, error


def evaluating(commands):
    return [c for c in commands if c[0] == "eval"]


def test_all_ten_variants_evaluate_in_one_nix_process(project):
    report, commands, results, error = run_eval(project, eval_max_memory="1T")
    assert error is None
    assert report["evaluation"]["processes"] == 1
    assert [v["name"] for v in report["variants"]] == [v.name for v in MATRIX.default_set]
    assert len(evaluating(commands)) == 1
    for entry, variant in zip(report["variants"], MATRIX.default_set):
        resolved = entry["resolved"]
        torch = "2.9.0" if variant.torch_wheel else "2.9.1"  # torch-bin lags the source torch
        assert resolved["versions"] == {"vllm": "0.15.1", "torch": torch, "python": "3.12.12", "cuda": variant.cuda}
        arch = resolved["arch"]
        assert arch["cudaCapabilities"] == arch["vllm"] == [variant.capability]
        readers = ("xformers", "flashinfer") if variant.torch_wheel else ("torch", "xformers", "flashinfer")
        for reader in readers:  # torch's list, duplicates kept
            assert set(arch[reader]) == {variant.capability}, (variant.name, reader)
        assert resolved["torch"]["kind"] == variant.torch
        # both torches the pin carries, on every row (which ones it has is not settled)
        assert {k: resolved["torch"][k] for k in ("sourceVersion", "binVersion", "binCuda")} == {
            "sourceVersion": "2.9.1",
            "binVersion": "2.9.0",
            "binCuda": None if variant.arm64 else "12.8",  # the CPU wheel on aarch64-linux
        }
        assert resolved["compilers"] == {"vllm": "14.3.0", "backend": "14.3.0"}
        assert arch["bitsandbytes"] == f"{variant.sm}-real" and resolved["forwardCompat"] is False
        assert set(resolved["cuda"].values()) == {variant.cuda}
    # B200: torch 2.9.1 lists 10.0 twice, and the report shows it as nixpkgs has it
    b200 = next(e for e in report["variants"] if e["name"] == B200.name)
    assert b200["resolved"]["arch"]["torch"] == ["10.0", "10.0"]


def test_a_variant_that_does_not_evaluate_is_one_line_and_the_others_go_on(project, standin):
    report, commands, _, error = run_eval(
        project, standin=standin(vllmSupportedCapabilities=NO_BLACKWELL), sm=["90", "100"]
    )
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name[MATRIX.resolve("90").name]["ok"] is True
    failed = by_name[B200.name]
    assert failed["ok"] is False
    assert "cannot target CUDA capability 10.0 (SM 100)" in failed["reason"] and "\n" not in failed["reason"]
    assert error is not None and B200.name in str(error)
    # one process for all, one more for the failure's message
    assert len(evaluating(commands)) == 2


def test_eval_never_writes_flake_lock(project):
    lock = project / "flake.lock"
    before = lock.read_bytes()
    run_eval(project, sm=["90"])
    assert lock.read_bytes() == before


def test_invoke_eval_text_and_exit_status(project, standin):
    env = support.nix_env()
    ok = subprocess.run(
        [sys.executable, "-m", "invoke", "eval", "--sm", "90", "--nixpkgs", str(support.STANDIN)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "1 of 1 variant(s) evaluate against nixpkgs" in ok.stdout
    assert "vllm-python312-cuda12_9-sm90: vLLM 0.15.1, torch 2.9.1, Python 3.12.12, CUDA 12.9" in ok.stdout
    # the pin's two torches, whichever this row uses (issue #23)
    assert "    torch at the pin: torch 2.9.1 (built from source), torch-bin 2.9.0 (a CUDA 12.8 wheel)" in ok.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "eval",
            "--sm",
            "100",
            "--nixpkgs",
            str(standin(vllmSupportedCapabilities=NO_BLACKWELL)),
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].endswith(f"1 variant(s) do not evaluate: {B200.name}")


def test_evaluation_in_batches_keeps_each_process_within_its_share(project):
    """--eval-jobs 4: the fifteen of the default set in four `nix eval` processes (issue #13), and
    the same report as one process gives."""
    report, commands, _, error = run_eval(project, eval_jobs="4")
    assert error is None
    batches = [c for c in evaluating(commands)]
    assert len(batches) == 4 and report["evaluation"] == {
        "per_batch": 4,
        "processes": 4,
        "text": report["evaluation"]["text"],
    }
    assert [v["name"] for v in report["variants"]] == [v.name for v in MATRIX.default_set]
    assert all(v["ok"] for v in report["variants"])
    one, _, _, _ = run_eval(project, eval_max_memory="1T")
    assert report["variants"] == one["variants"]


def test_the_text_report_says_what_evaluation_budget_it_used(project):
    out = io.StringIO()
    main(
        Project(project),
        selection=Selection.parse(sm=["80", "90"]),
        nixpkgs=str(support.STANDIN),
        eval_max_memory="1G",
        nix=Nix(env=support.nix_env()),
        out=out,
    )
    assert out.getvalue().startswith(
        "evaluation: 2 variants in 2 Nix processes, at most 1 nixpkgs instance each "
        "(--eval-max-memory 1.0 GiB, ~1.0 GiB per instance projected for the real pin)\n"
    )
