"""The lifecycle policy's pieces, in-process (tests/test_signals.py runs every task through them)."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
import support

from vllm_variants import lifecycle
from vllm_variants.boundary import one_line
from vllm_variants.errors import Interrupted
from vllm_variants.runner import spawn


def test_a_temporary_directory_is_registered_while_it_lives_and_removed_after(tmp_path):
    with lifecycle.temporary_directory(dir=tmp_path) as folder:
        (folder / "x").write_text("x")
        assert f"temporary folder {folder}" in lifecycle.pending()
    assert not folder.exists() and f"temporary folder {folder}" not in lifecycle.pending()
    with pytest.raises(RuntimeError), lifecycle.temporary_directory(dir=tmp_path) as failed:
        raise RuntimeError("boom")
    assert not failed.exists()


def test_the_policy_runs_what_is_still_registered_when_the_task_ends(tmp_path):
    left = tmp_path / "left"
    left.mkdir()
    with pytest.raises(KeyboardInterrupt), lifecycle.policy():
        lifecycle.register("a folder nobody removed", lambda: left.rmdir())
        raise KeyboardInterrupt
    assert not left.exists()
    assert lifecycle.pending() == []


def test_the_policy_turns_sigterm_and_sighup_into_exceptions():
    for signum in (signal.SIGTERM, signal.SIGHUP):
        with pytest.raises(Interrupted) as caught, lifecycle.policy():
            os.kill(os.getpid(), signum)
            time.sleep(5)
        assert caught.value.signum == signum
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored


def test_critical_holds_signals_until_the_block_is_done():
    done = []
    with pytest.raises(KeyboardInterrupt), lifecycle.critical():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        done.append("the block went on")
    assert done == ["the block went on"]
    with lifecycle.critical(deliver=False) as held:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
    assert held == [signal.SIGTERM]


def test_a_critical_block_inside_another_passes_its_signals_outward():
    order = []
    with pytest.raises(Interrupted), lifecycle.critical():
        with lifecycle.critical():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.1)
        order.append("inner done, outer goes on")
    assert order == ["inner done, outer goes on"]


def test_undo_on_failure_undoes_only_a_failed_block(tmp_path):
    undone = []
    with lifecycle.undo_on_failure("ok", lambda: undone.append("ok")):
        pass
    with pytest.raises(ValueError), lifecycle.undo_on_failure("failed", lambda: undone.append("failed")):
        raise ValueError
    assert undone == ["failed"] and lifecycle.pending() == []


def test_a_failed_block_stops_what_it_started_before_undoing(tmp_path):
    """`nix copy` may still be writing the cache the undo step removes."""
    started = []
    with pytest.raises(ValueError), lifecycle.undo_on_failure("stop first", lambda: started.append(proc.poll())):
        proc = spawn([sys.executable, "-c", "import time; time.sleep(60)"], new_session=True)
        raise ValueError
    assert started[0] is not None, "the child still ran when the undo step ran"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_while_a_child_starts_still_stops_the_child(monkeypatch, signum):
    """A signal that lands between the fork and the child's registration (here: as
    Popen returns) is held until the child is registered, so the policy stops it;
    raised at once it left a child running that nothing knew of."""
    import subprocess

    from vllm_variants import runner

    started = []

    class SignalledAsItStarts(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)
            os.kill(os.getpid(), signum)  # handled at the next bytecode: before spawn registers it

    monkeypatch.setattr(runner.subprocess, "Popen", SignalledAsItStarts)
    with pytest.raises(KeyboardInterrupt), lifecycle.policy():
        spawn([sys.executable, "-c", "import time; time.sleep(60)"])
    assert started and started[0].poll() is not None, "the child outlived the task"


def _with_a_grandchild(tmp_path, *, ignore_sigint: bool = False):
    """A child in a session of its own (a check process, nix) that started a
    process of its own: (the child, the grandchild's pid)."""
    marker = tmp_path / "grandchild.pid"
    code = (
        "import signal, subprocess, sys, time; "
        + ("signal.signal(signal.SIGINT, signal.SIG_IGN); " if ignore_sigint else "")
        + "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(marker)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)"
    )
    proc = spawn([sys.executable, "-c", code], new_session=True)
    deadline = time.monotonic() + 30
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc, int(marker.read_text())


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while support.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not support.alive(pid)


def test_stopping_children_takes_their_whole_group(tmp_path):
    proc, grandchild = _with_a_grandchild(tmp_path)
    lifecycle.stop_children(grace=5)
    assert proc.poll() is not None
    assert _gone(grandchild)


def test_stop_escalates_through_its_steps_and_takes_the_whole_group(tmp_path):
    """The one stop (issue #24: build's Nix, a timed-out smoke check, a failed run):
    a child that ignores the first signal gets the next after the grace, its whole
    group with it, and what it printed meanwhile comes back."""
    proc, grandchild = _with_a_grandchild(tmp_path, ignore_sigint=True)
    started = time.monotonic()
    out, _ = lifecycle.stop(proc, own_group=True, steps=((signal.SIGINT, 0.5), (signal.SIGKILL, None)))
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - started >= 0.5  # SIGINT was ignored
    assert out == b"started\n"
    assert _gone(grandchild)


@pytest.mark.parametrize(
    ("wanted", "kind", "detail", "matches"),
    [
        ("child", "child", "git read-tree", True),
        ("child:read-tree", "child", "git read-tree -m -u a b", True),
        ("child:update-ref", "child", "git read-tree", False),
        ("temp", "child", "git read-tree", False),
        ("child~read-tree -m -u [0-9a-f]", "child", "git read-tree -m -u -n 1 2", False),
        ("child~read-tree -m -u [0-9a-f]", "child", "git read-tree -m -u 1a 2b", True),
    ],
)
def test_the_pause_seam_matches_kind_text_or_pattern(monkeypatch, wanted, kind, detail, matches):
    monkeypatch.setenv(lifecycle.PAUSE_ENV, wanted)
    assert lifecycle._wanted(kind, detail) is matches


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("'9\n0' is not an SM", "'9\\n0' is not an SM"),
        ("a\tb\rc\x1b[31m", "a\\tb\\rc\\x1b[31m"),
        ("u\u2028v\x85w", "u\\u2028v\\x85w"),
        ("plain: naïve ok", "plain: naïve ok"),
    ],
)
def test_one_line_escapes_every_control_character(text, line):
    assert one_line(text) == line


def test_one_line_bounds_its_length():
    line = one_line("x" * 5000, limit=100)
    assert line == "x" * 100 + "... (4900 more characters)"


def test_a_temporary_folder_stops_what_its_block_started_and_nothing_else(tmp_path):
    """A child its block left running could write into the folder after it is
    removed; a child another thread started meanwhile (smoke checks several
    results at once) is not the block's to stop."""
    import threading

    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    started = threading.Event()
    finish = threading.Event()
    other: list = []

    def elsewhere() -> None:
        other.append(spawn(sleep, new_session=True))
        started.set()
        finish.wait(30)

    with lifecycle.temporary_directory(dir=tmp_path):
        mine = spawn(sleep, new_session=True)
        thread = threading.Thread(target=elsewhere)
        thread.start()
        assert started.wait(30)
    try:
        assert mine.poll() is not None, "the block's own child outlived its folder"
        assert other[0].poll() is None, "another thread's child was stopped"
    finally:
        finish.set()
        thread.join()
        lifecycle.stop_children(grace=1)
