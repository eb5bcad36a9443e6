"""Reading Nix's structured log and dry-run plan (formats from the Nix sources:
src/libutil/logging.hh, src/libmain/progress-bar.cc, printMissing in
src/libmain/shared.cc). tests/test_build.py reads the real thing from Nix 2.26."""

from __future__ import annotations

import json
import os

import pytest

from vllm_variants.nixlog import NixLog, package_name, parse_dry_run, read_lines, store_name, version_of

TORCH = "/nix/store/06z03bh4hk8iig6nb57yy6xff985p8fn-python3.12-torch-2.9.1.drv"
VLLM = "/nix/store/7b3kxh171qylhzkdw704kp6dm183s5nq-python3.12-vllm-python312-cuda12_9-sm90-0.15.1.drv"
ENV = "/nix/store/9vwyacnlgphdzjbb3rhr1b3cp39y4kf2-python3-3.12.12-env.drv"
CUPY = "/nix/store/xnldwpx3pap8i7xkc6pj6zrmscd3lz35-python3.12-cupy-13.6.0.drv"


def at(**event) -> str:
    return "@nix " + json.dumps(event)


def start_build(ident: int, drv: str, machine: str = "") -> str:
    return at(
        action="start", id=ident, level=3, parent=0, text=f"building '{drv}'", type=105, fields=[drv, machine, 1, 1]
    )


def progress(done: int, expected: int, running: int = 0, failed: int = 0) -> str:
    return at(action="result", id=2, type=105, fields=[done, expected, running, failed])


BUILDS = at(action="start", id=2, level=0, parent=0, text="", type=104)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_build_goes_through_phases_and_log_lines():
    clock = Clock()
    log = NixLog(clock=clock)
    events = log.feed_all(
        [
            BUILDS,
            progress(0, 2),
            start_build(7, TORCH, "ssh-ng://big"),
            progress(0, 2, 1),
            at(action="result", id=7, type=104, fields=["buildPhase"]),
            at(action="result", id=7, type=101, fields=["\x1b[1m[1/3] nvcc kernel.cu\x1b[0m"]),
        ]
    )
    assert [e.kind for e in events] == ["progress", "build-start", "progress", "phase", "log"]
    (build,) = log.active()
    assert (build.name, build.machine, build.phase) == ("python3.12-torch-2.9.1", "ssh-ng://big", "buildPhase")
    assert list(build.tail) == ["[1/3] nvcc kernel.cu"]  # colours stripped
    clock.now = 160.0
    log.feed_all([progress(1, 2), at(action="stop", id=7)])
    assert build.result == "built" and build.elapsed(0) == 60.0
    assert (log.done, log.expected) == (1, 2) and log.active() == [] and log.finished() == [build]


@pytest.mark.parametrize(
    "message",
    [
        # Nix 2.18 .. 2.2x
        f"\x1b[31;1merror:\x1b[0m builder for '\x1b[35;1m{TORCH}\x1b[0m' failed with exit code 1",
        # Nix master (derivation-building-goal.cc)
        f"error: Cannot build '{TORCH}'.\nReason: builder failed with exit code 2.",
    ],
)
def test_the_failed_derivation_is_the_started_one_an_error_names(message):
    log = NixLog()
    log.feed_all(
        [
            BUILDS,
            start_build(7, TORCH),
            start_build(8, CUPY),
            at(action="msg", level=0, msg=message),
            at(action="stop", id=7),
            # Nix gives up (no --keep-going): cupy is stopped without being counted done
            at(action="stop", id=8),
            at(action="msg", level=0, msg=f"error: 1 dependencies of derivation '{ENV}' failed to build"),
        ]
    )
    assert [b.drv for b in log.failed_builds()] == [TORCH]  # not ENV: never started
    assert log.by_drv[CUPY].result == "stopped"
    assert log.errors[0].startswith("error: ")


def test_lines_that_are_not_structured_are_kept_as_text():
    log = NixLog()
    events = log.feed_all(["warning: something plain\n", "@nix {not json", "", at(action="msg", level=3, msg="hi")])
    assert [(e.kind, e.text) for e in events] == [
        ("text", "warning: something plain"),
        ("text", "@nix {not json"),
        ("message", "hi"),
    ]


def test_dry_run_plan_with_counts_and_sizes():
    stderr = f"""warning: not writing modified lock file of flake 'git+file:///p':
these 3 derivations will be built:
  {TORCH}
  {VLLM}
  {ENV}
these 2 paths will be fetched (1234.56 MiB download, 4567.00 MiB unpacked):
  /nix/store/667jjxgivb5ya8d9yxpr7vb1agamv3zi-stdenv-linux
  /nix/store/aaaajxgivb5ya8d9yxpr7vb1agamv3zi-cuda12.9-cudnn-9.10.2.21
"""
    plan = parse_dry_run(stderr)
    assert plan.will_build == (TORCH, VLLM, ENV)
    assert len(plan.will_fetch) == 2
    assert (plan.download_bytes, plan.unpacked_bytes) == (round(1234.56 * 1024**2), 4567 * 1024**2)
    assert plan.unknown == ()


