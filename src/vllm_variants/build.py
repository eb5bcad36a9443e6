"""`invoke build`: pick variants, plan, build with progress and logs, link, summarise.

Plan first, then act (pyinvoke/invocations' packaging/release.py is the model):

1. `prepare()`: the selection, Nix's pre-flight and which machine builds each
   system. No evaluation, nothing written.
2. `make_plan()`: one evaluation (`nix build --dry-run --json`; one per
   batch when RAM asks for batches, evalmem.py) gives every variant's
   derivation and Nix's plan: what it would build, what it would fetch. One
   `nix derivation show -r` gives the graph by which each variant gets its
   share of that plan (issue #13: the Nix processes do not grow with the
   variants). `--dry-run` prints this and stops; Nix only instantiates .drv
   files.
3. `execute()`: ONE `nix build` of all planned derivations, so Nix itself
   schedules across variants (--max-jobs), builds a shared derivation once
   and sends work to remote builders; no scheduler of our own. Its
   internal-json log feeds the display and one log file per variant.
4. `link_results()`: a `result-<variant>` link is made, through Nix so it
   stays a GC root, only for a variant whose output is valid, and only after
   Nix exited; then a summary table (and `--json` for CI). Signals wait for
   these; any failure ends in BuildError.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from .cli import whole_number
from .display import duration_text, make_display, relative
from .errors import BuildError, CommandError, Interrupted, PreflightError, SelectionError, VariantsError, WriteError
from .evalmem import EvalBudget, eval_options, plan_eval
from .machines import BuildCapabilities
from .matrix import Matrix, Variant, refuse_conflicts, sm_tokens, split_auto
from .nix import Derivation, Nix, Planned, error_message, flake_ref, input_ref
from .nixlog import DryRun, Event, NixLog, package_name, read_lines, store_name, version_of
from .outputs import check_dir, check_file, make_dir, write_text
from .project import Project
from .resources import Host, format_bytes
from .runner import format_argv, spawn, terminations_interrupt

# Derivations that compile CUDA kernels (hours each): named in the plan.
HEAVY = ("torch", "vllm", "xformers", "flashinfer", "magma", "nccl", "bitsandbytes", "cupy", "triton")
# How long Nix gets to stop after Ctrl-C before SIGTERM, then SIGKILL.
STOP_GRACE_S = (20.0, 10.0)
# How often the display hears from us while Nix prints nothing.
POLL_S = 5.0


# -- the request ------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What the command line asked for, validated (one line per mistake)."""

    sms: tuple[str, ...] = ()
    arm64: bool = False
    all: bool = False
    systems: tuple[str, ...] = ()
    dry_run: bool = False
    cores: int | None = None
    max_jobs: int | None = None
    builders: str | None = None
    keep_going: bool = False
    options: tuple[tuple[str, str], ...] = ()
    nixpkgs: str | None = None
    json_path: Path | None = None
    python: str | None = None  # --python 313: that Python line instead of the default one
    cuda: str | None = None  # --cuda 12.8
    eval_jobs: int | None = None
    eval_max_memory: int | None = None

    @classmethod
    def from_cli(
        cls,
        *,
        sm: Iterable[str] = (),
        arm64: bool = False,
        all: bool = False,
        system: Iterable[str] = (),
        dry_run: bool = False,
        cores: str | int | None = None,
        max_jobs: str | int | None = None,
        builders: str | None = None,
        keep_going: bool = False,
        option: Iterable[str] = (),
        nixpkgs: str | None = None,
        json: str | None = None,
        eval_jobs: str | int | None = None,
        eval_max_memory: str | int | None = None,
        cwd: Path | None = None,
        python: str | None = None,
        cuda: str | None = None,
    ) -> Request:
        cwd = Path(cwd or Path.cwd())
        jobs, memory = eval_options(eval_jobs, eval_max_memory)
        return cls(
            sms=tuple(sm or ()),
            arm64=arm64,
            all=all,
            systems=tuple(system or ()),
            dry_run=dry_run,
            cores=whole_number("--cores", cores, "0 means all cores"),
            max_jobs=whole_number("--max-jobs", max_jobs, "0 means remote builders only"),
            builders=_builders_spec(builders, cwd),
            keep_going=keep_going,
            options=tuple(_option(o) for o in option or ()),
            nixpkgs=input_ref(nixpkgs, cwd) if nixpkgs is not None else None,
            json_path=check_file("--json", json, cwd),
            python=python,
            cuda=cuda,
            eval_jobs=jobs,
            eval_max_memory=memory,
        )


