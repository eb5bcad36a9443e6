"""`invoke which`: the variant for each local GPU (what `invoke build --sm auto` picks).

The rules (a GPU's variant, the nearest choices when its SM has none) are
vllm_variants.matching's, shared with `invoke doctor` and `--sm auto`; this
module prints them.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from .errors import SelectionError
from .matching import Match, detect_gpus, host_system, match, no_gpu_message
from .project import Project


def _line(m: Match) -> str:
    gpu = m.gpu
    head = f"GPU {gpu.index}: {gpu.name} (capability {gpu.capability}, driver {gpu.driver})"
    if m.variant is None:
        return f"{head} -> no variant"
    return f"{head} -> {m.variant.name} ({m.variant.build_command})"


def show(
    project: Project,
    *,
    as_json: bool = False,
    smi: str = "nvidia-smi",
    system: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> list[Match]:
    """Print the variant for each local GPU (exit 1 when there is no GPU, or a GPU has no variant)."""
    out, err = out or sys.stdout, err or sys.stderr
    system = system or host_system()
    gpus, none_because = detect_gpus(smi)
    matches = match(project.matrix, gpus, system)
    if as_json:
        json.dump({"system": system, "gpus": [m.to_json() for m in matches]}, out, indent=2)
        out.write("\n")
    else:
        for m in matches:
            print(_line(m), file=out)
    if not matches:
        raise SelectionError(no_gpu_message(none_because))
    problems = [m.problem for m in matches if m.problem]
    for problem in problems[:-1]:  # one line each; the last one is the exit message
        print(f"error: {problem}", file=err)
    if problems:
        raise SelectionError(problems[-1])
    return matches


if __name__ == "__main__":
    from .boundary import project_main

    sys.exit(project_main("which", show))
