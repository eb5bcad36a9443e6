"""`invoke matrix --format github`, the workflow that consumes it, and Hydra's jobs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import support
import yaml

from vllm_variants.matrix import Matrix
from vllm_variants.matrix_task import github_matrix
from vllm_variants.selection import Selection

MATRIX = Matrix.load(support.REPO / "nix" / "variants.toml")
WORKFLOW = support.REPO / ".github" / "workflows" / "variants.yml"
INVOKE = [sys.executable, "-m", "invoke"]


def invoke(*args: str, cwd: Path = support.REPO, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*INVOKE, *args], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"invoke {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_github_matrix_is_exactly_the_enabled_variants():
    out = invoke("matrix", "--format", "github").stdout
    assert out.count("\n") == 1, "one line, for $GITHUB_OUTPUT"
    data = json.loads(out)
    assert list(data) == ["include"]
    assert [e["variant"] for e in data["include"]] == [v.name for v in MATRIX.default_set]
    for entry, variant in zip(data["include"], MATRIX.default_set):
        assert entry["sm"] == variant.sm and entry["system"] == variant.system
        assert entry["attr"] == f"packages.{variant.system}.{variant.name}"
        arch = {"x86_64-linux": "x64", "aarch64-linux": "ARM64"}[variant.system]
        assert entry["runner"] == ["self-hosted", "linux", arch, f"gpu-sm{variant.sm}"]


def test_disabled_variants_get_no_job(tmp_path):
    root = support.make_project(tmp_path / "p", git_init=False)
    toml = root / "nix" / "variants.toml"
    toml.write_text(toml.read_text().replace('arch = "Volta"', 'arch = "Volta"\ndisabled = "no V100 runner"'))
    data = json.loads(invoke("matrix", cwd=root).stdout)
    names = [e["variant"] for e in data["include"]]
    assert "vllm-python312-cuda12_9-sm70" not in names
    assert names == [v.name for v in Matrix.load(toml).default_set] and len(names) == len(MATRIX.default_set) - 1


def test_filters_select_like_build():
    by_system = json.loads(invoke("matrix", "--system", "aarch64-linux").stdout)["include"]
    assert {e["variant"] for e in by_system} == {v.name for v in MATRIX.default_set if v.arm64}
    by_sm = json.loads(invoke("matrix", "--sm", "90", "--sm", "100", "--arm64").stdout)["include"]
    assert [e["variant"] for e in by_sm] == [
        "vllm-python312-cuda12_9-sm90-arm64",
        "vllm-python312-cuda12_9-sm100-arm64",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "yaml"], "unknown format 'yaml'; valid: github"),
        (["--sm", "62"], "unknown SM '62'; valid SMs:"),
        (["--system", "riscv64-linux"], "unknown system 'riscv64-linux'; valid:"),
    ],
)
def test_bad_requests_are_one_line(args, message):
    proc = invoke("matrix", *args, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert message in proc.stderr


# -- the workflow ---------------------------------------------------------


@pytest.fixture(scope="module")
def workflow() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    # PyYAML reads YAML 1.1, where a bare `on` key is the boolean true.
    data["on"] = data.pop(True, data.get("on"))
    return data


def _matrix_job(workflow: dict) -> tuple[str, dict, dict]:
    for name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            if "invoke matrix --format github" in step.get("run", ""):
                return name, job, step
    raise AssertionError("no job runs `invoke matrix --format github`")


def test_workflow_parses_and_triggers(workflow):
    assert workflow["name"] and set(workflow["jobs"]) == {"matrix", "build"}
    assert {"push", "pull_request", "workflow_dispatch"} <= set(workflow["on"])


def test_build_job_takes_its_matrix_from_the_matrix_task(workflow):
    name, job, step = _matrix_job(workflow)
    ((output, value),) = job["outputs"].items()
    written = re.search(r'echo "(\w+)=\$\w+" >> "\$GITHUB_OUTPUT"', step["run"])
    assert written, "the step writes its JSON to $GITHUB_OUTPUT"
    assert value == f"${{{{ steps.{step['id']}.outputs.{written.group(1)} }}}}"

    build = workflow["jobs"]["build"]
    assert build["needs"] == name
    assert build["strategy"]["matrix"] == f"${{{{ fromJSON(needs.{name}.outputs.{output}) }}}}"
    assert build["strategy"]["fail-fast"] is False
    assert build["runs-on"] == "${{ matrix.runner }}"
    # every matrix.<key> the job reads is a key of the entries
    used = set(re.findall(r"(?<![\w.])matrix\.(\w+)", yaml.safe_dump(build)))
    assert {"variant", "runner", "attr"} <= used <= set(github_matrix(MATRIX.default_set)["include"][0]), used
    runs = "\n".join(s.get("run", "") for s in build["steps"])
    assert 'invoke build --sm "$VARIANT"' in runs and build["env"]["VARIANT"] == "${{ matrix.variant }}"
    assert 'nox -s smoke -- "result-$VARIANT"' in runs


@pytest.mark.parametrize("sm", ["", "90,100"])
def test_matrix_step_runs_and_writes_what_fromjson_reads(workflow, tmp_path, sm):
    """Run the step's own script as the runner would (bash -e, $GITHUB_OUTPUT)."""
    _, _, step = _matrix_job(workflow)
    output = tmp_path / "github_output"
    env = {
        **os.environ,
        "GITHUB_OUTPUT": str(output),
        "SM": sm,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=support.REPO, env=env, check=True
    )
    key, _, value = output.read_text().rstrip("\n").partition("=")
    assert key == "matrix"
    wanted = Selection.parse(sm=[sm]).variants(MATRIX) if sm else MATRIX.default_set
    assert json.loads(value) == github_matrix(wanted)