def _option(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise SelectionError(f"--option takes NAME=VALUE (e.g. --option sandbox true), not '{text}'")
    return name.strip(), value


def _builders_spec(spec: str | None, cwd: Path) -> str | None:
    """A relative '@machines' file is relative to where the user ran invoke."""
    if spec is None:
        return None
    parts = []
    for part in spec.replace(";", "\n").splitlines():
        part = part.strip()
        if part.startswith("@"):
            path = (cwd / Path(part[1:]).expanduser()).resolve()
            if not path.is_file():
                raise SelectionError(f"--builders {part}: no such machines file {path}")
            part = f"@{path}"
        if part:
            parts.append(part)
    return "; ".join(parts)


# -- step 1: pre-flight -----------------------------------------------------


@dataclass(frozen=True)
class Target:
    variant: Variant
    where: str  # "this machine" or "remote builder(s) ..."
    link: Path
    # The flake attribute to build: the variant's package unless a caller
    # builds another output of the variant (`invoke image`: images.<system>.<name>).
    attr: str | None = None

    @property
    def installable_attr(self) -> str:
        return self.attr or self.variant.attr_path()


@dataclass
class Prepared:
    project: Project
    request: Request
    nix: Nix
    targets: list[Target]


def select(matrix: Matrix, request: Request, *, smi: str = "nvidia-smi") -> list[Variant]:
    """The variants asked for; `--sm auto` adds those of the local GPUs (`invoke which`)."""
    tokens = sm_tokens(request.sms)
    refuse_conflicts(tokens, systems=request.systems, all=request.all, arm64=request.arm64)
    named, auto = split_auto(tokens)
    chosen: set[str] = set()
    if auto:
        from .which import auto_variants

        chosen.update(v.name for v in auto_variants(matrix, smi=smi))
    if named or request.systems or request.all or not chosen:
        selected = matrix.select(
            named,
            arm64=request.arm64,
            systems=request.systems,
            all=request.all,
            python=request.python,
            cuda=request.cuda,
        )
        chosen.update(v.name for v in selected)
    return [v for v in matrix.variants if v.name in chosen]


def prepare(project: Project, request: Request, *, nix: Nix | None = None) -> Prepared:
    """Selection, Nix and builders checked; nothing evaluated, nothing written."""
    variants = select(project.matrix, request)
    options = list(request.options)
    if request.builders is not None:
        options.append(("builders", request.builders))
    nix = nix or Nix(options=options)
    nix.preflight()
    settings = dict(nix.config())
    if request.max_jobs is not None:
        settings["max-jobs"] = str(request.max_jobs)
    capabilities = BuildCapabilities.from_settings(settings)
    targets = []
    for variant in variants:
        targets.append(Target(variant, _where(capabilities, variant.system), project.result_link(variant)))
    return Prepared(project, request, nix, targets)


def _where(caps: BuildCapabilities, system: str) -> str:
    if caps.local_can_build(system):
        return "this machine"
    remote = caps.builders_for(system)
    if remote:
        return "remote builder " + ", ".join(b.uri for b in remote)
    if system in caps.local_systems and caps.local_max_jobs > 0:
        raise PreflightError(
            f"this machine's Nix lacks the big-parallel system feature the CUDA builds need: add "
            f"'system-features = {' '.join((*caps.features, 'big-parallel'))}' to nix.conf, or a builder that has it"
        )
    if system in caps.local_systems:
        raise PreflightError(
            f"max-jobs is 0 (nothing builds on this machine) and no remote builder can build {system} with "
            f"big-parallel: add one, e.g. --builders 'ssh-ng://user@host {system} - 8 1 big-parallel'"
        )
    raise PreflightError(caps.explain_missing(system))


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


# -- step 2: the plan -------------------------------------------------------


@dataclass
class VariantPlan:
    target: Target
    drv: str
    out: str
    dry: DryRun

    @property
    def variant(self) -> Variant:
        return self.target.variant

    def heavy(self) -> list[str]:
        """'torch 2.9.1', 'vllm 0.15.1', ...: the derivations that take hours,
        heaviest first (HEAVY's order, not Nix's, which follows store hashes)."""
        found: list[tuple[int, str]] = []
        for drv in self.dry.will_build:
            if drv == self.drv:  # the variant's environment, named after it: no compile
                continue
            if not any(heavy in drv for heavy in HEAVY):  # most of a closure at real scale: skip the parse
                continue
            name = package_name(drv)
            if name == "torch" and self.variant.torch_wheel:  # torch-bin: a wheel unpacked and patched
                continue
            for rank, heavy in enumerate(HEAVY):
                if name == heavy or name.startswith(heavy + "-"):
                    found.append((rank, f"{heavy} {version_of(drv)}".strip()))
                    break
        return [text for _, text in sorted(found)]

    def summary(self) -> str:
        built = len(self.dry.will_build)
        text = f"build {built} derivation{'s' * (built != 1)}"
        heavy = self.heavy()
        if heavy:
            text += f" (compiles {', '.join(heavy)})"
        text += f", fetch {_fetch_text(self.dry)}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "drv": self.drv,
            "out": self.out,
            "builds_on": self.target.where,
            "heavy": self.heavy(),
            **self.dry.to_json(),
        }


