"""The report on a terminal: the libraries, the architectures, the figures per own SM."""

from __future__ import annotations

from typing import Any, TextIO

from ..resources import format_bytes
from .report import SHADOWED, UNUSED, AuditReport, _add, _arch_key, _used, is_torch_library, summarise

# -- output --------------------------------------------------------------------


def human(n: int | None) -> str:
    return format_bytes(n, unknown="?")


def _cell(archs: dict[str, dict[str, Any]], kind: str) -> str:
    parts = []
    for arch, row in archs.items():
        if row[kind]:
            count = f" x{row[kind]}" if row[kind] > 1 else ""
            text = f"{arch}{count}"
            parts.append(f"[bold red]{text}[/]" if row["foreign"] else text)
    return ", ".join(parts) or "-"


def _share(part: int, total: int) -> str:
    return f"{100 * part / total:.1f} %" if total else "-"


def sm_line(report: AuditReport, sm: str) -> str:
    """'SM 86: runs 290.9 MiB of 510.9 MiB of CUDA code (56.9 %); built for exactly SM 86: 3.1 MiB; JIT-able PTX: ...'."""
    f = report.figures(sm)
    return (
        f"SM {sm}: runs {human(f.runs)} of {human(f.total)} of {_code(report)} ({_share(f.runs, f.total)}); "
        f"built for exactly SM {sm}: {human(f.exact)}; JIT-able PTX: {human(f.jit_ptx)}"
    )


def requested_line(report: AuditReport) -> str | None:
    """One line per own SM (sm_line), then what none of them uses; None without own SMs."""
    if not report.own_sms:
        return None
    lines = [sm_line(report, sm) for sm in report.own_sms]
    total, used = report.total_bytes, report.own_bytes or 0
    if report.foreign:
        lines.append(
            f"not used by SM {', '.join(report.own_sms)}: {human(total - used)} ({_share(total - used, total)}"
            f"; {', '.join(report.foreign)})"
        )
    return "\n".join(lines)


def _code(report: AuditReport) -> str:
    """'CUDA code', or which part of it the byte counts cover when some sizes are unknown."""
    if report.sizes_complete:
        return "CUDA code"
    unknown = sum(1 for lib in report.libraries if any(e.stored_bytes is None for e in lib.entries))
    return f"the CUDA code of known size (unknown in {unknown} of {len(report.libraries)} libraries)"


def unused_text(report: AuditReport) -> str:
    """'sm_80 SASS (1.2 KiB), sm_90 PTX (3.4 KiB, beside SASS that runs)': what --check fails on."""
    groups: dict[tuple[str, str, str], int | None] = {}
    for entry, use in _used(report.checked_libraries(), report.own_sms):
        if use in UNUSED:
            key = (entry.arch, entry.kind, use)
            groups[key] = _add(groups.get(key, 0), entry.stored_bytes)
    parts = []
    for (arch, kind, use), size in sorted(groups.items(), key=lambda item: _arch_key(item[0][0])):
        why = ", beside SASS that runs" if use == SHADOWED else ""
        parts.append(f"{arch} {kind.upper() if kind != 'other' else 'other code'} ({human(size)}{why})")
    return ", ".join(parts)


def render(report: AuditReport, out: TextIO) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..console import console_for

    console = console_for(out, highlight=False)
    where = report.target if report.target == report.resolved else f"{report.target} -> {report.resolved}"
    title = f"CUDA code in {where}"
    if report.variant:
        title += f" (variant {report.variant}: SM {', '.join(report.own_sms)})"
    elif report.own_sms:
        title += f" (SM {', '.join(report.own_sms)})"
    console.print(f"[bold]{escape(title)}[/]", soft_wrap=True)
    table = Table()
    table.add_column("Library", overflow="fold")
    table.add_column("SASS (cubins)")
    table.add_column("PTX")
    table.add_column("CUDA bytes", justify="right")
    for library in report.libraries:
        archs = summarise(library.entries, report.own_sms)
        sizes = [e.stored_bytes for e in library.entries]
        size = (
            None if None in sizes else sum(s for s in sizes if s is not None)
        )  # unknown where cuobjdump and the headers disagreed
        name = escape(library.path) + (f"\n[dim]{escape(library.note)}[/]" if library.note else "")
        if report.torch_exempt and is_torch_library(library.path):
            name += "\n[dim]torch-bin, the upstream wheel: every SM; the one library --check exempts[/]"
        if library.disagreement:
            name += f"\n[bold red]readers disagree: {escape(library.disagreement)}[/]"
        table.add_row(name, _cell(archs, "sass"), _cell(archs, "ptx"), human(size))
    console.print(table)
    summary = Table()
    for column in ("Architecture", "SASS", "PTX", "Bytes", ""):
        summary.add_column(column, justify="right" if column in ("SASS", "PTX", "Bytes") else "left")
    gpu = "this variant's GPU" if report.variant else f"SM {', '.join(report.own_sms)}"
    for arch, row in report.archs().items():
        whole = row["unused_bytes"] == row["bytes"]
        mark = f"[bold red]{'never' if whole else 'partly'} used by {gpu}[/]" if row["foreign"] else ""
        summary.add_row(arch, str(row["sass"]), str(row["ptx"]), human(row["bytes"]), mark)
    console.print(summary)
    line = requested_line(report)
    console.print(
        escape(line or f"{human(report.total_bytes)} of {_code(report)} in {len(report.libraries)} libraries")
    )
    if report.disagreements:
        console.print(
            f"[bold red]cuobjdump and the fatbin headers disagree on {len(report.disagreements)} "
            f"of {len(report.libraries)} libraries[/] (both listings kept; --check fails)"
        )
    reader = f"reader: {report.reader}" + (f" ({report.reader_note})" if report.reader_note else "")
    console.print(f"[dim]{escape(reader)}; {report.examined} ELF file(s) examined[/]")
    for path, reason in report.skipped:
        console.print(f"[yellow]skipped[/] {escape(path)}: {escape(reason)}")
