"""The result-<variant> links: made through Nix (GC roots), only for valid outputs, after Nix exited."""

from __future__ import annotations

from ..errors import VariantsError
from .display import BuildOutcome
from .plan import BuildPlan


def link_results(plan: BuildPlan, outcomes: list[BuildOutcome]) -> None:
    """result-<variant> -> its output, for each variant built (a failed one
    keeps its old link), after Nix exited.

    Nix swaps each link atomically; all are made at once (Nix.add_roots). One
    it cannot make (something else took its place) is recorded on that
    variant's outcome, and the others are still made. Run it with signals
    held (main): all links or none of a Ctrl-C.
    """
    linked = [(v, o) for v, o in zip(plan.variants, outcomes) if o.ok and o.store_path]
    try:
        errors = plan.nix.add_roots([(o.store_path or "", v.target.link) for v, o in linked])
    except VariantsError as exc:  # nix gone from PATH meanwhile
        errors = [str(exc)] * len(linked)
    for (_, outcome), error in zip(linked, errors):
        if error is not None:
            outcome.status, outcome.link_error = "not linked", error