def _fetch_text(dry: DryRun) -> str:
    n = len(dry.will_fetch)
    text = f"{n} path{'s' * (n != 1)}"
    if n and dry.download_bytes is not None:
        text += f" ({format_bytes(dry.download_bytes)} download, {format_bytes(dry.unpacked_bytes)} unpacked)"
    return text


@dataclass
class BuildPlan:
    prepared: Prepared
    variants: list[VariantPlan]
    total: DryRun
    concurrency: Concurrency
    evaluation: EvalBudget | None = None

    @property
    def nix(self) -> Nix:
        return self.prepared.nix

    @property
    def project(self) -> Project:
        return self.prepared.project

    def owners(self) -> dict[str, list[VariantPlan]]:
        """derivation -> the variants that build it (shared ones build once)."""
        owners: dict[str, list[VariantPlan]] = {}
        for plan in self.variants:
            for drv in plan.dry.will_build:
                owners.setdefault(drv, []).append(plan)
        return owners

    def build_argv(self) -> list[str]:
        request = self.prepared.request
        args = ["build", "--no-link", "--log-format", "internal-json"]
        if request.keep_going:
            args.append("--keep-going")
        args += self.concurrency.args()
        args += [f"{p.drv}^out" for p in self.variants]
        return self.nix.argv(*args)

    def lines(self) -> list[str]:
        nix = self.nix
        n = len(self.variants)
        lines = [
            f"plan: {n} variant{'s' * (n != 1)}, Nix {nix.version_text}"
            + (f", nixpkgs {self.prepared.request.nixpkgs}" if self.prepared.request.nixpkgs else "")
        ]
        for plan in self.variants:
            lines.append(f"  {plan.variant.name} ({plan.variant.system}, on {plan.target.where}): {plan.summary()}")
            if plan.dry.unknown:
                lines.append(f"    Nix does not know how to build: {', '.join(map(store_name, plan.dry.unknown))}")
        if n > 1:
            built = len(self.total.will_build)
            lines.append(
                f"  all together: build {built} derivation{'s' * (built != 1)}, fetch {_fetch_text(self.total)}"
            )
        if self.evaluation is not None:
            lines.append(self.evaluation.line(n))
        lines.append(f"concurrency: {self.concurrency.text}")
        if self.concurrency.warning:
            lines.append(f"warning: {self.concurrency.warning}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "nix_version": self.nix.version_text,
            "nixpkgs": self.prepared.request.nixpkgs,
            "concurrency": self.concurrency.to_json(),
            "evaluation": self.evaluation.to_json(len(self.variants)) if self.evaluation else None,
            "total": self.total.to_json(),
        }


