"""Reading what Nix reports: its structured log and its dry-run plan.

`nix build --log-format internal-json` writes one event per stderr line:

    @nix {"action":"start","id":7,"type":105,"fields":["/nix/store/...-torch.drv","",1,1],...}
    @nix {"action":"result","id":7,"type":101,"fields":["[12/40] compiling kernel.cu"]}
    @nix {"action":"result","id":3,"type":105,"fields":[4,9,1,0]}
    @nix {"action":"msg","level":0,"msg":"error: builder for '/nix/store/...drv' failed ..."}
    @nix {"action":"stop","id":7}

The numbers are Nix's ActivityType and ResultType (src/libutil/logging.hh);
what each carries is what src/libmain/progress-bar.cc reads from it: an
actBuild's fields are [drv path, machine, round, rounds]; actBuilds gets
resProgress [done, expected, running, failed]; a build gets resBuildLogLine
[line] and resSetPhase [phase]. The format is the same from Nix 2.18 on.

`nix build --dry-run` prints its plan as text on stderr (printMissing in
src/libmain/shared.cc): "these N derivations will be built:", "this path will
be fetched (X download, Y unpacked):", each followed by indented paths. The
sizes were always MiB ("%.2f MiB") up to Nix 2.32; from 2.33 Nix renders them
with renderSize() in the unit that fits ("%.1f KiB", "MiB", "GiB", ...;
NixOS/nix#14364). Both are read as bytes.
"""

from __future__ import annotations

import json
import os
import re
import select
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import PurePosixPath
from typing import Any

PREFIX = "@nix "
TAIL_LINES = 25
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_DRV = re.compile(r"(/[^\s'\"`]+/[0-9a-z]{32}-[^\s'\"`]+\.drv)")


class ActivityType(IntEnum):
    UNKNOWN = 0
    COPY_PATH = 100
    FILE_TRANSFER = 101
    REALISE = 102
    COPY_PATHS = 103
    BUILDS = 104
    BUILD = 105
    OPTIMISE_STORE = 106
    VERIFY_PATHS = 107
    SUBSTITUTE = 108
    QUERY_PATH_INFO = 109
    POST_BUILD_HOOK = 110
    BUILD_WAITING = 111


class ResultType(IntEnum):
    FILE_LINKED = 100
    BUILD_LOG_LINE = 101
    UNTRUSTED_PATH = 102
    CORRUPTED_PATH = 103
    SET_PHASE = 104
    PROGRESS = 105
    SET_EXPECTED = 106
    POST_BUILD_LOG_LINE = 107


class Level(IntEnum):
    """Nix's Verbosity (lvlError = 0 ... lvlVomit = 7)."""

    ERROR = 0
    WARN = 1
    NOTICE = 2
    INFO = 3
    TALKATIVE = 4
    CHATTY = 5
    DEBUG = 6
    VOMIT = 7


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def store_name(path: str) -> str:
    """'/nix/store/<hash>-python3.12-torch-2.9.1.drv' -> 'python3.12-torch-2.9.1'."""
    base = PurePosixPath(path).name
    if base.endswith(".drv"):
        base = base[: -len(".drv")]
    hash_part, sep, name = base.partition("-")
    return name if sep and len(hash_part) == 32 else base


def package_name(path: str) -> str:
    """The package a store path is for, without Python prefix or version:
    'python3.12-torch-2.9.1' -> 'torch', 'nccl-2.27.3' -> 'nccl',
    'python3.12-vllm-python312-cuda12_9-sm90-0.15.1' -> 'vllm-python312-cuda12_9-sm90'.
    The version starts at the first '-' followed by a digit (Nix's DrvName)."""
    name = re.sub(r"^python\d+(\.\d+)?-", "", store_name(path))
    match = re.search(r"-\d", name)
    return name[: match.start()] if match else name


def version_of(path: str) -> str:
    name = store_name(path)
    match = re.search(r"-(\d[^-]*)$", name)
    return match.group(1) if match else ""


# -- the dry-run plan -------------------------------------------------------

_BUILD_HEAD = re.compile(r"^(?:this derivation|these (?:\d+ )?derivations) will be built:$")
_FETCH_HEAD = re.compile(r"^(?:this path|these (?:\d+ )?paths) will be fetched(?: \((?P<sizes>.*)\))?:$")
_SIZE = r"([0-9]+(?:\.[0-9]+)?) ?((?:[KkMGTPEZY]i?)?B)"
_SIZES = re.compile(rf"^{_SIZE} download, {_SIZE} unpacked$")
_UNKNOWN_HEAD = re.compile(r"^don't know how to build these paths")
_ITEM = re.compile(r"^\s+(/\S+)$")


