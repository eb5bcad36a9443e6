"""`invoke readme`: regenerate (or, with --check, compare) the generated sections of
README.md and docs/*.md (vllm_variants.sections, which `invoke bump-pin` runs too)."""

from __future__ import annotations

import sys
from typing import TextIO

from .project import Project
from .sections import DOCS, update


def show(project: Project, *, check: bool = False, out: TextIO | None = None) -> list[str]:
    """`invoke readme`: update (or check) the generated sections and say which files changed."""
    changed = update(project, check=check)
    text = f"updated {', '.join(changed)}" if changed else f"README.md and {DOCS}/*.md are up to date"
    print(text, file=out or sys.stdout)
    return changed
