"""Planning several builds on one machine (issue #6): nvcc jobs within RAM / 8 GiB."""

from __future__ import annotations

import pytest

from vllm_variants.build import plan_concurrency
from vllm_variants.resources import GIB, Host

NIX = {"max-jobs": "1", "cores": "0"}


def test_several_variants_split_the_ram_budget():
    host = Host(cores=64, mem_bytes=512 * GIB)  # 64 nvcc jobs at 8 GiB
    plan = plan_concurrency(3, host, 8, nix_settings=NIX)
    assert (plan.max_jobs, plan.cores, plan.budget) == (3, 21, 64)
    assert plan.warning is None
    assert plan.text.startswith("--max-jobs 3 x --cores 21 (planned for 3 variants): up to 63 nvcc jobs at once")


def test_ram_not_cores_is_the_limit_on_a_big_many_core_box():
    host = Host(cores=192, mem_bytes=256 * GIB)  # cores to spare, RAM for 32 jobs
    plan = plan_concurrency(10, host, 8, nix_settings=NIX)
    assert plan.budget == 32 and plan.max_jobs == 10 and plan.cores == 3
    assert plan.max_jobs * plan.cores <= plan.budget


def test_more_variants_than_the_budget_run_one_core_each():
    plan = plan_concurrency(10, Host(cores=2, mem_bytes=16 * GIB), 8, nix_settings=NIX)
    assert (plan.max_jobs, plan.cores) == (2, 1)


def test_a_small_machine_still_builds_one_job_at_a_time():
    plan = plan_concurrency(2, Host(cores=4, mem_bytes=6 * GIB), 8, nix_settings=NIX)
    assert (plan.max_jobs, plan.cores, plan.budget) == (1, 1, 1)


def test_one_variant_keeps_nix_settings():
    plan = plan_concurrency(1, Host(cores=64, mem_bytes=512 * GIB), 8, nix_settings={"max-jobs": "4", "cores": "0"})
    assert plan.args() == []
    assert plan.text.startswith("Nix's settings (max-jobs 4, cores 0)")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"cores": 8}, (8, 8)),  # --max-jobs derived: min(variants, 64 // 8)
        ({"max_jobs": 2}, (2, 32)),  # --cores derived: 64 // 2
        ({"cores": 16, "max_jobs": 2}, (2, 16)),
    ],
)
def test_an_explicit_value_wins_and_the_other_follows(given, expected):
    plan = plan_concurrency(10, Host(cores=64, mem_bytes=512 * GIB), 8, nix_settings=NIX, **given)
    assert (plan.max_jobs, plan.cores) == expected
    assert "(as given)" in plan.text and plan.warning is None


def test_explicit_values_past_the_budget_are_kept_with_a_warning():
    plan = plan_concurrency(4, Host(cores=32, mem_bytes=64 * GIB), 8, cores=32, max_jobs=4, nix_settings=NIX)
    assert (plan.max_jobs, plan.cores) == (4, 32)
    # each heavy build clamps itself to the budget (8), so 4 of them: 32 jobs
    assert plan.warning is not None and plan.warning.startswith("32 concurrent nvcc jobs need about 256 GiB")


def test_max_jobs_zero_builds_remotely_only():
    plan = plan_concurrency(3, Host(cores=8, mem_bytes=32 * GIB), 8, max_jobs=0, nix_settings=NIX)
    assert plan.args() == ["--max-jobs", "0"] and "remote builders" in plan.text


def test_max_jobs_zero_in_nix_conf_is_kept_for_several_variants():
    """nix.conf's `max-jobs = 0` (remote builders only) must not become --max-jobs 3."""
    plan = plan_concurrency(3, Host(cores=64, mem_bytes=512 * GIB), 8, nix_settings={"max-jobs": "0", "cores": "0"})
    assert plan.args() == [] and plan.max_jobs is None
    assert plan.text.startswith("max-jobs 0 (Nix's setting): nothing builds here")


def test_explicit_max_jobs_still_wins_over_a_nix_conf_zero():
    plan = plan_concurrency(
        3, Host(cores=64, mem_bytes=512 * GIB), 8, max_jobs=2, nix_settings={"max-jobs": "0", "cores": "0"}
    )
    assert plan.args() == ["--max-jobs", "2", "--cores", "32"]
