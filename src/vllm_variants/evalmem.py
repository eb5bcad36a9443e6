"""How many variants one Nix evaluation may hold: batches sized from RAM (issue #13).

Every variant is its own nixpkgs instance (nix/variant.nix), and Nix's
evaluator frees nothing until the process exits, so one `nix build --dry-run`
(or `nix eval`) of N variants needs about N times what one instance costs.
`invoke build` and `invoke eval` split the selected variants into batches of
at most `per_batch` instances, one Nix process each:

- `--eval-jobs N`: N variants per evaluation, as given;
- `--eval-max-memory SIZE` (e.g. 24G): SIZE / the cost of one instance;
- neither: half of this machine's RAM (MemTotal, or its cgroup limit) /
  the cost of one instance (the other half is left to Nix's store and
  whatever else runs).

The cost of one instance is INSTANCE_BYTES, a projection for the real pin
from a measurement of the stand-in with NIX_SHOW_STATS (README, "Evaluation
memory", gives the method and the figures; benchmarks/bench_plan.py measures
it again). The plan prints which budget it used.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from .errors import UsageError
from .options import MAX_COUNT, whole_number
from .resources import GIB, Host, format_bytes

# One nixpkgs instance of a variant at the real pin, projected (README,
# "Evaluation memory"): about 2,000 derivations x 200 KB allocated per
# derivation evaluated (public NIX_SHOW_STATS of nixpkgs), doubled for the
# Boehm heap's growth past what is live: 0.8 GB, rounded up to 1 GiB. The
# stand-in measures 6 KB per derivation, 6.2 MB per instance (bench_plan.py).
INSTANCE_BYTES = GIB

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)

T = TypeVar("T")


def parse_size(flag: str, value: str | int | None) -> int | None:
    """'24G', '24GiB', '512M', '1.5T' or plain bytes -> bytes (binary units); None when not given."""
    if value is None or value == "":
        return None
    match = _SIZE.match(str(value))
    size = round(float(match.group(1)) * 1024 ** " KMGT".index((match.group(2) or " ").upper())) if match else 0
    if size <= 0:
        raise UsageError(f"{flag} takes a size such as 24G, 512M or 1.5T (binary units, above zero), not '{value}'")
    return size


@dataclass(frozen=True)
class EvalBudget:
    """At most `per_batch` variants per Nix evaluation, and why."""

    per_batch: int
    text: str  # where per_batch came from

    def batches(self, items: Sequence[T]) -> list[list[T]]:
        return [list(items[i : i + self.per_batch]) for i in range(0, len(items), self.per_batch)] or [[]]

    def processes(self, n_variants: int) -> int:
        """How many Nix evaluations batches() makes of that many variants (one even for none)."""
        return max(1, -(-n_variants // self.per_batch))

    def line(self, n_variants: int) -> str:
        n = self.processes(n_variants)
        return (
            f"evaluation: {n_variants} variant{'s' * (n_variants != 1)} in {n} Nix process{'es' * (n != 1)}, "
            f"at most {self.per_batch} nixpkgs instance{'s' * (self.per_batch != 1)} each ({self.text})"
        )

    def to_json(self, n_variants: int) -> dict[str, object]:
        return {"per_batch": self.per_batch, "processes": self.processes(n_variants), "text": self.text}


def plan_eval(
    *,
    jobs: int | None = None,
    max_memory: int | None = None,
    host: Host | None = None,
    instance_bytes: int = INSTANCE_BYTES,
) -> EvalBudget:
    """The batch size from --eval-jobs, --eval-max-memory, or half of this machine's RAM."""
    if jobs is not None:
        return EvalBudget(jobs, f"--eval-jobs {jobs}; about {format_bytes(jobs * instance_bytes)} projected")
    cost = f"~{format_bytes(instance_bytes)} per instance projected for the real pin"
    if max_memory is not None:
        return EvalBudget(max(1, max_memory // instance_bytes), f"--eval-max-memory {format_bytes(max_memory)}, {cost}")
    host = host or Host.detect()
    budget = host.mem_bytes // 2
    return EvalBudget(
        max(1, budget // instance_bytes), f"half of this machine's {format_bytes(host.mem_bytes)} RAM, {cost}"
    )


def eval_options(eval_jobs: str | int | None, eval_max_memory: str | int | None) -> tuple[int | None, int | None]:
    """--eval-jobs and --eval-max-memory as given on the command line, checked (one line each)."""
    jobs = whole_number("--eval-jobs", eval_jobs, "variants per Nix evaluation; at least 1")
    if jobs == 0:
        raise UsageError(
            f"--eval-jobs takes a whole number from 1 to {MAX_COUNT}, not '0' (variants per Nix evaluation)"
        )
    memory = parse_size("--eval-max-memory", eval_max_memory)
    if jobs is not None and memory is not None:
        raise UsageError(
            "--eval-jobs and --eval-max-memory conflict: give one (variants per evaluation, "
            "or the memory one evaluation may use)"
        )
    return jobs, memory
