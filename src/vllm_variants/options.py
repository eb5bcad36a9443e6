"""The task options, checked where they enter (every task): one line per mistake.

Invoke hands every option over as text (or as a Python int it parsed itself,
with a traceback on failure), so the tasks pass numbers through as given and
these functions say, in one line, what is valid. The selection flags are
parsed into one record of their own (vllm_variants.selection).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

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


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def refuse_control_characters(values: Mapping[str, object]) -> None:
    """No option value holds a newline or another control character (issue #21):
    none is valid in an SM, a path, a store URI or a flake reference, and one
    from a broken script must be named, escaped, in one line, not passed on to
    Nix or git. `values`: {flag as typed: its value, or a list of values}."""
    for flag, value in values.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and _CONTROL.search(item):
                shown = item.encode("unicode_escape").decode("ascii")
                raise UsageError(
                    f"{flag} '{shown}' holds a control character (a newline?); give the value on its own, "
                    "e.g. without a trailing newline from a file or a command substitution"
                )


def comma_list(value: object) -> list[str]:
    """'80, 89,,90' -> ['80', '89', '90']: the words of one comma-separated option value."""
    return [t.strip() for t in str(value).split(",") if t.strip()]
