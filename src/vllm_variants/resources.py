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


# cgroup v1 writes "no limit" as the largest page-aligned counter (9223372036854771712).
_V1_UNLIMITED = 1 << 62


def _read_limit(path: Path) -> int | None:
    try:
        value = path.read_text().strip()
    except OSError:
        return None
    if value == "max" or not value.isdigit() or int(value) >= _V1_UNLIMITED:
        return None
    return int(value)


def _own_cgroups(proc_cgroup: Path) -> dict[str, str]:
    """/proc/self/cgroup as {"": v2 path, "memory": v1 memory path} (those present)."""
    found: dict[str, str] = {}
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            found[""] = path
        elif "memory" in controllers.split(","):
            found["memory"] = path
    return found


def _limits_up(base: Path, own: str, name: str) -> list[int]:
    """`name` in the cgroup `own` under `base` and in each parent up to `base`:
    a limit set higher up binds this process too."""
    directory = base / own.strip("/")
    limits = []
    while True:
        limit = _read_limit(directory / name)
        if limit is not None:
            limits.append(limit)
        if directory == base or base not in directory.parents:
            return limits
        directory = directory.parent


def _cgroup_limit_bytes(root: Path, proc_cgroup: Path) -> int | None:
    """The tightest memory limit on this process's cgroups, v2 (memory.max)
    and v1 (memory/memory.limit_in_bytes); None when none is set or readable."""
    own = _own_cgroups(proc_cgroup)
    limits = _limits_up(root, own.get("", "/"), "memory.max")
    limits += _limits_up(root / "memory", own.get("memory", "/"), "memory.limit_in_bytes")
    return min(limits, default=None)


@dataclass(frozen=True)
class Host:
    cores: int
    mem_bytes: int

    @classmethod
    def detect(
        cls,
        meminfo: Path = Path("/proc/meminfo"),
        cgroup: Path = Path("/sys/fs/cgroup"),
        proc_cgroup: Path = Path("/proc/self/cgroup"),
    ) -> Host:
        """Cores this process may use; RAM as MemTotal or its cgroups' limit when lower."""
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            cores = os.cpu_count() or 1
        mem = _meminfo_bytes(meminfo) or 0
        limit = _cgroup_limit_bytes(cgroup, proc_cgroup)
        if limit is not None and (mem == 0 or limit < mem):
            mem = limit
        return cls(cores=cores, mem_bytes=mem)

    @property
    def mem_gib(self) -> float:
        return self.mem_bytes / GIB

    def nvcc_jobs(self, ram_per_job_gib: int, cores: int | None = None) -> int:
        return nvcc_jobs(cores or self.cores, self.mem_bytes, ram_per_job_gib)
