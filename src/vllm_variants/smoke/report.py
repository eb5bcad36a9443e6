"""What a smoke session shows and leaves behind: a rich table per result,
smoke-report.json, and a JUnit XML file with one testcase per check per result
(the shape CI systems read: testsuites > testsuite per result > testcase).
All three are rendered from the same SmokeReport.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..outputs import write_text
from .check import FAIL, PASS, SKIP

STYLES = {PASS: "green", FAIL: "bold red", SKIP: "yellow"}
NO_GPU_HINT = "; on a build host, --allow-no-gpu skips the GPU checks"


# -- the records (the session fills them: vllm_variants.smoke.session) ------

# Importing a real vllm takes seconds to a minute; --generate starts an engine.
DEFAULT_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Options:
    generate: bool = False
    allow_no_gpu: bool = False
    timeout: float = DEFAULT_TIMEOUT_S

    def check_args(self) -> list[str]:
        return [*(["--generate"] if self.generate else []), *(["--allow-no-gpu"] if self.allow_no_gpu else [])]


@dataclass
class ResultReport:
    """One result: its seven checks as check.py reported them (or why not)."""

    name: str
    result: Path
    store_path: str
    variant: dict[str, Any] | None
    checks: list[dict[str, Any]]
    exit_code: int | None
    seconds: float
    error: str | None = None
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return all(c["status"] != FAIL for c in self.checks)

    def count(self, status: str) -> int:
        return sum(1 for c in self.checks if c["status"] == status)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "result": str(self.result),
            "store_path": self.store_path,
            "variant": self.variant,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "stderr_tail": self.stderr_tail,
            "checks": self.checks,
        }


@dataclass
class SmokeReport:
    results: list[ResultReport]
    options: Options
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def count(self, status: str) -> int:
        return sum(r.count(status) for r in self.results)

    @property
    def total(self) -> int:
        return sum(len(r.checks) for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "ok": self.ok,
            "generate": self.options.generate,
            "allow_no_gpu": self.options.allow_no_gpu,
            "seconds": round(self.seconds, 3),
            "summary": {
                "results": len(self.results),
                "checks": self.total,
                PASS: self.count(PASS),
                FAIL: self.count(FAIL),
                SKIP: self.count(SKIP),
            },
            "results": [r.to_json() for r in self.results],
        }

    def failure_line(self) -> str:
        """One line for SmokeFailed: which checks failed where."""
        parts = []
        for r in self.results:
            bad = [
                f"{c['id']} {c['name']}" + (" (no GPU)" if c.get("no_gpu") else "")
                for c in r.checks
                if c["status"] == FAIL
            ]
            if bad:
                parts.append(f"{r.name}: {', '.join(bad)}")
        where = f"; details in {self.files[0]}" if self.files else ""
        no_gpu = any(c.get("no_gpu") and c["status"] == FAIL for r in self.results for c in r.checks)
        hint = " (no GPU here: pass --allow-no-gpu on a build host)" if no_gpu else ""
        return f"smoke failed, {self.count(FAIL)} of {self.total} checks: {'; '.join(parts)}{hint}{where}"


# -- rendering -----------------------------------------------------------------


def status_text(check: dict[str, Any]) -> str:
    """What the table's Status column says: pass, FAIL, skip, or "no GPU" (failed or skipped)."""
    if check.get("no_gpu"):
        return "no GPU"
    return "FAIL" if check["status"] == FAIL else check["status"]


def write_json(report: SmokeReport, path: Path) -> None:
    write_text(path, json.dumps(report.to_json(), indent=2, default=str) + "\n")


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """Text XML 1.0 can carry: colour codes dropped, other control characters as U+FFFD.

    What torch or vllm printed ends up in the report; ElementTree writes any
    character as is, and one ESC would make the whole file unparseable.
    """
    return _NOT_XML.sub("\ufffd", _ANSI.sub("", text))


def testcase_name(check: dict[str, Any]) -> str:
    return f"{check['id']} {check['name']}"


