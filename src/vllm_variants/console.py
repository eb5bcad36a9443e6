"""The one rich Console set-up every table and report uses.

rich is imported when a console is made, never at import: `invoke --list`
must not load it (tests/test_tasks.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console

# Off a terminal (a pipe, a log file, CI) rich would wrap at 80 columns: wide
# enough to keep one row (or one check) a line where it fits.
PIPE_WIDTH = 160


def console_for(out: TextIO, *, highlight: bool = True, pipe_width: int = PIPE_WIDTH) -> Console:
    """A rich Console writing to `out`, `pipe_width` columns wide when `out` is no terminal."""
    from rich.console import Console

    console = Console(file=out, highlight=highlight)
    if not console.is_terminal:
        console.width = pipe_width
    return console
