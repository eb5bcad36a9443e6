"""The one place where library errors become exit codes (tasks.py, noxfile.py, `python -m`).

Every task, however it is started, runs inside `running()`:
- lifecycle.policy(): SIGINT, SIGTERM and SIGHUP stop it, its temporary files
  are removed and its children stopped (issue #21);
- a closed standard output is refused before anything runs, as a full one is
  when it is written (`invoke variants >&-` must not report success);
- the error is one line: `one_line()` shows newlines and other control
  characters of the values in it escaped, and bounds its length.

Expected failures (VariantsError) print that line and exit 1 (or their own
code); Ctrl-C exits 130, SIGTERM 143, SIGHUP 129 (128 + the signal,
errors.Interrupted). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from . import lifecycle
from .errors import Interrupted, VariantsError, errno_name

T = TypeVar("T")
INTERRUPTED = 130
# An error line longer than this is cut (a 30 MB value must not make a 30 MB line).
MAX_LINE = 2000

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """`text` as one line: newlines, tabs and other control characters (C0, DEL,
    C1, Unicode line and paragraph separators) escaped; cut past `limit`."""
    out = []
    for char in text:
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif char in "\u2028\u2029":
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    line = "".join(out)
    if len(line) > limit:
        line = f"{line[:limit]}... ({len(line) - limit} more characters)"
    return line


class StdoutClosed(VariantsError):
    """Standard output is not open: what the task prints would go nowhere."""


def _require_stdout() -> None:
    """Refuse a closed standard output (`>&-`): Python then sets sys.stdout to
    None and every print vanishes, and the next file opened would take
    descriptor 1 and receive what a child writes there."""
    try:
        os.fstat(1)  # raises when descriptor 1 is closed
        closed = sys.stdout is None
    except OSError:
        closed = True
    if closed:
        raise StdoutClosed(
            "standard output is closed (>&-): nothing could be printed; "
            "redirect it to a file or to /dev/null instead of closing it"
        )


def _interrupted_code(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C; 128 + the signal for SIGTERM (143) and SIGHUP (129)."""
    return 128 + exc.signum if isinstance(exc, Interrupted) else INTERRUPTED


@contextlib.contextmanager
def running() -> Iterator[None]:
    """One task's run: the stdout check, then the lifecycle policy."""
    with lifecycle.policy():
        _require_stdout()
        yield


def call(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run func for Invoke; VariantsError/Ctrl-C become invoke.Exit."""
    from invoke.exceptions import Exit

    try:
        with running():
            return func(*args, **kwargs)
    except KeyboardInterrupt as exc:
        raise Exit("interrupted", code=_interrupted_code(exc)) from None
    except BrokenPipeError:
        # The reader went away (`invoke variants | head`): stop quietly.
        # https://docs.python.org/3/library/signal.html#note-on-sigpipe
        _drop_stdout()
        raise Exit(code=1) from None
    except VariantsError as exc:
        raise Exit(f"error: {one_line(str(exc))}", code=exc.exit_code) from None
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
    os.dup2(devnull, 1)


def nox_call(session: Any, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run func for a Nox session; VariantsError fails the session with its one line.

    Nox turns any KeyboardInterrupt into exit 130; SIGTERM and SIGHUP leave
    with their own codes (143, 129) through SystemExit, which Nox lets pass.
    """
    try:
        with running():
            return func(*args, **kwargs)
    except Interrupted as exc:
        print("interrupted", file=sys.stderr)
        raise SystemExit(_interrupted_code(exc)) from None
    except VariantsError as exc:
        session.error(f"error: {one_line(str(exc))}")
        raise  # session.error raises; this keeps type checkers content


def main(func: Callable[[], Any]) -> int:
    """Run func for a `python -m vllm_variants.<module>` entry point (no Invoke).

    The same mapping as call(): one `error: ...` line and its exit code for a
    VariantsError, 130/143/129 for the signals. Returns the exit status.
    """
    try:
        with running():
            func()
    except KeyboardInterrupt as exc:
        print("interrupted", file=sys.stderr)
        return _interrupted_code(exc)
    except VariantsError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
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
