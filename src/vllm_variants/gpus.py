"""The NVIDIA GPUs on this machine, as nvidia-smi reports them.

One query gives everything `invoke which` and `invoke doctor` need:

    nvidia-smi --query-gpu=index,name,compute_cap,driver_version,memory.total \
               --format=csv,noheader,nounits
    0, NVIDIA H100 80GB HBM3, 9.0, 580.159.04, 81559

Parsing is strict: a line that does not read as those five fields is an
error naming the line, never a guess. nvidia-smi's failures become one line
each: missing (ToolMissing), driver not loaded (exit 9), a field this driver
does not know (exit 2: `compute_cap` arrived with driver 510), any other exit.
Real output captured on an H100 is in tests/fixtures/gpu/h100/.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import GpuError
from .runner import run

QUERY_FIELDS = ("index", "name", "compute_cap", "driver_version", "memory.total")
TIMEOUT_S = 60  # nvidia-smi can hang on a GPU that fell off the bus

_CAPABILITY = re.compile(r"^(\d{1,2})\.(\d)$")
_DRIVER = re.compile(r"^\d+(\.\d+)+$")
_BAD_FIELD = re.compile(r'Field "([^"]+)" is not a valid field to query')
_LIST_LINE = re.compile(r"^GPU (\d+): (.+?) \(UUID: ([^)]+)\)$")
_HEADER = re.compile(r"Driver Version:\s*([0-9.]+)\s+CUDA Version:\s*([0-9.]+)")
_NO_DEVICES = "No devices were found"

# nvidia-smi exit codes (nvidia-smi(1), RETURN VALUE) worth a specific fix.
_EXIT_HINTS = {
    9: "the NVIDIA kernel driver is not loaded: load it (modprobe nvidia) or reinstall the driver and reboot",
    12: "the NVML library was not found: reinstall the NVIDIA driver",
    18: "the loaded kernel driver and the NVML library differ (usually after a driver upgrade): reboot",
}


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    capability: str  # "9.0"
    driver: str  # "580.159.04"
    memory_mib: int | None = None

    @property
    def sm(self) -> str:
        """'9.0' -> '90' (the form nix/variants.toml uses)."""
        return self.capability.replace(".", "")

    @property
    def capability_tuple(self) -> tuple[int, int]:
        major, minor = self.capability.split(".")
        return int(major), int(minor)

    @property
    def driver_major(self) -> int:
        return int(self.driver.split(".")[0])

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "name": self.name,
            "capability": self.capability,
            "sm": self.sm,
            "driver": self.driver,
            "memory_mib": self.memory_mib,
        }


def query_argv(executable: str = "nvidia-smi") -> list[str]:
    return [executable, f"--query-gpu={','.join(QUERY_FIELDS)}", "--format=csv,noheader,nounits"]


def _unreadable(line_no: int, line: str, why: str) -> GpuError:
    return GpuError(
        f"cannot read nvidia-smi output line {line_no} {line.strip()!r}: {why}; "
        f"expected '{', '.join(QUERY_FIELDS)}' as in '0, NVIDIA H100 80GB HBM3, 9.0, 580.159.04, 81559'"
    )


def _memory(text: str) -> int | None:
    """'81559' or '81559 MiB'; nvidia-smi writes '[N/A]' where it has no number."""
    text = text.removesuffix(" MiB").strip()
    if text.startswith("[") and text.endswith("]"):
        return None
    return int(text)


def _gpu(values: Mapping[str, str], line_no: int, line: str) -> GPU:
    try:
        index = int(values["index"])
    except ValueError:
        raise _unreadable(line_no, line, f"index {values['index']!r} is not a number") from None
    capability = values["compute_cap"]
    if not _CAPABILITY.match(capability):
        raise _unreadable(line_no, line, f"compute capability {capability!r} is not like 9.0")
    driver = values["driver_version"]
    if not _DRIVER.match(driver):
        raise _unreadable(line_no, line, f"driver version {driver!r} is not like 580.159.04")
    if not values["name"]:
        raise _unreadable(line_no, line, "the GPU name is empty")
    try:
        memory = _memory(values["memory.total"])
    except ValueError:
        raise _unreadable(line_no, line, f"memory {values['memory.total']!r} is not a number of MiB") from None
    return GPU(index, values["name"], capability, driver, memory)


def parse_query(text: str) -> list[GPU]:
    """GPUs from `--query-gpu=<QUERY_FIELDS> --format=csv,noheader,nounits`."""
    gpus = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(QUERY_FIELDS):
            raise _unreadable(line_no, line, f"{len(fields)} comma-separated fields, not {len(QUERY_FIELDS)}")
        gpus.append(_gpu(dict(zip(QUERY_FIELDS, fields)), line_no, line))
    return gpus


def parse_query_with_header(text: str) -> list[GPU]:
    """GPUs from `--format=csv` (a header line, units such as 'MiB'); extra fields are ignored."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = [re.sub(r"\s*\[.*\]$", "", h.strip()) for h in lines[0].split(",")]
    missing = [f for f in QUERY_FIELDS if f not in header]
    if missing:
        raise _unreadable(1, lines[0], f"the header lacks {', '.join(missing)}")
    gpus = []
    for line_no, line in enumerate(lines[1:], start=2):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(header):
            raise _unreadable(line_no, line, f"{len(fields)} fields under a header of {len(header)}")
        gpus.append(_gpu(dict(zip(header, fields)), line_no, line))
    return gpus


