"""The build plan: one evaluation gives every variant's derivation and its share of what Nix would do."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import BuildError, CommandError, PreflightError
from ..evalmem import EvalBudget, plan_eval
from ..matrix import Variant
from ..nix import Nix, Planned, error_message, flake_ref, in_store_of
from ..nixlog import DryRun, package_name, store_name, version_of
from ..project import Project
from ..resources import Host, format_bytes
from .concurrency import Concurrency, plan_concurrency
from .display import Watched
from .request import Prepared, Target

# Derivations that compile CUDA kernels (hours each): named in the plan.
HEAVY = ("torch", "vllm", "xformers", "flashinfer", "magma", "nccl", "bitsandbytes", "cupy", "triton")


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
        """'torch 2.9.1', 'vllm 0.15.1', 'nccl 2.27.3 (x2)': the derivations that take
        hours, each distinct one once with its count, heaviest first (HEAVY's order,
        not Nix's, which follows store hashes)."""
        found: dict[tuple[int, str], int] = {}
        for drv in self.dry.will_build:
            if drv == self.drv or store_name(drv).startswith(self.variant.name):
                # named after the variant (its environment; an image's conf, layers,
                # script): no compile, though the name starts with "vllm-" (issue #22)
                continue
            if not any(heavy in drv for heavy in HEAVY):  # most of a closure at real scale: skip the parse
                continue
            name = package_name(drv)
            if name == "torch" and self.variant.torch_wheel:  # torch-bin: a wheel unpacked and patched
                continue
            for rank, heavy in enumerate(HEAVY):
                if name == heavy or name.startswith(heavy + "-"):
                    key = (rank, f"{heavy} {version_of(drv)}".strip())
                    found[key] = found.get(key, 0) + 1
                    break
        return [text + (f" (x{count})" if count > 1 else "") for (_, text), count in sorted(found.items())]

    def summary(self) -> str:
        built = len(self.dry.will_build)
        text = f"build {built} derivation{'s' * (built != 1)}"
        heavy = self.heavy()
        if heavy:
            text += f" (compiles {', '.join(heavy)})"
        elif built:
            text += " (no heavy compile)"
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

    def watched(self) -> Watched:
        """What the display shows of this plan."""
        owners = {drv: [p.variant.label for p in plans] for drv, plans in self.owners().items()}
        return Watched(len(self.variants), owners, self.project.root, self.project.logs)

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
    variants, one `nix path-info --recursive` of all their derivations (the
    graph: each derivation's input derivations), by which each derivation of
    Nix's plan goes to the variants whose closure holds it, and one `nix
    path-info` per binary cache for the sizes of what is fetched (none when
    nothing is), whose Deriver says which derivation, so which variants, fetch
    each path (a cache that names none: one `nix derivation show -r` more).
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
        drvs = [p.drv for p in plans]
        inputs = nix.derivation_inputs(drvs)
        sizes = nix.fetch_sizes(total.will_fetch) if total.will_fetch else {}
        outputs = [*total.will_fetch, *(p for p in total.unknown if not p.endswith(".drv"))]
        makers = producers(outputs, sizes, inputs)
        if makers is None:  # a path no cache names the derivation of (in this graph): Nix's outputs
            makers = {o: d for d, node in nix.derivation_graph(drvs, cwd=project.root).items() for o in node.outputs}
        if len(dries) > 1:  # the batches' sizes overlap: the total is the sum over its paths
            total = with_sizes(total, sizes)
        for plan in plans:
            plan.dry = with_sizes(share_of(total, plan.drv, inputs, makers), sizes)
    concurrency = plan_concurrency(
        len(plans),
        host,
        project.matrix.ram_per_job_gib,
        cores=request.cores,
        max_jobs=request.max_jobs,
        nix_settings=nix.config(),
    )
    return BuildPlan(prepared, plans, total, concurrency, evaluation)


def closure(drv: str, inputs: Mapping[str, Sequence[str]]) -> set[str]:
    """`drv` and every derivation it needs, through the graph (each visited once)."""
    seen, stack = {drv}, [drv]
    while stack:
        for parent in inputs.get(stack.pop(), ()):
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def producers(
    paths: Sequence[str], infos: Mapping[str, Mapping[str, Any]], inputs: Mapping[str, Sequence[str]]
) -> dict[str, str] | None:
    """{fetched path: the derivation of the graph that makes it}, from the
    `deriver` of each path's narinfo (which the size query has already read);
    None when a cache names none, or one outside the graph (a fixed-output
    input fetched another way gives another derivation the same output)."""
    found = {}
    for path in paths:
        deriver = (infos.get(path) or {}).get("deriver")
        if isinstance(deriver, str):
            deriver = in_store_of(path)(deriver)
        if not isinstance(deriver, str) or deriver not in inputs:
            return None
        found[path] = deriver
    return found


def share_of(total: DryRun, drv: str, inputs: Mapping[str, Sequence[str]], makers: Mapping[str, str]) -> DryRun:
    """What of Nix's plan for all variants is in the closure of `drv`: the
    derivations it builds, the paths it fetches (those made by its
    derivations: `makers`). A derivation shared by several variants is in the
    share of each."""
    drvs = closure(drv, inputs)
    return DryRun(
        will_build=tuple(d for d in total.will_build if d in drvs),
        will_fetch=tuple(p for p in total.will_fetch if makers.get(p) in drvs),
        download_bytes=None,
        unpacked_bytes=None,
        unknown=tuple(p for p in total.unknown if p in drvs or makers.get(p) in drvs),
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
