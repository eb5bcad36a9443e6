"""One table of bad inputs, one parametrized test per command (issue #11).

Each row runs the command as a user does (`python -m invoke ...` in a copy of
the project) and says what must come back: the exit status and a fragment of
the one line that explains it. Every row also checks that no traceback is
printed, that the error is one line, and that the checkout is as it was
(files, links, flake.lock, git).

A row: (id, argv, exit status, fragment[, setup][, stdout]). `setup(root,
tmp_path)` prepares the checkout (a result link in the way, a stale README)
and may return changes to the environment; `stdout` names a file standard
output goes to (/dev/full: a full disk).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import support

STANDIN = str(support.STANDIN)
SM90 = "vllm-python312-cuda12_9-sm90"
REV = "0182a361324364ae3f436a63005877674cf45efb"
STDOUT_FULL = "cannot write standard output: No space left on device (ENOSPC)"


class Row(NamedTuple):
    id: str
    argv: list[str]
    code: int
    fragment: str
    setup: Callable[[Path, Path], dict[str, str] | None] | None = None
    stdout: str | None = None  # a file to send standard output to (/dev/full) instead of a pipe


# -- setups ---------------------------------------------------------------------


def dir_result_link(root: Path, tmp: Path) -> None:
    """result-<sm90> is a directory (a user's, or left by a tool), not a link."""
    (root / f"result-{SM90}").mkdir()


def stale_readme(root: Path, tmp: Path) -> None:
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace("| H100, H200, H20 |", "| H100 |"))
    support.commit_all(root, "readme: edited by hand")


def logs_is_a_file(root: Path, tmp: Path) -> None:
    (root / "logs").write_text("not a directory\n")


def nix_without_config(root: Path, tmp: Path) -> dict[str, str]:
    """A nix that answers --version and prints nothing else (a broken install)."""
    bin_dir = tmp / "broken-nix"
    bin_dir.mkdir()
    wrapper = bin_dir / "nix"
    wrapper.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo "nix (Nix) 2.26.3"; fi\nexit 0\n')
    wrapper.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def no_gpu(root: Path, tmp: Path) -> dict[str, str]:
    return {"PATH": f"{os.path.dirname(support.nix_executable())}{os.pathsep}/usr/bin:/bin"}


# -- the table ------------------------------------------------------------------

# --eval-jobs / --eval-max-memory: build and eval take them alike (issue #13)
EVAL_BUDGET = [
    Row("eval-jobs-zero", ["--sm", "90", "--eval-jobs", "0"], 1, "--eval-jobs takes a whole number from 1 to 100000"),
    Row("eval-jobs-word", ["--sm", "90", "--eval-jobs", "some"], 1, "--eval-jobs takes a whole number"),
    Row(
        "eval-max-memory-word",
        ["--sm", "90", "--eval-max-memory", "lots"],
        1,
        "--eval-max-memory takes a size such as 24G, 512M or 1.5T",
    ),
    Row(
        "eval-max-memory-zero",
        ["--sm", "90", "--eval-max-memory", "0G"],
        1,
        "--eval-max-memory takes a size such as 24G",
    ),
    Row(
        "eval-jobs-and-memory",
        ["--sm", "90", "--eval-jobs", "2", "--eval-max-memory", "8G"],
        1,
        "--eval-jobs and --eval-max-memory conflict: give one",
    ),
]