def size_bytes(number: str, unit: str) -> int:
    """('1.5', 'KiB') -> 1536. Nix's sizes are binary; a plain 'KB'/'MB' is read
    the same way (Nix has never meant 1000 by one)."""
    power = 0 if unit == "B" else "KMGTPEZY".index(unit[0].upper()) + 1
    return round(float(number) * (1 << (10 * power)))


@dataclass(frozen=True)
class DryRun:
    """What `nix build --dry-run` said it would do (sizes in bytes; None: not readable)."""

    will_build: tuple[str, ...] = ()
    will_fetch: tuple[str, ...] = ()
    download_bytes: int | None = 0
    unpacked_bytes: int | None = 0
    unknown: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "will_build": list(self.will_build),
            "will_fetch": list(self.will_fetch),
            "download_bytes": self.download_bytes,
            "unpacked_bytes": self.unpacked_bytes,
            "unknown": list(self.unknown),
        }


def parse_dry_run(stderr: str) -> DryRun:
    """The plan from `nix build --dry-run`'s stderr; other lines are ignored."""
    sections: dict[str, list[str]] = {"build": [], "fetch": [], "unknown": []}
    current: list[str] | None = None
    download: int | None = 0
    unpacked: int | None = 0
    for raw in stderr.splitlines():
        line = strip_ansi(raw).rstrip()
        if _BUILD_HEAD.match(line):
            current = sections["build"]
        elif match := _FETCH_HEAD.match(line):
            current = sections["fetch"]
            sizes = _SIZES.match(match.group("sizes") or "")
            download, unpacked = (
                (size_bytes(*sizes.group(1, 2)), size_bytes(*sizes.group(3, 4))) if sizes else (None, None)
            )
        elif _UNKNOWN_HEAD.match(line):
            current = sections["unknown"]
        elif current is not None and (item := _ITEM.match(line)):
            current.append(item.group(1))
        else:
            current = None
    return DryRun(
        will_build=tuple(sections["build"]),
        will_fetch=tuple(sections["fetch"]),
        download_bytes=download,
        unpacked_bytes=unpacked,
        unknown=tuple(sections["unknown"]),
    )


# -- the structured log -----------------------------------------------------


def read_lines(fd: int, poll_s: float) -> Iterator[str | None]:
    """The lines of a pipe as they come (UTF-8, undecodable bytes replaced),
    and None each time `poll_s` seconds pass without any output, so the caller
    can act on time while Nix is silent (a torch link step can print nothing
    for many minutes). select() on the pipe: no thread to outlive the build.
    Ends at end of file."""
    pending = b""
    while True:
        ready, _, _ = select.select([fd], [], [], poll_s)
        if not ready:
            yield None
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")  # no UTF-8 sequence holds a newline byte
        for line in lines:
            yield line.decode("utf-8", "replace") + "\n"
    if pending:
        yield pending.decode("utf-8", "replace")


@dataclass
class Build:
    """One derivation being built (an actBuild activity)."""

    id: int
    drv: str
    machine: str
    started: float
    stopped: float | None = None
    phase: str | None = None
    failed: bool = False
    result: str | None = None  # once stopped: "built", "failed" or "stopped" (Nix gave up on it)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    # store_name(drv), computed once: every log line of the build names it (issue #13)
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = store_name(self.drv)

    def elapsed(self, now: float) -> float:
        return (self.stopped or now) - self.started


@dataclass(frozen=True)
class Event:
    """What one log line meant, for the display and the log files.

    kind: 'build-start', 'build-stop', 'log', 'phase', 'fetch-start',
    'progress', 'message' (level set), or 'text' (a line that was not
    structured; Nix and build hooks print some).
    """

    kind: str
    text: str = ""
    build: Build | None = None
    level: int | None = None


