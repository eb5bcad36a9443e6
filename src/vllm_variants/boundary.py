"""The one place where library errors become exit codes (tasks.py, noxfile.py).

Expected failures (VariantsError) print one line and exit 1 (or their own
code); Ctrl-C exits 130, SIGTERM 143 (128 + the signal, errors.Interrupted).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import Interrupted, VariantsError, errno_name

T = TypeVar("T")
INTERRUPTED = 130


def _interrupted_code(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C; 128 + the signal for SIGTERM (143) and SIGHUP (129)."""
    return 128 + exc.signum if isinstance(exc, Interrupted) else INTERRUPTED


def call(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run func for Invoke; VariantsError/Ctrl-C become invoke.Exit."""
    from invoke.exceptions import Exit

    try:
        return func(*args, **kwargs)
    except KeyboardInterrupt as exc:
        raise Exit("interrupted", code=_interrupted_code(exc)) from None
    except BrokenPipeError:
        # The reader went away (`invoke variants | head`): stop quietly.
        # https://docs.python.org/3/library/signal.html#note-on-sigpipe
        _drop_stdout()
        raise Exit(code=1) from None
    except VariantsError as exc:
        raise Exit(f"error: {exc}", code=exc.exit_code) from None
    except OSError as exc:
        line = stdout_failure(exc)
        if line is None:
            raise
        _drop_stdout()
        raise Exit(f"error: {line}", code=1) from None


# A write to a stream we name no file for (print, rich) failed this way:
# stdout on /dev/full, a full disk, a vanished NFS mount (issue #11).
_STREAM_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS)


def stdout_failure(exc: OSError) -> str | None:
    """The one line for a failed write to standard output, or None for any other OSError (a bug)."""
    if exc.filename is not None or exc.errno not in _STREAM_ERRNOS:
        return None
    return f"cannot write standard output: {exc.strerror} ({errno_name(exc)})"


def _drop_stdout() -> None:
    """Point fd 1 at /dev/null: the interpreter's last flush must not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def nox_call(session: Any, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run func for a Nox session; VariantsError fails the session with its one line."""
    try:
        return func(*args, **kwargs)
    except VariantsError as exc:
        session.error(f"error: {exc}")
        raise  # session.error raises; this keeps type checkers content


def main(func: Callable[[], Any]) -> int:
    """Run func for a `python -m vllm_variants.<module>` entry point (no Invoke).

    The same mapping as call(): one `error: ...` line and its exit code for a
    VariantsError, 130 for Ctrl-C. Returns the exit status.
    """
    try:
        func()
    except KeyboardInterrupt as exc:
        print("interrupted", file=sys.stderr)
        return _interrupted_code(exc)
    except VariantsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def project_main(module: str, show: Callable[..., Any], argv: list[str] | None = None) -> int:
    """`python -m vllm_variants.<module> [--json] [--nvidia-smi PATH]` (doctor, which) in the checkout."""
    import argparse

    from .project import Project

    parser = argparse.ArgumentParser(
        prog=f"python -m vllm_variants.{module}", description=(show.__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--nvidia-smi", default="nvidia-smi", help="the nvidia-smi to run")
    args = parser.parse_args(argv)
    return main(lambda: show(Project.find(), as_json=args.json, smi=args.nvidia_smi))
