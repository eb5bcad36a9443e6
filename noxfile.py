"""Nox sessions for vllm-variants. `nox -l` lists them; `nox -s tests` runs the suite, `nox -s lint` the lint.

Sessions are thin: the logic lives in the vllm_variants package.
"""

import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]
# A session whose Python is not installed fails; it never passes by skipping.
nox.options.error_on_missing_interpreters = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite: real Nix against the offline nixpkgs stand-in, in parallel."""
    session.install("-e", ".[test]")
    session.run("pytest", "-n", "auto", *session.posargs)


# The oldest Python pyproject.toml declares (requires-python): the suite runs on it
# too. Debian has no 3.10 package; CI finds pyenv's (see .ci/run).
FLOOR = "3.10"


@nox.session(python=FLOOR)
def floor(session: nox.Session) -> None:
    """Run the test suite on the oldest Python the package supports (3.10); fails when it is missing."""
    session.install("-e", ".[test]")
    session.run("pytest", "-n", "auto", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint, format-check and type-check: ruff check, ruff format --check, mypy (settings in pyproject.toml)."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", *session.posargs)
    session.run("ruff", "format", "--check", *session.posargs)
    session.run("mypy")


@nox.session(venv_backend="none", default=False, tags=["smoke"])
def smoke(session: nox.Session) -> None:
    """Smoke-check built results in their own Python (all result-* links, or -- NAME|PATH ...)."""
    # No virtualenv: each result is checked by its own bin/python. The library
    # comes from this checkout when nox itself was installed elsewhere (pipx).
    if (ROOT / "src").is_dir():
        sys.path.insert(0, str(ROOT / "src"))
    from vllm_variants.boundary import nox_call
    from vllm_variants.project import Project
    from vllm_variants.smoke.session import main

    nox_call(session, main, Project(ROOT), session.posargs)
