"""cuobjdump, the CUDA toolkit's reader of device code: its listings of a library's SASS and PTX."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ..errors import AuditError, PreflightError
from ..runner import HINTS, require_tool, run

_LISTED = re.compile(r"^(ELF|PTX) file\s+\d+: (.+)$")
_LISTED_ARCH = re.compile(r"\.(sm_\d+[a-z]?)\.(cubin|ptx)$")


# -- cuobjdump ----------------------------------------------------------------


def parse_cuobjdump(text: str) -> list[str]:
    """Architectures, in order, from `cuobjdump --list-elf` or `--list-ptx` output.

    'ELF file    2: libmulti.2.sm_90.cubin' -> 'sm_90'; its "info" lines
    (no ELF/PTX found, no device code) add nothing.
    """
    archs = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("cuobjdump info"):
            continue
        listed = _LISTED.match(line)
        arch = _LISTED_ARCH.search(listed.group(2)) if listed else None
        if not arch:
            raise AuditError(f"cannot read cuobjdump output line {line!r}")
        archs.append(arch.group(1))
    return archs


class CuobjdumpFailed(AuditError):
    """cuobjdump could not list one library (the audit goes on with the fatbin headers for it)."""


def cuobjdump_listing(cuobjdump: str, path: Path, shown: str | None = None) -> tuple[list[str], list[str]]:
    """(cubin architectures, PTX architectures) as cuobjdump lists them; errors name `shown` (the user's file)."""
    found = []
    for flag in ("--list-elf", "--list-ptx"):
        proc = run([cuobjdump, flag, path], check=False)
        text = proc.stdout + proc.stderr
        if proc.returncode != 0 and "does not contain device code" not in text:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            said = next((line for line in lines if "fatal" in line.lower()), lines[-1] if lines else "")
            raise CuobjdumpFailed(
                f"cuobjdump {flag} {shown or path} failed (exit {proc.returncode}): "
                + said.replace(str(path), shown or str(path))
            )
        try:
            found.append(parse_cuobjdump(text))
        except AuditError as exc:
            raise CuobjdumpFailed(f"cuobjdump {flag} {shown or path}: {exc}") from None
    return found[0], found[1]


def find_cuobjdump(explicit: str | None = None) -> str | None:
    """The cuobjdump to use: `explicit` (a path, or a name looked up on PATH), else the one on PATH, else None."""
    if not explicit:
        return shutil.which("cuobjdump")
    if os.sep not in explicit:
        return require_tool(explicit, HINTS["cuobjdump"])
    if not os.path.lexists(explicit):
        raise PreflightError(
            f"--cuobjdump {explicit}: no such file; give the path of cuobjdump "
            f"({HINTS['cuobjdump']}), or --reader fatbin"
        )
    if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
        raise PreflightError(
            f"--cuobjdump {explicit}: not an executable file; give the path of cuobjdump, or --reader fatbin"
        )
    return explicit
