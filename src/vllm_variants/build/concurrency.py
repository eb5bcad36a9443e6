"""How many builds run at once and with how many cores each: the build's concurrency planner (beside resources.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..resources import Host

# -- concurrency on this machine (issue #6) ---------------------------------


@dataclass(frozen=True)
class Concurrency:
    """--max-jobs x --cores for the build; None keeps Nix's own setting."""

    max_jobs: int | None
    cores: int | None
    budget: int  # nvcc jobs this machine's RAM allows (and its cores)
    text: str
    warning: str | None = None

    def args(self) -> list[str]:
        args = []
        if self.max_jobs is not None:
            args += ["--max-jobs", str(self.max_jobs)]
        if self.cores is not None:
            args += ["--cores", str(self.cores)]
        return args

    def to_json(self) -> dict[str, Any]:
        return {
            "max_jobs": self.max_jobs,
            "cores": self.cores,
            "nvcc_budget": self.budget,
            "text": self.text,
            "warning": self.warning,
        }


def plan_concurrency(
    n_variants: int,
    host: Host,
    ram_per_job_gib: int,
    *,
    cores: int | None = None,
    max_jobs: int | None = None,
    nix_settings: dict[str, str] | None = None,
) -> Concurrency:
    """Keep the nvcc jobs of concurrent builds within RAM / ram_per_job_gib.

    Each heavy build clamps itself to min(its --cores, RAM / 8 GiB) on its
    builder (nix/build-jobs.sh): safe for one build at a time. With several
    variants Nix runs --max-jobs builds at once, so the budget is split:
    --max-jobs = min(variants, budget), --cores = budget / --max-jobs.
    An explicit --cores or --max-jobs wins (the other is derived from it),
    with a warning when the two exceed the budget. Remote builders clamp
    their own builds; this is about this machine, so max-jobs 0 (given or
    Nix's setting: remote builders only) plans nothing.
    """
    budget = host.nvcc_jobs(ram_per_job_gib)
    machine = (
        f"this machine has {host.cores} cores and {host.mem_gib:.0f} GiB RAM = {budget} nvcc "
        f"job(s) at {ram_per_job_gib} GiB each"
    )
    settings = nix_settings or {}
    if max_jobs == 0:
        return Concurrency(0, cores, budget, "--max-jobs 0: nothing builds here, remote builders do it all")
    if max_jobs is None and _setting(settings.get("max-jobs"), host.cores, 1) == 0:
        # nix.conf (or --option) says build nothing here: planning a --max-jobs
        # would override it and build locally what prepare() sent to a builder.
        return Concurrency(
            None, cores, budget, "max-jobs 0 (Nix's setting): nothing builds here, remote builders do it all"
        )
    if cores is None and max_jobs is None:
        if n_variants <= 1:
            return Concurrency(
                None,
                None,
                budget,
                f"Nix's settings (max-jobs {settings.get('max-jobs', '?')}, cores "
                f"{settings.get('cores', '?')}); each heavy build clamps itself to RAM / "
                f"{ram_per_job_gib} GiB; {machine}",
            )
        max_jobs = min(n_variants, budget)
        cores = max(1, budget // max_jobs)
        chosen = f"planned for {n_variants} variants"
    else:
        chosen = "as given"
        if n_variants > 1 and max_jobs is None:
            max_jobs = max(1, min(n_variants, budget // (cores or host.cores)))
        if n_variants > 1 and cores is None:
            cores = max(1, budget // (max_jobs or 1))
    jobs = max_jobs if max_jobs is not None else _setting(settings.get("max-jobs"), host.cores, 1)
    per_build = cores if cores is not None else _setting(settings.get("cores"), host.cores, 0)
    total = jobs * min(per_build or host.cores, budget)  # cores 0 = all; heavy builds clamp to the budget
    text = (
        f"--max-jobs {_shown(max_jobs, jobs)} x --cores {_shown(cores, per_build)} ({chosen}): "
        f"up to {total} nvcc jobs at once; {machine}"
    )
    warning = None
    if total > budget:
        warning = (
            f"{total} concurrent nvcc jobs need about {total * ram_per_job_gib} GiB of RAM and this "
            f"machine has {host.mem_gib:.0f} GiB: expect swapping or OOM kills; lower --max-jobs or --cores"
        )
    return Concurrency(max_jobs, cores, budget, text, warning)


def _setting(value: str | None, auto: int, default: int) -> int:
    if value == "auto":
        return auto
    try:
        return int(value or default)
    except ValueError:
        return default


def _shown(chosen: int | None, effective: int) -> str:
    return str(chosen) if chosen is not None else f"{effective} (Nix's setting)"