@dataclass
class NixLog:
    """The state of a Nix run, from its internal-json stderr, line by line."""

    clock: Callable[[], float] = time.monotonic
    builds: dict[int, Build] = field(default_factory=dict)
    by_drv: dict[str, Build] = field(default_factory=dict)
    fetching: dict[int, str] = field(default_factory=dict)
    done: int = 0
    expected: int = 0
    running: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    _builds_activity: int | None = None
    _credit: int = 0  # builds Nix counted as done, not yet matched to a stopped build

    def feed_all(self, lines: Iterable[str]) -> list[Event]:
        return [event for line in lines for event in self.feed(line)]

    def feed(self, line: str) -> list[Event]:
        line = line.rstrip("\n")
        if not line.startswith(PREFIX):
            text = strip_ansi(line)
            if text.startswith("error:"):  # Nix failed before its JSON log began (an option it rejected)
                self.errors.append(text)
            return [Event("text", text)] if line.strip() else []
        try:
            data = json.loads(line[len(PREFIX) :])
        except ValueError:
            return [Event("text", strip_ansi(line))]
        action = data.get("action")
        if action == "start":
            return self._start(data)
        if action == "stop":
            return self._stop(data)
        if action == "result":
            return self._result(data)
        if action == "msg":
            return self._message(data)
        return []

    # -- actions ----------------------------------------------------------

    def _start(self, data: dict) -> list[Event]:
        ident: Any  # Nix's activity id (an int); JSON, so not checked here
        kind, ident, fields = data.get("type"), data.get("id"), data.get("fields") or []
        if kind == ActivityType.BUILD and fields:
            build = Build(
                id=ident,
                drv=str(fields[0]),
                machine=str(fields[1]) if len(fields) > 1 else "",
                started=self.clock(),
            )
            self.builds[ident] = build
            self.by_drv[build.drv] = build
            return [Event("build-start", build.name, build)]
        if kind == ActivityType.BUILDS:
            self._builds_activity = ident
        elif kind == ActivityType.SUBSTITUTE and fields:
            self.fetching[ident] = str(fields[0])
            return [Event("fetch-start", store_name(str(fields[0])))]
        return []

    def _stop(self, data: dict) -> list[Event]:
        ident: Any = data.get("id")
        self.fetching.pop(ident, None)
        build = self.builds.get(ident)
        if build is None or build.stopped is not None:
            return []
        build.stopped = self.clock()
        build.failed = build.failed or self._mentioned(build.drv)
        # Nix emits no "succeeded": it counts a build done (actBuilds progress)
        # just before stopping its activity. A stop with no such count after
        # an error is a build Nix killed when it gave up (no --keep-going).
        if build.failed:
            build.result = "failed"
        elif self._credit > 0:
            self._credit -= 1
            build.result = "built"
        else:
            build.result = "stopped" if self.errors else "built"
        return [Event("build-stop", build.name, build)]

    def _result(self, data: dict) -> list[Event]:
        ident: Any
        kind, ident, fields = data.get("type"), data.get("id"), data.get("fields") or []
        if kind == ResultType.PROGRESS and ident == self._builds_activity and len(fields) >= 4:
            done, self.expected, self.running, self.failed = (int(f) for f in fields[:4])
            self._credit += max(0, done - self.done)
            self.done = done
            return [Event("progress")]
        build = self.builds.get(ident)
        if build is None or not fields:
            return []
        if kind in (ResultType.BUILD_LOG_LINE, ResultType.POST_BUILD_LOG_LINE):
            text = strip_ansi(str(fields[0]))
            build.tail.append(text)
            return [Event("log", text, build)]
        if kind == ResultType.SET_PHASE:
            build.phase = str(fields[0])
            return [Event("phase", build.phase, build)]
        return []

    def _message(self, data: dict) -> list[Event]:
        level = int(data.get("level", Level.INFO))
        text = strip_ansi(str(data.get("msg", "")))
        if level <= Level.ERROR and text.startswith("error"):
            self.errors.append(text)
            for drv in _DRV.findall(text):
                if drv in self.by_drv:
                    self.by_drv[drv].failed = True
        return [Event("message", text, level=level)]

    # -- queries ------------------------------------------------------------

    def _mentioned(self, drv: str) -> bool:
        return any(drv in error for error in self.errors)

    def active(self) -> list[Build]:
        # list() copies in one step: the live display reads this from its own thread
        return [b for b in list(self.builds.values()) if b.stopped is None]

    def failed_builds(self) -> list[Build]:
        """Builds that themselves failed (not those whose inputs failed:
        Nix names those in its errors too, but never starts building them)."""
        return [b for b in self.builds.values() if b.failed]

    def finished(self) -> list[Build]:
        return [b for b in self.builds.values() if b.result == "built"]
