"""Typed, user-facing errors.

The library raises these; only the Invoke/Nox boundary (vllm_variants.boundary)
turns them into exit codes. Each message is one line that says what was wrong
and what is valid (pre-commit's error_handler is the model).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a cancelled CI job, a closed terminal), handled as
    Ctrl-C is; the boundary exits 128 + the signal's number (143 for SIGTERM)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"signal {signum}")


class VariantsError(Exception):
    """An expected failure with a one-line explanation (exit status 1)."""

    exit_code = 1


class MatrixError(VariantsError):
    """nix/variants.toml is malformed."""


class SelectionError(VariantsError):
    """A request (--sm, --system, a name) matches no variant, or too many."""


class PreflightError(VariantsError):
    """The machine cannot do what was asked (no nix, old nix, no builder...)."""


class GitError(VariantsError):
    """The git repository refuses the request: dirty tree, unknown branch, a moved ref."""


class PinError(VariantsError):
    """A nixpkgs pin cannot be used: not a full commit, not fetchable, not evaluable."""


class BumpError(VariantsError):
    """`bump-pin` failed on at least one branch, so no branch moved."""


class BuildError(VariantsError):
    """Nix could not evaluate or build what was asked (details printed above)."""


class PublishError(VariantsError):
    """`invoke publish` cannot go ahead: a variant is not built, a key is unusable,
    or (with --check) the cache lacks a variant."""


class ImageError(VariantsError):
    """`invoke image` cannot go ahead: a bad destination, an unbuilt variant, or a
    registry (or archive) that refused the image."""


class ToolMissing(PreflightError):
    """An external executable is not on PATH."""

    def __init__(self, tool: str, hint: str = "") -> None:
        self.tool = tool
        message = f"'{tool}' was not found on PATH"
        super().__init__(f"{message}: {hint}" if hint else message)


class GpuError(VariantsError):
    """nvidia-smi failed (driver not loaded, too old) or printed something unreadable."""


class AuditError(VariantsError):
    """`invoke audit` cannot read its target (missing, unreadable, not a library)."""


class NoCudaCode(AuditError):
    """The audited path holds no CUDA device code at all."""


def tail(text: str, lines: int = 20) -> str:
    """The last `lines` non-empty lines of `text`."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


class CommandError(VariantsError):
    """An external command failed; carries argv, exit code and stderr (its last line in the message)."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        detail = tail(stderr, 1)
        super().__init__(
            f"command failed with exit code {returncode}: {' '.join(self.argv[:4])}"
            + (" ..." if len(self.argv) > 4 else "")
            + (f": {detail}" if detail else "")
        )


class UsageError(VariantsError):
    """Bad command-line arguments (nox posargs, task options)."""


class SmokeFailed(VariantsError):
    """`nox -s smoke` / `invoke smoke`: a check failed in at least one result."""


def errno_name(exc: OSError) -> str:
    """'ENOSPC' for an OSError of errno 28 ('' when it carries none)."""
    return errno.errorcode.get(exc.errno or 0, "")


class WriteError(VariantsError):
    """A file or folder this tool writes for the user cannot be written (a
    read-only checkout, a full disk, a file where a folder belongs): one line
    naming the path and the errno."""

    def __init__(self, path: object, exc: OSError) -> None:
        self.path = path
        self.errno = exc.errno
        name = errno_name(exc)
        super().__init__(f"cannot write {path}: {exc.strerror or exc}" + (f" ({name})" if name else ""))
