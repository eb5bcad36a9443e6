"""Command-line values checked where they enter (build, smoke): one line per mistake.

Invoke hands every option over as text (or as a Python int it parsed itself,
with a traceback on failure), so the tasks pass numbers through as given and
these functions say, in one line, what is valid.
"""

from __future__ import annotations

from .errors import UsageError

# Beyond any machine's cores or builds at once, and well within what Nix's
# unsigned settings parse: `--cores 99999999999999999999999` is refused here,
# not by Nix after the plan (issue #11).
MAX_COUNT = 100_000


def whole_number(flag: str, value: str | int | None, meaning: str) -> int | None:
    """`value` as an int in 0..MAX_COUNT; None when not given."""
    if value is None or value == "":
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        number = -1
    if not 0 <= number <= MAX_COUNT:
        raise UsageError(f"{flag} takes a whole number from 0 to {MAX_COUNT}, not '{value}' ({meaning})")
    return number
