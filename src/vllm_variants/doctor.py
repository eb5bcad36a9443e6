"""`invoke doctor`: can this machine build and run vllm-variants, and which variant?

One screen: Nix (version, flakes), this system and the systems it can build
for (native, extra-platforms, remote builders), big-parallel, cores and RAM
with the nvcc job count the flake will use, and the GPUs with the variant
for each and whether the driver is new enough. Every problem is one line
with its fix; "error" problems block building or running (exit 1),
"warning" ones do not.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from .compat import version_tuple
from .errors import GpuError, PreflightError, ToolMissing, VariantsError
from .gpus import GPU, detect, driver_cuda, list_names
from .machines import REQUIRED_FEATURES, BuildCapabilities
from .matching import host_system, match
from .matrix import Matrix
from .nix import MIN_VERSION, Nix
from .project import Project
from .resources import Host
from .runner import CannotRun

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Problem:
    severity: str  # ERROR blocks building or running; WARNING does not
    text: str  # one line: what is wrong, then the fix

    def to_json(self) -> dict[str, str]:
        return {"severity": self.severity, "text": self.text}


class DoctorFailed(VariantsError):
    """At least one problem blocks building or running."""


@dataclass
class DoctorReport:
    nix: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    gpus: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def add(self, severity: str, text: str) -> None:
        self.problems.append(Problem(severity, text))

    @property
    def ok(self) -> bool:
        return not any(p.severity == ERROR for p in self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "nix": self.nix,
            "build": self.build,
            "host": self.host,
            "gpus": self.gpus,
            "problems": [p.to_json() for p in self.problems],
        }


def _check_nix(report: DoctorReport, nix: Nix) -> BuildCapabilities | None:
    """Nix's own problems (those `invoke build` stops at), then what it can build."""
    report.nix = {"version": None, "flakes": None, "min_version": ".".join(map(str, MIN_VERSION))}
    for problem in nix.problems():
        report.add(ERROR, problem)
    try:
        report.nix["version"] = nix.version_text
        settings = nix.config()
    except VariantsError:  # a problem above already says why
        return None
    if not settings.get("system"):  # nix.problems() says so; nothing below can be read
        return None
    report.nix["flakes"] = nix.flakes_enabled()
    try:
        caps = BuildCapabilities.from_settings(settings)
    except PreflightError as exc:
        report.add(ERROR, str(exc))
        return None
    report.nix["cores_setting"] = int(settings.get("cores", "0") or 0)
    return caps


def _check_builds(report: DoctorReport, caps: BuildCapabilities, matrix: Matrix, needed: Sequence[str]) -> None:
    """This system, what it can build for, big-parallel; an error when a needed system has no builder."""
    big_parallel = set(REQUIRED_FEATURES) <= set(caps.features)
    systems: dict[str, dict[str, Any]] = {}
    for system in matrix.systems:
        builders = [b.uri for b in caps.builders_for(system)]
        systems[system] = {
            "local": caps.local_can_build(system),
            "builders": builders,
            "buildable": caps.can_build(system),
        }
    report.build = {
        "system": caps.system,
        "extra_platforms": list(caps.extra_platforms),
        "features": list(caps.features),
        "big_parallel": big_parallel,
        "buildable_systems": caps.buildable_systems(),
        "builders": [b.to_json() for b in caps.builders],
        "systems": systems,
    }
    if not big_parallel and not caps.builders_for(caps.system):
        report.add(
            ERROR,
            "this Nix lacks the big-parallel system feature that the CUDA builds require: add "
            "'system-features = big-parallel' (with your other features) to nix.conf, or a remote "
            "builder that offers it",
        )
    for system in needed:
        if system in systems and not systems[system]["buildable"]:
            report.add(ERROR, caps.explain_missing(system))


