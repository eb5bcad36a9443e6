"""This machine's cores and RAM, and the nvcc job rule the flake applies.

nix/build-jobs.sh clamps every heavy CUDA build, on its builder, to one nvcc
job per `ram_per_job_gib` (nix/variants.toml) of RAM, at least 1 and never
more than the cores Nix gave it. `nvcc_jobs` is the same rule for planning
and for `invoke doctor`; tests/test_flake.py checks the two agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3


def format_bytes(size: int | None, unknown: str = "-") -> str:
    """1536 -> '1.5 KiB' (binary units, as Nix prints sizes); `unknown` for None."""
    if size is None:
        return unknown
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def nvcc_jobs(cores: int, mem_bytes: int, ram_per_job_gib: int) -> int:
    """min(cores, RAM / ram_per_job_gib), at least 1 (nix/build-jobs.sh)."""
    return max(1, min(cores, mem_bytes // (ram_per_job_gib * GIB)))


def _meminfo_bytes(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cgroup_limit_bytes(cgroup: Path) -> int | None:
    try:
        value = (cgroup / "memory.max").read_text().strip()
    except OSError:
        return None
    return None if value == "max" else int(value)


@dataclass(frozen=True)
class Host:
    cores: int
    mem_bytes: int

    @classmethod
    def detect(cls, meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")) -> Host:
        """Cores this process may use; RAM as MemTotal or the cgroup limit when lower."""
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            cores = os.cpu_count() or 1
        mem = _meminfo_bytes(meminfo) or 0
        limit = _cgroup_limit_bytes(cgroup)
        if limit is not None and (mem == 0 or limit < mem):
            mem = limit
        return cls(cores=cores, mem_bytes=mem)

    @property
    def mem_gib(self) -> float:
        return self.mem_bytes / GIB

    def nvcc_jobs(self, ram_per_job_gib: int, cores: int | None = None) -> int:
        return nvcc_jobs(cores or self.cores, self.mem_bytes, ram_per_job_gib)
