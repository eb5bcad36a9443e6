"""Plan, then act, for targets already chosen: what `invoke build` runs for the
variants it selected and `invoke image` for the image of the one it resolved.

`plan_and_build()` evaluates the plan (make_plan) and prints it; with --dry-run it stops
there (the plan as JSON with --json); else `act()` builds it in one `nix
build`, links what was built and reports. `check_outputs()` checks, before
anything starts, what a build writes in the checkout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from .. import lifecycle
from ..errors import BuildError
from ..nixlog import store_name
from ..outputs import check_dir, relative, write_text
from ..project import Project
from ..resources import Host
from .display import BuildOutcome, make_display
from .links import link_results
from .plan import BuildPlan, check_links, make_plan
from .process import execute
from .request import Prepared, Request


def plan_and_build(
    prepared: Prepared, out: TextIO, *, interactive: bool | None = None, host: Host | None = None
) -> list[BuildOutcome] | BuildPlan:
    """Plan the prepared targets and print the plan; then (unless --dry-run) build,
    link and report. Raises BuildError on failure."""
    request = prepared.request
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
