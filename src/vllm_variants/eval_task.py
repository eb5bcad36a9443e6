"""`invoke eval`: what nixpkgs resolves for each variant, evaluated, not built.

The command to run after a bump on a machine that can fetch nixpkgs: every
selected variant is evaluated at the pin (or at --nixpkgs) in ONE Nix process
through the flake's `lib.resolve`, which wraps each variant in tryEval so one
that does not evaluate does not stop the others. tryEval keeps no message, so
each variant that failed there (and every variant, should the whole process
fail on an error tryEval cannot catch) is asked for alone to get its reason.
Nothing is built and flake.lock is never written.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .errors import BuildError, CommandError
from .evalmem import EvalBudget, eval_options, plan_eval
from .matrix import Variant
from .nix import Nix, error_message, flake_ref, input_ref, nix_expression
from .project import Project
from .resources import Host
from .selection import Selection

# lib.resolve takes its list of names from here: the flake gets data, not
# generated Nix source (expressions/resolve.nix, a file of this package, reads it).
NAMES_ENV = "VLLM_VARIANTS_EVAL_NAMES"
APPLY = nix_expression("resolve.nix")


@dataclass(frozen=True)
class Resolution:
    """One variant: what nixpkgs resolved for it, or why it does not evaluate."""

    variant: Variant
    resolved: Mapping[str, Any] | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.resolved is not None

    def lines(self) -> list[str]:
        if not self.ok:
            return [f"  {self.variant.name}: does not evaluate: {self.reason}"]
        r = self.resolved or {}
        versions, arch, cuda = r.get("versions", {}), r.get("arch", {}), r.get("cuda", {})

        def caps(value: Any) -> str:
            return ",".join(value) if isinstance(value, list) else str(value)

        return [
            f"  {self.variant.name}: vLLM {versions.get('vllm')}, torch {versions.get('torch')}, "
            f"Python {versions.get('python')}, CUDA {versions.get('cuda')}",
            "    arch: "
            + ", ".join(
                f"{key} {caps(arch.get(key))}"
                for key in ("cudaCapabilities", "torch", "vllm", "xformers", "flashinfer", "bitsandbytes")
            )
            + f"; forward compat {'on' if r.get('forwardCompat') else 'off'}",
            "    CUDA in the closure: " + ", ".join(f"{k} {v}" for k, v in sorted(cuda.items())),
            *self._torch_lines(r.get("torch", {}), versions.get("torch")),
        ]

    @staticmethod
    def _torch_lines(torch: Mapping[str, Any], version: str | None) -> list[str]:
        """Both torches the pin carries, on every row: which versions it has is not settled
        from the files nixpkgs can be read in here (nix/variants.toml [pin])."""
        source, binary, line = torch.get("sourceVersion"), torch.get("binVersion"), torch.get("binCuda")
        wheel = f"torch-bin {binary} ({'a CUDA ' + line if line else 'the CPU'} wheel)" if binary else "no torch-bin"
        lines = [f"    torch at the pin: torch {source} (built from source), {wheel}"]
        if torch.get("kind") == "wheel":
            lag = f"; vllm was packaged with torch {source}, its pins relaxed" if source != version else ""
            lines.append(f"    torch: nixpkgs' torch-bin {version} (the upstream wheel, every SM){lag}")
        return lines

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.variant.name, "ok": self.ok}
        if self.ok:
            data["resolved"] = self.resolved
        else:
            data["reason"] = self.reason
        return data


def resolve(
    nix: Nix,
    project: Project,
    variants: Sequence[Variant],
    overrides: Mapping[str, str] | None = None,
    budget: EvalBudget | None = None,
) -> list[Resolution]:
    """Each variant's resolution: one `nix eval` per batch of `budget` (all at once without one)."""
    flake = flake_ref(project.root)
    common = ["--json", "--no-write-lock-file", *nix.override_args(overrides or {})]
    together: dict[str, Any] = {}
    for batch in (budget or EvalBudget(max(1, len(variants)), "")).batches(list(variants)):  # issue #13
        # An input that cannot be fetched raises here (Nix.run), on the first
        # batch: said once, not once per variant (issue #22).
        proc = nix.run(
            "eval",
            "--impure",
            f"{flake}#lib.resolve",
            "--apply",
            APPLY,
            *common,
            cwd=project.root,
            env={NAMES_ENV: json.dumps([v.name for v in batch])},
            check=False,
        )
        together.update(json.loads(proc.stdout) if proc.returncode == 0 else {})
    results = []
    for variant in variants:
        entry = together.get(variant.name)
        if entry and entry.get("ok"):
            results.append(Resolution(variant, resolved=entry["resolved"]))
            continue
        alone = nix.run("eval", f"{flake}#{variant.attr_path()}.resolved", *common, cwd=project.root, check=False)
        if alone.returncode == 0:  # failed only beside the others: report what it resolves to
            results.append(Resolution(variant, resolved=json.loads(alone.stdout)))
        else:
            results.append(Resolution(variant, reason=error_message(alone.stderr)))
    return results


def main(
    project: Project,
    *,
    selection: Selection | None = None,
    nixpkgs: str | None = None,
    as_json: bool = False,
    eval_jobs: str | int | None = None,
    eval_max_memory: str | int | None = None,
    nix: Nix | None = None,
    out: TextIO | None = None,
    host: Host | None = None,
) -> list[Resolution]:
    """`invoke eval`: resolve the selected variants (default: the default set), print, fail if any does not evaluate."""
    out = out or sys.stdout
    jobs, memory = eval_options(eval_jobs, eval_max_memory)
    picked = (selection or Selection()).variants(project.matrix, none_means_all=True)
    overrides = {"nixpkgs": input_ref(nixpkgs)} if nixpkgs is not None else None
    nix = nix or Nix()
    nix.preflight()
    budget = plan_eval(jobs=jobs, max_memory=memory, host=host)
    if not as_json:
        print(budget.line(len(picked)), file=out, flush=True)
    try:
        results = resolve(nix, project, picked, overrides, budget)
    except CommandError as error:  # nix could not start or died on a signal
        raise BuildError(f"nix eval failed: {error}") from error
    where = f"nixpkgs {nixpkgs}" if nixpkgs else "the pinned nixpkgs (flake.lock)"
    failed = [r for r in results if not r.ok]
    if as_json:
        json.dump(
            {
                "nixpkgs": nixpkgs or "pin",
                "evaluation": budget.to_json(len(picked)),
                "variants": [r.to_json() for r in results],
            },
            out,
            indent=2,
        )
        out.write("\n")
    else:
        print(f"{len(results) - len(failed)} of {len(results)} variant(s) evaluate against {where}:", file=out)
        for result in results:
            for line in result.lines():
                print(line, file=out)
    out.flush()
    if failed:
        raise BuildError(f"{len(failed)} variant(s) do not evaluate: {', '.join(r.variant.name for r in failed)}")
    return results
