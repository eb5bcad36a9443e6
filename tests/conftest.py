"""Fixtures shared by the suite. Helpers live in tests/support.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import support  # noqa: E402


def pytest_collection_modifyitems(config, items):
    # Anything that touches Nix needs it: fail loudly, never skip, when absent.
    for item in items:
        if "nix" in item.keywords:
            item.fixturenames.insert(0, "require_nix")


@pytest.fixture(scope="session")
def require_nix() -> str:
    return support.nix_executable()


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
