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

import sys
from typing import Any, TextIO

from ..nix import Nix
from ..project import Project
from ..resources import Host
from .concurrency import Concurrency, plan_concurrency
from .display import BuildOutcome
from .links import link_results
from .pipeline import act, check_outputs, plan_and_build
from .plan import HEAVY, BuildPlan, VariantPlan, check_links, closure, make_plan, merge_dry_runs, share_of, with_sizes
from .process import POLL_S, STOP_GRACE_S, VariantLogs, execute, follow
from .request import Prepared, Request, Target, prepare, prepare_variants

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
    "plan_and_build",
    "plan_concurrency",
    "prepare",
    "prepare_variants",
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
    **cli: Any,
) -> list[BuildOutcome] | BuildPlan:
    """`invoke build`: see the module docstring. Raises BuildError on failure."""
    request = Request.from_cli(**cli)
    check_outputs(project, request)
    prepared = prepare(project, request, nix=nix)
    return plan_and_build(prepared, out or sys.stdout, interactive=interactive, host=host)
