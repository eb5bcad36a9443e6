"""`invoke audit`: which GPU architectures a build, wheel or library carries.

The command (`invoke audit`, and `python -m vllm_variants.audit` where Invoke
is not installed): the report printed, or --check's verdict.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TextIO

from ..errors import AuditError, SelectionError
from ..matrix import Matrix
from .reader import READERS, audit, require_cuda
from .render import render, unused_text
from .report import AuditReport
from .sms import own_sms_for


def _refuse_empty(target: str, *, sm: str | None, variant: str | None) -> None:
    """An empty PATH, --sm or --variant (an unset variable) is refused, not read as
    the working directory or as no SM given (issue #11: the CLI's edge only)."""
    if not str(target).strip():
        raise AuditError(f"PATH '{target}' is empty; give a result link, store path, directory, .so or .whl")
    for flag, value, what in (("--sm", sm, "an SM such as 90"), ("--variant", variant, "a variant name")):
        if value is not None and not value.strip():
            raise SelectionError(f"{flag} '{value}' is empty; give {what}, or leave {flag} out")


def show(
    target: str,
    *,
    matrix: Matrix | None = None,
    sm: str | None = None,
    variant: str | None = None,
    as_json: bool = False,
    reader: str = "auto",
    cuobjdump: str | None = None,
    check: bool = False,
    out: TextIO | None = None,
) -> AuditReport:
    """`invoke audit`: print the report; NoCudaCode without device code; with check, fail on foreign code."""
    out = out or sys.stdout
    _refuse_empty(target, sm=sm, variant=variant)
    sms, chosen = own_sms_for(matrix, target, sm=sm, variant=variant)
    report = require_cuda(audit(target, variant=chosen, own_sms=sms, reader=reader, cuobjdump=cuobjdump))
    if as_json:
        json.dump(report.to_json(), out, indent=2)
        out.write("\n")
    else:
        render(report, out)
    if check:
        if not report.own_sms:
            raise SelectionError("--check needs the variant's SM: give --variant or --sm")
        if report.disagreements:
            first = report.disagreements[0]
            raise AuditError(
                f"{target}: cuobjdump and the fatbin headers disagree on {len(report.disagreements)} "
                f"libraries (first: {first.path}: {first.disagreement}); nothing is checked on a "
                "disagreement, see --reader fatbin/cuobjdump"
            )
        if report.foreign:
            raise AuditError(f"{target} carries code SM {', '.join(report.own_sms)} never uses: {unused_text(report)}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m vllm_variants.audit TARGET [--sm SM] [--json] ...` where Invoke is not installed."""
    import argparse

    from ..boundary import main as run_main
    from ..errors import PreflightError
    from ..project import Project

    parser = argparse.ArgumentParser(prog="python -m vllm_variants.audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="result link, store path, directory, .so or .whl")
    parser.add_argument("--sm", help="the SM(s) you own, e.g. 90 or 80,90, or 'auto' for this machine's GPUs")
    parser.add_argument("--variant", help="a variant name (or SM) from nix/variants.toml")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--reader", choices=READERS, default="auto", help="how to read the device code")
    parser.add_argument("--cuobjdump", help="the cuobjdump to use (default: the one on PATH)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when some code is never used by the SM(s), or the two readers disagree",
    )
    args = parser.parse_args(argv)

    def go() -> None:
        try:
            matrix: Matrix | None = Project.find().matrix
        except PreflightError:
            matrix = None  # outside a checkout: --sm still works
        show(
            args.target,
            matrix=matrix,
            sm=args.sm,
            variant=args.variant,
            as_json=args.json,
            reader=args.reader,
            cuobjdump=args.cuobjdump,
            check=args.check,
        )

    return run_main(go)
