"""`invoke build` end to end: real Nix, a copy of the project, the stand-in nixpkgs.

Each test runs `python -m invoke build ...` in a project made by
support.make_project, with --nixpkgs pointing at a (salted) copy of the
stand-in, so it really builds, offline, in seconds.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import gpu_replay
import pytest
import support

from vllm_variants import lifecycle
from vllm_variants.build import (
    BuildOutcome as Outcome,
)
from vllm_variants.build import (
    BuildPlan,
    Concurrency,
    Prepared,
    Request,
    Target,
    VariantPlan,
    act,
    link_results,
    make_plan,
    plan_concurrency,
    prepare,
)
from vllm_variants.errors import BuildError
from vllm_variants.matrix import Matrix
from vllm_variants.nix import Nix
from vllm_variants.nixlog import DryRun
from vllm_variants.project import Project
from vllm_variants.resources import Host
from vllm_variants.selection import Selection

pytestmark = pytest.mark.nix

MATRIX = Matrix.load(support.REPO / "nix" / "variants.toml")
SM90 = MATRIX.resolve("90")
SM80 = MATRIX.resolve("80")
SM89 = MATRIX.resolve("89")
GH200 = MATRIX.resolve("90", arm64=True)


def unique(label: str) -> str:
    """A stand-in salt no earlier run used: new derivations, a real build."""
    return f"{label}-{uuid.uuid4()}"


def invoke(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=root, capture_output=True, text=True, env=env or support.nix_env()
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The boundary's one line (and nothing else on stderr, no traceback)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def site(out: Path, module: str) -> dict:
    return json.loads((out / "lib" / "python3.12" / "site-packages" / module / "_nix_build.json").read_text())


def untouched(root: Path, lock: bytes) -> None:
    """Nothing a build leaves: no result link, no log, flake.lock and git as they were."""
    assert list(root.glob("result*")) == []
    assert not (root / "logs").exists()
    assert (root / "flake.lock").read_bytes() == lock
    assert support.git(root, "status", "--porcelain").stdout == ""


# -- a real build -------------------------------------------------------------


def test_build_links_a_result_whose_python_reports_the_capability(project, standin, tmp_path, standin_base):
    nixpkgs = standin(salt=unique("build"))
    lock = (project / "flake.lock").read_bytes()
    proc = ok(invoke(project, "build", "--sm", "90", "--nixpkgs", str(nixpkgs), "--json", "summary.json"))

    link = project / f"result-{SM90.name}"
    out = Path(os.readlink(link))
    probe = (
        "import json, torch, vllm, pathlib; print(json.dumps({'arch': torch._C._cuda_getArchFlags(), "
        "'vllm': json.loads((pathlib.Path(vllm.__file__).parent / '_nix_build.json').read_text())}))"
    )
    report = json.loads(
        subprocess.run([link / "bin" / "python", "-c", probe], capture_output=True, text=True, check=True).stdout
    )
    assert report["arch"] == "sm_90"
    assert "-DTORCH_CUDA_ARCH_LIST:STRING=9.0" in report["vllm"]["cmakeFlags"]

    # the link is a registered GC root (made through Nix, not os.symlink)
    gc_roots = subprocess.run(
        ["nix-store", "--query", "--roots", out], capture_output=True, text=True, env=support.nix_env(), check=True
    ).stdout
    assert str(link) in gc_roots

    # --json: parses and matches what was built, with Nix's own closure size
    summary = json.loads((project / "summary.json").read_text())
    (row,) = summary["variants"]
    assert row["variant"] == SM90.name and row["status"] == "built"
    assert row["store_path"] == str(out)
    info = json.loads(support.nix("path-info", "--json", "--closure-size", out).stdout)
    info = info[0] if isinstance(info, list) else info[str(out)]
    assert row["closure_size"] == info["closureSize"] > 0
    assert row["duration_s"] > 0

    # the log holds the builds' own output; progress went to stdout as plain lines
    log = project / row["log"]
    assert re.fullmatch(rf"logs/{SM90.name}-\d{{8}}-\d{{6}}\.log", row["log"])
    assert "python3.12-torch-2.9.1> Running phase: buildPhase" in log.read_text()
    assert re.search(r"^\[\d+/9\] building python3\.12-torch-2\.9\.1 \(sm90\)$", proc.stdout, re.M), proc.stdout
    assert (
        "build 9 derivations (compiles torch 2.9.1, vllm 0.15.1, xformers 0.0.33.post1, flashinfer 0.6.1, "
        "bitsandbytes 0.48.2, cupy 13.6.0)"
    ) in proc.stdout, proc.stdout
    assert "concurrency: Nix's settings" in proc.stdout
    assert (project / "flake.lock").read_bytes() == lock


def test_several_variants_share_the_machine_by_plan(project, standin, tmp_path):
    nixpkgs = standin(salt=unique("plan"))
    proc = ok(invoke(project, "build", "--sm", "80,89", "--nixpkgs", str(nixpkgs), "--json", "s.json"))

    plan = plan_concurrency(2, Host.detect(), MATRIX.ram_per_job_gib)
    assert plan.max_jobs == min(2, plan.budget) and plan.max_jobs * plan.cores <= max(plan.budget, plan.max_jobs)
    assert f"concurrency: --max-jobs {plan.max_jobs} x --cores {plan.cores} (planned for 2 variants)" in proc.stdout
    assert proc.stdout.index("concurrency:") < proc.stdout.index("building 2 variants")
    summary = json.loads((project / "s.json").read_text())
    assert summary["concurrency"]["max_jobs"] == plan.max_jobs
    for variant, row in zip((SM80, SM89), summary["variants"]):
        out = Path(os.readlink(project / f"result-{variant.name}"))
        assert row["variant"] == variant.name and row["store_path"] == str(out)
        # bitsandbytes is not clamped by the flake: it got exactly the planned --cores
        assert int(site(out, "bitsandbytes")["NIX_BUILD_CORES"]) == plan.cores
        assert site(out, "torch")["TORCH_CUDA_ARCH_LIST"] == variant.capability


def test_explicit_cores_and_max_jobs_win_over_the_plan(project, standin, tmp_path):
    nixpkgs = standin(salt=unique("explicit"))
    proc = ok(
        invoke(
            project,
            "build",
            "--sm",
            "80",
            "--sm",
            "89",
            "--nixpkgs",
            str(nixpkgs),
            "--cores",
            "3",
            "--max-jobs",
            "1",
            "--keep-going",
            "--option",
            "max-silent-time=600",
        )
    )
    assert "--max-jobs 1 x --cores 3 (as given)" in proc.stdout
    for variant in (SM80, SM89):
        out = project / f"result-{variant.name}"
        assert int(site(out, "bitsandbytes")["NIX_BUILD_CORES"]) == 3
    log = next((project / "logs").glob(f"{SM80.name}-*.log")).read_text()
    assert "--keep-going --max-jobs 1 --cores 3" in log and "--option max-silent-time 600" in log


def test_an_option_nix_rejects_at_build_time_is_the_error_even_when_up_to_date(project, standin, tmp_path):
    """Nix refuses `--cores` past what it parses and exits 1; the variant is
    in the store already, yet the command must fail with Nix's reason (#11)."""
    nixpkgs = standin(salt=unique("rejected"))
    ok(invoke(project, "build", "--sm", "90", "--nixpkgs", str(nixpkgs)))
    link = project / f"result-{SM90.name}"
    before = os.readlink(link)
    request = Request(selection=Selection.parse(sm=["90"]), nixpkgs=f"path:{nixpkgs}")
    plan = make_plan(prepare(Project(project), request, nix=Nix(env=support.nix_env())))
    plan.concurrency = Concurrency(None, 10**23, 1, "")  # past the command line's bound: Nix's own check
    out = io.StringIO()
    with pytest.raises(
        BuildError,
        match=r"^nix build exited with status 1: setting 'cores' has invalid value "
        rf"'{10**23}'; log: logs/{SM90.name}-",
    ):
        act(plan, out, interactive=False)
    assert f"error: setting 'cores' has invalid value '{10**23}'" in out.getvalue()
    assert os.readlink(link) == before


