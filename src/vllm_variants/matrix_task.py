"""`invoke matrix --format github`: the CI build matrix, from nix/variants.toml.

GitHub Actions reads a job's `strategy.matrix` from JSON (`fromJSON(...)` of
an output of an earlier job), so .github/workflows/variants.yml computes it
with this task: one `include` entry per enabled variant, nothing typed twice.
Each entry carries the runner labels a self-hosted runner with that SM's GPU
is registered with, and the flake attribute that builds the variant.

Like `invoke variants`, this reads the matrix file only: no Nix process.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from .errors import SelectionError
from .matrix import Variant
from .project import Project
from .selection import Selection

FORMATS = ("github",)

# The architecture label GitHub gives a self-hosted runner (x64, ARM64, ...).
RUNNER_ARCH = {"x86_64-linux": "x64", "aarch64-linux": "ARM64"}


def runner_labels(variant: Variant) -> list[str]:
    """['self-hosted', 'linux', 'x64', 'gpu-sm90']: a runner with that SM's GPU."""
    arch, _, kernel = variant.system.partition("-")
    return ["self-hosted", kernel, RUNNER_ARCH.get(variant.system, arch), f"gpu-sm{variant.sm}"]


def entry(variant: Variant) -> dict[str, Any]:
    return {
        "variant": variant.name,
        "sm": variant.sm,
        "system": variant.system,
        "runner": runner_labels(variant),
        "attr": variant.attr_path(),
    }


def github_matrix(variants: Iterable[Variant]) -> dict[str, list[dict[str, Any]]]:
    """{"include": [entry, ...]}: what `strategy.matrix` takes through fromJSON."""
    return {"include": [entry(v) for v in variants]}


def show(
    project: Project,
    *,
    format: str = "github",
    selection: Selection | None = None,
    out: TextIO | None = None,
) -> None:
    if format not in FORMATS:
        raise SelectionError(f"unknown format '{format}'; valid: {', '.join(FORMATS)}")
    # the default set, or what --sm / --system (on a --python / --cuda line) ask for
    data = github_matrix((selection or Selection()).variants(project.matrix, none_means_all=True))
    # One line: a step writes it to $GITHUB_OUTPUT as `matrix=<json>`.
    print(json.dumps(data, separators=(",", ":")), file=out or sys.stdout)
