"""The Invoke surface: cheap to load, one clear line on bad input."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import support

from vllm_variants.matrix import Matrix

INVOKE = [sys.executable, "-m", "invoke"]
HEAVY = ("rich", "tomli", "tomllib", "vllm_variants")


def invoke(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*INVOKE, *args], cwd=root, capture_output=True, text=True, env=support.nix_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"invoke {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_list_shows_every_task_with_its_summary():
    out = invoke(support.REPO, "--list").stdout
    assert "variants   Show the variant matrix" in out
    assert "readme" in out
    assert "bump-pin   Move the nixpkgs pin on branches, all or nothing" in out


def test_list_imports_nothing_heavy():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "invoke", "--list"],
        cwd=support.REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    assert heavy == [], f"invoke --list imported {heavy}"
    assert "invoke" in imported  # the probe does see imports


def test_variants_json_is_the_matrix():
    got = json.loads(invoke(support.REPO, "variants", "--json").stdout)
    assert got == Matrix.load(support.REPO / "nix" / "variants.toml").to_json()


def test_variants_table_lists_every_variant_without_starting_nix():
    matrix = Matrix.load(support.REPO / "nix" / "variants.toml")
    everything = subprocess.run(
        [*INVOKE, "variants", "--all"],
        cwd=support.REPO,
        capture_output=True,
        text=True,
        env={**support.nix_env(), "PATH": "/nonexistent"},
        check=True,
    )
    for variant in matrix.variants:  # every combination, the disabled with their reason
        assert variant.name in everything.stdout
    (row,) = [
        line for line in everything.stdout.splitlines() if line.startswith("vllm-python312-cuda12_8-sm121-arm64 ")
    ]
    number = re.search(r"\[(\d+)\]", row)[1]  # the reason below the table, by its number (tests/test_variants.py)
    assert f"[{number}] capability 12.1 needs CUDA 12.9" in everything.stdout
    default = subprocess.run(
        [*INVOKE, "variants"],
        cwd=support.REPO,
        capture_output=True,
        text=True,
        env={**support.nix_env(), "PATH": "/nonexistent"},
        check=True,
    )
    assert [v.name for v in matrix.variants if v.name in default.stdout.split()] == [v.name for v in matrix.default_set]


@pytest.mark.parametrize("task", [["variants"], ["variants", "--write"], ["readme", "--check"]])
@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('arch = "Volta"', 'arhc = "Volta"', "unknown key(s) arhc"),
        ("min_driver = 575", 'min_driver = "575.51.03"', "min_driver must be a positive whole number like 575"),
    ],
    ids=["typo", "type"],
)
def test_a_broken_matrix_is_one_line_and_exit_1(tmp_path, task, old, new, message):
    root = support.make_project(tmp_path / "p", git_init=False)
    matrix_file = root / "nix" / "variants.toml"
    text = matrix_file.read_text()
    assert old in text
    matrix_file.write_text(text.replace(old, new))
    proc = invoke(root, *task, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: ") and message in lines[0]


def test_benchmark_script_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(support.REPO / "benchmarks" / "bench_tasks.py"), "--runs", "1", "--no-targets"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "invoke --list" in proc.stdout and "x" in proc.stdout


def test_build_documents_every_option():
    out = invoke(support.REPO, "--help", "build").stdout
    options = re.findall(r"^\s+(--[a-z0-9-]+)(?:=STRING)?\s+(\S.*)$", out, re.M)
    assert {name for name, _ in options} == {
        "--sm",
        "--arm64",
        "--all",
        "--system",
        "--dry-run",
        "--cores",
        "--max-jobs",
        "--builders",
        "--keep-going",
        "--option",
        "--nixpkgs",
        "--json",
        "--python",
        "--cuda",
        "--eval-jobs",
        "--eval-max-memory",
    }
    assert all(len(text) > 10 for _, text in options)
    assert re.search(r"^  build +Build variants with Nix", invoke(support.REPO, "--list").stdout, re.M)


def test_tasks_compile_once_not_on_every_run(tmp_path):
    """Invoke turns .pyc writing off; tasks.py turns it back on (issue #13), so the
    first task writes the bytecode of tasks.py and of the package's modules and
    later ones read it instead of compiling again."""
    root = support.make_project(tmp_path / "p", git_init=False)
    cache = tmp_path / "pycache"
    env = {**support.nix_env(), "PYTHONPYCACHEPREFIX": str(cache)}
    subprocess.run([*INVOKE, "variants"], cwd=root, capture_output=True, text=True, env=env, check=True)
    written = {p.name.split(".")[0] for p in cache.rglob("*.pyc")}
    assert {"tasks", "schema", "variants"} <= written, sorted(written)
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*.pyc")}
    subprocess.run([*INVOKE, "variants"], cwd=root, capture_output=True, text=True, env=env, check=True)
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.pyc")} == stamps  # read, not rewritten


# Flags spelled like a selection flag that select nothing: audit's --sm is the SMs
# you own (any SM, not a variant), variants' --all lists every combination.
NOT_A_SELECTION = {("audit", "sm"), ("variants", "all")}


def test_the_selection_flags_are_defined_once_and_parsed_before_the_command():
    """Issue #24: --sm, --arm64, --system, --all, --python and --cuda were spelled
    again in five tasks, their help in three wordings; a task now names the ones it
    takes (`selects`) and gets one parsed Selection."""
    tasks = support.tasks_module()
    selecting = 0
    for name, task in tasks.ns.tasks.items():
        arguments = {a.name: a for a in task.get_arguments()}
        flags = [f for f in tasks.SELECTION if f in arguments and (name, f) not in NOT_A_SELECTION]
        assert flags == [f for f in tasks.SELECTION if f in task.selects], name
        for flag in flags:
            assert arguments[flag].help == tasks.SELECTION[flag][1], (name, flag)
        if flags:
            assert "selection" in inspect.signature(task.body).parameters, name
            selecting += 1
    assert selecting == 5  # build, eval, publish, image, matrix