# -- --dry-run ------------------------------------------------------------------


def _stdenv_in_a_cache(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """The stand-in's stdenv, built and copied to a file:// cache (tmp_path/cache),
    and the environment of a fresh chroot store (tmp_path/fresh) that has only
    that cache: (the stdenv's store path, the environment)."""
    stdenv = support.nix(
        "build",
        "--no-link",
        "--print-out-paths",
        "--impure",
        "--expr",
        f'(import {support.STANDIN} {{ system = "x86_64-linux"; }}).stdenv',
    ).stdout.strip()
    cache = f"file://{tmp_path / 'cache'}"
    support.nix("copy", "--to", cache, stdenv)
    return stdenv, support.nix_env(f"store = {tmp_path / 'fresh'}\nsubstituters = {cache}\nrequire-sigs = false")


def test_dry_run_on_a_fresh_store_plans_and_changes_nothing(project, tmp_path):
    """A chroot store that has never seen a build, and a file:// cache holding
    one path (the stand-in's stdenv): the plan must say what Nix would build
    and fetch, build nothing, and leave the checkout as it was."""
    stdenv, env = _stdenv_in_a_cache(tmp_path)
    lock = (project / "flake.lock").read_bytes()

    proc = ok(invoke(project, "build", "--sm", "90", "--dry-run", "--nixpkgs", str(support.STANDIN), env=env))

    # what Nix would build, counted independently: every derivation in the
    # variant's closure, except the one whose output the cache has
    attr = f"{support.flake_ref(project)}#{SM90.attr_path()}"
    drv = support.nix("eval", "--raw", f"{attr}.drvPath", *support.override(), env=env).stdout
    closure = support.nix("path-info", "--recursive", drv, env=env).stdout.split()
    # the cached one: the default stdenv (the CUDA backend stdenv, another compiler, is built)
    cached = support.nix(
        "eval",
        "--raw",
        "--impure",
        "--expr",
        f'(import {support.STANDIN} {{ system = "x86_64-linux"; }}).stdenv.drvPath',
    ).stdout
    assert cached in closure and len([p for p in closure if p.endswith("-stdenv-linux.drv")]) == 2
    expected = len([p for p in closure if p.endswith(".drv") and p != cached])
    line = next(line for line in proc.stdout.splitlines() if SM90.name in line)
    assert f"build {expected} derivations (compiles " in line
    for heavy in ("torch 2.9.1", "vllm 0.15.1", "xformers", "flashinfer", "bitsandbytes", "nccl"):
        assert heavy in line
    # Nix's sizes in bytes, printed by format_bytes: the stdenv is a few KiB
    assert re.search(r"fetch 1 path \(\d+(\.\d)? (B|KiB) download, \d+(\.\d)? (B|KiB) unpacked\)", line), line
    assert "dry run: nothing was built" in proc.stdout

    untouched(project, lock)
    out = support.nix("eval", "--raw", f"{attr}.outPath", *support.override(), env=env).stdout
    valid = json.loads(support.nix("path-info", "--json", out, env=env, check=False).stdout or "{}")
    assert not valid.get(out), "the dry run built the variant"


def test_fetched_paths_go_to_every_variant_that_needs_them_with_their_size(project, tmp_path):
    """Two variants on a fresh store, a file:// cache holding the stdenv both need:
    each variant's share fetches it, with the size the cache gives, asked in one
    `nix path-info` for that cache (issue #13)."""
    stdenv, env = _stdenv_in_a_cache(tmp_path)
    nix = support.recording_nix(env=env)
    request = Request(selection=Selection.parse(sm=["80,90"]), nixpkgs=f"path:{support.STANDIN}", eval_jobs=10)
    plan = make_plan(prepare(Project(project), request, nix=nix), host=Host(cores=4, mem_bytes=64 * 1024**3))
    info = json.loads(
        support.nix("path-info", "--json", "--store", f"file://{tmp_path / 'cache'}", stdenv, env=env).stdout
    )[stdenv]
    for vplan in plan.variants:
        assert vplan.dry.will_fetch == (stdenv,)
        assert (vplan.dry.download_bytes, vplan.dry.unpacked_bytes) == (info["downloadSize"], info["narSize"])
    assert plan.total.will_fetch == (stdenv,)
    # the graph, then the cache's narinfos: their Deriver says which variants fetch what
    assert _kinds(nix.commands) == ["build --dry-run", "path-info --json", "path-info --json"]


def test_a_cache_that_names_no_deriver_sends_the_plan_to_the_derivations_outputs(project, tmp_path):
    """A narinfo without its Deriver line (a cache may leave it out): which
    variant fetches the path comes from the derivations' outputs instead, one
    `nix derivation show -r` more, and the figures are the same."""
    stdenv, env = _stdenv_in_a_cache(tmp_path)
    (narinfo,) = (tmp_path / "cache").glob("*.narinfo")
    text = narinfo.read_text()
    assert "\nDeriver: " in text
    narinfo.write_text("".join(line for line in text.splitlines(keepends=True) if not line.startswith("Deriver: ")))
    nix = support.recording_nix(env=env)
    request = Request(selection=Selection.parse(sm=["80,90"]), nixpkgs=f"path:{support.STANDIN}", eval_jobs=10)
    plan = make_plan(prepare(Project(project), request, nix=nix), host=Host(cores=4, mem_bytes=64 * 1024**3))
    assert [v.dry.will_fetch for v in plan.variants] == [(stdenv,), (stdenv,)]
    assert all(v.dry.download_bytes for v in plan.variants)
    assert _kinds(nix.commands) == ["build --dry-run", "path-info --json", "path-info --json", "derivation show"]


def test_dry_run_json_writes_the_plan_for_ci(project, standin, tmp_path, standin_base):
    nixpkgs = standin(salt=unique("dry-json"))
    ok(invoke(project, "build", "--sm", "80,90", "--dry-run", "--nixpkgs", str(nixpkgs), "--json", "plan.json"))
    plan = json.loads((project / "plan.json").read_text())
    assert plan["dry_run"] is True
    assert [v["variant"] for v in plan["variants"]] == [SM80.name, SM90.name]
    nix = Nix(env=support.nix_env())
    for row in plan["variants"]:
        assert row["status"] == "planned" and len(row["plan"]["will_build"]) == 9
        assert "torch 2.9.1" in row["plan"]["heavy"]
        assert nix.derivation_outputs(row["plan"]["drv"]) == {"out": row["plan"]["out"]}
    # shared derivations (cupy, nvidia-ml-py do not depend on the SM) count once
    assert len(plan["total"]["will_build"]) == 16
    assert list(project.glob("result*")) == [] and not (project / "logs").exists()


def _plan(project: Path, nixpkgs: Path, sms: str, **request) -> tuple[BuildPlan, list[list[str]]]:
    nix = support.recording_nix(env=support.nix_env())
    plan = make_plan(
        prepare(
            Project(project),
            Request(selection=Selection.parse(sm=[sms]), nixpkgs=f"path:{nixpkgs}", **request),
            nix=nix,
        ),
        host=Host(cores=4, mem_bytes=64 * 1024**3),
    )
    return plan, nix.commands


def _kinds(commands: list[list[str]]) -> list[str]:
    return [" ".join(c[:2]) for c in commands if c[0] != "config"]


def test_the_plan_runs_as_many_nix_processes_for_six_variants_as_for_two(project, standin):
    """Issue #13: one dry run of all the variants and one look at their derivation
    graph, whatever their number; each variant's figures are its share of that one
    plan, the same as a dry run of that variant alone says."""
    nixpkgs = standin(salt=unique("count"))
    two, two_commands = _plan(project, nixpkgs, "80,90", eval_jobs=100)
    six, six_commands = _plan(project, nixpkgs, "70,75,80,86,89,90", eval_jobs=100)
    assert _kinds(two_commands) == _kinds(six_commands) == ["build --dry-run", "path-info --json"]
    nix = Nix(env=support.nix_env())
    for plan in six.variants:
        _, alone = nix.dry_run([f"{plan.drv}^out"])
        assert sorted(plan.dry.will_build) == sorted(alone.will_build) and plan.dry.will_fetch == ()
        assert plan.dry.download_bytes == 0
    assert len(six.total.will_build) < sum(len(p.dry.will_build) for p in six.variants)  # shared ones once
    assert "evaluation: 6 variants in 1 Nix process, at most 100 nixpkgs instances each (--eval-jobs 100" in "\n".join(
        six.lines()
    )


def test_a_build_of_several_variants_asks_their_closure_sizes_in_one_call(project, standin):
    """After the one `nix build`, one `nix path-info` gives every output's validity
    and closure size (issue #13). Each result link is still one Nix call: Nix has no
    command that makes several GC-root links of chosen names at once."""
    nixpkgs = standin(salt=unique("sizes"))
    plan, commands = _plan(project, nixpkgs, "80,89,90", eval_jobs=10)
    outcomes = act(plan, io.StringIO(), interactive=False)
    assert all(o.ok and o.closure_size for o in outcomes)
    assert _kinds(commands) == [
        "build --dry-run",
        "path-info --json",
        "build --no-link",
        "path-info --json",
        "build --out-link",
        "build --out-link",
        "build --out-link",
    ]


def test_the_plan_evaluates_in_batches_sized_by_eval_jobs(project, standin):
    nixpkgs = standin(salt=unique("batches"))
    plan, commands = _plan(project, nixpkgs, "70,75,80,86,89", eval_jobs=2)
    assert _kinds(commands) == ["build --dry-run"] * 3 + ["path-info --json"]
    whole, _ = _plan(project, nixpkgs, "70,75,80,86,89", eval_jobs=5)
    assert [sorted(p.dry.will_build) for p in plan.variants] == [sorted(p.dry.will_build) for p in whole.variants]
    assert set(plan.total.will_build) == set(whole.total.will_build)
    assert "evaluation: 5 variants in 3 Nix processes, at most 2 nixpkgs instances each" in "\n".join(plan.lines())


def test_sm_auto_builds_the_variant_of_the_local_gpu(project, tmp_path):
    """--sm auto asks nvidia-smi (the H100 capture, replayed) which variant this machine needs."""
    bin_dir = tmp_path / "bin"
    gpu_replay.smi(bin_dir)
    env = {**support.nix_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = ok(
        invoke(
            project,
            "build",
            "--sm",
            "auto,80",
            "--dry-run",
            "--nixpkgs",
            str(support.STANDIN),
            "--json",
            "plan.json",
            env=env,
        )
    )
    plan = json.loads((project / "plan.json").read_text())
    assert [v["variant"] for v in plan["variants"]] == [SM80.name, SM90.name], proc.stdout


def test_sm_auto_without_a_gpu_is_one_line(project, tmp_path):
    env = {
        **support.nix_env(),
        "PATH": f"{tmp_path}{os.pathsep}{os.path.dirname(support.nix_executable())}{os.pathsep}/usr/bin:/bin",
    }
    proc = invoke(project, "build", "--sm", "auto", "--dry-run", "--nixpkgs", str(support.STANDIN), env=env)
    assert proc.returncode == 1
    assert error_line(proc).startswith("error: no NVIDIA GPU found (nvidia-smi is not on PATH")
    assert list(project.glob("result*")) == []


# -- failure ------------------------------------------------------------------


def test_failed_build_shows_the_derivation_its_log_tail_and_keeps_the_old_link(project, standin, tmp_path):
    salt = unique("fail")
    ok(invoke(project, "build", "--sm", "90", "--nixpkgs", str(standin(salt=salt))))
    link = project / f"result-{SM90.name}"
    before = os.readlink(link)

    broken = standin(salt=salt, failBuild=["xformers"])
    proc = invoke(project, "build", "--sm", "90", "--nixpkgs", str(broken), "--json", "s.json")

    assert proc.returncode == 1
    assert os.readlink(link) == before  # replaced only after a successful build
    summary = json.loads((project / "s.json").read_text())
    (row,) = summary["variants"]
    (drv,) = row["failed_derivations"]
    assert row["status"] == "failed" and row["store_path"] is None
    assert drv.endswith("-python3.12-xformers-0.0.33.post1.drv")
    report = proc.stdout[proc.stdout.index("failed: python3.12-xformers-0.0.33.post1") :]
    assert f"derivation: {drv}" in report
    assert "[40/40] compiling kernel_40.cu\n    error: xformers: stand-in build failure" in report
    assert "[1/40] compiling kernel_1.cu" not in report  # a tail, not the whole log
    assert f"full log: {row['log']}" in report
    full = (project / row["log"]).read_text()
    assert "python3.12-xformers-0.0.33.post1> [1/40] compiling kernel_1.cu" in full
    assert f"failed '{drv}'" in full
    line = error_line(proc)
    assert line == (
        f"error: 1 of 1 variant(s) not built: {SM90.name} (python3.12-xformers-0.0.33.post1 failed); log: {row['log']}"
    )


def test_a_failure_without_a_previous_result_leaves_no_link(project, standin, tmp_path):
    broken = standin(salt=unique("nolink"), failBuild=["vllm"])
    proc = invoke(project, "build", "--sm", "90", "--nixpkgs", str(broken))
    assert proc.returncode == 1 and "failed: python3.12-vllm-0.15.1" in proc.stdout
    assert list(project.glob("result*")) == []


# -- the links, after Nix exited ----------------------------------------------------


def _linking_plan(root: Path, nix: Nix) -> BuildPlan:
    """A plan for SM 80 and 89 whose builds are done: only linking is left."""
    project = Project(root)
    plans = []
    for variant in (SM80, SM89):
        target = Target(variant, "this machine", project.result_link(variant))
        plans.append(VariantPlan(target, "/nix/store/x.drv", "/nix/store/x", DryRun()))
    prepared = Prepared(project, Request(), nix, [p.target for p in plans])
    return BuildPlan(prepared, plans, DryRun(), Concurrency(None, None, 1, ""))


def _store_file(tmp_path: Path) -> str:
    (tmp_path / "payload").write_text(f"{uuid.uuid4()}\n")
    return support.nix("store", "add-path", tmp_path / "payload").stdout.strip()


def test_a_link_nix_cannot_make_is_recorded_and_the_others_are_made(tmp_path):
    path = _store_file(tmp_path)
    root = tmp_path / "p"
    blocked = root / f"result-{SM80.name}"
    (blocked / "inner").mkdir(parents=True)  # appeared while Nix was building
    plan = _linking_plan(root, Nix(env=support.nix_env()))
    outcomes = [Outcome(SM80, "built", store_path=path), Outcome(SM89, "built", store_path=path)]

    link_results(plan, outcomes)

    assert outcomes[0].status == "not linked" and not outcomes[0].ok
    assert outcomes[0].link_error.startswith(f"cannot create symlink '{blocked}'"), outcomes[0].link_error
    assert blocked.is_dir() and not blocked.is_symlink()
    assert outcomes[1].status == "built" and os.readlink(root / f"result-{SM89.name}") == path
    assert outcomes[0].to_json(root)["link_error"] == outcomes[0].link_error


def test_ctrl_c_while_linking_waits_for_every_link(tmp_path):
    """A Ctrl-C as the links are made is held: both links are made, and it is
    honoured afterwards (main then writes the summary and exits 130)."""
    path = _store_file(tmp_path)

    class CtrlCMidway(Nix):
        def argv(self, *args):
            if args[:2] == ("build", "--out-link"):
                os.kill(os.getpid(), signal.SIGINT)  # as the terminal's Ctrl-C would, before each link starts
            return super().argv(*args)

    root = tmp_path / "p"
    plan = _linking_plan(root, CtrlCMidway(env=support.nix_env()))
    outcomes = [Outcome(SM80, "built", store_path=path), Outcome(SM89, "fetched", store_path=path)]
    before = signal.getsignal(signal.SIGINT)
    with lifecycle.critical(deliver=False) as held:
        link_results(plan, outcomes)
        assert held == [signal.SIGINT, signal.SIGINT]
    assert [os.readlink(root / f"result-{v.name}") for v in (SM80, SM89)] == [path, path]
    assert all(o.ok for o in outcomes)
    assert signal.getsignal(signal.SIGINT) is before


# -- Ctrl-C ---------------------------------------------------------------------


def _slow_build(project: Path, nixpkgs: Path) -> tuple[subprocess.Popen[str], set[int]]:
    """`invoke build --sm 90` started with torch's build sleeping 300 s under nix:
    the process and its descendants once that sleep runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "build", "--sm", "90", "--nixpkgs", str(nixpkgs)],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=support.nix_env(),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "building python3.12-torch-2.9.1" in line:
            break
    deadline = time.monotonic() + 30
    while True:  # wait for the builder's sleep to run under nix
        tree = support.descendants(proc.pid)
        sleeping = [p for p in tree if support.cmdline(p).startswith(b"sleep\x00300")]
        if sleeping or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if not sleeping:
        proc.kill()
    assert sleeping, "the slow torch build never started"
    return proc, tree


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_nix_leaves_no_link_and_exits_130(project, standin, signum):
    """SIGTERM (a cancelled CI job) must stop Nix too: it runs in its own session; it exits 143."""
    proc, tree = _slow_build(project, standin(salt=unique("sigint"), slowBuild={"torch": 300}))
    try:
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, stderr
    assert "interrupted: nix was stopped; no result link was changed" in stdout
    assert [p for p in tree if support.alive(p)] == [], "nix or its builder outlived Ctrl-C"
    assert list(project.glob("result*")) == []
    (log,) = (project / "logs").glob("*.log")
    assert log.read_text().endswith("# interrupted: nix was stopped; no result link was changed\n")


def test_sigkill_of_build_takes_nix_and_its_builder_with_it(project, standin):
    """A CI runner escalates to SIGKILL, which no handler sees: Nix learns of
    our death from the kernel (PR_SET_PDEATHSIG) and stops its builder (#11)."""
    proc, tree = _slow_build(project, standin(salt=unique("sigkill"), slowBuild={"torch": 300}))
    try:
        proc.kill()
        proc.wait(timeout=60)
        deadline = time.monotonic() + 60  # generous: Nix gets SIGTERM and stops its builder in about a second
        while [p for p in tree if support.alive(p)] and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [support.cmdline(p) for p in tree if support.alive(p)] == [], "nix or its builder outlived SIGKILL"
    assert list(project.glob("result*")) == []


# -- pre-flight -----------------------------------------------------------------


def _old_nix(bin_dir: Path) -> Path:
    """A wrapper that reports an old version and runs the real nix otherwise:
    only the version string is fake (an old Nix cannot be installed here)."""
    bin_dir.mkdir()
    wrapper = bin_dir / "nix"
    wrapper.write_text(
        '#!/bin/sh\nif [ "$1" = --version ]; then echo "nix (Nix) 2.17.1"; exit 0; fi\n'
        f'exec {support.nix_executable()} "$@"\n'
    )
    wrapper.chmod(0o755)
    return bin_dir


PREFLIGHT = {
    "unknown-sm": (
        ["--sm", "91"],
        {},
        "error: unknown SM '91'; valid SMs: 61, 70, 75, 80, 86, 89, 90, 100, 103, "
        "120 (x86_64-linux); 90, 100, 103, 121 (aarch64-linux, with --arm64)",
    ),
    "no-arm64-variant": (
        ["--sm", "80", "--arm64"],
        {},
        "error: SM 80 has no arm64 variant; arm64 variants exist for SM 90, 100, 103, 121",
    ),
    "nothing-selected": ([], {}, "error: no variant selected; use --sm SM"),
    "bad-cores": (["--sm", "90", "--cores", "many"], {}, "error: --cores takes a whole number from 0 to 100000"),
    "bad-option": (["--sm", "90", "--option", "sandbox"], {}, "error: --option takes NAME=VALUE"),
    "no-nixpkgs-dir": (
        ["--sm", "90", "--nixpkgs", "./no-such-nixpkgs"],
        {},
        "error: --nixpkgs ./no-such-nixpkgs: no such directory",
    ),
    "nix-missing": (
        ["--sm", "90"],
        {"PATH": "/usr/bin:/bin"},
        "error: nix is not installed (not on PATH): install Nix >= 2.18",
    ),
    "nix-too-old": (
        ["--sm", "90"],
        {"PATH": "OLD_NIX"},
        "error: Nix 2.17.1 is too old: nixpkgs needs Nix >= 2.18; upgrade Nix",
    ),
    "flakes-off": (
        ["--sm", "90"],
        {"NIX_CONFIG": "FLAKES_OFF"},
        "error: Nix's experimental feature 'flakes' is not enabled: add 'experimental-features = "
        "nix-command flakes' to ~/.config/nix/nix.conf",
    ),
    "only-nix-command": (
        ["--sm", "90"],
        {"NIX_CONFIG": "NIX_COMMAND_ONLY"},
        "error: Nix's experimental feature 'flakes' is not enabled",
    ),
    "aarch64-without-builder": (
        ["--sm", "90", "--arm64"],
        {},
        "error: no machine can build aarch64-linux "
        "variants: this is x86_64-linux, and CUDA is never cross-compiled in nixpkgs, "
        "so a aarch64-linux builder is needed. Add one that advertises big-parallel",
    ),
    "builder-without-big-parallel": (
        ["--sm", "90", "--arm64", "--builders", "ssh-ng://gh200 aarch64-linux - 8 1 kvm"],
        {},
        "error: no machine can build aarch64-linux variants",
    ),
}


@pytest.mark.parametrize("case", PREFLIGHT, ids=list(PREFLIGHT))
def test_preflight_errors_are_one_line_and_change_nothing(project, tmp_path, case):
    args, env_changes, expected = PREFLIGHT[case]
    env = support.nix_env("builders =\nextra-platforms =")
    for key, value in env_changes.items():
        if value == "OLD_NIX":
            value = f"{_old_nix(tmp_path / 'old')}:{env['PATH']}"
        elif value in ("FLAKES_OFF", "NIX_COMMAND_ONLY"):
            features = "nix-command" if value == "NIX_COMMAND_ONLY" else ""
            value = env["NIX_CONFIG"].replace(
                "experimental-features = nix-command flakes", f"experimental-features = {features}"
            )
        env[key] = value
    if case == "nix-missing":
        assert shutil.which("nix", path=env["PATH"]) is None
    lock = (project / "flake.lock").read_bytes()
    if "--nixpkgs" not in args:
        args = [*args, "--nixpkgs", str(support.STANDIN)]
    proc = invoke(project, "build", *args, env=env)
    assert proc.returncode == 1
    assert error_line(proc).startswith(expected)
    assert proc.stdout == ""  # failed before planning: nothing evaluated
    untouched(project, lock)


def test_flakes_alone_are_enough_the_tool_turns_nix_command_on_itself(project, standin):
    """A nix.conf that enables only flakes (no nix-command): pre-flight passes and so
    does every nix call after it, because each one enables nix-command itself."""
    env = support.nix_env()
    env["NIX_CONFIG"] = env["NIX_CONFIG"].replace(
        "experimental-features = nix-command flakes", "experimental-features = flakes"
    )
    assert support.nix("flake", "metadata", str(support.STANDIN), env=env, check=False).returncode != 0
    proc = ok(invoke(project, "build", "--sm", "90", "--nixpkgs", str(standin(salt=unique("flakes-only"))), env=env))
    assert os.readlink(project / f"result-{SM90.name}").startswith("/nix/store/"), proc.stdout


def test_a_remote_builder_for_the_system_passes_preflight(project):
    builder = "ssh-ng://builder@gh200 aarch64-linux - 8 1 big-parallel"
    env = support.nix_env("builders =\nextra-platforms =")
    proc = ok(
        invoke(
            project,
            "build",
            "--sm",
            "90",
            "--arm64",
            "--dry-run",
            "--builders",
            builder,
            "--nixpkgs",
            str(support.STANDIN),
            env=env,
        )
    )
    assert f"{GH200.name} (aarch64-linux, on remote builder ssh-ng://builder@gh200): build " in proc.stdout


def test_max_jobs_zero_in_nix_conf_plans_several_variants_for_the_builder_only(project):
    builder = "ssh-ng://builder@gh200 aarch64-linux - 8 1 big-parallel"
    env = support.nix_env("builders =\nextra-platforms =\nmax-jobs = 0")
    proc = ok(
        invoke(
            project,
            "build",
            "--sm",
            "90,100",
            "--arm64",
            "--dry-run",
            "--builders",
            builder,
            "--nixpkgs",
            str(support.STANDIN),
            "--json",
            "plan.json",
            env=env,
        )
    )
    assert "concurrency: max-jobs 0 (Nix's setting): nothing builds here" in proc.stdout, proc.stdout
    assert json.loads((project / "plan.json").read_text())["concurrency"]["max_jobs"] is None


def test_a_machines_file_counts_as_builders(project, tmp_path):
    machines = tmp_path / "machines"
    machines.write_text("# GH200 in the lab\nssh-ng://lab-gh200 aarch64-linux - 4 1 big-parallel,kvm\n")
    env = support.nix_env("builders =\nextra-platforms =")
    proc = ok(
        invoke(
            project,
            "build",
            "--sm",
            "90",
            "--arm64",
            "--dry-run",
            "--builders",
            f"@{machines}",
            "--nixpkgs",
            str(support.STANDIN),
            env=env,
        )
    )
    assert "on remote builder ssh-ng://lab-gh200" in proc.stdout


def test_a_file_in_the_way_of_the_result_link_is_refused_before_building(project, standin, tmp_path):
    nixpkgs = standin(salt=unique("blocked"))
    mine = project / f"result-{SM90.name}"
    mine.write_text("my notes\n")
    proc = invoke(project, "build", "--sm", "90", "--nixpkgs", str(nixpkgs))
    assert proc.returncode == 1
    assert error_line(proc) == (
        f"error: result-{SM90.name} exists and is not a Nix result link (into /nix/store); "
        "move it away, then run the build again"
    )
    assert mine.read_text() == "my notes\n" and not (project / "logs").exists()


def test_an_evaluation_error_is_nix_s_own_line(project, standin, tmp_path):
    no_hopper = standin(vllmSupportedCapabilities=["8.0", "8.6"])
    proc = invoke(project, "build", "--sm", "90", "--dry-run", "--nixpkgs", str(no_hopper))
    assert proc.returncode == 1
    line = error_line(proc)
    assert line.startswith("error: Nix could not evaluate the selected variants: ")
    assert "cannot target CUDA capability 9.0 (SM 90)" in line


def test_nixpkgs_git_checkout_is_used_as_git_not_copied_with_its_history(project, tmp_path):
    repo = support.copy_standin(tmp_path / "nixpkgs-git")
    support.git(repo, "init", "-q")
    support.commit_all(repo, "mirror")
    proc = ok(invoke(project, "build", "--sm", "90", "--dry-run", "--nixpkgs", str(repo)))
    assert f"nixpkgs git+file://{repo}" in proc.stdout


def test_dry_run_plan_of_a_torch_wheel_row_compiles_no_torch(project, standin, tmp_path, standin_base):
    """Issue #14: the same SM, two torches. The wheel row plans torch-bin (unpacked and
    patched, not compiled); its SM-specific compiles are the same as the source row's."""
    nixpkgs = standin(salt=unique("torch-rows"))
    wheel = MATRIX.by_name("vllm-python312-cuda12_8-sm90-torchbin")
    ok(
        invoke(
            project, "build", "--sm", f"90,{wheel.name}", "--dry-run", "--nixpkgs", str(nixpkgs), "--json", "plan.json"
        )
    )
    rows = {v["variant"]: v["plan"] for v in json.loads((project / "plan.json").read_text())["variants"]}
    source, binary = rows[SM90.name], rows[wheel.name]
    assert "torch 2.9.1" in source["heavy"]
    assert not any(h.startswith("torch") for h in binary["heavy"]), binary["heavy"]
    assert {h for h in source["heavy"] if not h.startswith("torch")} == set(binary["heavy"])
    assert any(d.endswith("-python3.12-torch-2.9.0.drv") for d in binary["will_build"])


def test_plan_benchmark_runs():
    """benchmarks/bench_plan.py end to end, at toy scale (its figures are in the README)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(support.REPO / "benchmarks" / "bench_plan.py"),
            "--variants",
            "1,2",
            "--runs",
            "1",
            "--shared",
            "20",
            "--per-sm",
            "2",
            "--matrix-rows",
            "30",
            "--build",
            "--no-targets",
        ],
        capture_output=True,
        text=True,
        env=support.nix_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^   2 variants: raw dry run .* plan .*x \(target <= 1.3x\)", proc.stdout, re.M), proc.stdout
    assert "growth 1 -> 2 variants" in proc.stdout and "nix/matrix.nix: 30 rows" in proc.stdout
    assert "build: " in proc.stdout and "2 result links" in proc.stdout
