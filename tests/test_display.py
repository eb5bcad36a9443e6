"""The build display: plain lines (CI) and the rich live area (a terminal)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import support

from vllm_variants.build import BuildPlan, Concurrency, Prepared, Request, Target, VariantPlan, follow
from vllm_variants.build.display import Display, LiveDisplay, duration_text
from vllm_variants.matrix import Matrix
from vllm_variants.nix import Nix
from vllm_variants.nixlog import DryRun, NixLog
from vllm_variants.project import Project
from vllm_variants.resources import format_bytes

MATRIX = Matrix.load(support.REPO / "nix" / "variants.toml")
TORCH = "/nix/store/06z03bh4hk8iig6nb57yy6xff985p8fn-python3.12-torch-2.9.1.drv"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def plan_for(root: Path) -> BuildPlan:
    project = Project(root)
    variant = MATRIX.resolve("90")
    target = Target(variant, "this machine", project.result_link(variant))
    prepared = Prepared(project, Request(), Nix(), [target])
    vplan = VariantPlan(target, "/nix/store/x-env.drv", "/nix/store/x-env", DryRun(will_build=(TORCH,)))
    return BuildPlan(prepared, [vplan], vplan.dry, Concurrency(None, None, 2, "Nix's settings"))


def feed(reader: NixLog, display: Display, *events: dict) -> None:
    for event in events:
        for parsed in reader.feed("@nix " + json.dumps(event)):
            display.event(parsed)


START = {"action": "start", "id": 7, "type": 105, "level": 3, "fields": [TORCH, "", 1, 1]}
PHASE = {"action": "result", "id": 7, "type": 104, "fields": ["buildPhase"]}
LINE = {"action": "result", "id": 7, "type": 101, "fields": ["[3/900] nvcc flash_fwd.cu"]}


def test_plain_lines_and_a_status_line_when_quiet_for_long(tmp_path):
    out, clock = io.StringIO(), Clock()
    display = Display(plan_for(tmp_path).watched(), out, clock=clock)
    reader = NixLog(clock=clock)
    with display.running(reader, clock.now):
        feed(reader, display, START, PHASE, LINE)
        clock.now += 301  # an hour-long torch build prints a status line every 5 minutes
        feed(reader, display, LINE)
        feed(reader, display, LINE)  # not again right away
    lines = out.getvalue().splitlines()
    assert lines[0] == "building 1 variant with Nix; logs in logs/"
    assert lines[1] == "[0/?] building python3.12-torch-2.9.1 (sm90)"
    assert lines[2:] == ["[0/?] 5m01s elapsed; running: python3.12-torch-2.9.1 (buildPhase, 5m01s)"]


# A stand-in for Nix between two log lines: it starts a build, then prints
# nothing until its stdin closes (at most a minute, so a display that never
# ticks fails the test instead of hanging it).
SILENT_NIX = f"""
import select, sys
print({json.dumps("@nix " + json.dumps(START))}, file=sys.stderr, flush=True)
select.select([sys.stdin], [], [], 60)
"""


class NoLogs:
    def write(self, event) -> None:
        pass


def test_a_status_line_comes_while_nix_prints_nothing(tmp_path):
    out, clock = io.StringIO(), Clock()
    nix = subprocess.Popen([sys.executable, "-c", SILENT_NIX], stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    class Silent(Display):
        def tick(self) -> None:  # five minutes pass each time the reader finds Nix silent
            if "] building " not in out.getvalue():
                return  # the child has not spoken yet (a busy machine): not the silence under test
            clock.now += 301
            super().tick()
            if "elapsed" in out.getvalue():
                nix.stdin.close()  # Nix may speak again: end the test run

    display = Silent(plan_for(tmp_path).watched(), out, clock=clock)
    reader = NixLog(clock=clock)
    try:
        with display.running(reader, clock.now):
            follow(nix.stderr.fileno(), reader, NoLogs(), display, poll_s=0.01)
    finally:
        nix.kill()
        nix.wait()
    lines = out.getvalue().splitlines()
    assert lines[1] == "[0/?] building python3.12-torch-2.9.1 (sm90)"
    assert lines[2] == "[0/?] 5m01s elapsed; running: python3.12-torch-2.9.1 (starting, 5m01s)"


def test_live_area_shows_the_running_build_its_phase_and_last_line(tmp_path):
    from rich.console import Console

    clock = Clock()
    display = LiveDisplay(plan_for(tmp_path).watched(), io.StringIO())
    display.clock = clock
    display.reader, display.started = NixLog(clock=clock), clock.now
    feed(
        display.reader,
        display,
        {"action": "start", "id": 2, "type": 104, "level": 0, "fields": []},
        {"action": "result", "id": 2, "type": 105, "fields": [3, 9, 1, 0]},
        START,
        PHASE,
        LINE,
    )
    clock.now += 65
    screen = io.StringIO()
    Console(file=screen, width=120, color_system=None).print(display.render())
    text = screen.getvalue()
    assert "building 1 variant  3/9 derivations  1m05s" in text
    assert "python3.12-torch-2.9.1 (sm90)  buildPhase  1m05s  [3/900] nvcc flash_fwd.cu" in text


def test_sizes_and_durations_read_like_nix():
    assert [format_bytes(n) for n in (None, 512, 46_000, 3 * 1024**3)] == ["-", "512 B", "44.9 KiB", "3.0 GiB"]
    assert [duration_text(s) for s in (0.04, 75, 7300)] == ["0.0s", "1m15s", "2h01m"]


def test_the_report_names_a_link_that_was_not_updated(tmp_path):
    from vllm_variants.build import BuildOutcome as Outcome

    out = io.StringIO()
    plan = plan_for(tmp_path)
    Display(plan.watched(), out).report(
        [
            Outcome(
                plan.variants[0].variant,
                "not linked",
                store_path="/nix/store/x-env",
                link_error="cannot create symlink 'result-x'; already exists",
            )
        ]
    )
    assert (
        "not linked: vllm-python312-cuda12_9-sm90 was built (/nix/store/x-env), but its result link was not "
        "updated: cannot create symlink 'result-x'; already exists"
    ) in out.getvalue().splitlines()
    assert "not linked" in out.getvalue().split("build summary")[1]
