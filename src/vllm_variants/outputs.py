"""Files this tool writes for the user: checked before any work starts, then
written without replacing what the user named (issue #11).

`--json PATH`, `--report-dir DIR` and the checkout's logs/ are checked when the
command line is read, before Nix or a check process starts: a typo must not
cost an hour of building. Writing then goes through write_text(): a regular
file (or a new one) is replaced atomically, through a temporary file beside
it; anything else the user named (/dev/stdout, a FIFO, a device, a symlink to
one) is written to, never replaced; `-` is standard output. Every failure is
a WriteError or UsageError: one line with the path and the errno.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from . import lifecycle, userfiles
from .errors import UsageError, WriteError

STDOUT = "-"


def relative(path: Path, root: Path) -> str:
    """`path` relative to `root` where it lies inside it (logs/...), else as it is."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _existing_ancestor(path: Path, cwd: Path, label: str) -> Path:
    """The nearest existing folder above `path`; a file on the way is refused."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{label}: {relative(parent, cwd)} is not a directory (ENOTDIR)")
            return parent
        if parent.is_symlink():  # dangling: nothing can be made under it
            raise UsageError(f"{label}: {relative(parent, cwd)} is a dangling symlink (ENOENT)")
    return Path("/")


def check_file(flag: str, value: str | None, cwd: Path) -> Path | None:
    """An output file given on the command line (None: not given), checked."""
    if value is None:
        return None
    if not value.strip():
        raise UsageError(f"{flag} '{value}' is empty; give a file path (or - for standard output)")
    if _our_fd(Path(value)) is not None:
        return Path(value)
    path = cwd / Path(value).expanduser()
    label = f"{flag} {value}"
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"{label}: {userfiles.why_not(path, exc)}") from None
    if path.is_dir():
        raise UsageError(f"{label}: is a directory; give a file path (EISDIR)")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UsageError(f"{label}: {userfiles.not_writable(path)}")
        folder = userfiles.real(path).parent
        if stat.S_ISREG(os.stat(path).st_mode) and not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{label}: its directory is not writable: {userfiles.not_writable(folder)}")
        return path
    return _creatable(path, cwd, label)


def check_dir(label: str, path: Path, cwd: Path) -> Path:
    """A folder this command will write into (made if missing), checked: a file,
    a FIFO, a symlink loop or a read-only folder in its place is one line."""
    if path.exists() or path.is_symlink():
        try:
            userfiles.directory(path, label)
        except userfiles.UserFileError as exc:
            raise UsageError(str(exc)) from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{label}: {userfiles.not_writable(path)}")
        return path
    return _creatable(path, cwd, label)


def _creatable(path: Path, cwd: Path, label: str) -> Path:
    """A path that does not exist yet, where it can be made (its folders with it)."""
    ancestor = _existing_ancestor(path, cwd, label)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{label}: cannot create it in {relative(ancestor, cwd)}: {userfiles.not_writable(ancestor)}")
    return path


def make_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(path, exc) from None
    return path


def _new_file_mode(target: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


_FD_NAMES = {"/dev/stdout": 1, "/dev/stderr": 2}


def _our_fd(path: Path) -> int | None:
    """The descriptor `-`, /dev/stdout, /dev/stderr, /dev/fd/N or /proc/self/fd/N names.

    Opening them again would make a second file position: the JSON and the
    lines printed around it would overwrite each other in a redirected file.
    """
    text = str(path)
    if text == STDOUT:
        return 1
    if text in _FD_NAMES:
        return _FD_NAMES[text]
    for prefix in ("/dev/fd/", "/proc/self/fd/", f"/proc/{os.getpid()}/fd/"):
        if text.startswith(prefix) and text[len(prefix) :].isdigit():
            return int(text[len(prefix) :])
    return None


def _write_through(path: Path, target: Path) -> bool:
    """Whether `path` is to be written to rather than replaced: a device, a FIFO,
    a socket, or a name under /dev or /proc (/dev/stdout, /proc/self/fd/1), which
    stand for an open file of ours even when that is a regular file."""
    if target.parts[1:2] in (("dev",), ("proc",)):
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False  # a new file (or a link to one not made yet)


def write_text(path: Path, text: str) -> None:
    """Write `text` to what the user named; see the module docstring."""
    fd = _our_fd(path)
    if fd is not None:  # our own stream: written where it is, after what we printed
        try:
            sys.stdout.flush()
            data = text.encode("utf-8")
            while data:
                data = data[os.write(fd, data) :]
        except OSError as exc:
            raise WriteError("standard output" if fd == 1 else path, exc) from None
        return
    target = Path(os.path.realpath(path))
    try:
        if _write_through(path, target):
            # Appended, not truncated: /dev/stdout may be the file a shell redirected to.
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(text)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with lifecycle.temporary_file(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp") as (fd, tmp):
            data = text.encode("utf-8")
            while data:
                data = data[os.write(fd, data) :]
            os.fchmod(fd, _new_file_mode(target))
            os.replace(tmp, target)  # nothing left for the block to remove
    except OSError as exc:
        raise WriteError(path, exc) from None