def parse_list(text: str) -> list[tuple[int, str]]:
    """(index, name) from `nvidia-smi -L` (MIG devices, indented, are skipped)."""
    found = []
    for line in text.splitlines():
        match = _LIST_LINE.match(line)
        if match:
            found.append((int(match.group(1)), match.group(2)))
        elif line.strip() and not line[0].isspace():
            raise GpuError(f"cannot read nvidia-smi -L line {line.strip()!r}; expected 'GPU 0: <name> (UUID: ...)'")
    return found


def parse_header(text: str) -> tuple[str, str]:
    """(driver version, highest CUDA version the driver supports) from plain `nvidia-smi`."""
    match = _HEADER.search(text)
    if not match:
        raise GpuError("cannot find 'Driver Version: ... CUDA Version: ...' in the output of nvidia-smi")
    return match.group(1), match.group(2)


def _run(argv: list[str], env: Mapping[str, str] | None) -> subprocess.CompletedProcess[str]:
    """Run nvidia-smi to completion (a missing one raises ToolMissing, from run)."""
    try:
        return run(argv, check=False, env=env, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise GpuError(f"nvidia-smi did not answer within {TIMEOUT_S} s: the driver or a GPU is hung") from None


def _failure(proc: subprocess.CompletedProcess[str]) -> GpuError:
    """One line for a failed nvidia-smi: what it said, and the fix where its exit code tells it."""
    # nvidia-smi prints its errors on stdout; look at both streams.
    said = next((line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()), "")
    bad_field = _BAD_FIELD.search(said)
    if bad_field:
        return GpuError(
            f"nvidia-smi does not know the query field '{bad_field.group(1)}' (exit {proc.returncode}): "
            "this driver is too old; install a current NVIDIA driver (CUDA 12.9 needs >= 575)"
        )
    hint = _EXIT_HINTS.get(proc.returncode)
    return GpuError(
        f"nvidia-smi failed (exit {proc.returncode})" + (f": {said}" if said else "") + (f" ({hint})" if hint else "")
    )


def _checked(argv: list[str], env: Mapping[str, str] | None) -> subprocess.CompletedProcess[str]:
    proc = _run(argv, env)
    if proc.returncode != 0:
        raise _failure(proc)
    return proc


def detect(executable: str = "nvidia-smi", *, env: Mapping[str, str] | None = None) -> list[GPU]:
    """The GPUs nvidia-smi sees; [] when it finds none. Raises ToolMissing or GpuError."""
    proc = _run(query_argv(executable), env)
    # "No devices were found" (exit 6, NVML's not-found) is how nvidia-smi says there is no GPU.
    if _NO_DEVICES in proc.stdout + proc.stderr:
        return []
    if proc.returncode != 0:
        raise _failure(proc)
    if not proc.stdout.strip():
        raise GpuError(f"nvidia-smi printed nothing for {' '.join(query_argv(executable)[1:])} (exit 0)")
    return parse_query(proc.stdout)


def list_names(executable: str = "nvidia-smi", *, env: Mapping[str, str] | None = None) -> list[tuple[int, str]]:
    """(index, name) per GPU from `nvidia-smi -L`: works where the query fields do not (old drivers)."""
    return parse_list(_checked([executable, "-L"], env).stdout)


def driver_cuda(executable: str = "nvidia-smi", *, env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(driver version, highest CUDA version it supports) from plain `nvidia-smi`."""
    return parse_header(_checked([executable], env).stdout)
