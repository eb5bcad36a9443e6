"""The selection (--sm with auto, --arm64, --system, --all, --python, --cuda): one
record, parsed once at the task boundary (vllm_variants.selection.Selection), that
every command asks for its variants."""

from __future__ import annotations

import re

import pytest
import support

from vllm_variants.errors import SelectionError
from vllm_variants.matrix import Matrix
from vllm_variants.selection import Selection


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    return Matrix.load(support.REPO / "nix" / "variants.toml")


def select(matrix: Matrix, sm=(), *, none_means_all: bool = False, **flags):
    """What a task does: parse the flags (SelectionError for a bad combination), then ask the matrix."""
    return Selection.parse(sm=sm, **flags).variants(matrix, none_means_all=none_means_all)


def test_select_combines_lists_systems_and_all(matrix):
    names = lambda vs: [re.sub(r"^vllm-python312-cuda12_[89]-", "", v.name) for v in vs]  # noqa: E731
    assert names(select(matrix, ["80,89", "90", "89"])) == ["sm80", "sm89", "sm90"]
    arm = ["sm90-arm64", "sm100-arm64", "sm103-arm64", "sm121-arm64"]
    assert names(select(matrix, system=["aarch64-linux"])) == arm
    assert len(select(matrix, all=True)) == 15
    # --sm 90 is the SM's own torch; the torch-bin row goes by name
    assert names(select(matrix, ["9.0"])) == ["sm90"]
    assert names(select(matrix, ["vllm-python312-cuda12_8-sm90-torchbin"])) == ["sm90-torchbin"]
    with pytest.raises(SelectionError, match="no variant selected"):
        select(matrix)
    # commands that only look (CI matrix, publish --check): asking for nothing means every enabled variant
    assert select(matrix, none_means_all=True) == list(matrix.default_set)
    # an empty --sm is a mistake (an unset CI variable), never widened to every variant (issue #11)
    for given in ([""], [","], ["90", " "]):
        with pytest.raises(SelectionError, match=r"^--sm '.*' names no SM; give one like --sm 90"):
            select(matrix, given, none_means_all=True)
    assert names(select(matrix, ["90"], none_means_all=True)) == ["sm90"]
    assert names(select(matrix, system=["aarch64-linux"], none_means_all=True)) == arm
    # the --python / --cuda lines (issue #15): an axis not given keeps the default line's value
    full = lambda vs: [v.name for v in vs]  # noqa: E731
    assert full(select(matrix, ["90"], python="313")) == ["vllm-python313-cuda12_9-sm90"]
    assert full(select(matrix, ["90"], python="3.13", cuda="12.8")) == ["vllm-python313-cuda12_8-sm90"]
    assert len(select(matrix, all=True, cuda="12.8")) == len(
        [v for v in matrix.enabled if v.cuda == "12.8" and v.python == "python312"]
    )
    with pytest.raises(SelectionError, match="unknown Python line 'python311'; valid: 312, 313"):
        select(matrix, ["90"], python="311")
    with pytest.raises(SelectionError, match="unknown CUDA line '13.0'; valid: 12.8, 12.9"):
        select(matrix, ["90"], cuda="13.0")
    with pytest.raises(SelectionError, match="sm121-arm64 is disabled in the matrix: capability 12.1 needs CUDA 12.9"):
        select(matrix, ["121"], arm64=True, cuda="12.8")
    with pytest.raises(SelectionError, match="unknown system 'x86_64-darwin'; valid: x86_64-linux, aarch64-linux"):
        select(matrix, system=["x86_64-darwin"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sm": ["90"], "all": True}, "--sm and --all conflict"),
        ({"sm": ["90"], "system": ["x86_64-linux"]}, "--sm and --system conflict"),
        ({"all": True, "system": ["aarch64-linux"]}, "--all and --system conflict"),
        ({"arm64": True, "system": ["aarch64-linux"]}, "--arm64 applies to --sm only"),
        ({"arm64": True}, "--arm64 applies to --sm only"),
    ],
)
@pytest.mark.parametrize("none_means_all", [False, True])
def test_conflicting_selections_are_refused_not_joined(matrix, kwargs, message, none_means_all):
    with pytest.raises(SelectionError, match=rf"^{re.escape(message)}"):
        select(matrix, **kwargs, none_means_all=none_means_all)
