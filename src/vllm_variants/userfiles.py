"""Reading a user's file or path: the one way every command does it (issue #21).

Whatever a user names (nix/variants.toml, README.md, a result's variant.json,
a signing key, a machines file, --nixpkgs, an audit target, --tmpdir, a
report folder) is looked at here first. Each refusal is one UserFileError
line that names the path and what it is instead of what was wanted:

- a directory where a file is wanted, a file where a directory is;
- a FIFO, a device or a socket (reading a FIFO would wait forever);
- a symlink loop, a dangling symlink, a missing path, a path through a file;
- a place we may not read (or write, when writing is the point);
- bytes that are not UTF-8 text, more bytes than the file may hold, and
  JSON or TOML nested deeper than MAX_DEPTH.

So no IsADirectoryError, UnicodeDecodeError, RecursionError, OverflowError or
RuntimeError('Symlink loop') reaches the user; tests/test_structure.py keeps
the package's reads of users' files in this module.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import UsageError, errno_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10
    import tomli as tomllib

# How deep nested JSON or TOML may go: our files nest four or five levels.
MAX_DEPTH = 64
KIB = 1024
MIB = 1024 * KIB


class UserFileError(UsageError):
    """A path the user named is not what the command needs (one line)."""


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISREG, "a file"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """'a directory', 'a FIFO (named pipe)', ... for a stat mode."""
    return next((name for test, name in _KINDS if test(mode)), "not a file")


def _size(count: int) -> str:
    if count >= MIB:
        return f"{count / MIB:.1f} MiB"
    if count >= KIB:
        return f"{count / KIB:.1f} KiB"
    return f"{count} bytes"


def why_not(path: Path, exc: OSError) -> str:
    """Why an OSError on `path` happened, in words, with the errno's name."""
    code = exc.errno or 0
    if code == errno.ENOENT:
        if path.is_symlink():
            return f"a dangling symlink (to {os.readlink(path)}) (ENOENT)"
        return "no such file or directory (ENOENT)"
    if code == errno.ELOOP:
        return "a symlink loop (ELOOP)"
    if code == errno.ENOTDIR:
        for parent in reversed(path.parents):
            if parent.exists() and not parent.is_dir():
                return f"{parent} is not a directory (ENOTDIR)"
        return "a path through a file (ENOTDIR)"
    if code == errno.EACCES:
        return "permission denied (EACCES)"
    if code == errno.ENAMETOOLONG:
        return "the path is too long (ENAMETOOLONG)"
    name = errno_name(exc)
    return f"{exc.strerror or exc}" + (f" ({name})" if name else "")


def _stat(path: Path, label: str) -> os.stat_result:
    try:
        return os.stat(path)
    except ValueError:  # an embedded NUL byte
        raise UserFileError(f"{label}: the path holds a NUL byte") from None
    except OSError as exc:
        raise UserFileError(f"{label}: {why_not(path, exc)}") from None


def file(path: Path | str, label: str) -> Path:
    """`path`, which must be a regular file we may read."""
    path = Path(path)
    mode = _stat(path, label).st_mode
    if not stat.S_ISREG(mode):
        raise UserFileError(f"{label}: is {kind_of(mode)}, not a file{' (EISDIR)' * stat.S_ISDIR(mode)}")
    if not os.access(path, os.R_OK):
        raise UserFileError(f"{label}: permission denied (EACCES)")
    return path


def directory(path: Path | str, label: str, *, writable: bool = False) -> Path:
    """`path`, which must be a directory we may enter (and write in, with writable)."""
    path = Path(path)
    mode = _stat(path, label).st_mode
    if not stat.S_ISDIR(mode):
        raise UserFileError(f"{label}: is {kind_of(mode)}, not a directory (ENOTDIR)")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UserFileError(f"{label}: permission denied (EACCES)")
    if writable and not os.access(path, os.W_OK):
        raise UserFileError(f"{label}: {not_writable(path)}")
    return path


def not_writable(path: Path) -> str:
    """Why we may not write in `path`: a read-only file system, or permissions."""
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "on a read-only file system (EROFS)" if read_only else "permission denied (EACCES)"


def file_or_directory(path: Path | str, label: str) -> tuple[Path, bool]:
    """(`path`, whether it is a directory): a regular file or a directory, nothing else."""
    path = Path(path)
    mode = _stat(path, label).st_mode
    if stat.S_ISDIR(mode):
        return directory(path, label), True
    if not stat.S_ISREG(mode):
        raise UserFileError(f"{label}: is {kind_of(mode)}, not a file or a directory")
    return file(path, label), False


def read_bytes(path: Path | str, label: str, *, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; never waits on a FIFO or a device."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except ValueError:
        raise UserFileError(f"{label}: the path holds a NUL byte") from None
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise UserFileError(f"{label}: is a directory, not a file (EISDIR)") from None
        raise UserFileError(f"{label}: {why_not(path, exc)}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UserFileError(f"{label}: is {kind_of(mode)}, not a file{' (EISDIR)' * stat.S_ISDIR(mode)}")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(MIB, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise UserFileError(f"{label}: {why_not(path, exc)}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise UserFileError(f"{label}: more than {_size(limit)}, the most this file may hold")
    return b"".join(chunks)


def decode(data: bytes, label: str) -> str:
    """UTF-8 text, or one line naming the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserFileError(f"{label}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def read_text(path: Path | str, label: str, *, limit: int) -> str:
    """A regular file of at most `limit` bytes of UTF-8 text."""
    return decode(read_bytes(path, label, limit=limit), label)


def depth(value: Any) -> int:
    """How deep lists and mappings nest in `value` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def _too_deep(label: str) -> UserFileError:
    return UserFileError(f"{label}: nested deeper than {MAX_DEPTH} levels, more than this file may be")


def parse_json(text: str, label: str) -> Any:
    """JSON text, its nesting bounded; one line for anything that is not."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(label) from None
    except ValueError as exc:  # JSONDecodeError, or a number past Python's digit limit
        raise UserFileError(f"{label}: not valid JSON ({exc})") from None
    if depth(value) > MAX_DEPTH:
        raise _too_deep(label)
    return value


def parse_toml(text: str, label: str) -> dict[str, Any]:
    """TOML text, its nesting bounded; one line for anything that is not."""
    try:
        value = tomllib.loads(text)
    except RecursionError:
        raise _too_deep(label) from None
    except (ValueError, OverflowError) as exc:  # TOMLDecodeError, or a date or number TOML allows and Python does not
        raise UserFileError(f"{label}: invalid TOML: {exc}") from None
    if depth(value) > MAX_DEPTH:
        raise _too_deep(label)
    return value


def read_json(path: Path | str, label: str, *, limit: int) -> Any:
    return parse_json(read_text(path, label, limit=limit), label)


def real(path: Path | str) -> Path:
    """`path` with its symlinks resolved, made absolute: Path.resolve() without its
    RuntimeError('Symlink loop') (Python before 3.13): a loop stays as it is, for
    the reader above to name."""
    return Path(os.path.realpath(path))


# -- paths handed to Nix ---------------------------------------------------------


def url_path(path: Path | str) -> str:
    """An absolute path as the path part of a flake URL (git+file://, path:):
    Nix percent-decodes it, so a space, '#', '?' or '%' must be encoded."""
    return quote(os.fspath(path), safe="/")
