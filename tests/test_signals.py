"""One policy for how every task ends (issue #21): each signal, sent to every task
at a point where it holds temporary state or a child, ends it with 128 + the
signal (130 for Ctrl-C), and leaves no temporary file, no child process and
nothing half-made behind.

The point is found through the lifecycle's test seam (VLLM_VARIANTS_TEST_PAUSE,
as git's GIT_TEST_* variables): the task writes a line when it reaches it and
waits there. Everything else is real: invoke, nix, git, skopeo, the stand-in.
Ctrl-C goes to the task's whole process group, as a terminal sends it;
SIGTERM and SIGHUP to the task alone, as a CI runner or Kubernetes sends them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import support

from vllm_variants import lifecycle
from vllm_variants.matrix import Matrix

pytestmark = pytest.mark.nix

MATRIX = Matrix.load(support.REPO / "nix" / "variants.toml")
SM90 = MATRIX.resolve("90")
SIGNALS = {"ctrl-c": signal.SIGINT, "sigterm": signal.SIGTERM, "sighup": signal.SIGHUP}
MARK = "VLLM_VARIANTS_TEST_MARK"


@dataclass
class Case:
    """One task stopped at one point: argv, where it pauses, what it needs first."""

    argv: list[str]
    pause: str
    setup: Callable[[Path, Path], dict[str, str] | None] | None = None
    after: Callable[[Path, Path], None] | None = None  # more checks once it ended
    env: dict[str, str] = field(default_factory=dict)


# -- set-ups -------------------------------------------------------------------------


def _built(root: Path, tmp: Path) -> dict[str, str]:
    support.build_results(root, support.STANDIN, [SM90])
    return {}


def _stale_readme(root: Path, tmp: Path) -> None:
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace("| H100, H200, H20 |", "| H100 |"))


def _readme_untouched(root: Path, tmp: Path) -> None:
    assert "| H100 |" in (root / "README.md").read_text(), "README.md was half rewritten"
    assert [p.name for p in root.glob(".README.md.*")] == [], "the temporary README was left"


def _nixpkgs_repo(root: Path, tmp: Path) -> dict[str, str]:
    repo = support.copy_standin(tmp / "nixpkgs", vllmVersion="0.16.0")
    support.git(repo, "init", "-q", "-b", "master")
    support.commit_all(repo, "vllm 0.16.0")
    rev = support.git(repo, "rev-parse", "HEAD").stdout.strip()
    (tmp / "rev").write_text(rev)
    return {}


def _no_worktree_left(root: Path, tmp: Path) -> None:
    listed = support.git(root, "worktree", "list", "--porcelain").stdout
    assert listed.count("worktree ") == 1, listed
    assert not (root / ".git" / "worktrees").exists(), "a .git/worktrees entry was left"
    assert support.git(root, "status", "--porcelain").stdout == ""


def _no_new_cache(root: Path, tmp: Path) -> None:
    assert not (tmp / "cache").exists(), "a half-written cache was left"


def _no_archive(root: Path, tmp: Path) -> None:
    assert not (tmp / "out.tar").exists(), "a half-written archive was left"


CASES: dict[str, Case] = {
    "variants": Case([], "start"),
    "matrix": Case([], "start"),
    "which": Case([], "start"),
    "audit": Case(["nix"], "start"),
    "readme": Case([], "temp", _stale_readme, _readme_untouched),
    "doctor": Case([], "child:--version"),
    "eval": Case(["--sm", "90", "--nixpkgs", str(support.STANDIN)], "child:lib.resolve"),
    "build": Case(["--sm", "90", "--nixpkgs", "{standin}"], "child:--no-link"),
    "smoke": Case(["--results", "90"], "child:--progress", _built),
    "bump-pin": Case(
        ["{rev}", "--url-template", "git+file://{tmp}/nixpkgs?rev={{rev}}"],
        "child:flake update",
        _nixpkgs_repo,
        _no_worktree_left,
    ),
    "publish": Case(["--to", "file://{tmp}/cache", "--sm", "90"], "child:copy --to", _built, _no_new_cache),
    "image": Case(
        [
            "--sm",
            "90",
            "--to",
            "oci-archive:{tmp}/out.tar",
            "--tmpdir",
            "{tmp}/scratch",
            "--nixpkgs",
            str(support.STANDIN),
        ],
        "child:skopeo copy",
        _built,
        _no_archive,
    ),
}


# -- running one ---------------------------------------------------------------------


def marked(mark: str) -> list[int]:
    """Live processes whose environment carries the test's mark."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and support.alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def wait_for(pause_file: Path, proc: subprocess.Popen[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pause_file.exists() and pause_file.read_text().endswith("\n"):
            return json.loads(pause_file.read_text().splitlines()[0])
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the task ended (exit {proc.returncode}) before its pause:\n{out}\n{err}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the task never reached its pause")


