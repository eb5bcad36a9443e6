"""The nvcc job rule shared by the flake (nix/build-jobs.sh) and the planner."""

from __future__ import annotations

import pytest

from vllm_variants.resources import GIB, Host, nvcc_jobs


@pytest.mark.parametrize(
    "cores, mem_gib, per_job, expected",
    [(64, 24, 8, 3), (2, 24, 8, 2), (1, 512, 8, 1), (128, 4, 8, 1), (16, 128, 8, 16), (16, 127, 8, 15)],
)
def test_one_job_per_8_gib_at_least_one_at_most_cores(cores, mem_gib, per_job, expected):
    assert nvcc_jobs(cores, mem_gib * GIB, per_job) == expected


MEMTOTAL = 263921164 * 1024


@pytest.fixture
def machine(tmp_path):
    """A fake /proc/meminfo, /proc/self/cgroup and /sys/fs/cgroup root: detect(**machine)."""
    (tmp_path / "meminfo").write_text("MemTotal:       263921164 kB\nMemFree:        1 kB\n")
    (tmp_path / "cgroup").mkdir()
    (tmp_path / "self-cgroup").write_text("0::/\n")
    return {"meminfo": tmp_path / "meminfo", "cgroup": tmp_path / "cgroup", "proc_cgroup": tmp_path / "self-cgroup"}


def limit(directory, name: str, value: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(value + "\n")


def test_host_takes_the_lower_of_memtotal_and_the_cgroup_limit(machine):
    cgroup = machine["cgroup"]
    assert Host.detect(**machine).mem_bytes == MEMTOTAL
    limit(cgroup, "memory.max", "max")
    assert Host.detect(**machine).mem_bytes == MEMTOTAL
    limit(cgroup, "memory.max", str(32 * GIB))
    assert Host.detect(**machine).mem_bytes == 32 * GIB
    assert Host.detect(**machine).nvcc_jobs(8, cores=64) == 4


def test_the_process_own_v2_cgroup_and_its_parents_limit_it(machine):
    """systemd puts a user's shell in user.slice/user-1000.slice/session-2.scope; a
    limit on the slice (systemd MemoryMax=) binds everything under it."""
    cgroup = machine["cgroup"]
    machine["proc_cgroup"].write_text("0::/user.slice/user-1000.slice/session-2.scope\n")
    limit(cgroup / "user.slice/user-1000.slice/session-2.scope", "memory.max", "max")
    limit(cgroup / "user.slice/user-1000.slice", "memory.max", str(48 * GIB))
    limit(cgroup / "user.slice", "memory.max", str(64 * GIB))
    limit(cgroup / "other.slice", "memory.max", str(1 * GIB))  # not ours
    assert Host.detect(**machine).mem_bytes == 48 * GIB
    limit(cgroup / "user.slice/user-1000.slice/session-2.scope", "memory.max", str(16 * GIB))
    assert Host.detect(**machine).mem_bytes == 16 * GIB


def test_cgroup_v1_memory_limit_counts_and_its_unlimited_value_does_not(machine):
    cgroup = machine["cgroup"]
    machine["proc_cgroup"].write_text("12:cpu,cpuacct:/\n4:memory:/docker/abc\n0::/\n")
    limit(cgroup / "memory", "memory.limit_in_bytes", "9223372036854771712")  # v1's "no limit"
    limit(cgroup / "memory/docker/abc", "memory.limit_in_bytes", "9223372036854771712")
    assert Host.detect(**machine).mem_bytes == MEMTOTAL
    limit(cgroup / "memory/docker", "memory.limit_in_bytes", str(24 * GIB))
    assert Host.detect(**machine).mem_bytes == 24 * GIB


@pytest.mark.parametrize("self_cgroup", [None, "", "garbage\n", "0::/gone/away\n"])
def test_missing_or_odd_cgroup_files_leave_memtotal(machine, self_cgroup):
    if self_cgroup is None:
        machine["proc_cgroup"].unlink()
    else:
        machine["proc_cgroup"].write_text(self_cgroup)
    limit(machine["cgroup"] / "memory", "memory.limit_in_bytes", "not a number")
    assert Host.detect(**machine).mem_bytes == MEMTOTAL


@pytest.mark.parametrize("per_batch", [1, 2, 3, 7])
def test_an_evaluation_budget_counts_the_processes_its_batches_make(per_batch):
    from vllm_variants.evalmem import EvalBudget

    budget = EvalBudget(per_batch, "test")
    for n in range(0, 16):
        assert budget.processes(n) == len(budget.batches(list(range(n)))), n
