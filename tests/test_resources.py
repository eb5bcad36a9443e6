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


def test_host_takes_the_lower_of_memtotal_and_the_cgroup_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       263921164 kB\nMemFree:        1 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert Host.detect(meminfo, cgroup).mem_bytes == 263921164 * 1024
    (cgroup / "memory.max").write_text("max\n")
    assert Host.detect(meminfo, cgroup).mem_bytes == 263921164 * 1024
    (cgroup / "memory.max").write_text(f"{32 * GIB}\n")
    assert Host.detect(meminfo, cgroup).mem_bytes == 32 * GIB
    assert Host.detect(meminfo, cgroup).nvcc_jobs(8, cores=64) == 4