def send(proc: subprocess.Popen[str], signum: int) -> None:
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)  # the terminal's Ctrl-C: the whole foreground group
    else:
        os.kill(proc.pid, signum)  # a CI runner, Kubernetes, a closed terminal: the task alone


def stop_at_pause(proc: subprocess.Popen[str], pause_file: Path, signum: int) -> tuple[dict, str, str]:
    """Wait for the task's pause, send `signum` there, wait for its end: (pause record, stdout, stderr)."""
    try:
        record = wait_for(pause_file, proc)
        send(proc, signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return record, out, err


def start(
    command: str, argv: list[str], root: Path, env: dict[str, str], program: tuple[str, ...] = ("-m", "invoke")
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *program, command, *argv],
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a shell's job
    )


def gone(mark: str, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.parametrize("name", list(SIGNALS))
@pytest.mark.parametrize("command", list(CASES))
def test_every_task_ends_cleanly_on_every_signal(command, name, tmp_path):
    case, signum = CASES[command], SIGNALS[name]
    root = support.make_project(tmp_path / "project")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    (tmp_path / "scratch").mkdir()
    # Nix's own build folders go elsewhere (build-dir): a builder Nix was just
    # starting when it got SIGTERM can leave one, and this test checks ours.
    (tmp_path / "nix-builds").mkdir()
    env = support.nix_env(f"builders =\nextra-platforms =\nbuild-dir = {tmp_path / 'nix-builds'}")
    if case.setup:
        env.update(case.setup(root, tmp_path) or {})
    standin = support.copy_standin(tmp_path / "standin", salt=uuid.uuid4().hex, slowBuild={"torch": 300})
    values = {
        "tmp": tmp_path,
        "standin": standin,
        "rev": (tmp_path / "rev").read_text() if (tmp_path / "rev").exists() else "",
    }
    argv = [a.format(**values) for a in case.argv]
    mark = uuid.uuid4().hex
    pause_file = tmp_path / "pause.jsonl"
    env.update(
        {
            lifecycle.PAUSE_ENV: case.pause,
            lifecycle.PAUSE_FILE_ENV: str(pause_file),
            "TMPDIR": str(scratch),
            MARK: mark,
            "PATH": f"{os.path.dirname(support.nix_executable())}{os.pathsep}{os.environ['PATH']}",
            **case.env,
        }
    )
    proc = start(command, argv, root, env)
    record, out, err = stop_at_pause(proc, pause_file, signum)
    assert "Traceback" not in err, err
    assert proc.returncode == 128 + signum, f"exit {proc.returncode}, paused at {record}\n{err}"
    assert err.strip().splitlines()[-1] == "interrupted", err
    assert gone(mark) == [], f"processes outlived the task: {[support.cmdline(p) for p in marked(mark)]}"
    assert [support.cmdline(p) for p in record["children"] if support.alive(p)] == []
    assert list(scratch.iterdir()) == [], f"temporary files were left: {list(scratch.iterdir())}"
    assert list((tmp_path / "scratch").iterdir()) == []
    if case.after:
        case.after(root, tmp_path)


def test_the_walk_covers_every_task():
    """A new task gets its case here: the walk lists every task of tasks.py."""
    out = subprocess.run(
        [sys.executable, "-m", "invoke", "--list"], cwd=support.REPO, capture_output=True, text=True, check=True
    ).stdout
    tasks = set(re.findall(r"^  (\S+)", out, re.M))
    assert "build" in tasks
    assert tasks - set(CASES) == set()


# -- the three that lost data (issue #21) ------------------------------------------


class HangingRegistry:
    """A registry that accepts connections and never answers: a push that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_image_stopped_during_a_push_leaves_no_archive_and_no_skopeo(tmp_path, signum):
    """Before #21 `invoke image` killed by SIGTERM during a push died by the signal
    and left the whole uncompressed archive in its --tmpdir, skopeo still running."""
    if not os.access("/usr/bin/skopeo", os.X_OK):
        if os.environ.get("CI"):
            pytest.fail("/usr/bin/skopeo is missing: .ci/run installs it")
        pytest.skip("needs skopeo")
    root = support.make_project(tmp_path / "project")
    support.build_results(root, support.STANDIN, [SM90])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    registry = HangingRegistry()
    mark = uuid.uuid4().hex
    env = {**support.nix_env(), MARK: mark, "TMPDIR": str(scratch)}
    proc = start(
        "image",
        [
            "--sm",
            "90",
            "--to",
            f"docker://{registry.host}/vllm:x",
            "--insecure",
            "--tmpdir",
            str(scratch),
            "--nixpkgs",
            str(support.STANDIN),
        ],
        root,
        env,
    )
    try:
        deadline = time.monotonic() + 120
        while not (any(scratch.rglob("image.tar")) and any(b"skopeo" in support.cmdline(p) for p in marked(mark))):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the push never started"
            time.sleep(0.1)
        time.sleep(0.5)  # skopeo is talking to the registry that never answers
        send(proc, signum)
        _, err = proc.communicate(timeout=60)
    finally:
        registry.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, err
    assert list(scratch.iterdir()) == [], "the image archive was left behind"
    assert gone(mark) == [], "skopeo outlived the task"


def test_smoke_killed_takes_the_engine_its_check_started_with_it(tmp_path):
    """SIGKILL reaches no handler: the check process learns of our death from the
    kernel (PR_SET_PDEATHSIG) and stops its own process group, where vLLM's
    engine core runs. Before #21 the engine process kept running."""
    root = support.make_project(tmp_path / "project", git_init=False)
    support.build_results(root, support.STANDIN, [SM90])
    mark = uuid.uuid4().hex
    env = {
        **support.nix_env(),
        MARK: mark,
        "VLLM_VARIANTS_STANDIN_GPUS": "NVIDIA H100 80GB HBM3:9.0",
        "VLLM_VARIANTS_STANDIN_DRIVER": "575.51.03",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1",  # vLLM's default: the engine core in a process of its own
        "VLLM_VARIANTS_STANDIN_ENGINE_S": "600",
    }
    proc = start("smoke", ["--generate"], root, env)
    try:
        deadline = time.monotonic() + 120
        while not any(b"time.sleep" in support.cmdline(p) for p in marked(mark)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the engine core never started"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        left = gone(mark)
    finally:
        for pid in marked(mark):
            os.kill(pid, signal.SIGKILL)
    assert left == [], f"outlived smoke: {[support.cmdline(p) for p in left]}"


# -- bump-pin: the branches and the checkouts on them move together ---------------------


def _bump_setup(tmp_path: Path) -> tuple[Path, str, dict[str, str]]:
    root = support.make_project(tmp_path / "project")
    _nixpkgs_repo(root, tmp_path)
    rev = (tmp_path / "rev").read_text()
    env = {**support.nix_env(), "TMPDIR": str(tmp_path)}
    return root, rev, env


def _bump(root: Path, rev: str, tmp_path: Path, env: dict[str, str], pause: str | None = None):
    argv = [rev, "--url-template", f"git+file://{tmp_path}/nixpkgs?rev={{rev}}"]
    if pause:
        env = {**env, lifecycle.PAUSE_ENV: pause, lifecycle.PAUSE_FILE_ENV: str(tmp_path / "pause.jsonl")}
    return start("bump-pin", argv, root, env)


def _main_at(root: Path) -> tuple[str, str]:
    head = support.git(root, "rev-parse", "HEAD").stdout.strip()
    return head, support.git(root, "status", "--porcelain").stdout


def test_ctrl_c_as_the_branches_move_waits_until_the_checkout_follows(tmp_path):
    """Before #21 a Ctrl-C just after the ref transaction left main at the new
    commit with the old index and files (`git status` showed the bump staged in
    reverse) and said nothing. The transaction and the checkout update are one
    critical section: the Ctrl-C waits for both, then exits 130."""
    root, rev, env = _bump_setup(tmp_path)
    before = support.git(root, "rev-parse", "HEAD").stdout.strip()
    proc = _bump(root, rev, tmp_path, env, pause="child:update-ref")
    _, out, err = stop_at_pause(proc, tmp_path / "pause.jsonl", signal.SIGINT)
    assert proc.returncode == 130, err
    head, status = _main_at(root)
    assert head != before and f"main {before[:12]} -> {head[:12]}" in out, out
    assert status == "", f"the checkout did not follow its branch:\n{status}"
    assert rev in (root / "flake.lock").read_text()
    assert not (root / ".git" / "vllm-variants-bump.json").exists()


def test_a_bump_killed_after_the_branches_moved_is_finished_by_the_next_one(tmp_path):
    """SIGKILL reaches no handler: the journal written before the refs moved lets
    the next bump-pin finish the checkout, and say so."""
    root, rev, env = _bump_setup(tmp_path)
    proc = _bump(root, rev, tmp_path, env, pause="step:branches moved")
    try:
        wait_for(tmp_path / "pause.jsonl", proc)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    head, status = _main_at(root)
    assert status != "", "the checkout followed before the kill: the test proves nothing"
    assert (root / ".git" / "vllm-variants-bump.json").exists()

    again = _bump(root, rev, tmp_path, env)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"finished what an earlier, interrupted bump-pin began: main now shows {head[:12]}" in out, out
    assert "already at nixpkgs" in out, out
    assert _main_at(root) == (head, "")
    assert not (root / ".git" / "vllm-variants-bump.json").exists()


# -- publish: a store URI is where the user means, and a refused publish leaves nothing --


@pytest.mark.parametrize("extra", [["--dry-run"], []], ids=["dry-run", "copy"])
@pytest.mark.parametrize("to", ["file://", "file://relative/cache", "local?root=relative"])
def test_publish_refuses_a_store_uri_whose_path_is_empty_or_relative(tmp_path, to, extra):
    """Before #21 `--to file://` wrote a binary cache into the file system's root
    (`--dry-run` made /nix-cache-info, /log, /realisations) and said it succeeded."""
    root = support.make_project(tmp_path / "project")
    support.build_results(root, support.STANDIN, [SM90])
    top = sorted(os.listdir("/"))
    inside = sorted(p.name for p in root.iterdir())
    (root / "__pycache__").mkdir(exist_ok=True)  # tasks.py's bytecode, written by any first task (issue #13)
    inside = sorted({*inside, "__pycache__"})
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "publish", "--to", to, "--sm", "90", *extra],
        cwd=root,
        env=support.nix_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        next(line for line in proc.stderr.splitlines() if "the path in a store URI must be absolute" in line)
    ]
    assert sorted(os.listdir("/")) == top, "something was written into /"
    assert sorted(p.name for p in root.iterdir()) == inside