def make_plan(prepared: Prepared, *, host: Host | None = None) -> BuildPlan:
    """Evaluate the selected variants and ask Nix what building them takes.

    Nix processes, whatever the number of variants (issue #13): one
    `nix build --dry-run` per evaluation batch (one unless --eval-jobs or
    --eval-max-memory, or the RAM, asks for more), then, for several
    variants, one `nix derivation show -r` of all their derivations, by which
    each derivation and path of Nix's plan goes to the variants whose closure
    holds it, and one `nix path-info` per binary cache for the sizes of what
    is fetched (none when nothing is).
    """
    nix, project, request = prepared.nix, prepared.project, prepared.request
    host = host or Host.detect()
    flake = flake_ref(project.root)
    eval_args = ["--no-write-lock-file"]  # --override-input must never relock flake.lock
    if request.nixpkgs:
        eval_args += nix.override_args({"nixpkgs": request.nixpkgs})
    evaluation = plan_eval(jobs=request.eval_jobs, max_memory=request.eval_max_memory, host=host)
    batches = evaluation.batches(prepared.targets)
    derivations: list[Planned] = []
    dries = []
    for batch in batches:
        try:
            built, dry = nix.dry_run([f"{flake}#{t.installable_attr}" for t in batch], *eval_args, cwd=project.root)
        except CommandError as exc:
            raise BuildError(f"Nix could not evaluate the selected variants: {error_message(exc.stderr)}") from None
        derivations += built
        dries.append(dry)
    plans = []
    for target, planned in zip(prepared.targets, derivations):
        plans.append(VariantPlan(target, planned.drv, nix.out_path(planned), dries[0]))
    total = merge_dry_runs(dries)
    if len(plans) > 1:  # each variant's share of the one plan, by its closure: no second evaluation
        graph = nix.derivation_graph([p.drv for p in plans], cwd=project.root)
        sizes = nix.fetch_sizes(total.will_fetch) if total.will_fetch else {}
        if len(dries) > 1:  # the batches' sizes overlap: the total is the sum over its paths
            total = with_sizes(total, sizes)
        for plan in plans:
            plan.dry = with_sizes(share_of(total, plan.drv, graph), sizes)
    concurrency = plan_concurrency(
        len(plans),
        host,
        project.matrix.ram_per_job_gib,
        cores=request.cores,
        max_jobs=request.max_jobs,
        nix_settings=nix.config(),
    )
    return BuildPlan(prepared, plans, total, concurrency, evaluation)


def closure(drv: str, graph: Mapping[str, Derivation]) -> set[str]:
    """`drv` and every derivation it needs, through the graph (each visited once)."""
    seen, stack = {drv}, [drv]
    while stack:
        node = graph.get(stack.pop())
        for parent in node.inputs if node else ():
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def share_of(total: DryRun, drv: str, graph: Mapping[str, Derivation]) -> DryRun:
    """What of Nix's plan for all variants is in the closure of `drv`: the
    derivations it builds, the paths (outputs of its derivations) it fetches.
    A derivation shared by several variants is in the share of each."""
    drvs = closure(drv, graph)
    outputs = {o for d in drvs if d in graph for o in graph[d].outputs}
    return DryRun(
        will_build=tuple(d for d in total.will_build if d in drvs),
        will_fetch=tuple(p for p in total.will_fetch if p in outputs),
        download_bytes=None,
        unpacked_bytes=None,
        unknown=tuple(p for p in total.unknown if p in drvs or p in outputs),
    )


def with_sizes(dry: DryRun, sizes: Mapping[str, Mapping[str, Any]]) -> DryRun:
    """`dry` with its download and unpacked sizes summed from each path's narinfo;
    None (unknown) when a cache gave no size for one of them."""
    infos = [sizes.get(p) for p in dry.will_fetch]
    known = [i for i in infos if i is not None and isinstance(i.get("downloadSize", i.get("narSize")), int)]
    every = len(known) == len(infos)
    return replace(
        dry,
        download_bytes=sum(i.get("downloadSize", i["narSize"]) for i in known) if every else None,
        unpacked_bytes=sum(i["narSize"] for i in known) if every else None,
    )


def merge_dry_runs(dries: Sequence[DryRun]) -> DryRun:
    """The plans of several evaluation batches as one (shared paths once, Nix's order)."""
    if len(dries) == 1:
        return dries[0]

    def union(key: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for d in dries for p in getattr(d, key)))

    return DryRun(
        will_build=union("will_build"),
        will_fetch=union("will_fetch"),
        download_bytes=None,
        unpacked_bytes=None,
        unknown=union("unknown"),
    )


