"""The one runner (vllm_variants.runner): what a program that cannot be started says."""

from __future__ import annotations

from pathlib import Path

import pytest
import support

from vllm_variants.doctor import diagnose
from vllm_variants.errors import ToolMissing, VariantsError
from vllm_variants.matching import auto_variants
from vllm_variants.matrix import Matrix
from vllm_variants.project import Project
from vllm_variants.resources import GIB, Host
from vllm_variants.runner import CannotRun, run, run_together, spawn


def executable(path: Path, content: bytes, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(mode)
    return path


# An ELF header no loader accepts (as an aarch64 result's bin/python is to an
# x86_64 kernel without binfmt_misc): the kernel says ENOEXEC.
GARBAGE_ELF = b"\x7fELF" + bytes(range(60)) + b"\xff" * 64


@pytest.mark.parametrize("start", [run, spawn], ids=["run", "spawn"])
def test_another_machine_s_binary_is_one_line(tmp_path, start):
    python = executable(tmp_path / "result" / "bin" / "python", GARBAGE_ELF)
    with pytest.raises(CannotRun) as raised:
        start([python, "-c", "pass"])
    assert str(raised.value) == (
        f"cannot run '{python}': not a program this machine can run (built for another system?)"
    )
    assert isinstance(raised.value, ToolMissing)  # smoke and doctor go on without it


@pytest.mark.parametrize("start", [run, spawn], ids=["run", "spawn"])
def test_a_file_that_is_not_executable_is_one_line(tmp_path, start):
    smi = executable(tmp_path / "nvidia-smi", b"#!/bin/sh\necho hi\n", mode=0o644)
    with pytest.raises(CannotRun) as raised:
        start([smi, "-L"])
    assert str(raised.value) == (
        f"cannot run '{smi}': permission denied (not executable, or in a directory you cannot enter)"
    )


def test_a_relative_program_is_looked_for_in_cwd_not_here(tmp_path):
    """`./tool` with cwd=tmp_path is tmp_path/tool: it exists there, only its
    interpreter does not, so it is not reported as missing from PATH."""
    executable(tmp_path / "tool", b"#!/no/such/interpreter\n")
    assert not Path("tool").exists()
    with pytest.raises(CannotRun, match=r"^cannot run '\./tool': its interpreter \(#! line\) or dynamic loader"):
        run(["./tool"], cwd=tmp_path)
    with pytest.raises(ToolMissing, match=r"^'\./other' was not found on PATH$"):
        run(["./other"], cwd=tmp_path)


def test_a_missing_program_and_a_missing_cwd(tmp_path):
    with pytest.raises(ToolMissing, match=r"^'nvidia-smi' was not found on PATH: it ships with the NVIDIA driver"):
        run(["nvidia-smi"], env={"PATH": str(tmp_path)})
    tool = executable(tmp_path / "tool", b"#!/bin/sh\n")
    with pytest.raises(CannotRun, match=rf"^cannot run '{tool}': its working directory {tmp_path / 'gone'}: "):
        run([tool], cwd=tmp_path / "gone")
    assert run([tool], cwd=tmp_path).returncode == 0


@pytest.mark.nix
def test_doctor_and_which_name_an_unrunnable_nvidia_smi(tmp_path):
    """Given as --nvidia-smi, a file that is not executable is an error that says
    so, not "no GPU here" (which would be the answer for a missing one)."""
    smi = executable(tmp_path / "nvidia-smi", b"#!/bin/sh\n", mode=0o644)
    report = diagnose(
        Project(support.REPO),
        nix=None,
        env=support.nix_env(),
        smi=str(smi),
        host=Host(cores=4, mem_bytes=64 * GIB),
        system="x86_64-linux",
    )
    assert [p.text for p in report.problems if p.severity == "error"] == [
        f"cannot run '{smi}': permission denied (not executable, or in a directory you cannot enter)"
    ]
    with pytest.raises(VariantsError, match=f"^cannot run '{smi}': permission denied"):
        auto_variants(Matrix.load(support.REPO / "nix" / "variants.toml"), smi=str(smi))


def test_run_together_runs_its_commands_at_the_same_time(tmp_path):
    """Each command waits for the other's mark: run one after the other, the first
    would give up (exit 1); run together, both see the other and exit 0."""

    def waits_for(mine: str, other: str) -> list[str]:
        return [
            "sh",
            "-c",
            'touch "$1"; i=0; while [ ! -e "$2" ]; do i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.05; done; echo "$1"',
            "sh",
            str(tmp_path / mine),
            str(tmp_path / other),
        ]

    first, second = run_together([waits_for("a", "b"), waits_for("b", "a")])
    assert (first.returncode, second.returncode) == (0, 0)
    assert (first.stdout.strip(), second.stdout.strip()) == (str(tmp_path / "a"), str(tmp_path / "b"))


def test_run_together_says_which_program_is_missing_after_the_others_finish(tmp_path):
    mark = tmp_path / "ran"
    with pytest.raises(ToolMissing, match="no-such-program-here"):
        run_together([["sh", "-c", 'sleep 0.2; touch "$1"', "sh", str(mark)], ["no-such-program-here"]])
    assert mark.exists()  # waited for, not left running
