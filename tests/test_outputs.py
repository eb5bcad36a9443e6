"""What the tool writes for the user is written to what they named, never replaced (issue #11, item 1)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import support

from vllm_variants.errors import UsageError, WriteError
from vllm_variants.outputs import check_dir, check_file, write_text


def invoke(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=root, capture_output=True, text=True, env=support.nix_env()
    )


def dry_run_json(root: Path, target: str) -> subprocess.CompletedProcess[str]:
    proc = invoke(root, "build", "--sm", "90", "--dry-run", "--nixpkgs", str(support.STANDIN), "--json", target)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.nix
def test_build_json_through_a_symlink_keeps_the_link(project, tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    (project / "plan.json").symlink_to(reports / "plan.json")
    dry_run_json(project, "plan.json")
    assert os.readlink(project / "plan.json") == str(reports / "plan.json")
    assert json.loads((reports / "plan.json").read_text())["dry_run"] is True
    assert [p.name for p in reports.iterdir()] == ["plan.json"]  # no temporary file left


@pytest.mark.nix
def test_build_json_dash_is_standard_output(project):
    proc = dry_run_json(project, "-")
    assert not (project / "-").exists()
    start = proc.stdout.index("\n{") + 1
    end = proc.stdout.index("\n}\n", start) + 2
    assert json.loads(proc.stdout[start:end])["dry_run"] is True


@pytest.mark.nix
@pytest.mark.parametrize("target", ["/dev/stdout", "/proc/self/fd/1"])
def test_build_json_to_dev_stdout_redirected_to_a_file_lands_in_order(project, tmp_path, target):
    """`> out.txt` makes /dev/stdout a regular file: never replaced, and the JSON
    comes between the plan and the last line, overwriting neither."""
    out = tmp_path / "out.txt"
    out.write_text("")
    inode = out.stat().st_ino
    with out.open("a") as stdout:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "invoke",
                "build",
                "--sm",
                "90",
                "--dry-run",
                "--nixpkgs",
                str(support.STANDIN),
                "--json",
                target,
            ],
            cwd=project,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=support.nix_env(),
        )
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().splitlines()
    assert out.stat().st_ino == inode
    assert lines[0].startswith("plan: 1 variant") and lines[-1].startswith("dry run: nothing was built")
    start, end = lines.index("{"), lines.index("}")
    assert json.loads("\n".join(lines[start : end + 1]))["dry_run"] is True


def test_a_fifo_is_written_to_not_replaced(tmp_path):
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    write_text(fifo, '{"ok": true}\n')
    reader.join(timeout=60)
    assert got == ['{"ok": true}\n']
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.fifo"]


@pytest.fixture
def full_device(tmp_path) -> Path:
    """A full device (1, 7) of this test's own when root may make one: a write_text
    that broke would replace it, not the machine's /dev/full (which root could)."""
    if os.geteuid() != 0:
        return Path("/dev/full")  # anyone else cannot replace it
    device = tmp_path / "full"
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    return device


def test_a_full_device_is_one_line_and_stays_a_device(full_device):
    with pytest.raises(WriteError, match=rf"^cannot write {full_device}: No space left on device \(ENOSPC\)$"):
        write_text(full_device, "x" * 100_000)
    assert stat.S_ISCHR(os.lstat(full_device).st_mode)


def test_a_regular_file_is_replaced_whole_with_its_mode(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old\n")
    target.chmod(0o640)
    write_text(target, "new\n")
    assert target.read_text() == "new\n" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    write_text(tmp_path / "deeper" / "new.json", "made\n")  # a new one, in a folder made for it
    assert (tmp_path / "deeper" / "new.json").read_text() == "made\n"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "--json '' is empty; give a file path (or - for standard output)"),
        (".", "--json .: is a directory; give a file path (EISDIR)"),
        ("notes/x.json", "--json notes/x.json: notes is not a directory (ENOTDIR)"),
        ("dangling/x.json", "--json dangling/x.json: dangling is a dangling symlink (ENOENT)"),
    ],
)
def test_check_file_refuses_what_cannot_be_written(tmp_path, value, message):
    (tmp_path / "notes").write_text("mine\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(UsageError) as caught:
        check_file("--json", value, tmp_path)
    assert str(caught.value) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "notes"]


def test_check_file_accepts_new_files_and_devices(tmp_path):
    assert check_file("--json", "a/b/c.json", tmp_path) == tmp_path / "a" / "b" / "c.json"
    assert not (tmp_path / "a").exists()  # checking makes nothing
    assert check_file("--json", "/dev/null", tmp_path) == Path("/dev/null")
    assert check_file("--json", "-", tmp_path) == Path("-")
    assert check_file("--json", None, tmp_path) is None


def test_check_dir_refuses_a_file(tmp_path):
    (tmp_path / "logs").write_text("x\n")
    with pytest.raises(UsageError, match=r"^logs/: is a file, not a directory \(ENOTDIR\)$"):
        check_dir("logs/", tmp_path / "logs", tmp_path)
    assert check_dir("new/", tmp_path / "new", tmp_path) == tmp_path / "new"