def test_a_refused_publish_leaves_no_new_cache_behind(tmp_path):
    """Nix writes a cache's skeleton before it refuses its settings; before #21
    `--to 'file://DIR?compression=bogus'` exited 1 and left DIR made."""
    root = support.make_project(tmp_path / "project")
    support.build_results(root, support.STANDIN, [SM90])
    cache = tmp_path / "new" / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "publish", "--to", f"file://{cache}?compression=bogus", "--sm", "90"],
        cwd=root,
        env=support.nix_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "unknown compression method 'bogus'" in proc.stderr, proc.stderr
    assert not (tmp_path / "new").exists(), "the refused publish left a cache skeleton"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_git_worktree_add_leaves_no_worktree_entry(tmp_path, signum):
    """`git worktree add` runs in its own session with signals held: it completes,
    then the worktree is removed with its .git/worktrees entry, and the task ends."""
    root, rev, env = _bump_setup(tmp_path)
    before = support.git(root, "rev-parse", "HEAD").stdout.strip()
    proc = _bump(root, rev, tmp_path, env, pause="child:worktree add")
    _, _, err = stop_at_pause(proc, tmp_path / "pause.jsonl", signum)
    assert proc.returncode == 128 + signum, err
    _no_worktree_left(root, tmp_path)
    assert support.git(root, "rev-parse", "HEAD").stdout.strip() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("vllm-variants-")] == []


@pytest.mark.parametrize("name", list(SIGNALS))
def test_nox_smoke_ends_by_the_same_policy(tmp_path, name):
    """`nox -s smoke` goes through the boundary too (nox_call); Nox itself would
    turn any KeyboardInterrupt into 130, so SIGTERM and SIGHUP leave by SystemExit."""
    signum = SIGNALS[name]
    root = support.make_project(tmp_path / "project", git_init=False)
    support.build_results(root, support.STANDIN, [SM90])
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    mark = uuid.uuid4().hex
    env = {
        **support.nix_env(),
        lifecycle.PAUSE_ENV: "child:--progress",
        lifecycle.PAUSE_FILE_ENV: str(tmp_path / "pause.jsonl"),
        "TMPDIR": str(scratch),
        MARK: mark,
    }
    proc = start("smoke", ["--", "90"], root, env, program=("-m", "nox", "-f", "noxfile.py", "-s"))
    _, _, err = stop_at_pause(proc, tmp_path / "pause.jsonl", signum)
    assert "Traceback" not in err, err
    assert proc.returncode == 128 + signum, err
    assert gone(mark) == []
    assert list(scratch.iterdir()) == []
