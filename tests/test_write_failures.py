"""Write failures in the checkout are one line naming the path and the errno (issue #11, item 7).

A read-only checkout and a full disk are made for real, in a private mount
namespace of the command (`unshare -m`: a read-only bind mount, a tiny
tmpfs), so nothing outside the command sees them. That needs root (CI runs
the suite as root); without it a read-only checkout is made with chmod, and
the full-disk tests cannot be made at all.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import support

from vllm_variants.matrix import Matrix

pytestmark = pytest.mark.nix

SM90 = Matrix.load(support.REPO / "nix" / "variants.toml").resolve("90")
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not ROOT or shutil.which("unshare") is None, reason="a tmpfs in a private mount namespace needs root and unshare"
)


def invoke(root: Path, *args: str, mounts: str = "") -> subprocess.CompletedProcess[str]:
    """`python -m invoke ARGS` in root, after the shell commands `mounts` in a mount namespace of its own."""
    argv = [sys.executable, "-m", "invoke", *args]
    if mounts:
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-ec", f'{mounts}\nexec "$@"', "sh", *argv]
    return subprocess.run(
        argv, cwd=root, capture_output=True, text=True, env=support.nix_env(), stdin=subprocess.DEVNULL, timeout=300
    )


def read_only(path: Path) -> str:
    q = shlex.quote(str(path))
    return f"mount --bind {q} {q}\nmount -o remount,bind,ro {q}"


def full_disk(path: Path, free_pages: int = 1) -> str:
    """A tmpfs at path with `free_pages` pages (4 KiB) free: writes past them fail with ENOSPC."""
    q = shlex.quote(str(path))
    return f"mount -t tmpfs -o size={(free_pages + 1) * 4}k tmpfs {q}\nhead -c 4096 /dev/zero > {q}/.filler"


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def built_result(tmp_path: Path) -> Path:
    """The stand-in's sm90 variant, built (shared by every test: the same derivation)."""
    flake = support.flake_ref(support.make_project(tmp_path / "flake", git_init=False))
    proc = support.nix("build", "--json", "--no-link", f"{flake}#{SM90.attr_path()}", *support.override())
    return Path(json.loads(proc.stdout)[0]["outputs"]["out"])


def state(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): os.readlink(p) if p.is_symlink() else ""
        for p in sorted(root.rglob("*"))
        if ".git" not in p.parts
    }


def make_read_only(root: Path) -> str:
    """Mount commands for a read-only checkout (root), or chmod it now (anyone else)."""
    if ROOT:
        return read_only(root)
    for path in (root, *root.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o555)
    return ""


@pytest.fixture
def restore_modes(project):
    yield
    for path in (project, *project.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)


def test_build_in_a_read_only_checkout_is_refused_before_nix(project, restore_modes):
    before = state(project)
    proc = invoke(project, "build", "--sm", "90", "--nixpkgs", str(support.STANDIN), mounts=make_read_only(project))
    assert proc.returncode == 1
    why = "on a read-only file system (EROFS)" if ROOT else "permission denied (EACCES)"
    assert error_line(proc) == f"error: the checkout {project} (for the result links): {why}"
    assert proc.stdout == ""  # nothing was evaluated
    assert state(project) == before


def test_smoke_in_a_read_only_checkout_is_refused_before_the_checks(project, tmp_path, restore_modes):
    (project / f"result-{SM90.name}").symlink_to(built_result(tmp_path))
    before = state(project)
    proc = invoke(project, "smoke", "--allow-no-gpu", mounts=make_read_only(project))
    assert proc.returncode == 1
    why = "on a read-only file system (EROFS)" if ROOT else "permission denied (EACCES)"
    assert error_line(proc) == f"error: the checkout {project} (for the smoke reports): {why}"
    assert state(project) == before


def test_readme_in_a_read_only_checkout_is_one_line(project, restore_modes):
    readme = project / "README.md"
    readme.write_text(readme.read_text().replace("| H100, H200, H20 |", "| H100 |"))
    proc = invoke(project, "readme", mounts=make_read_only(project))
    assert proc.returncode == 1
    line = error_line(proc)
    assert line.startswith(f"error: cannot write {readme}: ") and line.endswith(("(EROFS)", "(EACCES)")), line
    assert "| H100 |" in readme.read_text()


@needs_root
def test_report_dir_on_a_read_only_mount_is_refused_before_the_checks(project, tmp_path):
    (project / f"result-{SM90.name}").symlink_to(built_result(tmp_path))
    reports = tmp_path / "reports"
    reports.mkdir()
    proc = invoke(project, "smoke", "--allow-no-gpu", "--report-dir", str(reports), mounts=read_only(reports))
    assert proc.returncode == 1
    assert error_line(proc) == f"error: --report-dir {reports}: on a read-only file system (EROFS)"


@needs_root
def test_a_full_disk_under_the_reports_is_one_line_after_the_checks(project, tmp_path):
    (project / f"result-{SM90.name}").symlink_to(built_result(tmp_path))
    reports = tmp_path / "reports"
    reports.mkdir()
    proc = invoke(
        project, "smoke", "--allow-no-gpu", "--report-dir", str(reports), mounts=full_disk(reports, free_pages=0)
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    # after its progress line ("smoke: checking 1 result(s)"), one error line
    assert proc.stderr.splitlines()[1:] == [
        f"error: cannot write {reports / 'smoke-report.json'}: No space left on device (ENOSPC)"
    ], proc.stderr


def _nix_processes_of(drv: str) -> list[bytes]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and support.alive(int(entry.name)):
            cmdline = support.cmdline(int(entry.name))
            if drv.encode() in cmdline:
                found.append(cmdline)
    return found


@needs_root
def test_a_full_disk_under_logs_stops_nix_and_keeps_the_old_link(project, standin, tmp_path):
    """The build's logs fill the disk while Nix builds: one line naming the log and
    ENOSPC, exit 1, Nix stopped (vllm, which builds last and would sleep, never
    runs) and the result link as it was."""
    link = project / f"result-{SM90.name}"
    link.symlink_to(built_result(tmp_path))
    before = os.readlink(link)
    nixpkgs = standin(salt=f"full-{uuid.uuid4()}", slowBuild={"vllm": 300})
    drv = support.nix(
        "eval", "--raw", f"{support.flake_ref(project)}#{SM90.attr_path()}.drvPath", *support.override(nixpkgs)
    ).stdout
    (project / "logs").mkdir()
    proc = invoke(project, "build", "--sm", "90", "--nixpkgs", str(nixpkgs), mounts=full_disk(project / "logs"))
    assert proc.returncode == 1
    line = error_line(proc)
    assert line.startswith(f"error: cannot write {project / 'logs' / SM90.name}-"), line
    assert line.endswith(".log: No space left on device (ENOSPC)"), line
    assert "building python3.12-torch-2.9.1" in proc.stdout  # Nix was running when the disk filled
    assert _nix_processes_of(drv) == [], "nix outlived the failure"
    assert os.readlink(link) == before
