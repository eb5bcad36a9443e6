"""The result-<variant> links: made through Nix (GC roots), only for valid outputs, after Nix exited."""

from __future__ import annotations

from ..display import BuildOutcome
from ..errors import CommandError, VariantsError
from ..nix import error_message
from .plan import BuildPlan


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
