"""How every task ends: one policy for signals, temporary files and child processes (issue #21).

The boundary (boundary.py) runs every task, whichever way it is started
(Invoke, Nox, `python -m`), inside `policy()`:

- SIGINT raises KeyboardInterrupt; SIGTERM (a cancelled CI job, Kubernetes)
  and SIGHUP (a closed terminal) raise errors.Interrupted; the boundary exits
  130, 143 and 129. They are raised in the main thread wherever the task is,
  so `with` blocks and `finally` clauses run as for Ctrl-C.
- Every temporary file or folder a task makes comes from
  `temporary_directory()` or `temporary_file()`, and every step that must be
  undone when the task fails from `undo_on_failure()`. Each is registered for
  as long as it exists: the block that made it removes it, and what is still
  registered when the task ends (a second signal during clean-up, a block
  that never ran its `finally`) is removed by the policy, with signals held.
- Every child process comes from runner.spawn(), which registers it here: one
  still running when the task ends is stopped (its whole process group when
  it has a session of its own: SIGTERM, a grace, then SIGKILL), and the
  kernel sends it SIGTERM when we die, even by SIGKILL (runner's
  PR_SET_PDEATHSIG).
- `critical()` holds these signals over a block that must complete once
  begun (bump-pin's ref transaction and checkout update, `git worktree add`,
  build's result links) and delivers the first one when the block is done.

tests/test_signals.py sends each signal to every task at a point where it
holds temporary state or a child (see `checkpoint()`), and
tests/test_structure.py refuses `tempfile` and `subprocess.Popen` anywhere
else in the package.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import Interrupted

SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long a child still running at the end gets between SIGTERM and SIGKILL.
STOP_GRACE_S = 5.0


def exception_for(signum: int) -> KeyboardInterrupt:
    """KeyboardInterrupt for SIGINT (exit 130), Interrupted for the others (128 + signum)."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Interrupted(signum)