BUILD = [
    Row("sm-empty", ["--sm", ""], 1, "--sm '' names no SM; give one like --sm 90"),
    Row("sm-only-commas", ["--sm", ","], 1, "--sm ',' names no SM; give one like --sm 90"),
    Row("sm-leading-zero", ["--sm", "09.0"], 1, "'09.0' is not an SM"),
    Row("sm-unknown", ["--sm", "91"], 1, "unknown SM '91'; valid SMs: 61, 70, 75"),
    Row("python-unknown", ["--sm", "90", "--python", "311"], 1, "unknown Python line 'python311'; valid: 312, 313"),
    Row("cuda-unknown", ["--sm", "90", "--cuda", "13.0"], 1, "unknown CUDA line '13.0'; valid: 12.8, 12.9"),
    Row(
        "line-disabled",
        ["--sm", "121", "--arm64", "--cuda", "12.8"],
        1,
        "vllm-python312-cuda12_8-sm121-arm64 is disabled in the matrix: capability 12.1 needs CUDA 12.9",
    ),
    Row("sm-with-all", ["--sm", "90", "--all"], 1, "--sm and --all conflict"),
    Row("sm-with-system", ["--sm", "90", "--system", "x86_64-linux"], 1, "--sm and --system conflict"),
    Row("auto-with-all", ["--sm", "auto", "--all"], 1, "--sm and --all conflict"),
    Row("all-with-system", ["--all", "--system", "x86_64-linux"], 1, "--all and --system conflict"),
    Row("arm64-without-sm", ["--arm64", "--system", "x86_64-linux"], 1, "--arm64 applies to --sm only"),
    Row("system-empty", ["--system", ""], 1, "unknown system ''; valid: x86_64-linux, aarch64-linux"),
    Row(
        "cores-huge",
        ["--sm", "90", "--cores", "99999999999999999999999"],
        1,
        "--cores takes a whole number from 0 to 100000",
    ),
    Row("cores-negative", ["--sm", "90", "--cores", "-1"], 1, "--cores takes a whole number from 0 to 100000"),
    Row("cores-word", ["--sm", "90", "--cores", "many"], 1, "--cores takes a whole number from 0 to 100000"),
    Row(
        "max-jobs-huge",
        ["--sm", "90", "--max-jobs", "99999999999999999999"],
        1,
        "--max-jobs takes a whole number from 0 to 100000",
    ),
    Row("option-no-value", ["--sm", "90", "--option", "sandbox"], 1, "--option takes NAME=VALUE"),
    Row(
        "option-bad-value",
        ["--sm", "90", "--option", "cores=abc"],
        1,
        "Nix rejects --option cores=abc: setting 'cores' has invalid value 'abc'",
    ),
    Row(
        "option-unknown",
        ["--sm", "90", "--option", "no-such-setting=1"],
        1,
        "Nix rejects --option no-such-setting=1: unknown setting 'no-such-setting'",
    ),
    Row("nixpkgs-empty", ["--sm", "90", "--nixpkgs", ""], 1, "--nixpkgs '' is empty; give a nixpkgs checkout"),
    Row(
        "nixpkgs-a-file",
        ["--sm", "90", "--nixpkgs", "README.md"],
        1,
        "--nixpkgs README.md: is a file, not a nixpkgs checkout",
    ),
    Row(
        "nixpkgs-missing",
        ["--sm", "90", "--nixpkgs", "./no-such-nixpkgs"],
        1,
        "--nixpkgs ./no-such-nixpkgs: no such directory",
    ),
    Row(
        "builders-missing-file",
        ["--sm", "90", "--builders", "@no-such-machines"],
        1,
        "--builders @no-such-machines: no such machines file",
    ),
    Row("json-empty", ["--sm", "90", "--json", ""], 1, "--json '' is empty; give a file path"),
    Row("json-a-directory", ["--sm", "90", "--json", "nix"], 1, "--json nix: is a directory"),
    Row(
        "json-under-a-file",
        ["--sm", "90", "--json", "README.md/summary.json"],
        1,
        "--json README.md/summary.json: README.md is not a directory",
    ),
    Row("json-dir-dry-run", ["--sm", "90", "--dry-run", "--json", "nix"], 1, "--json nix: is a directory"),
    Row(
        "logs-a-file", ["--sm", "90"], 1, "logs/ (the build logs): is a file, not a directory (ENOTDIR)", logs_is_a_file
    ),
    Row("result-link-a-dir", ["--sm", "90"], 1, f"result-{SM90} exists and is not a Nix result link", dir_result_link),
    Row("stdout-full", ["--sm", "90", "--dry-run"], 1, STDOUT_FULL, stdout="/dev/full"),
    *EVAL_BUDGET,
]

SMOKE = [
    Row("jobs-word", ["--jobs", "abc"], 1, "--jobs takes a whole number from 0 to 100000, not 'abc'"),
    Row("jobs-negative", ["--jobs", "-1"], 1, "--jobs takes a whole number from 0 to 100000, not '-1'"),
    Row("jobs-huge", ["--jobs", "99999999999999999999"], 1, "--jobs takes a whole number from 0 to 100000"),
    Row("no-results", [], 1, "no result-* links in"),
    Row("result-missing-path", ["--results", "./nowhere"], 1, "no result at ./nowhere"),
    Row("results-only-commas", ["--results", ","], 1, "--results ',' names no result; give a variant name"),
    Row("result-unknown-sm", ["--results", "91"], 1, "unknown SM '91'"),
    Row("result-not-built", ["--results", "90"], 1, f"{SM90} is not built here"),
    Row(
        "result-a-dir",
        ["--results", "90"],
        1,
        f"result-{SM90} is not a built result: it has no bin/python",
        dir_result_link,
    ),
    Row("report-dir-a-file", ["--report-dir", "README.md"], 1, "--report-dir README.md: is a file, not a directory"),
    Row(
        "report-dir-under-a-file",
        ["--report-dir", "README.md/reports"],
        1,
        "--report-dir README.md/reports: README.md is not a directory",
    ),
]