def test_dry_run_plan_singular_and_old_forms():
    single = parse_dry_run(
        f"this derivation will be built:\n  {ENV}\n"
        "this path will be fetched (0.00 MiB download, 0.01 MiB unpacked):\n"
        "  /nix/store/667jjxgivb5ya8d9yxpr7vb1agamv3zi-stdenv-linux\n"
    )
    assert single.will_build == (ENV,) and single.unpacked_bytes == round(0.01 * 1024**2)
    old = parse_dry_run(f"these derivations will be built:\n  {ENV}\n")  # before the count was printed
    assert old.will_build == (ENV,)
    assert parse_dry_run("").will_build == ()


STDENV = "/nix/store/667jjxgivb5ya8d9yxpr7vb1agamv3zi-stdenv-linux"


@pytest.mark.parametrize(
    ("head", "download", "unpacked"),
    [
        # Nix 2.18 .. 2.32: always MiB, two decimals ("%.2f MiB", printMissing)
        (
            "these 75 paths will be fetched (116.25 MiB download, 554.76 MiB unpacked):",
            round(116.25 * 1024**2),
            round(554.76 * 1024**2),
        ),
        ("this path will be fetched (0.00 MiB download, 0.01 MiB unpacked):", 0, round(0.01 * 1024**2)),
        # Nix before the count was printed
        (
            "these paths will be fetched (0.16 MiB download, 0.53 MiB unpacked):",
            round(0.16 * 1024**2),
            round(0.53 * 1024**2),
        ),
        # Nix 2.33+: renderSize(), "%.1f %ciB" in the unit that fits, never below KiB
        ("this path will be fetched (0.1 KiB download, 0.5 KiB unpacked):", round(0.1 * 1024), 512),
        (
            "these 75 paths will be fetched (116.3 MiB download, 554.8 MiB unpacked):",
            round(116.3 * 1024**2),
            round(554.8 * 1024**2),
        ),
        (
            "these 412 paths will be fetched (1.9 GiB download, 7.4 GiB unpacked):",
            round(1.9 * 1024**3),
            round(7.4 * 1024**3),
        ),
        ("these 3 paths will be fetched (980.0 MiB download, 1.2 TiB unpacked):", 980 * 1024**2, round(1.2 * 1024**4)),
        # units Nix has not printed here, read the same way if it ever does
        ("these 2 paths will be fetched (512 B download, 3.5 MB unpacked):", 512, round(3.5 * 1024**2)),
    ],
)
def test_fetch_sizes_in_every_unit_nix_prints_are_bytes(head, download, unpacked):
    plan = parse_dry_run(f"{head}\n  {STDENV}\n")
    assert plan.will_fetch == (STDENV,)
    assert (plan.download_bytes, plan.unpacked_bytes) == (download, unpacked)


def test_unreadable_fetch_sizes_keep_the_paths():
    plan = parse_dry_run(f"these 2 paths will be fetched (a lot download, more unpacked):\n  {STDENV}\n")
    assert plan.will_fetch == (STDENV,) and plan.download_bytes is None


def test_names_follow_nix_drvname():
    assert store_name(TORCH) == "python3.12-torch-2.9.1"
    assert package_name(TORCH) == "torch" and version_of(TORCH) == "2.9.1"
    assert package_name(VLLM) == "vllm-python312-cuda12_9-sm90" and version_of(VLLM) == "0.15.1"
    assert package_name("/nix/store/pdz918pnsfqybqr9q3lzflijs3y6m60l-nccl-2.27.3.drv") == "nccl"
    assert (
        package_name("/nix/store/yni1xywfhvjsxq0h0zd8d4kc3wj98ibf-cuda12.9-cuda_nvcc-12.9.86.drv")
        == "cuda12.9-cuda_nvcc"
    )


def test_a_silent_pipe_yields_none_then_its_lines_as_they_come():
    """The reader tells its caller when nothing arrived (to print a status line
    on time), returns whole lines, and ends when the writer closes."""
    r, w = os.pipe()
    try:
        lines = read_lines(r, poll_s=0.01)
        assert next(lines) is None  # nothing written: the caller gets control back
        os.write(w, b"@nix {}\nhalf a li")
        assert next(lines) == "@nix {}\n"
        assert next(lines) is None  # a partial line is held until its newline
        os.write(w, "ne \u2713\n".encode() + b"\xff\xfe")
        assert next(lines) == "half a line \u2713\n"
        os.close(w)
        w = -1
        assert list(lines) == ["\ufffd\ufffd"]  # the unterminated rest at end of file, bytes replaced
    finally:
        os.close(r)
        if w != -1:
            os.close(w)
