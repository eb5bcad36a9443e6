"""nvidia-smi, read strictly: every captured form, and each way it fails.

The H100 captures (tests/fixtures/gpu/h100) are replayed byte for byte by a
fake nvidia-smi (tests/gpu_replay.py). Outputs no machine here could produce
(driver not loaded, a version mismatch, no device, garbage) are written by
the tests; the nvidia-smi messages in them are the ones it prints (seen in
public bug reports) with the exit codes of nvidia-smi(1).
"""

from __future__ import annotations

import subprocess

import gpu_replay
import pytest

from vllm_variants.errors import GpuError, ToolMissing
from vllm_variants.gpus import (
    GPU,
    detect,
    driver_cuda,
    list_names,
    parse_header,
    parse_list,
    parse_query,
    parse_query_with_header,
    query_argv,
)

H100 = GPU(0, "NVIDIA H100 80GB HBM3", "9.0", "580.159.04", 81559)


def test_query_argv_is_the_captured_command():
    assert tuple(query_argv()) == gpu_replay.capture("query-gpu-csv-noheader.txt").argv


def test_captured_noheader_query_parses():
    gpus = parse_query(gpu_replay.capture("query-gpu-csv-noheader.txt").output.decode())
    assert gpus == [H100]
    assert (gpus[0].sm, gpus[0].driver_major, gpus[0].capability_tuple) == ("90", 580, (9, 0))


def test_captured_query_with_header_and_units_parses():
    # index, name, compute_cap, driver_version, memory.total [MiB], uuid, pci.bus_id
    assert parse_query_with_header(gpu_replay.capture("query-gpu-csv.txt").output.decode()) == [H100]


def test_captured_list_parses():
    assert parse_list(gpu_replay.capture("nvidia-smi-L.txt").output.decode()) == [(0, "NVIDIA H100 80GB HBM3")]


def test_captured_plain_header_gives_driver_and_cuda():
    assert parse_header(gpu_replay.capture("nvidia-smi.txt").output.decode()) == ("580.159.04", "13.0")


def test_detect_runs_the_real_query_through_a_replay(tmp_path):
    smi = gpu_replay.smi(tmp_path)
    assert detect(str(smi)) == [H100]
    assert list_names(str(smi)) == [(0, "NVIDIA H100 80GB HBM3")]
    assert driver_cuda(str(smi)) == ("580.159.04", "13.0")


def test_several_gpus_and_na_memory():
    # The captured line's format, with a second GPU (a Jetson-style [N/A] memory) added.
    text = "0, NVIDIA H100 80GB HBM3, 9.0, 580.159.04, 81559\n1, NVIDIA L4, 8.9, 580.159.04, [N/A]\n"
    assert [(g.index, g.sm, g.memory_mib) for g in parse_query(text)] == [(0, "90", 81559), (1, "89", None)]


def test_missing_nvidia_smi_is_tool_missing(tmp_path):
    with pytest.raises(ToolMissing, match="'.*nvidia-smi' was not found on PATH: it ships with the NVIDIA driver"):
        detect(str(tmp_path / "nvidia-smi"))


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_captured_bad_field_says_the_driver_is_too_old(tmp_path):
    bad = gpu_replay.capture("query-gpu-bad-field.txt")
    smi = gpu_replay.smi(tmp_path, bad.output, status=bad.exit)  # the real answer to an unknown field
    with pytest.raises(GpuError) as exc:
        detect(str(smi))
    assert one_line(exc) == (
        "nvidia-smi does not know the query field 'not_a_field' (exit 2): this driver is too "
        "old; install a current NVIDIA driver (CUDA 12.9 needs >= 575)"
    )


DRIVER_NOT_LOADED = (
    b"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    b"Make sure that the latest NVIDIA driver is installed and running.\n\n"
)


@pytest.mark.parametrize(
    "output, status, expected",
    [
        (
            DRIVER_NOT_LOADED,
            9,
            "nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate "
            "with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and "
            "running. (the NVIDIA kernel driver is not loaded: load it (modprobe nvidia) or "
            "reinstall the driver and reboot)",
        ),
        (
            b"Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 535.161\n",
            18,
            "nvidia-smi failed (exit 18): Failed to initialize NVML: Driver/library version mismatch (the loaded "
            "kernel driver and the NVML library differ (usually after a driver upgrade): reboot)",
        ),
        (b"", 255, "nvidia-smi failed (exit 255)"),
    ],
)
def test_failing_nvidia_smi_is_one_line(tmp_path, output, status, expected):
    with pytest.raises(GpuError) as exc:
        detect(str(gpu_replay.smi(tmp_path, output, status=status)))
    assert one_line(exc) == expected


def test_no_devices_is_no_gpu(tmp_path):
    assert detect(str(gpu_replay.smi(tmp_path, b"No devices were found\n", status=6))) == []


@pytest.mark.parametrize(
    "output, complaint",
    [
        (b"<html>garbage</html>\n", "1 comma-separated fields, not 5"),
        (b"0, NVIDIA H100 80GB HBM3, 9.0, 580.159.04\n", "4 comma-separated fields, not 5"),
        (b"0, NVIDIA H100 80GB HBM3, [N/A], 580.159.04, 81559\n", "compute capability '[N/A]' is not like 9.0"),
        (b"zero, NVIDIA H100 80GB HBM3, 9.0, 580.159.04, 81559\n", "index 'zero' is not a number"),
        (b"0, NVIDIA H100 80GB HBM3, 9.0, latest, 81559\n", "driver version 'latest' is not like 580.159.04"),
        (b"0, NVIDIA H100 80GB HBM3, 9.0, 580.159.04, lots\n", "memory 'lots' is not a number of MiB"),
        (b"0, , 9.0, 580.159.04, 81559\n", "the GPU name is empty"),
    ],
)
def test_unparseable_output_names_the_line(tmp_path, output, complaint):
    with pytest.raises(GpuError) as exc:
        detect(str(gpu_replay.smi(tmp_path, output)))
    text = one_line(exc)
    assert text.startswith("cannot read nvidia-smi output line 1 ") and complaint in text


def test_other_forms_reject_what_they_cannot_read():
    with pytest.raises(GpuError, match="lacks compute_cap"):
        parse_query_with_header("index, name, driver_version, memory.total [MiB]\n0, NVIDIA H100, 580.1, 1 MiB\n")
    with pytest.raises(GpuError, match="expected 'GPU 0: <name>"):
        parse_list("garbage\n")
    with pytest.raises(GpuError, match="cannot find 'Driver Version"):
        parse_header("garbage\n")


def test_replay_refuses_an_argv_it_has_no_capture_for(tmp_path):
    proc = subprocess.run([gpu_replay.smi(tmp_path), "-q"], capture_output=True, text=True)
    assert proc.returncode == gpu_replay.UNKNOWN_ARGV and "no capture for: -q" in proc.stderr


def test_empty_answer_is_an_error_not_zero_gpus(tmp_path):
    with pytest.raises(GpuError, match="^nvidia-smi printed nothing for --query-gpu="):
        detect(str(gpu_replay.smi(tmp_path, b"")))