BUMP_PIN = [
    Row("rev-short", ["abc"], 1, "'abc' is not a full commit: give all 40 hex digits"),
    Row("rev-missing", [], 1, "'bump-pin' did not receive required positional arguments: 'rev'"),
    Row("branch-unknown", [REV, "--branch", "nope"], 1, "unknown branch(es) nope; local branches: main"),
    Row("glob-matches-none", [REV, "--branches", "zz*"], 1, "no local branch matches 'zz*'"),
    Row("template-without-rev", [REV, "--url-template", "github:x/y"], 1, "must contain {rev} once"),
    Row("template-with-space", [REV, "--url-template", "github:x/{rev} y"], 1, "holds whitespace"),
    Row("template-empty", [REV, "--url-template", ""], 1, "--url-template '' must contain {rev} once"),
    Row("branch-empty", [REV, "--branch", ""], 1, "unknown branch(es) ''; local branches: main"),
]

PUBLISH = [
    Row("to-empty", ["--to", "", "--sm", "90"], 1, "--to needs a store URI"),
    Row(
        "to-a-bare-path",
        ["--to", "/srv/cache", "--sm", "90"],
        1,
        "--to /srv/cache is a path, not a store URI: give file:///srv/cache for a binary cache or "
        "local?root=/srv/cache for a chroot store",
    ),
    Row("check-to-a-bare-path", ["--to", "/srv/cache", "--check"], 1, "--to /srv/cache is a path, not a store URI"),
    Row("nothing-selected", ["--to", "file:///tmp/c"], 1, "no variant selected"),
    Row("sm-with-all", ["--to", "file:///tmp/c", "--sm", "90", "--all"], 1, "--sm and --all conflict"),
    Row("not-built", ["--to", "file:///tmp/c", "--sm", "90"], 1, f"not built: {SM90} (no result-{SM90})"),
    Row(
        "result-link-a-dir",
        ["--to", "file:///tmp/c", "--sm", "90"],
        1,
        f"not built: {SM90} (result-{SM90} is a directory, not a result link)",
        dir_result_link,
    ),
    Row(
        "sign-key-missing",
        ["--to", "file:///tmp/c", "--sm", "90", "--sign-key", "no-such-key"],
        1,
        "cannot read the signing key",
    ),
    Row(
        "sign-key-empty",
        ["--to", "file:///tmp/c", "--sm", "90", "--sign-key", ""],
        1,
        "--sign-key '' is empty; give the secret key file",
    ),
    Row("check-nixpkgs-empty", ["--to", "file:///tmp/c", "--check", "--nixpkgs", ""], 1, "--nixpkgs '' is empty"),
    Row("check-unknown-sm", ["--to", "file:///tmp/c", "--check", "--sm", "91"], 1, "unknown SM '91'"),
]

AUDIT = [
    Row("path-missing", ["no-such-file"], 1, "no-such-file: no such file or directory"),
    Row("path-not-a-library", ["README.md"], 1, "README.md is neither an ELF library (.so) nor a wheel"),
    Row("reader-unknown", ["nix", "--reader", "bogus"], 1, "unknown reader 'bogus'; valid: auto, fatbin, cuobjdump"),
    Row("sm-not-an-sm", ["nix", "--sm", "abc"], 1, "'abc' is not an SM"),
    Row("variant-unknown", ["nix", "--variant", "bogus"], 1, "'bogus' is not an SM"),
    Row("path-missing-arg", [], 1, "'audit' did not receive required positional arguments: 'path'"),
    Row("path-empty", [""], 1, "PATH '' is empty; give a result link"),
    Row("sm-empty", ["nix", "--sm", ""], 1, "--sm '' is empty; give an SM"),
    Row("variant-empty", ["nix", "--variant", ""], 1, "--variant '' is empty; give a variant name"),
]

DOCTOR = [
    Row("unknown-flag", ["--bogus"], 1, "No idea what '--bogus' is!"),
    Row("nix-prints-no-config", [], 1, "1 problem(s) block building", nix_without_config),
    Row("stdout-full", ["--json"], 1, STDOUT_FULL, stdout="/dev/full"),
]

WHICH = [
    Row("unknown-flag", ["--bogus"], 1, "No idea what '--bogus' is!"),
    Row("no-gpu", [], 1, "no NVIDIA GPU found (nvidia-smi is not on PATH", no_gpu),
    Row("no-gpu-json", ["--json"], 1, "no NVIDIA GPU found (nvidia-smi is not on PATH", no_gpu),
]

