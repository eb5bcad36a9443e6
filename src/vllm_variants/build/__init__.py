"""`invoke build`: pick variants, plan, build with progress and logs, link, summarise.

Plan first, then act (pyinvoke/invocations' packaging/release.py is the model):

1. `prepare()`: the selection, Nix's pre-flight and which machine builds each
   system. No evaluation, nothing written.
2. `make_plan()`: one evaluation (`nix build --dry-run --json`; one per
   batch when RAM asks for batches, evalmem.py) gives every variant's
   derivation and Nix's plan: what it would build, what it would fetch. One
   `nix path-info --recursive` of the derivations gives the graph by which
   each variant gets its share of that plan (issue #13: the Nix processes do not grow with the
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

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .. import lifecycle
from ..concurrency import Concurrency, plan_concurrency
from ..display import BuildOutcome, make_display
from ..errors import BuildError
from ..nix import Nix
from ..nixlog import store_name
from ..outputs import check_dir, relative, write_text
from ..project import Project
from ..resources import Host
from .links import link_results
from .plan import HEAVY, BuildPlan, VariantPlan, check_links, closure, make_plan, merge_dry_runs, share_of, with_sizes
from .process import POLL_S, STOP_GRACE_S, VariantLogs, execute, follow
from .request import Prepared, Request, Target, prepare, select

# The names other modules and the tests import from vllm_variants.build.
__all__ = [
    "HEAVY",
    "POLL_S",
    "STOP_GRACE_S",
    "BuildOutcome",
    "BuildPlan",
    "Concurrency",
    "Prepared",
    "Request",
    "Target",
    "VariantLogs",
    "VariantPlan",
    "act",
    "check_links",
    "check_outputs",
    "closure",
    "execute",
    "follow",
    "link_results",
    "main",
    "make_plan",
    "merge_dry_runs",
    "plan_concurrency",
    "prepare",
    "select",
    "share_of",
    "with_sizes",
]

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
    display = make_display(plan.watched(), out, interactive=interactive)
    outcomes = execute(plan, display)
    # Nix is done. A Ctrl-C from here waits for the links, the summary and the
    # JSON (a second or two): never some links updated and others not, and no
    # record of which.
    with lifecycle.critical():
        link_results(plan, outcomes)
        display.report(outcomes)
        if request.json_path:
            _write_json(
                request.json_path,
                {**plan.to_json(), "dry_run": False, "variants": [o.to_json(project.root) for o in outcomes]},
            )
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