class Child(Protocol):
    """What the policy needs of a child process (a subprocess.Popen)."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


@dataclass(frozen=True)
class _Started:
    """A registered child: the process, whether it leads a group of its own,
    and the thread that started it (a block owns only what its thread started)."""

    proc: Child
    own_group: bool
    thread: int


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: int = 0  # nested policy() blocks; the outermost one cleans up
    held_stack: list[list[int]] = field(default_factory=list)  # critical() blocks of the main thread
    signalled: threading.Event = field(default_factory=threading.Event)
    cleanups: dict[int, tuple[str, Callable[[], None]]] = field(default_factory=dict)
    next_token: int = 0
    children: list[_Started] = field(default_factory=list)
    paused: bool = False


_STATE = _State()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _on_signal(signum: int, frame: Any) -> None:
    if _STATE.held_stack:
        _STATE.held_stack[-1].append(signum)
        return
    _STATE.signalled.set()
    raise exception_for(signum)


@contextlib.contextmanager
def _handlers(handler: Callable[[int, Any], None]) -> Iterator[bool]:
    """`handler` for SIGINT, SIGTERM and SIGHUP inside the block, the previous
    ones restored after it; off the main thread nothing changes (False)."""
    previous: dict[int, Any] = {}
    if _in_main_thread():
        for sig in SIGNALS:
            previous[int(sig)] = signal.signal(sig, handler)
    try:
        yield bool(previous)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def policy() -> Iterator[None]:
    """The policy for one task (the boundary's): signals raise, and at the end
    every registered temporary is removed and every registered child stopped.
    Nested blocks (a library function calling another) share the outermost one."""
    with _STATE.lock:
        outermost = _STATE.active == 0
        _STATE.active += 1
        if outermost:
            _STATE.signalled.clear()
            _STATE.paused = False
    if not outermost:
        try:
            yield
        finally:
            with _STATE.lock:
                _STATE.active -= 1
        return
    try:
        with _handlers(_on_signal):
            try:
                checkpoint("start", "")
                yield
            except BaseException:
                _end(deliver=False)
                raise
            _end(deliver=True)  # a signal during the clean-up of a task that had ended well
    finally:
        with _STATE.lock:
            _STATE.active -= 1


def _end(*, deliver: bool) -> None:
    """The policy's last step: stop registered children, run registered undo steps."""
    with critical(deliver=deliver):
        stop_children()
        run_cleanups()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Signals raise inside the block (as under policy()), for a library
    function called outside a task (the tests call some directly); inside a
    task it changes nothing."""
    if _STATE.active or _STATE.held_stack:
        yield
        return
    with _handlers(_on_signal):
        yield


@contextlib.contextmanager
def critical(*, deliver: bool = True) -> Iterator[list[int]]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block is done, then raise the
    first that came (deliver=False: only record them; the caller decides).
    Yields the list of signals held so far. A block inside another passes its
    signals to the outer one. Off the main thread there is nothing to hold:
    signals are only ever handled in the main thread."""
    if not _in_main_thread():
        yield []
        return
    held: list[int] = []
    outer = _STATE.held_stack[-1] if _STATE.held_stack else None
    _STATE.held_stack.append(held)
    installed = contextlib.nullcontext(True) if outer is not None or _STATE.active else _handlers(_on_signal)
    try:
        with installed:
            yield held
    finally:
        _STATE.held_stack.pop()
    if not held:
        return
    if outer is not None:
        outer.extend(held)
    elif deliver:
        _STATE.signalled.set()
        raise exception_for(held[0])


# -- temporaries and undo steps --------------------------------------------------


def register(description: str, undo: Callable[[], None]) -> int:
    """Run `undo` when the task ends unless `unregister(token)` comes first."""
    with _STATE.lock:
        _STATE.next_token += 1
        token = _STATE.next_token
        _STATE.cleanups[token] = (description, undo)
    return token


def unregister(token: int) -> None:
    with _STATE.lock:
        _STATE.cleanups.pop(token, None)


def run_cleanups() -> None:
    """Run every registered undo step, newest first (each once; errors ignored)."""
    while True:
        with _STATE.lock:
            if not _STATE.cleanups:
                return
            token = max(_STATE.cleanups)
            _, undo = _STATE.cleanups.pop(token)
        with contextlib.suppress(OSError):
            undo()


def pending() -> list[str]:
    """What is registered now (for tests and for the pause record)."""
    with _STATE.lock:
        return [description for description, _ in _STATE.cleanups.values()]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _started_outside() -> Callable[[_Started], bool]:
    """Whether a child was started by this thread after this call: what a block
    started (smoke's workers each run a block of their own at once)."""
    thread = threading.get_ident()
    with _STATE.lock:
        # The records themselves, held: an id() of one pruned and freed meanwhile
        # could be reused by a child this block starts, which would then pass as
        # started outside it and outlive the block.
        before = tuple(_STATE.children)
    return lambda child: child.thread == thread and not any(child is c for c in before)


@contextlib.contextmanager
def temporary_directory(prefix: str = "vllm-variants-", dir: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A fresh folder (in $TMPDIR, or `dir`), removed when the block ends or the
    task does; a child the block started and left running is stopped first (it
    could still be writing there)."""
    with critical():  # no signal between making it and registering it
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
        token = register(f"temporary folder {path}", lambda: _remove(path))
    started_here = _started_outside()
    try:
        checkpoint("temp", str(path))
        yield path
    finally:
        stop_children(only=started_here)
        _remove(path)
        unregister(token)


@contextlib.contextmanager
def temporary_file(
    *, dir: str | os.PathLike[str] | None = None, prefix: str = "vllm-variants-", suffix: str = ""
) -> Iterator[tuple[int, Path]]:
    """(an open descriptor, its path) of a new file, removed when the block ends
    unless the caller moved it away (os.replace: then there is nothing to remove)."""
    with critical():
        fd, name = tempfile.mkstemp(dir=dir, prefix=prefix, suffix=suffix)
        path = Path(name)
        token = register(f"temporary file {path}", lambda: _remove(path))
    try:
        checkpoint("temp", str(path))
        yield fd, path
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        _remove(path)
        unregister(token)


@contextlib.contextmanager
def undo_on_failure(description: str, undo: Callable[[], None]) -> Iterator[None]:
    """Run `undo` if the block fails (an error, a signal, or the task dying
    inside it); forget it if the block completes. What the block started is
    stopped first: it may still be writing what the undo removes."""
    token = register(description, undo)
    started_here = _started_outside()
    try:
        checkpoint("undo", description)
        yield
    except BaseException:
        unregister(token)
        with critical(deliver=False), contextlib.suppress(OSError):
            stop_children(only=started_here)
            undo()
        raise
    unregister(token)


# -- children -----------------------------------------------------------------------


def adopt(proc: Child, *, own_group: bool) -> None:
    """Register a started child (runner.spawn): stopped at the end if still running."""
    with _STATE.lock:
        _STATE.children = [c for c in _STATE.children if c.proc.poll() is None]
        _STATE.children.append(_Started(proc, own_group, threading.get_ident()))


def signal_child(proc: Child, sig: int, *, own_group: bool) -> bool:
    """Send `sig` to a child, or to its whole process group when it has a session
    of its own (runner.spawn's new_session: Nix's builders, a vllm engine's
    workers); False when there is nothing left to signal. The one place a child
    of ours is signalled (issue #24)."""
    try:
        if own_group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# Kill at once, wait for the end.
KILL: tuple[tuple[int, float | None], ...] = ((signal.SIGKILL, None),)


def stop(
    proc: subprocess.Popen[bytes], *, own_group: bool, steps: Sequence[tuple[int, float | None]] = KILL
) -> tuple[bytes | None, bytes | None]:
    """Stop a child for good: each of `steps`' signals in turn (to its whole process
    group when it has a session of its own), each followed by a wait of up to its
    grace (None: as long as it takes) during which its pipes are drained, so that it
    never blocks writing them; a Ctrl-C during a grace moves on to the next signal.
    Returns what the last wait read from its pipes: (stdout, stderr)."""
    out: bytes | None = None
    err: bytes | None = None
    for sig, grace in steps:
        signal_child(proc, sig, own_group=own_group)  # nothing left to signal: the wait ends at once
        try:
            out, err = proc.communicate(timeout=grace)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # a second Ctrl-C: stop waiting politely
            continue
        except (OSError, ValueError):  # its pipes were closed by a wait a signal interrupted
            pass
        break
    proc.wait()
    return out, err


def stop_children(grace: float = STOP_GRACE_S, only: Callable[[_Started], bool] | None = None) -> None:
    """SIGTERM to every registered child still running (its group, when it has
    its own), SIGKILL to what is left after `grace` seconds. `only`: those it accepts."""
    with _STATE.lock:
        chosen = [c for c in _STATE.children if only is None or only(c)]
        _STATE.children = [c for c in _STATE.children if c not in chosen and c.proc.poll() is None]
        running = [(c.proc, c.own_group) for c in chosen if c.proc.poll() is None]
    for proc, own_group in running:
        signal_child(proc, signal.SIGTERM, own_group=own_group)
    deadline = time.monotonic() + grace
    for proc, own_group in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired, or a second wait elsewhere
            pass
        if own_group or proc.poll() is None:  # the group may outlive its leader
            signal_child(proc, signal.SIGKILL, own_group=own_group)
            with contextlib.suppress(Exception):
                proc.wait(timeout=grace)


# -- the test seam ------------------------------------------------------------------

# As git's GIT_TEST_* variables: set by the test suite only. A task whose
# environment names a checkpoint writes one JSON line to the pause file at the
# first checkpoint that matches and waits there until a signal arrives, so
# that a test can signal it at exactly that point. The value is KIND (start,
# temp, undo, child, step: a named point of a task), KIND:TEXT (TEXT in the
# checkpoint's detail: a child's argv, a path) or KIND~REGEX.
PAUSE_ENV = "VLLM_VARIANTS_TEST_PAUSE"
PAUSE_FILE_ENV = "VLLM_VARIANTS_TEST_PAUSE_FILE"
PAUSE_LIMIT_S = 120.0


def _wanted(kind: str, detail: str) -> bool:
    wanted = os.environ.get(PAUSE_ENV, "")
    cut = min((i for i in (wanted.find(":"), wanted.find("~")) if i >= 0), default=len(wanted))
    want_kind, how, text = wanted[:cut], wanted[cut : cut + 1], wanted[cut + 1 :]
    if want_kind != kind:
        return False
    return bool(re.search(text, detail)) if how == "~" else text in detail


def checkpoint(kind: str, detail: str) -> None:
    """A point where a test may stop the task (see PAUSE_ENV); nothing otherwise."""
    if _STATE.paused or not os.environ.get(PAUSE_ENV) or not _wanted(kind, detail):
        return
    _STATE.paused = True
    with _STATE.lock:
        children = [c.proc.pid for c in _STATE.children if c.proc.poll() is None]
    record = {"pid": os.getpid(), "kind": kind, "detail": detail, "pending": pending(), "children": children}
    with open(os.environ[PAUSE_FILE_ENV], "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    deadline = time.monotonic() + PAUSE_LIMIT_S
    if not _in_main_thread():
        _STATE.signalled.wait(PAUSE_LIMIT_S)
        return
    # The handler raises out of the sleep; inside critical() it holds the
    # signal instead, and the pause ends so that the block can complete.
    while time.monotonic() < deadline and not any(_STATE.held_stack):
        time.sleep(0.02)