README = [
    Row("check-stale", ["--check"], 1, "README.md is out of date", stale_readme),
    Row("unknown-flag", ["--bogus"], 1, "No idea what '--bogus' is!"),
    Row("stdout-full", ["--check"], 1, STDOUT_FULL, stdout="/dev/full"),
]

MATRIX = [
    Row("format-unknown", ["--format", "yaml"], 1, "unknown format 'yaml'; valid: github"),
    Row("sm-unknown", ["--sm", "91"], 1, "unknown SM '91'"),
    Row("system-unknown", ["--system", "foo"], 1, "unknown system 'foo'; valid: x86_64-linux, aarch64-linux"),
    Row("sm-with-system", ["--sm", "90", "--system", "x86_64-linux"], 1, "--sm and --system conflict"),
    Row("arm64-without-sm", ["--arm64"], 1, "--arm64 applies to --sm only"),
    Row("stdout-full", [], 1, STDOUT_FULL, stdout="/dev/full"),
]

IMAGE = [
    Row("no-destination", ["--sm", "90"], 1, "say where the image goes: --to"),
    Row("no-variant", ["--to", "oci-archive:x.tar"], 1, "give the variant: --sm SM"),
    Row("two-variants", ["--sm", "80,90", "--to", "oci-archive:x.tar"], 1, "one variant per image"),
    Row("load-and-to", ["--sm", "90", "--load", "--to", "oci-archive:x.tar"], 1, "are exclusive"),
    Row("unknown-destination", ["--sm", "90", "--to", "ftp://host/x"], 1, "unknown destination"),
    Row("archive-no-path", ["--sm", "90", "--to", "oci-archive:"], 1, "no archive path"),
    Row("archive-in-missing-dir", ["--sm", "90", "--to", "oci-archive:/no/such/dir/x.tar"], 1, "no such directory"),
    Row("bad-reference", ["--sm", "90", "--to", "docker://127.0.0.1:5000/vllm:b@d"], 1, "not a registry reference"),
    Row(
        "tmpdir-missing",
        ["--sm", "90", "--to", "oci-archive:x.tar", "--tmpdir", "/no/such/dir"],
        1,
        "--tmpdir /no/such/dir: no such file or directory",
    ),
]

EVAL = [
    Row("sm-empty", ["--sm", ""], 1, "--sm '' names no SM; give one like --sm 90"),
    Row("sm-unknown", ["--sm", "91"], 1, "unknown SM '91'; valid SMs: 61, 70, 75"),
    Row("python-unknown", ["--sm", "90", "--python", "2.7"], 1, "unknown Python line 'python27'; valid: 312, 313"),
    Row("cuda-unknown", ["--sm", "90", "--cuda", "12"], 1, "unknown CUDA line '12'; valid: 12.8, 12.9"),
    Row(
        "line-disabled",
        ["--sm", "103", "--cuda", "12.8"],
        1,
        "vllm-python312-cuda12_8-sm103 is disabled in the matrix: capability 10.3 needs CUDA 12.9",
    ),
    Row("sm-with-all", ["--sm", "90", "--all"], 1, "--sm and --all conflict"),
    Row("arm64-without-sm", ["--arm64"], 1, "--arm64 applies to --sm only"),
    Row("nixpkgs-empty", ["--sm", "90", "--nixpkgs", ""], 1, "--nixpkgs '' is empty"),
    Row("nixpkgs-missing-dir", ["--sm", "90", "--nixpkgs", "./no-such-nixpkgs"], 1, "no such directory"),
    Row("does-not-evaluate", ["--sm", "90", "--nixpkgs", "/"], 1, "has no flake.nix"),
    *EVAL_BUDGET,
]


def typo_in_matrix(root: Path, tmp: Path) -> None:
    """nix/variants.toml with an unknown key: nothing may be written from it."""
    matrix = root / "nix" / "variants.toml"
    matrix.write_text(matrix.read_text().replace('arch = "Volta"', 'arhc = "Volta"'))
    support.commit_all(root, "matrix: a typo")


VARIANTS = [
    Row("unknown-flag", ["--bogus"], 1, "No idea what '--bogus' is!"),
    Row("write-a-broken-matrix", ["--write"], 1, "nix/variants.toml: sm #2: unknown key(s) arhc", typo_in_matrix),
    Row("check-a-broken-matrix", ["--check"], 1, "nix/variants.toml: sm #2: unknown key(s) arhc", typo_in_matrix),
    Row("write-and-check", ["--write", "--check"], 1, "--write and --check conflict"),
    Row("write-and-json", ["--write", "--json"], 1, "--write and --json conflict"),
    Row("check-and-all", ["--check", "--all"], 1, "--check and --all conflict"),
    Row("positional", ["extra"], 1, "No idea what 'extra' is!"),
    Row("stdout-full", [], 1, STDOUT_FULL, stdout="/dev/full"),
    Row("stdout-full-json", ["--json"], 1, STDOUT_FULL, stdout="/dev/full"),
]

