"""Fixtures shared by the suite. Helpers live in tests/support.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import support

STANDIN_AT_START = pytest.StashKey[dict]()
STANDIN_CHANGED = pytest.StashKey[list]()


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the controller, once per run
        session.config.stash[STANDIN_AT_START] = support.standin_listing()


def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(STANDIN_AT_START, None)
    if before is None:
        return
    changed = support.standin_changes(before, support.standin_listing())
    if changed:
        # A test wrote into tests/fixtures/nixpkgs: its `path:` hash, and so every store
        # path built from it, moved under the tests running beside it (a flaky
        # "not built"). Fail the run, naming the files.
        session.config.stash[STANDIN_CHANGED] = changed
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    changed = config.stash.get(STANDIN_CHANGED, None)
    if changed:
        terminalreporter.write_line(
            "FAILED: the run wrote into the stand-in (tests/fixtures/nixpkgs), which moves its "
            "path: hash under the tests beside it: " + ", ".join(changed[:10]),
            red=True,
        )


def pytest_collection_modifyitems(config, items):
    # Anything that touches Nix needs it: fail loudly, never skip, when absent.
    for item in items:
        if "nix" in item.keywords:
            item.fixturenames.insert(0, "require_nix")
        if "nvcc" in item.keywords:
            item.fixturenames.insert(0, "require_nvcc")


@pytest.fixture(scope="session")
def require_nix() -> str:
    executable = support.nix_executable()
    support.init_store()
    return executable


@pytest.fixture(scope="session")
def require_nvcc() -> str:
    return support.nvcc_executable()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh git checkout of this project (flake, matrix, tasks, README)."""
    return support.make_project(tmp_path / "project")


@pytest.fixture
def standin(tmp_path: Path):
    """Factory: a copy of the nixpkgs stand-in with knobs changed."""

    def make(**knobs) -> Path:
        dest = tmp_path / f"nixpkgs-{len(list(tmp_path.glob('nixpkgs-*')))}"
        return support.copy_standin(dest, **knobs)

    return make


@pytest.fixture(scope="session")
def cuda_libs(tmp_path_factory) -> dict[str, Path]:
    """tests/cuda_libs.py's libraries, compiled once per run (xdist workers share them)."""
    import fcntl
    import os

    import cuda_libs as recipe

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this run
    dest = base / "cuda-libs"
    with open(base / "cuda-libs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / ".built").exists():
            recipe.build(dest)
            (dest / ".built").touch()
    return {name: dest / f"{name}.so" for name in recipe.ALL}


@pytest.fixture(scope="session")
def standin_base(require_nix, tmp_path_factory) -> None:
    """The stand-in's unsalted derivations (stdenv, interpreter, CUDA redistributables)
    built, so a test counting what a salted build plans counts only its own.
    On a fresh store (CI) they would otherwise join the plan of whichever test came first."""
    root = support.make_project(tmp_path_factory.mktemp("base") / "p", git_init=False)
    support.nix(
        "build",
        "--no-link",
        f"{support.flake_ref(root)}#packages.x86_64-linux.vllm-python312-cuda12_9-sm90",
        *support.override(),
    )
