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


def rows(matrix: Matrix) -> list[tuple[str, ...]]:
    out = []
    for v in matrix.variants:
        name = v.name if v.enabled else f"{v.name} (disabled: {v.disabled})"
        out.append((name, v.sm, v.arch, ", ".join(v.gpus), v.system, f">= {v.min_driver}"))
    return out


def show(project: Project, *, as_json: bool = False, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    matrix = project.matrix
    if as_json:
        json.dump(matrix.to_json(), out, indent=2)
        out.write("\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="vllm-variants matrix", title_justify="left")
    for column in COLUMNS:
        table.add_column(column, no_wrap=column in ("Variant", "System"))
    for row in rows(matrix):
        table.add_row(*row, style="dim" if "(disabled" in row[0] else None)
    console = Console(file=out)
    if not console.is_terminal:
        console.width = 160  # a pipe or file: keep one row per line
    console.print(table)