TABLE = {
    "build": BUILD,
    "smoke": SMOKE,
    "bump-pin": BUMP_PIN,
    "publish": PUBLISH,
    "audit": AUDIT,
    "doctor": DOCTOR,
    "which": WHICH,
    "readme": README,
    "matrix": MATRIX,
    "variants": VARIANTS,
    "eval": EVAL,
    "image": IMAGE,
}


# -- running a row -------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every file and link of the checkout (but .git): what a refused command must leave as it was."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel == ".git" or rel.startswith(".git/") or "__pycache__" in path.parts:
            continue  # __pycache__: Python's bytecode of tasks.py, written once (issue #13) and gitignored
        if path.is_symlink():
            state[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[rel] = "dir"
    state["git status"] = support.git(root, "status", "--porcelain").stdout
    state["git refs"] = support.git(root, "for-each-ref").stdout
    return state


def run_row(command: str, row: Row, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    root = support.make_project(tmp_path / "project")
    env = support.nix_env("builders =\nextra-platforms =")
    if row.setup:
        env.update(row.setup(root, tmp_path) or {})
    argv = list(row.argv)
    if command == "build" and "--nixpkgs" not in argv:
        argv += ["--nixpkgs", STANDIN]
    before = snapshot(root)
    if row.stdout:
        assert stat.S_ISCHR(os.stat(row.stdout).st_mode), f"{row.stdout} is no device on this machine"
    with open(row.stdout, "w") if row.stdout else contextlib.nullcontext(subprocess.PIPE) as stdout:
        proc = subprocess.run(
            [sys.executable, "-m", "invoke", command, *argv],
            cwd=root,
            env=env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=300,
        )
    output = (proc.stdout or "") + proc.stderr
    assert "Traceback" not in output, output
    assert proc.returncode == row.code, output
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, f"the error is not one line:\n{proc.stderr}"
    assert row.fragment in errors[0], errors[0]
    assert snapshot(root) == before, "a refused command changed the checkout"
    return proc


def _params(command: str) -> Any:
    return pytest.mark.parametrize("row", TABLE[command], ids=[r.id for r in TABLE[command]])


@pytest.mark.nix
@_params("build")
def test_build(row, tmp_path):
    proc = run_row("build", row, tmp_path)
    if row.stdout is None:  # refused before Nix evaluated anything: no plan printed
        assert proc.stdout == "", proc.stdout


@pytest.mark.nix
@_params("smoke")
def test_smoke(row, tmp_path):
    run_row("smoke", row, tmp_path)


@pytest.mark.nix
@_params("bump-pin")
def test_bump_pin(row, tmp_path):
    run_row("bump-pin", row, tmp_path)


@pytest.mark.nix
@_params("publish")
def test_publish(row, tmp_path):
    run_row("publish", row, tmp_path)


@_params("audit")
def test_audit(row, tmp_path):
    run_row("audit", row, tmp_path)


@pytest.mark.nix
@_params("doctor")
def test_doctor(row, tmp_path):
    proc = run_row("doctor", row, tmp_path)
    assert "this is ," not in (proc.stdout or "")  # a system Nix did not name is never printed as empty


@_params("which")
def test_which(row, tmp_path):
    run_row("which", row, tmp_path)


@_params("readme")
def test_readme(row, tmp_path):
    run_row("readme", row, tmp_path)


@_params("matrix")
def test_matrix(row, tmp_path):
    run_row("matrix", row, tmp_path)


@_params("variants")
def test_variants(row, tmp_path):
    run_row("variants", row, tmp_path)


@pytest.mark.nix
@_params("image")
def test_image(row, tmp_path):
    run_row("image", row, tmp_path)


@pytest.mark.nix
@_params("eval")
def test_eval(row, tmp_path):
    run_row("eval", row, tmp_path)


def test_the_table_covers_every_command():
    """A new task gets its rows here: the table lists every task of tasks.py."""
    out = subprocess.run(
        [sys.executable, "-m", "invoke", "--list"], cwd=support.REPO, capture_output=True, text=True, check=True
    ).stdout
    tasks = set(re.findall(r"^  (\S+)", out, re.M))
    assert "build" in tasks  # the listing was read
    assert tasks - set(TABLE) == set(), f"no bad-input rows for {tasks - set(TABLE)}"
