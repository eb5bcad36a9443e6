"""Nox sessions for vllm-variants. `nox -l` lists them; `nox -s tests` runs the suite.

Sessions are thin: the logic lives in the vllm_variants package.
"""

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]


def tests_impl(session: nox.Session, *pytest_args: str) -> None:
    """Install the package with its test extras and run pytest in parallel."""
    session.install("-e", ".[test]")
    session.run("pytest", "-n", "auto", *pytest_args, *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite: real Nix against the offline nixpkgs stand-in, in parallel."""
    tests_impl(session)
