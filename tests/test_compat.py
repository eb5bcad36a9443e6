"""vllm_variants.compat: which GPU runs which code, NVIDIA's rules as the audit, `invoke which` and smoke apply them."""

from __future__ import annotations

import pytest

from vllm_variants.compat import base_capability, parse, ptx_jits_on, runs_on, sass_runs_on, sm_of


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("sm_90a", (9, 0, "a")),
        ("sm_100f", (10, 0, "f")),
        ("compute_80", (8, 0, "")),
        ("8.6", (8, 6, "")),
        ("12.1", (12, 1, "")),
        ("121", (12, 1, "")),
        ("sm90", (9, 0, "")),
        ("10.0a", (10, 0, "a")),
    ],
)
def test_spellings(text, parsed):
    assert parse(text) == parsed


@pytest.mark.parametrize("text", ["", "sm_", "x86", "9", "sm_1000", "9.10", "90b"])
def test_what_is_not_an_sm(text):
    with pytest.raises(ValueError, match="is not an SM or compute capability"):
        parse(text)


# (target, gpu): SASS runs there? PTX JIT-compiles there?
CASES = [
    ("sm_80", "8.0", True, True),
    ("sm_80", "8.6", True, True),
    ("sm_80", "8.9", True, True),
    ("sm_86", "8.0", False, False),
    ("sm_80", "9.0", False, True),
    ("sm_90", "10.0", False, True),
    ("sm_90a", "9.0", True, True),
    ("sm_100a", "10.3", False, False),
    ("sm_103a", "10.3", True, True),
    ("sm_100f", "10.0", True, True),
    ("sm_100f", "10.3", True, True),
    ("sm_100f", "12.0", False, False),
    ("sm_103f", "10.0", False, False),
    ("sm_120f", "12.1", True, True),
    ("sm_121f", "12.0", False, False),
    ("sm_120", "12.1", True, True),
    ("sm_120", "10.0", False, False),
    ("sm_75", "12.1", False, True),
]


@pytest.mark.parametrize(("target", "gpu", "sass", "ptx"), CASES)
def test_nvidia_rules(target, gpu, sass, ptx):
    assert sass_runs_on(target, gpu) is sass
    assert ptx_jits_on(target, gpu) is ptx
    assert runs_on("sass", target, gpu) is sass and runs_on("ptx", target, gpu) is ptx
    assert runs_on("other", target, gpu) is False


@pytest.mark.parametrize(
    ("capability", "base", "sm"),
    [("9.0a", "9.0", "90"), ("12.1", "12.1", "121"), ("10.0f", "10.0", "100"), ("8.6", "8.6", "86")],
)
def test_the_gpu_a_capability_names(capability, base, sm):
    assert base_capability(capability) == base and sm_of(capability) == sm