def _check_host(report: DoctorReport, host: Host, matrix: Matrix) -> None:
    cores_setting = report.nix.get("cores_setting") or 0
    cores = min(cores_setting, host.cores) if cores_setting else host.cores
    jobs = host.nvcc_jobs(matrix.ram_per_job_gib, cores=cores)
    report.host = {
        "cores": host.cores,
        "nix_cores": cores,
        "mem_bytes": host.mem_bytes,
        "mem_gib": round(host.mem_gib, 1),
        "ram_per_job_gib": matrix.ram_per_job_gib,
        "nvcc_jobs": jobs,
    }
    if host.mem_bytes < matrix.ram_per_job_gib * 1024**3:
        report.add(
            WARNING,
            f"only {host.mem_gib:.1f} GiB of RAM: even one nvcc job wants "
            f"{matrix.ram_per_job_gib} GiB and may run out of memory; build on a larger machine or "
            "a remote builder",
        )


def _check_gpus(
    report: DoctorReport, matrix: Matrix, smi: str, system: str, env: Mapping[str, str] | None
) -> list[str]:
    """GPUs, their variants, driver minimums. Returns the systems the GPUs' variants need."""
    try:
        gpus: list[GPU] = detect(smi, env=env)
    except CannotRun as exc:  # there, but not runnable: that is no "no GPU"
        report.add(ERROR, str(exc))
        return []
    except ToolMissing:
        report.add(
            WARNING,
            "no NVIDIA GPU found (nvidia-smi is not on PATH): this machine can build variants; "
            "run them where a GPU is, or install the NVIDIA driver "
            f"(>= {min(v.min_driver for v in matrix.default_set)})",
        )
        return []
    except GpuError as exc:
        report.add(ERROR, f"{exc}")
        _names_only(report, smi, env)
        return []
    if not gpus:
        report.add(WARNING, "nvidia-smi lists no GPU: this machine can build variants; run them where a GPU is")
        return []
    try:
        _driver, cuda = driver_cuda(smi, env=env)
    except (GpuError, ToolMissing):
        cuda = None
    needed = []
    for m in match(matrix, gpus, system):
        row = {**m.gpu.to_json(), "driver_cuda": cuda, "variant": None, "min_driver": None, "driver_ok": None}
        if m.variant is None:
            report.add(ERROR, m.problem or f"GPU {m.gpu.index} has no variant")
        else:
            v = m.variant
            ok = m.gpu.driver_major >= v.min_driver
            row.update(variant=v.name, min_driver=v.min_driver, driver_ok=ok, cuda=v.cuda)
            needed.append(v.system)
            if not ok:
                report.add(
                    ERROR,
                    f"GPU {m.gpu.index} ({m.gpu.name}) has driver {m.gpu.driver}, older than the "
                    f"{v.min_driver} that CUDA {v.cuda} needs: install NVIDIA driver >= {v.min_driver}",
                )
            elif cuda and version_tuple(cuda) < version_tuple(v.cuda):
                report.add(
                    ERROR,
                    f"driver {m.gpu.driver} supports CUDA up to {cuda}, but {v.name} uses CUDA "
                    f"{v.cuda}: install a newer NVIDIA driver",
                )
        report.gpus.append(row)
    return list(dict.fromkeys(needed))


def _names_only(report: DoctorReport, smi: str, env: Mapping[str, str] | None) -> None:
    """Where the query failed (an old driver), still name the GPUs from `nvidia-smi -L`."""
    try:
        names = list_names(smi, env=env)
    except (GpuError, ToolMissing):
        return
    report.gpus = [{"index": i, "name": name, "capability": None, "variant": None} for i, name in names]


def diagnose(
    project: Project,
    *,
    nix: Nix | None = None,
    smi: str = "nvidia-smi",
    host: Host | None = None,
    system: str | None = None,
    env: Mapping[str, str] | None = None,
) -> DoctorReport:
    """Everything doctor checks, as data; never raises for a problem it can name."""
    report = DoctorReport()
    matrix = project.matrix
    nix = nix or Nix(env=env)
    caps = _check_nix(report, nix)
    system = system or (caps.system if caps and caps.system else host_system())
    needed = _check_gpus(report, matrix, smi, system, env)
    if caps is not None:
        _check_builds(report, caps, matrix, list(dict.fromkeys([system, *needed])))
    _check_host(report, host or Host.detect(), matrix)
    # Problems first by severity: errors are what must be fixed.
    report.problems.sort(key=lambda p: p.severity != ERROR)
    return report


