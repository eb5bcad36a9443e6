"""The one `nix build` process: its log fed to the display and per-variant files, Ctrl-C and SIGTERM handled."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .. import lifecycle
from ..errors import WriteError
from ..nixlog import Event, NixLog, read_lines
from ..outputs import make_dir
from ..runner import format_argv, spawn
from .display import BuildOutcome, duration_text
from .plan import BuildPlan

# How long Nix gets to stop after Ctrl-C before SIGTERM, then SIGKILL.
STOP_GRACE_S = (20.0, 10.0)
# How often the display hears from us while Nix prints nothing.
POLL_S = 5.0


# -- step 3: the build ------------------------------------------------------


class VariantLogs:
    """logs/<variant>-<timestamp>.log: each variant's derivations' build
    output, and Nix's messages, as text."""

    def __init__(self, plan: BuildPlan, stamp: str, argv: list[str]) -> None:
        self.owners = plan.owners()
        make_dir(plan.project.logs)
        self.paths: dict[str, Path] = {}
        self.files: dict[str, TextIO] = {}
        for vplan in plan.variants:
            name = vplan.variant.name
            path = _unique(plan.project.logs / f"{name}-{stamp}.log")
            self.paths[name] = path
            try:
                self.files[name] = path.open("w", encoding="utf-8", buffering=1)
            except OSError as exc:
                self.close(quiet=True)
                raise WriteError(path, exc) from None
            self._write(
                name,
                f"# vllm-variants build of {name}, started {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n"
                f"# $ {format_argv(argv)}\n"
                f"# plan: {vplan.summary()}\n",
            )

    def _write(self, name: str, text: str) -> None:
        """A full disk or a vanished folder is a WriteError naming the log (issue #11)."""
        try:
            self.files[name].write(text)
        except OSError as exc:
            raise WriteError(self.paths[name], exc) from None

    def write(self, event: Event) -> None:
        line = self._line(event)
        if line is None:
            return
        if event.build is not None and event.build.drv in self.owners:
            names = [p.variant.name for p in self.owners[event.build.drv]]
        else:
            names = list(self.files)
        for name in names:
            self._write(name, line + "\n")

    @staticmethod
    def _line(event: Event) -> str | None:
        build = event.build
        if event.kind == "build-start" and build:
            return f"building '{build.drv}'" + (f" on {build.machine}" if build.machine else "")
        if event.kind == "log" and build:
            return f"{build.name}> {event.text}"
        if event.kind == "build-stop" and build:
            return f"{build.result} '{build.drv}' after {duration_text(build.elapsed(0))}"
        if event.kind == "fetch-start":
            return f"fetching {event.text}"
        if event.kind == "message" and (event.level or 0) <= 3:
            return event.text
        if event.kind == "text":
            return event.text
        return None

    def close(self, note: str | None = None, *, quiet: bool = False) -> None:
        """Close every log (with `note`); the first write that fails is raised
        after all are closed, unless `quiet` (an error is on its way already)."""
        failed: WriteError | None = None
        for name, handle in self.files.items():
            try:
                if note:
                    handle.write(f"# {note}\n")
                handle.close()
            except OSError as exc:
                failed = failed or WriteError(self.paths[name], exc)
                with contextlib.suppress(OSError):
                    handle.close()
        self.files = {}
        if failed and not quiet:
            raise failed


def _unique(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def execute(plan: BuildPlan, display: Any, *, clock: Callable[[], float] = time.monotonic) -> list[BuildOutcome]:
    """Run the one `nix build`; what became of each variant (nothing linked yet).

    Ctrl-C stops Nix (SIGINT to its process group, then SIGTERM, SIGKILL),
    touches no link and re-raises KeyboardInterrupt (exit 130 at the boundary).
    """
    nix = plan.nix
    argv = plan.build_argv()
    logs = VariantLogs(plan, time.strftime("%Y%m%d-%H%M%S"), argv)
    reader = NixLog(clock=clock)
    started = clock()
    # Its own session: a terminal's Ctrl-C reaches us, and we stop Nix in order.
    proc = spawn(
        argv, cwd=plan.project.root, env=nix.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, new_session=True
    )
    try:
        with lifecycle.interruptible(), display.running(reader, started):
            assert proc.stderr is not None
            follow(proc.stderr.fileno(), reader, logs, display)
            returncode = proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        logs.close("interrupted: nix was stopped; no result link was changed", quiet=True)
        display.interrupted(logs.paths)
        raise
    except BaseException:
        _stop(proc)
        logs.close(quiet=True)
        raise
    logs.close(f"nix exited with status {returncode}")
    return _outcomes(plan, reader, logs.paths, started, returncode)


def follow(fd: int, reader: NixLog, logs: Any, display: Any, poll_s: float = POLL_S) -> None:
    """Feed Nix's log, line by line, to the reader, the log files and the
    display until Nix closes it; tick the display whenever Nix is silent."""
    for line in read_lines(fd, poll_s):
        if line is None:
            display.tick()
            continue
        for event in reader.feed(line):
            logs.write(event)
            display.event(event)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to Nix's process group (it kills its builders), then harder."""
    lifecycle.stop(
        proc,
        own_group=True,
        steps=((signal.SIGINT, STOP_GRACE_S[0]), (signal.SIGTERM, STOP_GRACE_S[1]), (signal.SIGKILL, None)),
    )


def _outcomes(
    plan: BuildPlan, reader: NixLog, logs: dict[str, Path], started: float, returncode: int = 0
) -> list[BuildOutcome]:
    nix = plan.nix
    nix_error = None
    if returncode != 0:
        last = reader.errors[-1].removeprefix("error:").strip() if reader.errors else "it gave no reason"
        nix_error = f"nix build exited with status {returncode}: {last}"
    ended = reader.clock()
    valid = nix.realised([p.out for p in plan.variants])
    failed = reader.failed_builds()
    outcomes = []
    for vplan in plan.variants:
        name = vplan.variant.name
        mine = set(vplan.dry.will_build)
        outcome = BuildOutcome(
            vplan.variant, "failed", duration_s=ended - started, log=logs.get(name), nix_error=nix_error
        )
        info = valid.get(vplan.out)
        if info is not None:
            outcome.store_path = vplan.out
            outcome.closure_size = info.get("closureSize")
            stops = [b.stopped for b in reader.finished() if b.drv in mine and b.stopped]
            outcome.duration_s = (max(stops) - started) if stops else 0.0
            outcome.status = "built" if mine else "fetched" if vplan.dry.will_fetch else "up to date"
        else:
            outcome.failed = [b.drv for b in failed if b.drv in mine]
            if not outcome.failed and failed:
                outcome.status = "not built"  # another variant's failure stopped Nix
        outcomes.append(outcome)
    return outcomes
