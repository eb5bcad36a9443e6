"""`invoke variants`: the matrix as a table or JSON, from nix/variants.toml alone.

No Nix process is started: the matrix is data, and this must feel instant.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from .matrix import Matrix
from .project import Project

COLUMNS = ("Variant", "SM", "Architecture", "Example GPUs", "System", "Driver")


def rows(matrix: Matrix, *, everything: bool = False) -> list[tuple[str, ...]]:
    """The default set; with everything, every combination, the disabled with their reasons."""
    out: list[tuple[str, ...]] = []
    for v in matrix.variants if everything else matrix.default_set:
        name = v.name if v.enabled else f"{v.name} (disabled: {v.disabled})"
        out.append((name, v.sm, v.arch, ", ".join(v.gpus), v.system, f">= {v.min_driver}"))
    return out


def show(project: Project, *, as_json: bool = False, everything: bool = False, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    matrix = project.matrix
    if as_json:
        json.dump(matrix.to_json(), out, indent=2)
        out.write("\n")
        return
    from rich.table import Table

    from .console import console_for

    shown = rows(matrix, everything=everything)
    title = (
        f"vllm-variants matrix: all {len(matrix.variants)} combinations, {len(matrix.enabled)} valid"
        if everything
        else f"vllm-variants default set ({len(shown)} of {len(matrix.enabled)} valid "
        "variants; --all lists every combination)"
    )
    table = Table(title=title, title_justify="left")
    for column in COLUMNS:
        table.add_column(column, no_wrap=column in ("Variant", "System"))
    for row in shown:
        table.add_row(*row, style="dim" if "(disabled" in row[0] else None)
    console = console_for(out)  # a pipe or file: one row per line
    console.print(table)