def _suite(result: ResultReport) -> ET.Element:
    name = xml_text(result.name)
    suite = ET.Element(
        "testsuite",
        {
            "name": name,
            "tests": str(len(result.checks)),
            "failures": str(result.count(FAIL)),
            "errors": "0",
            "skipped": str(result.count(SKIP)),
            "time": f"{result.seconds:.3f}",
        },
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in (
        ("result", str(result.result)),
        ("store_path", result.store_path),
        ("exit_code", str(result.exit_code)),
    ):
        ET.SubElement(properties, "property", {"name": key, "value": xml_text(value)})
    for check in result.checks:
        case = ET.SubElement(
            suite,
            "testcase",
            {
                "classname": f"smoke.{name}",
                "name": testcase_name(check),
                "time": f"{float(check.get('seconds') or 0):.3f}",
            },
        )
        reason = xml_text(str(check.get("reason", "")))
        if check["status"] == FAIL:
            kind = "no GPU" if check.get("no_gpu") else "fail"
            ET.SubElement(case, "failure", {"type": kind, "message": reason}).text = reason
        elif check["status"] == SKIP:
            ET.SubElement(case, "skipped", {"message": reason})
        else:
            ET.SubElement(case, "system-out").text = reason
    if result.stderr_tail:
        ET.SubElement(suite, "system-err").text = xml_text(result.stderr_tail)
    return suite


def junit_tree(report: SmokeReport) -> ET.ElementTree:
    root = ET.Element(
        "testsuites",
        {
            "name": "vllm-variants smoke",
            "tests": str(report.total),
            "failures": str(report.count(FAIL)),
            "errors": "0",
            "skipped": str(report.count(SKIP)),
            "time": f"{report.seconds:.3f}",
        },
    )
    root.extend(_suite(result) for result in report.results)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def write_junit(report: SmokeReport, path: Path) -> None:
    data = io.BytesIO()
    junit_tree(report).write(data, encoding="utf-8", xml_declaration=True)
    write_text(path, data.getvalue().decode("utf-8") + "\n")


def print_tables(report: SmokeReport, out: TextIO) -> None:
    from rich.table import Table
    from rich.text import Text

    from ..console import console_for

    console = console_for(out)  # a pipe or a CI log: one check per line where it fits
    # The way out on a build host goes where the first "no GPU" failure is, once
    # (issue #22); the last line (SmokeFailed) says it again.
    first_no_gpu = next(
        (id(c) for r in report.results for c in r.checks if c.get("no_gpu") and c["status"] == FAIL), None
    )
    for result in report.results:
        verdict = ("ok", "green") if result.ok else ("FAILED", "bold red")
        table = Table(  # Text, not markup: names and paths may hold '[' (two results of one variant)
            title=Text.assemble(result.name, ": ", verdict),
            title_justify="left",
            caption=Text(f"{result.result} -> {result.store_path} ({result.seconds:.1f} s)"),
            caption_justify="left",
        )
        table.add_column("#", justify="right")
        table.add_column("Check", no_wrap=True)
        table.add_column("Status", no_wrap=True)
        table.add_column("Detail")
        for check in result.checks:
            status = Text(status_text(check), style=STYLES[check["status"]])
            detail = str(check.get("reason", "")) + (NO_GPU_HINT if id(check) == first_no_gpu else "")
            table.add_row(str(check["id"]), check["name"], status, Text(detail))
        console.print(table)
        if result.error:
            console.print(Text(f"{result.name}: {result.error}", style="bold red"))
    passed, failed, skipped = report.count(PASS), report.count(FAIL), report.count(SKIP)
    console.print(
        Text(
            f"smoke: {len(report.results)} result(s), {report.total} checks: {passed} passed, "
            f"{failed} failed, {skipped} skipped ({report.seconds:.1f} s); "
            f"reports: {', '.join(str(f) for f in report.files)}"
        )
    )