def check_links(targets: Iterable[Target], outs: Iterable[str] | None = None) -> None:
    """A result-<variant> that is not a link into the store is the user's:
    Nix refuses to replace it, so say so before hours of building. Before
    the evaluation (no `outs` yet) only what is no link at all is known."""
    paths: Iterable[str | None] = outs or itertools.repeat(None)
    for target, out in zip(targets, paths):
        link = target.link
        if not (link.exists() or link.is_symlink()):
            continue
        store_dir = str(Path(out).parent) if out else "/nix/store"
        if not link.is_symlink() or (out and not os.readlink(link).startswith(store_dir + "/")):
            raise PreflightError(
                f"{link.name} exists and is not a Nix result link (into {store_dir}); "
                "move it away, then run the build again"
            )


# -- step 3: the build ------------------------------------------------------


@dataclass
class BuildOutcome:
    variant: Variant
    # built | fetched | up to date | failed | not built (another failure stopped Nix)
    # | not linked (built, but its result link could not be made: link_error says why)
    status: str
    store_path: str | None = None
    closure_size: int | None = None
    duration_s: float = 0.0
    log: Path | None = None
    failed: list[str] = field(default_factory=list)  # failing derivations
    link_error: str | None = None
    nix_error: str | None = None  # Nix exited non-zero: its status and last error (an option it rejected...)

    @property
    def ok(self) -> bool:
        return self.status in ("built", "fetched", "up to date")

    def to_json(self, root: Path) -> dict[str, Any]:
        return {
            "variant": self.variant.name,
            "sm": self.variant.sm,
            "system": self.variant.system,
            "status": self.status,
            "store_path": self.store_path,
            "closure_size": self.closure_size,
            "duration_s": round(self.duration_s, 3),
            "log": relative(self.log, root) if self.log else None,
            "failed_derivations": self.failed,
            "link_error": self.link_error,
            "nix_error": self.nix_error,
        }


class VariantLogs:
    """logs/<variant>-<timestamp>.log: each variant's derivations' build
    output, and Nix's messages, as text."""

    def __init__(self, plan: BuildPlan, stamp: str, argv: list[str]) -> None:
        self.owners = plan.owners()
        make_dir(plan.project.logs)
        self.paths: dict[str, Path] = {}
        self.files: dict[str, TextIO] = {}
        for vplan in plan.variants:
            name = vplan.variant.name
            path = _unique(plan.project.logs / f"{name}-{stamp}.log")
            self.paths[name] = path
            try:
                self.files[name] = path.open("w", encoding="utf-8", buffering=1)
            except OSError as exc:
                self.close(quiet=True)
                raise WriteError(path, exc) from None
            self._write(
                name,
                f"# vllm-variants build of {name}, started {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n"
                f"# $ {format_argv(argv)}\n"
                f"# plan: {vplan.summary()}\n",
            )

    def _write(self, name: str, text: str) -> None:
        """A full disk or a vanished folder is a WriteError naming the log (issue #11)."""
        try:
            self.files[name].write(text)
        except OSError as exc:
            raise WriteError(self.paths[name], exc) from None

    def write(self, event: Event) -> None:
        line = self._line(event)
        if line is None:
            return
        if event.build is not None and event.build.drv in self.owners:
            names = [p.variant.name for p in self.owners[event.build.drv]]
        else:
            names = list(self.files)
        for name in names:
            self._write(name, line + "\n")

    @staticmethod
    def _line(event: Event) -> str | None:
        build = event.build
        if event.kind == "build-start" and build:
            return f"building '{build.drv}'" + (f" on {build.machine}" if build.machine else "")
        if event.kind == "log" and build:
            return f"{build.name}> {event.text}"
        if event.kind == "build-stop" and build:
            return f"{build.result} '{build.drv}' after {duration_text(build.elapsed(0))}"
        if event.kind == "fetch-start":
            return f"fetching {event.text}"
        if event.kind == "message" and (event.level or 0) <= 3:
            return event.text
        if event.kind == "text":
            return event.text
        return None

    def close(self, note: str | None = None, *, quiet: bool = False) -> None:
        """Close every log (with `note`); the first write that fails is raised
        after all are closed, unless `quiet` (an error is on its way already)."""
        failed: WriteError | None = None
        for name, handle in self.files.items():
            try:
                if note:
                    handle.write(f"# {note}\n")
                handle.close()
            except OSError as exc:
                failed = failed or WriteError(self.paths[name], exc)
                with contextlib.suppress(OSError):
                    handle.close()
        self.files = {}
        if failed and not quiet:
            raise failed


