"""Stand-ins for nvidia-smi and cuobjdump on machines without a GPU: replays of real output.

Each capture in tests/fixtures/gpu/h100 is `$ <command line>`, the output
(stdout and stderr together, as capture.sh recorded them), then `[exit N]`.
A replay is a small executable that answers one argv with one capture's
output, byte for byte, and its exit status; any other argv is refused
(exit 97), so a test fails when the code under test asks something else.

Where no capture exists (a second GPU, a driver that is not loaded, garbage
output) the test writes the output itself and says so where it does.
"""

from __future__ import annotations

import gzip
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

H100 = Path(__file__).resolve().parent / "fixtures" / "gpu" / "h100"
CUOBJDUMP_13_5 = H100.parent / "cuobjdump-13.5"  # listings made here by cuobjdump 13.5 (no GPU needed)
QUERY = ("--query-gpu=index,name,compute_cap,driver_version,memory.total", "--format=csv,noheader,nounits")
UNKNOWN_ARGV = 97


@dataclass(frozen=True)
class Capture:
    argv: tuple[str, ...]  # as captured, program first
    output: bytes
    exit: int


def capture(name: str, folder: Path = H100) -> Capture:
    """tests/fixtures/gpu/h100/<name>, or folder/<name> (.gz read transparently)."""
    path = folder / name
    raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    if not raw.startswith(b"$ "):  # the torch listings hold the output alone
        return Capture((), raw, 0)
    first, _, rest = raw.partition(b"\n")
    body, _, last = rest.rstrip(b"\n").rpartition(b"\n")
    assert last.startswith(b"[exit ") and last.endswith(b"]"), f"{name}: no [exit N] line"
    return Capture(tuple(shlex.split(first[2:].decode())), body + b"\n" if body else b"", int(last[6:-1]))


def fake_tool(bin_dir: Path, program: str, answers: Mapping[Sequence[str], tuple[bytes, int]]) -> Path:
    """bin_dir/<program>: prints answers[argv] (output, exit status) for the argv after the program name."""
    data = bin_dir / f"{program}.replies"
    data.mkdir(parents=True, exist_ok=True)
    cases = []
    cat = shutil.which("cat")  # by absolute path: tests may run the replay with a PATH of its own
    for number, (argv, (output, status)) in enumerate(answers.items()):
        (data / str(number)).write_bytes(output)
        pattern = shlex.quote(" ".join(argv))
        cases.append(f"  {pattern}) {cat} {shlex.quote(str(data / str(number)))}; exit {status} ;;")
    script = bin_dir / program
    script.write_text(
        "#!/bin/sh\n"
        f"# replay of captured {program} output (tests/gpu_replay.py)\n"
        'case "$*" in\n'
        + "\n".join(cases)
        + f'\n  *) echo "replayed {program}: no capture for: $*" >&2; exit {UNKNOWN_ARGV} ;;\nesac\n'
    )
    script.chmod(0o755)
    return script


def smi(bin_dir: Path, query: bytes | None = None, *, status: int = 0, header: bytes | None = None) -> Path:
    """A replayed nvidia-smi: the H100's captured answers to our query, `-L` and plain `nvidia-smi`.

    query/status replace the query's answer (a test-written variant);
    header replaces plain nvidia-smi's output.
    """
    noheader = capture("query-gpu-csv-noheader.txt")
    assert noheader.argv[1:] == QUERY, "the capture no longer matches the query gpus.py sends"
    listing = capture("nvidia-smi-L.txt")
    plain = capture("nvidia-smi.txt")
    answers = {
        QUERY: (noheader.output, noheader.exit) if query is None else (query, status),
        listing.argv[1:]: (listing.output, listing.exit),
        plain.argv[1:]: (plain.output if header is None else header, plain.exit),
    }
    return fake_tool(bin_dir, "nvidia-smi", answers)


def cuobjdump(bin_dir: Path, libs: Mapping[str, Path], folder: Path = H100) -> Path:
    """A replayed cuobjdump: the captured listings (the H100's by default), answered for the same libraries built here."""
    answers = {}
    for name, path in libs.items():
        for flag, kind in (("--list-elf", "elf"), ("--list-ptx", "ptx")):
            listed = capture(f"cuobjdump-{kind}-{name}.txt", folder)
            assert listed.argv[:2] == ("cuobjdump", flag)
            answers[(flag, str(path))] = (listed.output, listed.exit)
    return fake_tool(bin_dir, "cuobjdump", answers)
