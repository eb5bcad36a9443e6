"""`invoke audit`: which GPU architectures a build, wheel or library carries.

For every CUDA-carrying library in the target (a result link, a store path,
a directory, an ELF library or a wheel) it lists the SASS architectures and
PTX versions the library holds and their sizes. With a variant (or SMs) it
says, per SM, three figures (issue #12): SASS built for exactly that SM, SASS
that GPU runs (vllm_variants.compat: sm_80 runs on 8.6, sm_90a only on 9.0,
sm_100f on 10.0 and 10.3), and PTX it can JIT-compile; and it flags the code
no own SM ever uses: the check behind "a variant carries only its SM", and
what a fat wheel spends on GPUs the user does not own.

Readers: cuobjdump (`--list-elf`/`--list-ptx`) where one is found, else this
package's own fatbin reader (vllm_variants.fatbin). Sizes and exact targets
always come from the fatbin headers (cuobjdump spells sm_100f as sm_100).
Where cuobjdump fails on a library, that library is read from the headers and
the report says so; where the two disagree, the report keeps what either
lists and `--check` fails: a disagreement never reads as "nothing there".

Wheels are read in place: a stored member straight from the wheel file, a
compressed one streamed (once whole, which checks its CRC, then up to the end
of its .nv_fatbin), so no temporary copy and no extra disk. Only the
cuobjdump reader needs a member on disk: it extracts each ELF member to a
temporary file in turn (disk: the largest member, 308 MB for vllm 0.33.0).

Library API (`show`, behind `invoke audit`, calls it): audit(target, variant=..., reader=...) -> AuditReport.

The package, along its seams: `reader` (the target's libraries, read from the
fatbin headers and `cuobjdump`'s listings), `report` (how the own SMs use each
entry, the figures per SM), `sms` (choosing the own SMs), `render` (the
screen) and `cli` (`invoke audit`, `python -m vllm_variants.audit`).
"""

from __future__ import annotations

from .cli import main, show
from .cuobjdump import CuobjdumpFailed, cuobjdump_listing, find_cuobjdump, parse_cuobjdump
from .reader import READERS, audit, reconcile, require_cuda
from .render import human, render, requested_line, sm_line, unused_text
from .report import AuditReport, Library, SmFigures, is_torch_library, summarise, usage
from .sms import own_sms_for, variant_in_path

__all__ = [
    "READERS",
    "AuditReport",
    "CuobjdumpFailed",
    "Library",
    "SmFigures",
    "audit",
    "cuobjdump_listing",
    "find_cuobjdump",
    "human",
    "is_torch_library",
    "main",
    "own_sms_for",
    "parse_cuobjdump",
    "reconcile",
    "render",
    "require_cuda",
    "requested_line",
    "show",
    "sm_line",
    "summarise",
    "unused_text",
    "usage",
    "variant_in_path",
]
