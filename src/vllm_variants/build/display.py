"""What `invoke build` shows while Nix works, and the report afterwards.

On a terminal: a rich Live area (progress bar over Nix's derivation count,
the builds running now with their phase, elapsed time and last log line),
finished builds and Nix's errors printed above it. Elsewhere (CI, a pipe):
one plain line per event, and a status line every few minutes, even while
Nix prints nothing, so a CI job compiling torch for hours is not killed for
silence. rich is imported only
here and only when used.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..matrix import Variant
from ..nixlog import TAIL_LINES, Build, Event, NixLog, store_name
from ..outputs import relative
from ..resources import format_bytes

HEARTBEAT_S = 300.0


# -- the records it shows (the build makes them: vllm_variants.build) --------


@dataclass(frozen=True)
class Watched:
    """What the display needs of a build plan (BuildPlan.watched())."""

    variants: int
    owners: Mapping[str, Sequence[str]]  # derivation -> the labels of the variants that build it
    root: Path  # the checkout: paths are shown relative to it
    logs: Path


@dataclass
class BuildOutcome:
    variant: Variant
    # built | fetched | up to date | failed | not built (another failure stopped Nix)
    # | not linked (built, but its result link could not be made: link_error says why)
    status: str
    store_path: str | None = None
    closure_size: int | None = None
    duration_s: float = 0.0
    log: Path | None = None
    failed: list[str] = field(default_factory=list)  # failing derivations
    link_error: str | None = None
    nix_error: str | None = None  # Nix exited non-zero: its status and last error (an option it rejected...)

    @property
    def ok(self) -> bool:
        return self.status in ("built", "fetched", "up to date")

    def to_json(self, root: Path) -> dict[str, Any]:
        return {
            "variant": self.variant.name,
            "sm": self.variant.sm,
            "system": self.variant.system,
            "status": self.status,
            "store_path": self.store_path,
            "closure_size": self.closure_size,
            "duration_s": round(self.duration_s, 3),
            "log": relative(self.log, root) if self.log else None,
            "failed_derivations": self.failed,
            "link_error": self.link_error,
            "nix_error": self.nix_error,
        }


def make_display(watched: Watched, out: TextIO, *, interactive: bool | None = None) -> Display:
    if interactive is None:
        interactive = out.isatty()
    return LiveDisplay(watched, out) if interactive else Display(watched, out)


class Display:
    """Plain lines: one per build started or finished, fetch, Nix message."""

    def __init__(self, watched: Watched, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.watched = watched
        self.out = out
        self.clock = clock
        self.owners = watched.owners
        self.reader = NixLog()
        self.started = 0.0
        self._last_line = 0.0

    # -- while Nix runs ---------------------------------------------------

    @contextlib.contextmanager
    def running(self, reader: NixLog, started: float) -> Iterator[None]:
        self.reader, self.started = reader, started
        self._last_line = started
        n = self.watched.variants
        self.say(
            f"building {n} variant{'s' * (n != 1)} with Nix; logs in {self.watched.logs.relative_to(self.watched.root)}/"
        )
        yield

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)
        self._last_line = self.clock()

    def event(self, event: Event) -> None:
        line = self.line(event)
        if line is not None:
            self.say(line)
        else:
            self.tick()

    def tick(self) -> None:
        """Called after quiet events and while Nix prints nothing at all: a
        status line once HEARTBEAT_S passed without a line."""
        if self.clock() - self._last_line >= HEARTBEAT_S:
            self.say(self.status())

    def line(self, event: Event) -> str | None:
        build = event.build
        if event.kind == "build-start" and build:
            return f"{self.count()} building {build.name}{self.detail(build)}"
        if event.kind == "build-stop" and build:
            verb = {"failed": "FAILED", "stopped": "stopped"}.get(build.result or "", "built")
            return f"{self.count()} {verb} {build.name} after {duration_text(build.elapsed(self.clock()))}"
        if event.kind == "fetch-start":
            return f"fetching {event.text}"
        if event.kind == "message" and (event.level or 0) <= 1:
            return event.text
        return None

    def count(self) -> str:
        r = self.reader
        return f"[{r.done}/{r.expected or '?'}]"

    def detail(self, build: Build) -> str:
        labels = self.owners.get(build.drv)
        parts = ([f"on {build.machine}"] if build.machine else []) + ([", ".join(labels)] if labels else [])
        return f" ({'; '.join(parts)})" if parts else ""

    def status(self) -> str:
        now = self.clock()
        active = ", ".join(
            f"{b.name} ({b.phase or 'starting'}, {duration_text(b.elapsed(now))})" for b in self.reader.active()
        )
        return f"{self.count()} {duration_text(now - self.started)} elapsed; running: {active or 'nothing'}"

    def interrupted(self, logs: dict[str, Path]) -> None:
        self.say(
            "interrupted: nix was stopped; no result link was changed; partial logs: "
            + ", ".join(relative(p, self.watched.root) for p in logs.values())
        )

    # -- afterwards -------------------------------------------------------

    def report(self, outcomes: list[BuildOutcome]) -> None:
        root = self.watched.root
        for build in self.reader.failed_builds():
            logs = [relative(o.log, root) for o in outcomes if o.log and build.drv in o.failed]
            self.say("")
            self.say(f"failed: {build.name}")
            self.say(f"  derivation: {build.drv}")
            tail = [line for line in build.tail if line.strip()]
            self.say(f"  last {len(tail)} log lines:" if tail else "  (it printed no log)")
            for line in tail[-TAIL_LINES:]:
                self.say(f"    {line}")
            if logs:
                self.say(f"  full log: {', '.join(logs)}")
        if not self.reader.failed_builds():
            for error in self.reader.errors:
                self.say(error)
        for o in outcomes:
            if o.link_error:
                self.say("")
                self.say(
                    f"not linked: {o.variant.name} was built ({o.store_path}), but its result link was "
                    f"not updated: {o.link_error}"
                )
        self.say("")
        self.summary(outcomes)

    def summary(self, outcomes: list[BuildOutcome]) -> None:
        from rich import box
        from rich.table import Table

        from ..console import console_for

        table = Table(title="build summary", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("Variant", "Status", "Closure", "Duration", "Store path"):
            table.add_column(column, no_wrap=column != "Store path", overflow="fold")
        for o in outcomes:
            table.add_row(
                o.variant.name,
                o.status,
                format_bytes(o.closure_size),
                duration_text(o.duration_s),
                o.store_path or "-",
                style=None if o.ok else "red",
            )
        console = console_for(self.out, highlight=False, pipe_width=200)  # a log or a pipe: one row per line
        console.print(table)
        logs = [relative(o.log, self.watched.root) for o in outcomes if o.log]
        if logs:
            self.say(f"logs: {', '.join(logs)}")


class LiveDisplay(Display):
    """rich Live while Nix runs; finished builds and errors scroll above it."""

    def __init__(self, watched: Watched, out: TextIO) -> None:
        super().__init__(watched, out)
        self.live: Any = None

    @contextlib.contextmanager
    def running(self, reader: NixLog, started: float) -> Iterator[None]:
        from rich.console import Console
        from rich.live import Live

        self.reader, self.started = reader, started
        console = Console(file=self.out, highlight=False)
        with Live(console=console, get_renderable=self.render, refresh_per_second=4, transient=True) as live:
            self.live = live
            try:
                yield
            finally:
                self.live = None

    def say(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text, markup=False, highlight=False)
        else:
            super().say(text)

    def event(self, event: Event) -> None:
        line = self.line(event)
        if line is not None and event.kind != "build-start":  # running builds are in the live area
            self.say(line)

    def tick(self) -> None:
        """Nothing to do: rich redraws the live area (elapsed times) by itself."""

    def render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.text import Text

        r, now = self.reader, self.clock()
        n = self.watched.variants
        head = Text.assemble(
            (f"building {n} variant{'s' * (n != 1)}", "bold"),
            f"  {r.done}/{r.expected or '?'} derivations",
            (f", {r.failed} failed", "red") if r.failed else "",
            f"  {duration_text(now - self.started)}",
        )
        lines: list[Any] = [head, ProgressBar(total=float(r.expected or 1), completed=float(r.done), width=50)]
        for build in r.active():
            line = Text.assemble(
                (build.name, "bold"),
                f"{self.detail(build)}  {build.phase or 'starting'}  ",
                duration_text(build.elapsed(now)),
                "  ",
                (build.tail[-1] if build.tail else "", "dim"),
                no_wrap=True,
                overflow="ellipsis",
            )
            lines.append(line)
        fetching = [store_name(p) for p in list(r.fetching.values())]
        if fetching:
            lines.append(
                Text(
                    f"fetching {', '.join(fetching[:4])}" + (" ..." if len(fetching) > 4 else ""),
                    "dim",
                    no_wrap=True,
                    overflow="ellipsis",
                )
            )
        return Group(*lines)


def duration_text(seconds: float) -> str:
    """12.3s, 4m05s, 2h10m."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
