"""The one way this package runs external programs (nix, git, nvidia-smi, ...).

argv lists only, never a shell string: user input (SMs, revs, flake refs, store
URIs) reaches programs as separate arguments and is never parsed by a shell.
A missing executable is a ToolMissing, one the system will not start (not
executable, another machine's binary) a CannotRun, a non-zero exit a
CommandError carrying the command, its exit code and the tail of its stderr
(Mic92/nix-update's utils.run is the model). Every child gets SIGTERM when
this process dies, however it dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from . import lifecycle
from .errors import CommandError, PreflightError, ToolMissing

Argv = Sequence["str | os.PathLike[str]"]

# What to tell a user whose PATH lacks one of the programs we drive.
HINTS = {
    "nix": "install Nix >= 2.18 (https://nixos.org/download) and enable flakes",
    "git": "install git",
    "nvidia-smi": "it ships with the NVIDIA driver; no driver is installed or it is not on PATH",
    "cuobjdump": "it ships with the CUDA toolkit (cudaPackages.cuda_cuobjdump)",
    "skopeo": "install it: apt-get install skopeo (Debian, Ubuntu), dnf install skopeo (Fedora, RHEL)",
    "docker": "--load needs docker or podman (apt-get install docker.io, or podman); or give --to "
    "docker://REGISTRY/NAME or --to oci-archive:PATH instead",
}


class CannotRun(ToolMissing):
    """The program is there but the system will not start it. A ToolMissing,
    so callers that go on without a tool (smoke, doctor) go on without it."""

    def __init__(self, tool: str, why: str) -> None:
        self.tool = tool
        PreflightError.__init__(self, f"cannot run '{tool}': {why}")


_WHY = {
    errno.ENOEXEC: "not a program this machine can run (built for another system?)",
    errno.EACCES: "permission denied (not executable, or in a directory you cannot enter)",
}


def _not_started(exc: OSError, args: list[str], cwd: Path | str | None, env: Mapping[str, str] | None) -> ToolMissing:
    """One line for an OSError from starting args[0]: the program, and why."""
    program = args[0]
    if cwd is not None and exc.filename is not None and os.fspath(exc.filename) == os.fspath(cwd):
        return CannotRun(program, f"its working directory {cwd}: {exc.strerror}")
    if isinstance(exc, FileNotFoundError):
        if os.sep in program:  # a path: relative ones are run from cwd, not from here
            there = os.path.lexists(Path(cwd or ".") / program)
        else:
            there = shutil.which(program, path=(env if env is not None else os.environ).get("PATH")) is not None
        if not there:
            return ToolMissing(program, HINTS.get(Path(program).name, ""))
        return CannotRun(program, "its interpreter (#! line) or dynamic loader does not exist")
    return CannotRun(program, _WHY.get(exc.errno or 0, exc.strerror or str(exc)))


# prctl(2): the signal a child gets when its parent dies.
PR_SET_PDEATHSIG = 1


def _die_with_us() -> Any:
    """A preexec_fn that makes the child get SIGTERM when we die, even by
    SIGKILL (a CI runner escalating): Nix then stops its builders itself
    instead of building on, orphaned, for hours (issue #11). Linux only;
    elsewhere None. libc is looked up here, before the fork: the child only
    makes the call, it imports nothing. The kernel sends the signal when the
    thread that started the child ends: the main thread, or a smoke worker
    that waits for its child anyway."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # we died between the fork and the prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def require_tool(name: str, hint: str | None = None) -> str:
    """The path of program `name` on PATH, or ToolMissing with how to install it (HINTS)."""
    found = shutil.which(name)
    if found is None:
        raise ToolMissing(name, HINTS.get(name, "") if hint is None else hint)
    return found


def _argv(argv: Argv) -> list[str]:
    return [os.fspath(a) for a in argv]


def format_argv(argv: Argv) -> str:
    return shlex.join(_argv(argv))


def run(
    argv: Argv,
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    echo: bool = False,
    input: str | None = None,
    timeout: float | None = None,
    new_session: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run argv to completion, capturing text stdout and stderr.

    Fails by default (check=True) with a CommandError. With echo=True the
    command is printed (to stderr) before it runs, as `$ nix build ...`.
    new_session: out of the terminal's process group, so a Ctrl-C reaches
    only us (for a step that must finish once begun). Standard input is ours
    unless `input` is given. A timeout or a signal stops it (its group, with
    new_session) before the exception goes on.
    """
    args = _argv(argv)
    if echo:
        print(f"$ {format_argv(args)}", file=sys.stderr, flush=True)
    proc = spawn(args, cwd=cwd, env=env, stdin=None if input is None else subprocess.PIPE, new_session=new_session)
    try:
        out, err = proc.communicate(None if input is None else input.encode("utf-8"), timeout=timeout)
    except BaseException:
        lifecycle.stop(proc, own_group=new_session)  # a timeout or a signal: it ends with us
        raise
    done = subprocess.CompletedProcess(args, proc.returncode, text_of(out), text_of(err))
    if check and done.returncode != 0:
        raise CommandError(args, done.returncode, done.stderr)
    return done


def run_together(
    argvs: Sequence[Argv], *, env: Mapping[str, str] | None = None, new_session: bool = False
) -> list[subprocess.CompletedProcess[str]]:
    """Run several short commands at once (spawn()), each to completion, capturing
    text output as run(check=False) does: the wait is the longest one's, not the
    sum. One that cannot start is spawn()'s ToolMissing (the others are waited for).
    new_session: as run()'s."""
    started: list[subprocess.Popen[bytes]] = []
    failed: ToolMissing | None = None
    for argv in argvs:
        try:
            started.append(spawn(argv, env=env, new_session=new_session))
        except ToolMissing as exc:
            failed = failed or exc
    done = []
    for proc in started:
        out, err = proc.communicate()
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, text_of(out), text_of(err)))
    if failed is not None:
        raise failed
    return done


def text_of(data: str | bytes | None) -> str:
    """A spawned program's captured output as text (undecodable bytes replaced; None: nothing)."""
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return data or ""


def spawn(
    argv: Argv,
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    stdout: int | IO[bytes] | None = subprocess.PIPE,
    stderr: int | IO[bytes] | None = subprocess.PIPE,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start argv without waiting (for streaming Nix's log, or one program's
    output into another's stdin); same errors as run(). The child is
    registered with the lifecycle policy: stopped if still running when the
    task ends, however it ends."""
    args = _argv(argv)
    # A signal between the fork and the registration would leave a child that
    # nothing stops: it is held until the child is registered, then delivered.
    with lifecycle.critical():
        try:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdout=stdout,
                stderr=stderr,
                stdin=stdin,
                start_new_session=new_session,
                preexec_fn=_die_with_us(),
            )
        except OSError as exc:
            raise _not_started(exc, args, cwd, env) from None
        lifecycle.adopt(proc, own_group=new_session)
    lifecycle.checkpoint("child", " ".join(args))
    return proc
