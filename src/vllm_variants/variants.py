"""`invoke variants`: the matrix as a table or JSON, from nix/variants.toml alone.

No Nix process is started: the matrix is data, and this must feel instant.
`--write` writes what the flake reads, nix/variants.json (the matrix validated
and expanded: vllm_variants.matrix.generated); `--check` only says whether it
is up to date.

Readable at any width (issue #22): a disabled variant's reason never goes in
its row. Each distinct reason is numbered once, below the table, and the row
carries its number. On a terminal, rich fits the table to the width (names
whole, the GPU column wraps); in a pipe every variant is one plain line, so
`grep` and `wc -l` see one variant per line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TextIO

from .errors import UsageError
from .matrix import Matrix, Variant
from .project import Project

COLUMNS = ("Variant", "SM", "System", "Driver", "Off", "GPUs")


def reasons(variants: Sequence[Variant]) -> dict[str, int]:
    """Each distinct disabled reason, numbered from 1 in the order of the rows."""
    found = dict.fromkeys(v.disabled for v in variants if v.disabled)
    return {reason: number for number, reason in enumerate(found, start=1) if reason}


def rows(variants: Sequence[Variant], numbers: dict[str, int]) -> list[tuple[str, ...]]:
    """One row per variant: COLUMNS' cells, the reason as its number ('[1]')."""
    return [
        (
            v.name,
            v.sm,
            v.system,
            f">= {v.min_driver}",
            f"[{numbers[v.disabled]}]" if v.disabled else "",
            f"{v.arch}: {', '.join(v.gpus)}",
        )
        for v in variants
    ]


def reason_lines(variants: Sequence[Variant], numbers: dict[str, int]) -> list[str]:
    lines = []
    for reason, number in numbers.items():
        count = sum(1 for v in variants if v.disabled == reason)
        lines.append(f"[{number}] {reason} ({count} variant{'s' * (count != 1)})")
    return lines


def plain_table(table: list[tuple[str, ...]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart; the last one unpadded."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]


def write_generated(project: Project, *, check: bool = False, out: TextIO | None = None) -> bool:
    """`invoke variants --write` (or --check): nix/variants.json from nix/variants.toml."""
    from .matrix import generated  # hashlib and the writer: not for showing the matrix

    changed = generated.update(project.root, check=check)
    print(f"wrote {generated.PATH}" if changed else f"{generated.PATH} is up to date", file=out or sys.stdout)
    return changed


def show(
    project: Project,
    *,
    as_json: bool = False,
    everything: bool = False,
    write: bool = False,
    check: bool = False,
    out: TextIO | None = None,
) -> None:
    given = [flag for flag, on in (("--write", write), ("--check", check)) if on]
    showing = [flag for flag, on in (("--json", as_json), ("--all", everything)) if on]
    if given and len(given) + len(showing) > 1:
        first, second = (given + showing)[:2]
        raise UsageError(
            f"{first} and {second} conflict: --write writes nix/variants.json, --check only compares it, "
            "--json and --all show the matrix; give one of them"
        )
    if given:
        write_generated(project, check=check, out=out)
        return
    out = out or sys.stdout
    matrix = project.matrix
    if as_json:
        json.dump(matrix.to_json(), out, indent=2)
        out.write("\n")
        return
    shown = list(matrix.variants if everything else matrix.default_set)
    numbers = reasons(shown)
    title = _title(matrix, shown, everything)
    notes = reason_lines(shown, numbers)
    if notes:
        notes = ["Off: disabled in the matrix, for the reason of its number:", *notes]
    cells = rows(shown, numbers)
    if not numbers:  # no disabled row: no Off column
        cells = [row[:4] + row[5:] for row in cells]
    header = tuple(c for c in COLUMNS if numbers or c != "Off")

    from .console import console_for

    console = console_for(out)
    if not console.is_terminal:  # a pipe or a file: one plain line per variant
        print("\n".join([title, *plain_table([header, *cells]), *([""] + notes if notes else [])]), file=out)
        return

    from rich import box
    from rich.table import Table
    from rich.text import Text

    # Too narrow for every column in one line: drop System (the name says it:
    # the -arm64 suffix) before the GPUs column has to wrap word by word.
    keep = list(range(len(header)))
    if max(len(line) for line in plain_table([header, *cells])) + len(header) > console.width:
        keep.remove(header.index("System"))
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i in keep:
        table.add_column(header[i], no_wrap=header[i] != "GPUs", overflow="fold")
    for variant, row in zip(shown, cells):
        table.add_row(*(Text(row[i]) for i in keep), style="dim" if variant.disabled else None)
    console.print(table)
    for line in notes:
        console.print(Text(line))


def _title(matrix: Matrix, shown: Sequence[Variant], everything: bool) -> str:
    if everything:
        return f"vllm-variants matrix: all {len(matrix.variants)} combinations, {len(matrix.enabled)} valid"
    return (
        f"vllm-variants default set ({len(shown)} of {len(matrix.enabled)} valid variants; "
        "--all lists every combination)"
    )