def _unique(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def execute(plan: BuildPlan, display: Any, *, clock: Callable[[], float] = time.monotonic) -> list[BuildOutcome]:
    """Run the one `nix build`; what became of each variant (nothing linked yet).

    Ctrl-C stops Nix (SIGINT to its process group, then SIGTERM, SIGKILL),
    touches no link and re-raises KeyboardInterrupt (exit 130 at the boundary).
    """
    nix = plan.nix
    argv = plan.build_argv()
    logs = VariantLogs(plan, time.strftime("%Y%m%d-%H%M%S"), argv)
    reader = NixLog(clock=clock)
    started = clock()
    # Its own session: a terminal's Ctrl-C reaches us, and we stop Nix in order.
    proc = spawn(
        argv, cwd=plan.project.root, env=nix.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, new_session=True
    )
    try:
        with terminations_interrupt(), display.running(reader, started):
            assert proc.stderr is not None
            follow(proc.stderr.fileno(), reader, logs, display)
            returncode = proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        logs.close("interrupted: nix was stopped; no result link was changed", quiet=True)
        display.interrupted(logs.paths)
        raise
    except BaseException:
        _stop(proc)
        logs.close(quiet=True)
        raise
    logs.close(f"nix exited with status {returncode}")
    return _outcomes(plan, reader, logs.paths, started, returncode)


def follow(fd: int, reader: NixLog, logs: Any, display: Any, poll_s: float = POLL_S) -> None:
    """Feed Nix's log, line by line, to the reader, the log files and the
    display until Nix closes it; tick the display whenever Nix is silent."""
    for line in read_lines(fd, poll_s):
        if line is None:
            display.tick()
            continue
        for event in reader.feed(line):
            logs.write(event)
            display.event(event)


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT to Nix's process group (it kills its builders), then harder."""
    for sig, grace in ((signal.SIGINT, STOP_GRACE_S[0]), (signal.SIGTERM, STOP_GRACE_S[1]), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.communicate(timeout=grace)  # drains stderr, so Nix never blocks writing it
            break
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting politely
            continue
    proc.wait()


def _outcomes(
    plan: BuildPlan, reader: NixLog, logs: dict[str, Path], started: float, returncode: int = 0
) -> list[BuildOutcome]:
    nix = plan.nix
    nix_error = None
    if returncode != 0:
        last = reader.errors[-1].removeprefix("error:").strip() if reader.errors else "it gave no reason"
        nix_error = f"nix build exited with status {returncode}: {last}"
    ended = reader.clock()
    valid = nix.realised([p.out for p in plan.variants])
    failed = reader.failed_builds()
    outcomes = []
    for vplan in plan.variants:
        name = vplan.variant.name
        mine = set(vplan.dry.will_build)
        outcome = BuildOutcome(
            vplan.variant, "failed", duration_s=ended - started, log=logs.get(name), nix_error=nix_error
        )
        info = valid.get(vplan.out)
        if info is not None:
            outcome.store_path = vplan.out
            outcome.closure_size = info.get("closureSize")
            stops = [b.stopped for b in reader.finished() if b.drv in mine and b.stopped]
            outcome.duration_s = (max(stops) - started) if stops else 0.0
            outcome.status = "built" if mine else "fetched" if vplan.dry.will_fetch else "up to date"
        else:
            outcome.failed = [b.drv for b in failed if b.drv in mine]
            if not outcome.failed and failed:
                outcome.status = "not built"  # another variant's failure stopped Nix
        outcomes.append(outcome)
    return outcomes


def link_results(plan: BuildPlan, outcomes: list[BuildOutcome]) -> None:
    """result-<variant> -> its output, for each variant built (a failed one
    keeps its old link), after Nix exited.

    Nix swaps each link atomically. One it cannot make (something else took
    its place) is recorded on that variant's outcome, and the others are still
    made. Run it with signals held (main): all links or none of a Ctrl-C.
    """
    for vplan, outcome in zip(plan.variants, outcomes):
        if outcome.ok and outcome.store_path:
            try:
                plan.nix.add_root(outcome.store_path, vplan.target.link)
            except CommandError as exc:
                outcome.status, outcome.link_error = "not linked", error_message(exc.stderr)
            except VariantsError as exc:  # nix gone from PATH meanwhile
                outcome.status, outcome.link_error = "not linked", str(exc)


@contextlib.contextmanager
def _held_signals() -> Iterator[list[int]]:
    """SIGINT, SIGTERM and SIGHUP wait until the block is done (a second or
    two: links, summary, JSON); yields the ones that came, for the caller to
    honour afterwards."""
    held: list[int] = []
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield held
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- the whole command ------------------------------------------------------


def main(
    project: Project,
    *,
    out: TextIO | None = None,
    interactive: bool | None = None,
    nix: Nix | None = None,
    host: Host | None = None,
    retarget: Callable[[Target], Target] | None = None,
    **cli: Any,
) -> list[BuildOutcome] | BuildPlan:
    """`invoke build`: see the module docstring. Raises BuildError on failure.

    retarget: what to build for each selected variant instead of its package
    (another flake attribute and link; `invoke image` builds its image).
    """
    out = out or sys.stdout
    request = Request.from_cli(**cli)
    check_outputs(project, request)
    prepared = prepare(project, request, nix=nix)
    if retarget is not None:
        prepared.targets = [retarget(t) for t in prepared.targets]
    if not request.dry_run:
        check_links(prepared.targets)  # before the evaluation, which takes minutes on real nixpkgs
    plan = make_plan(prepared, host=host)
    for line in plan.lines():
        print(line, file=out, flush=True)
    if request.dry_run:
        if request.json_path:
            report = {
                **plan.to_json(),
                "dry_run": True,
                "variants": [
                    {
                        "variant": p.variant.name,
                        "sm": p.variant.sm,
                        "system": p.variant.system,
                        "status": "planned",
                        "plan": p.to_json(),
                    }
                    for p in plan.variants
                ],
            }
            _write_json(request.json_path, report)
        print("dry run: nothing was built, no link or log was written", file=out, flush=True)
        return plan
    return act(plan, out, interactive=interactive)


def act(plan: BuildPlan, out: TextIO, *, interactive: bool | None = None) -> list[BuildOutcome]:
    """Build the plan, link what was built, report; BuildError on any failure."""
    project, request = plan.project, plan.prepared.request
    check_links(plan.prepared.targets, [p.out for p in plan.variants])
    display = make_display(plan, out, interactive=interactive)
    outcomes = execute(plan, display)
    # Nix is done. A Ctrl-C from here waits for the links, the summary and the
    # JSON (a second or two): never some links updated and others not, and no
    # record of which.
    with _held_signals() as held:
        link_results(plan, outcomes)
        display.report(outcomes)
        if request.json_path:
            _write_json(
                request.json_path,
                {**plan.to_json(), "dry_run": False, "variants": [o.to_json(project.root) for o in outcomes]},
            )
    if held:
        raise KeyboardInterrupt if held[0] == signal.SIGINT else Interrupted(held[0])
    failed = [o for o in outcomes if not o.ok]
    if failed:
        first = next((o for o in failed if o.failed), failed[0])  # the one that broke, not a bystander
        if first.link_error:
            raise BuildError(
                f"{len(failed)} of {len(outcomes)} variant(s) not built or not linked: "
                f"{first.variant.name} was built, but {project.result_link(first.variant).name} "
                f"was not updated: {first.link_error}"
            )
        why = f" ({', '.join(store_name(d) for d in first.failed)} failed)" if first.failed else ""
        why = why or (f" ({first.nix_error})" if first.nix_error else "")
        log = f"; log: {relative(first.log, project.root)}" if first.log else ""
        raise BuildError(f"{len(failed)} of {len(outcomes)} variant(s) not built: {first.variant.name}{why}{log}")
    refused = next((o for o in outcomes if o.nix_error), None)
    if refused:  # every output is in the store, yet Nix failed: an option it rejected, a broken store
        log = f"; log: {relative(refused.log, project.root)}" if refused.log else ""
        raise BuildError(f"{refused.nix_error}{log}")
    return outcomes


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def check_outputs(project: Project, request: Request) -> None:
    """What a build writes in the checkout (its result links, logs/), checked
    before anything starts; --json was checked with the command line."""
    if request.dry_run:
        return  # writes nothing but --json
    check_dir(f"the checkout {project.root} (for the result links)", project.root, project.root)
    check_dir("logs/ (the build logs)", project.logs, project.root)
