"""The plan's line per variant: what it compiles, by distinct name and count (issue #22).

`invoke image --dry-run` said `build 7 derivations (compiles vllm, vllm, vllm)`:
the image's own derivations (its conf, its customisation layer) are named after
the variant, whose name starts with `vllm-`, and were taken for vllm compiles.
"""

from __future__ import annotations

from pathlib import Path

import support

from vllm_variants.build.plan import VariantPlan
from vllm_variants.build.request import Target
from vllm_variants.matrix import Matrix
from vllm_variants.nixlog import DryRun

MATRIX = Matrix.load(support.REPO / "nix" / "variants.toml")
SM90 = MATRIX.resolve("90")
WHEEL = next(v for v in MATRIX.variants if v.torch_wheel and v.sm == "90" and v.enabled)  # its name: issue #23


def _drv(name: str) -> str:
    return f"/nix/store/{'a' * 32}-{name}.drv"


def _plan(variant, *names: str, attr: str | None = None, own: str | None = None) -> VariantPlan:
    target = Target(variant, "this machine", Path("/tmp") / f"result-{variant.name}", attr)
    return VariantPlan(target, _drv(own or f"{variant.name}-0.15.1"), "/nix/store/x", DryRun(tuple(map(_drv, names))))


def test_an_image_plan_compiles_nothing_and_says_so():
    # what `invoke image --sm 90` builds once the variant is built (the stand-in's
    # streamLayeredImage, as nixpkgs names its parts)
    plan = _plan(
        SM90,
        f"{SM90.name}-conf.json",
        f"{SM90.name}-customisation-layer",
        f"{SM90.name}-base.json",
        f"stream-{SM90.name}",
        attr=f"images.x86_64-linux.{SM90.name}",
        own=f"stream-{SM90.name}",
    )
    assert plan.heavy() == []
    assert plan.summary() == "build 4 derivations (no heavy compile), fetch 0 paths"


def test_a_variant_plan_names_each_heavy_compile_once_with_its_count():
    plan = _plan(
        SM90,
        "python3.12-torch-2.9.1",
        "python3.12-vllm-0.15.1",
        "nccl-2.27.3",
        "nccl-2.27.3",
        "magma-2.9.0",
        "python3.12-xformers-0.0.33.post1",
        "python3.12-requests-2.32.5",
        f"{SM90.name}-0.15.1",
    )
    assert plan.heavy() == ["torch 2.9.1", "vllm 0.15.1", "xformers 0.0.33.post1", "magma 2.9.0", "nccl 2.27.3 (x2)"]
    assert plan.summary().startswith(
        "build 8 derivations (compiles torch 2.9.1, vllm 0.15.1, xformers 0.0.33.post1, magma 2.9.0, nccl 2.27.3 (x2))"
    )


def test_a_torch_wheel_plan_does_not_count_torch_bin_as_a_compile():
    plan = _plan(WHEEL, "python3.12-torch-2.9.0", "python3.12-vllm-0.15.1", f"{WHEEL.name}-0.15.1")
    assert plan.heavy() == ["vllm 0.15.1"]