def test_matrix_step_fails_the_job_on_a_bad_selection(workflow, tmp_path):
    _, _, step = _matrix_job(workflow)
    env = {
        **os.environ,
        "GITHUB_OUTPUT": str(tmp_path / "out"),
        "SM": "62",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=support.REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "unknown SM '62'" in proc.stderr
    assert not (tmp_path / "out").exists()


# -- the flake attributes the entries and Hydra name ---------------------------


@pytest.mark.nix
def test_entry_attrs_are_the_hydra_jobs(tmp_path):
    """Each entry's `attr` is a real flake attribute, the same derivation as
    hydraJobs.<variant>.<system> (what a Hydra jobset builds)."""
    flake = support.flake_ref(support.make_project(tmp_path / "p"))
    drv_paths = "builtins.mapAttrs (n: s: builtins.mapAttrs (_: d: d.drvPath) s)"
    hydra = support.nix_eval(flake, "hydraJobs", apply=drv_paths)
    packages = support.nix_eval(flake, "packages", apply=drv_paths)
    for entry in github_matrix(MATRIX.default_set)["include"]:
        kind, system, name = entry["attr"].split(".")
        assert kind == "packages"
        assert packages[system][name] == hydra[entry["variant"]][entry["system"]]
    assert set(hydra) == {e["variant"] for e in github_matrix(MATRIX.default_set)["include"]}


def test_readme_hydra_spec_is_a_flake_jobset():
    """The documented jobset spec uses only keys Hydra's declarative jobsets accept
    (src/lib/Hydra/Helper/AddBuilds.pm, updateDeclarativeJobset)."""
    readme = (support.REPO / "docs" / "distributing.md").read_text()
    block = re.search(r"## CI matrix and Hydra.*?```json\n(.*?)```", readme, re.DOTALL)
    assert block, "docs/distributing.md has no Hydra jobset spec"
    spec = json.loads(block.group(1))
    allowed = {
        "enabled",
        "hidden",
        "description",
        "type",
        "flake",
        "nixexprinput",
        "nixexprpath",
        "checkinterval",
        "schedulingshares",
        "enableemail",
        "emailoverride",
        "keepnr",
    }
    (jobset,) = spec.values()
    assert set(jobset) <= allowed
    assert jobset["type"] == 1 and jobset["flake"]