def _systems_text(build: Mapping[str, Any]) -> str:
    from rich.markup import escape

    parts = []
    for system, row in build.get("systems", {}).items():
        if row["local"]:
            parts.append(f"{system} (here)")
        elif row["builders"]:
            parts.append(escape(f"{system} (remote: {', '.join(row['builders'])})"))
        else:
            parts.append(f"[dim]{system}: no builder[/]")
    return ", ".join(parts)


def render(report: DoctorReport, out: TextIO) -> None:
    from rich.markup import escape
    from rich.table import Table

    from .console import console_for

    console = console_for(out, highlight=False)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    nix = report.nix
    if nix.get("version"):
        flakes = {True: "flakes enabled", False: "[red]flakes not enabled[/]", None: "flakes unknown"}[nix["flakes"]]
        grid.add_row("Nix", f"{nix['version']}, {flakes}")
    else:
        grid.add_row("Nix", "[red]not usable[/]")
    build = report.build
    if build:
        platforms = f" (extra-platforms: {' '.join(build['extra_platforms'])})" if build["extra_platforms"] else ""
        grid.add_row("This system", f"{build['system']}{platforms}")
        grid.add_row("Builds for", _systems_text(build))
        grid.add_row("big-parallel", "yes" if build["big_parallel"] else "[red]no[/]")
    host = report.host
    grid.add_row(
        "Cores / RAM",
        f"{host['cores']} cores ({host['nix_cores']} for Nix), {host['mem_gib']} GiB RAM -> {host['nvcc_jobs']} "
        f"nvcc job(s) (one per {host['ram_per_job_gib']} GiB, at most the cores)",
    )
    if not report.gpus:
        grid.add_row("GPUs", "none found")
    for gpu in report.gpus:
        head = f"GPU {gpu['index']}: {escape(gpu['name'])}"
        if gpu.get("capability") is None:
            grid.add_row("GPUs" if gpu is report.gpus[0] else "", f"{head} (capability unknown)")
            continue
        driver = f"driver {gpu['driver']}" + (f" (CUDA {gpu['driver_cuda']})" if gpu.get("driver_cuda") else "")
        if gpu["variant"]:
            verdict = "[green]ok[/]" if gpu["driver_ok"] else "[red]too old[/]"
            use = f"-> {gpu['variant']} (driver >= {gpu['min_driver']}: {verdict})"
        else:
            use = "-> [red]no variant[/]"
        grid.add_row("GPUs" if gpu is report.gpus[0] else "", f"{head}, capability {gpu['capability']}, {driver} {use}")
    console.print("[bold]vllm-variants doctor[/]")
    console.print(grid)
    for problem in report.problems:
        mark = "[red]error[/]" if problem.severity == ERROR else "[yellow]warning[/]"
        console.print(f"{mark}: {escape(problem.text)}", soft_wrap=True)
    if report.ok:
        console.print("[green]nothing blocks building or running here[/]")


def show(project: Project, *, as_json: bool = False, out: TextIO | None = None, **kwargs: Any) -> DoctorReport:
    """Check Nix, builders, cores/RAM and the GPUs (exit 1 when something blocks building or running)."""
    out = out or sys.stdout
    report = diagnose(project, **kwargs)
    if as_json:
        json.dump(report.to_json(), out, indent=2)
        out.write("\n")
    else:
        render(report, out)
    errors = [p for p in report.problems if p.severity == ERROR]
    if errors:
        raise DoctorFailed(f"{len(errors)} problem(s) block building or running (listed above)")
    return report


if __name__ == "__main__":
    from .boundary import project_main

    sys.exit(project_main("doctor", show))
