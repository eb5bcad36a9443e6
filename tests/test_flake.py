"""The flake against the nixpkgs stand-in: every variant evaluated and built.

What each variant must show (issue #7): its name on its system, its one
capability reaching vllm, torch, bitsandbytes (and xformers, flashinfer),
CUDA 12.9, one bitsandbytes in the closure, a description carrying the pinned
vllm's version; read both from the derivations and back from result/bin/python.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import support

from vllm_variants.matrix import Matrix
from vllm_variants.resources import Host, nvcc_jobs

pytestmark = pytest.mark.nix

MATRIX = Matrix.load(support.REPO / "nix" / "variants.toml")
VARIANTS = MATRIX.default_set

FACTS = """
packages: builtins.mapAttrs (system: set: builtins.mapAttrs (name: p:
  let ps = p.pkgs.${p.variant.python}.pkgs; in {
    envSystem = p.system;
    description = p.meta.description;
    platforms = p.meta.platforms;
    versions = p.versions;
    envName = p.name;
    vllm = { inherit (p.vllm) pname name system cmakeFlags requiredSystemFeatures; platforms = p.vllm.meta.platforms; };
    torch = { inherit (p.torch) cudaCapabilities; cuda = p.torch.cudaPackages.cudaMajorMinorVersion; };
    bitsandbytes = { inherit (p.bitsandbytes) cmakeFlags vllmVariantsComputeCapability; };
    resolved = p.resolved;
    xformers = { inherit (ps.xformers) TORCH_CUDA_ARCH_LIST prePhases; };
    # what vllm is compiled with: torch's stdenv, which must be nvcc's (issue #23)
    vllmStdenv = {
      isBackend = p.vllm.stdenv.drvPath == p.pkgs.cudaPackages.backendStdenv.drvPath;
      cc = p.vllm.stdenv.cc.version;
    };
    flashinfer = { inherit (ps.flashinfer) FLASHINFER_CUDA_ARCH_LIST; };
    setVllmIsThisVllm = ps.vllm.drvPath == p.vllm.drvPath;
  }) set) packages
"""


TORCH_BIN = "2.9.0"  # the stand-in's torch-bin, lagging the source torch 2.9.1 as stored near the pin
WHEEL_CUDA = "12.8"  # torch-bin's x86_64 wheels are +cu128 (torch/bin/binary-hashes.nix)
BACKEND_GCC = "14.3.0"  # the stand-in's backendStdenv compiler (its default stdenv has gcc 15)


def bnb_runs(record: dict) -> list[tuple[str, str, str]]:
    return [(r["run"], r["COMPUTE_BACKEND"], r["COMPUTE_CAPABILITY"]) for r in record["cmakeRuns"]]


def cmake(flags: list[str], name: str) -> str | None:
    for flag in flags:
        key, _, value = flag.partition("=")
        if key.split(":")[0] == f"-D{name}":
            return value
    return None


@pytest.fixture(scope="module")
def flake(tmp_path_factory) -> str:
    return support.flake_ref(support.make_project(tmp_path_factory.mktemp("flake") / "p"))


@pytest.fixture(scope="module")
def facts(flake) -> dict:
    return support.nix_eval(flake, "packages", apply=FACTS)


@pytest.fixture(scope="module")
def built(flake) -> dict[str, Path]:
    """Every variant, built. aarch64 variants too: the stand-in's builders are
    the host's bash, so extra-platforms lets this x86_64 machine run them."""
    installables = [f"{flake}#{v.attr_path()}" for v in VARIANTS]
    env = support.nix_env("extra-platforms = aarch64-linux")
    proc = support.nix("build", "--json", "--no-link", *installables, *support.override(), env=env)
    outs = [Path(item["outputs"]["out"]) for item in json.loads(proc.stdout)]
    return dict(zip((v.name for v in VARIANTS), outs))


def test_each_system_exports_exactly_its_variants(facts):
    for system in MATRIX.systems:
        # every valid combination is a package (the default set is what hydraJobs builds)
        assert set(facts[system]) == {v.name for v in MATRIX.enabled if v.system == system}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_variant_derivations_carry_its_one_capability(facts, variant):
    f = facts[variant.system][variant.name]
    cap, sm = variant.capability, variant.sm
    assert f["envSystem"] == variant.system and f["vllm"]["system"] == variant.system
    # the Python package keeps its pname (nixpkgs' metadata check); the output carries the name
    assert f["vllm"]["pname"] == "vllm"
    assert f["vllm"]["name"] == f"python3.12-vllm-{f['versions']['vllm']}"
    assert f["envName"] == f"{variant.name}-{f['versions']['vllm']}"
    assert cmake(f["vllm"]["cmakeFlags"], "TORCH_CUDA_ARCH_LIST") == cap
    assert cmake(f["vllm"]["cmakeFlags"], "CUTLASS_NVCC_ARCHS_ENABLED") == sm
    assert set(f["torch"]["cudaCapabilities"]) == {cap}  # ["10.0", "10.0"] for B200, as nixpkgs has it
    # SASS alone: a bare "90" would make bitsandbytes' CMakeLists add compute_90 PTX (issue #25)
    assert f["bitsandbytes"]["vllmVariantsComputeCapability"] == f"{sm}-real"
    assert cmake(f["bitsandbytes"]["cmakeFlags"], "COMPUTE_CAPABILITY") is None
    assert f["resolved"]["arch"]["vllm"] == [cap] and f["resolved"]["cuda"]["torch"] == variant.cuda
    # xformers and flashinfer take torch.cudaCapabilities, duplicates and all
    assert set(f["xformers"]["TORCH_CUDA_ARCH_LIST"].split(";")) == {cap}
    assert set(f["flashinfer"]["FLASHINFER_CUDA_ARCH_LIST"].split(";")) == {cap}
    assert f["torch"]["cuda"] == variant.cuda and f["versions"]["cuda"] == variant.cuda
    assert variant.cuda == (WHEEL_CUDA if variant.torch_wheel else "12.9")
    assert "big-parallel" in f["vllm"]["requiredSystemFeatures"]
    assert f["vllm"]["platforms"] == [variant.system] == f["platforms"]
    assert "vllmVariantsClampJobsPhase" in f["xformers"]["prePhases"]
    assert f["setVllmIsThisVllm"], "python3xxPackages.vllm must be the per-SM vllm"


def test_vllm_is_compiled_with_the_cuda_backend_stdenv_on_every_row(facts):
    """nixpkgs builds vllm with torch.stdenv, which for the source torch is
    cudaPackages.backendStdenv: a compiler nvcc supports (issue #23). A torch = "wheel"
    row must keep that: torch-bin alone is built with the default stdenv, whose gcc is
    newer than CUDA 12.9's nvcc accepts at later pins (the stand-in's: gcc 15)."""
    rows = [v for v in MATRIX.enabled]
    assert any(v.torch_wheel for v in rows)
    for v in rows:
        got = facts[v.system][v.name]["vllmStdenv"]
        assert got == {"isBackend": True, "cc": BACKEND_GCC}, (v.name, got)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_description_is_built_from_the_pinned_versions(facts, variant):
    f = facts[variant.system][variant.name]
    assert f["versions"]["vllm"] == "0.15.1"  # the stand-in's (= the pin's) vllm
    assert f["description"] == (
        f"vLLM 0.15.1 for {', '.join(variant.gpus)} ({variant.arch}, SM {variant.sm}, CUDA {variant.cuda}"
        + (f", torch {TORCH_BIN} wheel)" if variant.torch_wheel else ")")
    )


PROBE = r"""
import json, pathlib, sys
import vllm, torch, bitsandbytes, xformers, flashinfer
def info(module):
    return json.loads((pathlib.Path(module.__file__).parent / "_nix_build.json").read_text())
print(json.dumps({
    "vllm": vllm.__version__, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
    "torch_arch": torch._C._cuda_getArchFlags(),
    "vllm_build": info(vllm), "torch_build": info(torch), "bnb_build": info(bitsandbytes),
    "xformers_build": info(xformers), "flashinfer_build": info(flashinfer),
}))
"""


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_built_result_reports_what_the_flake_asked_for(built, variant):
    out = built[variant.name]
    report = json.loads(
        subprocess.run([out / "bin" / "python", "-c", PROBE], check=True, capture_output=True, text=True).stdout
    )
    cap, sm = variant.capability, variant.sm
    torch = TORCH_BIN if variant.torch_wheel else "2.9.1"
    assert report["vllm"] == "0.15.1" and report["torch"] == torch
    # torch's arch list, read from its compiled kernel (issue #25): what the host nvcc could compile
    host = support.host_nvcc_sms()
    if variant.torch_wheel:  # the upstream cu128 wheel: every SM, built with and linked to CUDA 12.8
        assert report["torch_cuda"] == WHEEL_CUDA == report["torch_build"]["cuda"]["cuda"] == variant.cuda
        wheel = [f"sm_{s}" for s in ("70", "75", "80", "86", "90", "100", "120") if s in host]
        assert report["torch_arch"] == " ".join(wheel + (["compute_120"] if "120" in host else []))
    else:
        assert report["torch_cuda"] == "12.9"
        assert report["torch_arch"] == (f"sm_{sm}" if variant.sm_number in host else None)
    assert cmake(report["vllm_build"]["cmakeFlags"], "TORCH_CUDA_ARCH_LIST") == cap
    assert report["vllm_build"]["cuda"]["cuda_nvcc"].startswith(f"{variant.cuda}.")
    # vllm and xformers were compiled with nvcc's compiler (backendStdenv's), on every row
    assert report["vllm_build"]["standinCcVersion"] == BACKEND_GCC == report["xformers_build"]["standinCcVersion"]
    # both of bitsandbytes' CMake runs (cmake phase, then scikit-build-core in the
    # wheel build) configure CUDA for this SM alone
    real = f"{sm}-real"
    assert bnb_runs(report["bnb_build"]) == [("cmake-phase", "cuda", real), ("scikit-build-core", "cuda", real)]
    assert set(report["xformers_build"]["TORCH_CUDA_ARCH_LIST"].split(";")) == {cap}
    assert set(report["flashinfer_build"]["FLASHINFER_CUDA_ARCH_LIST"].split(";")) == {cap}
    # the result's own metadata, as smoke reads it
    claimed = json.loads((out / "share" / "vllm-variants" / "variant.json").read_text())
    assert {k: claimed[k] for k in variant.to_json()} == variant.to_json()
    assert claimed["versions"] == {"vllm": "0.15.1", "torch": torch, "python": "3.12.12", "cuda": variant.cuda}
    assert claimed.get("torchWheel") == (
        {"version": TORCH_BIN, "vllmPackagedWith": "2.9.1"} if variant.torch_wheel else None
    )
    version = subprocess.run([out / "bin" / "vllm", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == "0.15.1"


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_closure_holds_one_bitsandbytes_and_one_torch(built, variant):
    closure = support.nix("path-info", "--recursive", built[variant.name]).stdout.split()
    bnb = [p for p in closure if "-bitsandbytes-" in p]
    assert len(bnb) == 1, bnb
    torch = [p for p in closure if "-python3.12-torch-" in p]
    assert len(torch) == 1 and torch[0].endswith(f"-torch-{TORCH_BIN if variant.torch_wheel else '2.9.1'}"), torch


def test_description_follows_the_pinned_vllm_version(flake, standin):
    newer = standin(vllmVersion="0.16.0")
    got = support.nix_eval(flake, "packages.x86_64-linux.vllm-python312-cuda12_9-sm90.meta.description", standin=newer)
    assert got == "vLLM 0.16.0 for H100, H200, H20 (Hopper, SM 90, CUDA 12.9)"


@pytest.mark.parametrize("cores", [64, 1])
def test_heavy_builds_clamp_jobs_to_ram_at_build_time(flake, standin, cores, tmp_path):
    fresh = standin(salt=f"jobs-{cores}-{tmp_path.name}")  # new derivations: really build
    attr = f"{flake}#packages.x86_64-linux.vllm-python312-cuda12_9-sm90"
    support.nix("build", "--no-link", attr, *support.override(fresh), "--cores", str(cores))
    out = support.nix("eval", "--raw", f"{attr}.outPath", *support.override(fresh)).stdout
    site = Path(out) / "lib" / "python3.12" / "site-packages"
    record = lambda module: json.loads((site / module / "_nix_build.json").read_text())  # noqa: E731

    # the planner's rule (vllm_variants.resources) is the one the build applied
    expected = nvcc_jobs(cores, Host.detect().mem_bytes, MATRIX.ram_per_job_gib)
    for module in ("vllm", "torch", "xformers", "flashinfer"):
        assert int(record(module)["NIX_BUILD_CORES"]) == expected, module
        # what the package's own build tool reads (MAX_JOBS, which each copies from NIX_BUILD_CORES)
        assert record(module)["buildJobs"] == expected, (module, record(module).get("buildJobsFrom"))
    # Not a heavy build: Nix's own --cores reaches it untouched.
    assert int(record("bitsandbytes")["NIX_BUILD_CORES"]) == cores
    # Nothing machine-specific is baked into the derivation.
    drv = json.loads(support.nix("derivation", "show", attr, *support.override(fresh)).stdout)
    (env,) = [d["env"] for d in drv.values()]
    assert "NIX_BUILD_CORES" not in env and "MAX_JOBS" not in env


def test_unsupported_sm_fails_naming_sm_and_pin(flake, standin):
    # vllm 0.11.0 in nixpkgs: Blackwell commented out of the supported list
    no_blackwell = standin(vllmSupportedCapabilities=support.NO_BLACKWELL)
    proc = support.nix(
        "eval",
        f"{flake}#packages.x86_64-linux.vllm-python312-cuda12_9-sm100.drvPath",
        *support.override(no_blackwell),
        check=False,
    )
    assert proc.returncode != 0
    assert (
        "vllm-python312-cuda12_9-sm100: vllm 0.15.1 in nixpkgs path sha256-" in proc.stderr
        and "cannot target CUDA capability 10.0 (SM 100)" in proc.stderr
    )
    ok = support.nix(
        "eval",
        "--raw",
        f"{flake}#packages.x86_64-linux.vllm-python312-cuda12_9-sm90.drvPath",
        *support.override(no_blackwell),
    )
    assert ok.stdout.endswith(".drv")


def test_pin_in_messages_is_the_git_rev(tmp_path, flake):
    """With a git nixpkgs (as a pin is), the metadata names its commit."""
    repo = support.copy_standin(tmp_path / "nixpkgs-git")
    support.git(repo, "init", "-q")
    support.commit_all(repo, "stand-in")
    rev = support.git(repo, "rev-parse", "HEAD").stdout.strip()
    got = support.nix(
        "eval",
        "--raw",
        f"{flake}#packages.x86_64-linux.vllm-python312-cuda12_9-sm90.vllm.vllmVariantsInfo",
        "--override-input",
        "nixpkgs",
        f"git+file://{repo}",
    ).stdout
    assert json.loads(got)["pin"] == f"nixpkgs {rev}"


def test_hydra_jobs_one_per_variant_and_system(flake):
    jobs = support.nix_eval(flake, "hydraJobs", apply="builtins.mapAttrs (n: j: builtins.attrNames j)")
    assert jobs == {v.name: [v.system] for v in VARIANTS}


def test_flake_check_evaluates_every_variant(flake):
    proc = support.nix("flake", "check", flake, *support.override())
    assert proc.returncode == 0
    names = support.nix_eval(flake, "checks.x86_64-linux", apply="builtins.attrNames")
    assert set(names) == {v.name for v in VARIANTS if v.system == "x86_64-linux"}


def test_overlay_gives_another_flake_a_per_sm_vllm_from_its_own_nixpkgs(tmp_path, standin, flake):
    theirs = standin(vllmVersion="0.15.2")  # the consumer's nixpkgs, not our pin
    consumer = tmp_path / "consumer"
    consumer.mkdir()
    (consumer / "flake.nix").write_text(
        """
        {
          inputs.vllm-variants.url = "%s";
          inputs.nixpkgs.url = "path:%s";
          inputs.vllm-variants.inputs.nixpkgs.follows = "nixpkgs";
          outputs = { self, nixpkgs, vllm-variants }: {
            sm90 = (import nixpkgs {
              system = "x86_64-linux";
              overlays = [ vllm-variants.overlays.default ];
            }).vllmVariants.vllm-python312-cuda12_9-sm90;
          };
        }
        """
        % (flake, theirs)
    )
    got = json.loads(
        support.nix(
            "eval",
            "--json",
            f"path:{consumer}#sm90",
            "--no-write-lock-file",
            "--apply",
            "p: { inherit (p) name; inherit (p.vllm) version cmakeFlags; }",
        ).stdout
    )
    assert got["name"] == "vllm-python312-cuda12_9-sm90-0.15.2" and got["version"] == "0.15.2"
    assert cmake(got["cmakeFlags"], "TORCH_CUDA_ARCH_LIST") == "9.0"


def test_dev_shell_evaluates(flake):
    drv = support.nix("eval", "--raw", f"{flake}#devShells.x86_64-linux.default.drvPath", *support.override())
    assert drv.stdout.endswith("-nix-shell.drv")


def test_flake_lock_pins_the_real_nixpkgs():
    lock = json.loads((support.REPO / "flake.lock").read_text())
    locked = lock["nodes"]["nixpkgs"]["locked"]
    assert locked == {
        "lastModified": 1771369470,
        "narHash": "sha256-0NBlEBKkN3lufyvFegY4TYv5mCNHbi5OmBDrzihbBMQ=",
        "owner": "NixOS",
        "repo": "nixpkgs",
        "rev": "0182a361324364ae3f436a63005877674cf45efb",
        "type": "github",
    }
    assert (
        'inputs.nixpkgs.url = "github:NixOS/nixpkgs/0182a361324364ae3f436a63005877674cf45efb";'
        in (support.REPO / "flake.nix").read_text()
    )


def test_override_input_leaves_the_lock_alone(tmp_path):
    root = support.make_project(tmp_path / "p")
    before = (root / "flake.lock").read_bytes()
    support.nix(
        "build",
        "--no-link",
        f"{support.flake_ref(root)}#packages.x86_64-linux.vllm-python312-cuda12_9-sm80",
        *support.override(),
    )
    assert (root / "flake.lock").read_bytes() == before
    assert support.git(root, "status", "--porcelain").stdout == ""


@pytest.mark.parametrize("hook", ["joined", "per-arg"])
def test_bitsandbytes_targets_the_sm_under_either_scikit_build_core_hook(flake, standin, hook, tmp_path):
    """Which version of nixpkgs' scikit-build-core hook the pin has is not settled
    (tests/fixtures/nixpkgs/README.md): the flake must be right under both."""
    fresh = standin(scikitBuildCoreHook=hook, salt=f"skbuild-{hook}-{tmp_path.name}")
    attr = f"{flake}#packages.x86_64-linux.vllm-python312-cuda12_9-sm90"
    out = json.loads(support.nix("build", "--json", "--no-link", attr, *support.override(fresh)).stdout)[0]
    site = Path(out["outputs"]["out"]) / "lib" / "python3.12" / "site-packages"
    record = json.loads((site / "bitsandbytes" / "_nix_build.json").read_text())
    assert bnb_runs(record) == [("cmake-phase", "cuda", "90-real"), ("scikit-build-core", "cuda", "90-real")]


def test_next_pins_metadata_check_accepts_the_variant(flake, standin, tmp_path):
    """nixpkgs PR #532778 checks importlib.metadata.version("$pname"): vllm keeps its pname."""
    later = standin(pythonMetadataCheck=True, salt=f"metadata-{tmp_path.name}")
    attr = f"{flake}#packages.x86_64-linux.vllm-python312-cuda12_9-sm90"
    proc = support.nix("build", "--no-link", "--print-out-paths", attr, *support.override(later), check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        support.nix_eval(flake, "packages.x86_64-linux.vllm-python312-cuda12_9-sm90.vllm.pname", standin=later)
        == "vllm"
    )


def test_one_cuda_version_in_each_instance(facts_cuda):
    for name, got in facts_cuda.items():
        variant = MATRIX.by_name(name)
        assert set(got.values()) == {variant.cuda}, (name, got)


@pytest.fixture(scope="module")
def facts_cuda(flake) -> dict:
    return support.nix_eval(
        flake,
        "packages.x86_64-linux",
        apply="""
      builtins.mapAttrs (name: p: {
        cudaPackages = p.pkgs.cudaPackages.cudaMajorMinorVersion;
        cudaPackages_12 = p.pkgs.cudaPackages_12.cudaMajorMinorVersion;
        torch = p.torch.cudaPackages.cudaMajorMinorVersion;
        bitsandbytes = p.bitsandbytes.cudaPackages.cudaMajorMinorVersion;
      })""",
    )


def test_an_unrelated_vllm_failure_is_reported_as_itself(flake, standin):
    """Only the arch decision becomes "cannot target capability"; anything else in
    vllm's cmakeFlags (here: its cutlass source) fails with its own message."""
    broken = standin(vllmCutlassError="cutlass-source: hash mismatch in fixed-output derivation")
    proc = support.nix(
        "eval",
        f"{flake}#packages.x86_64-linux.vllm-python312-cuda12_9-sm90.drvPath",
        *support.override(broken),
        check=False,
    )
    assert proc.returncode != 0
    assert "cutlass-source: hash mismatch" in proc.stderr
    assert "cannot target CUDA capability" not in proc.stderr


def test_the_pins_facts_in_the_matrix_agree_with_the_stand_in(tmp_path):
    """Issue #15: validity comes from [pin] in nix/variants.toml. With [pin] taken out,
    every combination is offered, and the stand-in (which carries the real lists)
    must refuse exactly the ones [pin] disables: the facts are the pin's, not hopes."""
    from vllm_variants.matrix import tomllib  # tomli on Python 3.10

    root = support.make_project(tmp_path / "p", git_init=False)
    toml = root / "nix" / "variants.toml"
    text = toml.read_text()
    start = text.index("\n[pin]\n")
    end = text.index("\n[[sm]]", start)
    support.write_matrix(root, text[:start] + "\n" + text[end:])
    unchecked = Matrix.load(toml)
    assert "pin" not in tomllib.loads(toml.read_text())
    names = [v.name for v in unchecked.enabled]
    env = {**support.nix_env(), "VLLM_VARIANTS_EVAL_NAMES": json.dumps(names)}
    got = json.loads(
        support.nix(
            "eval",
            "--json",
            "--impure",
            f"{support.flake_ref(root)}#lib.resolve",
            "--apply",
            "resolve: builtins.mapAttrs (n: r: r.ok) (resolve (builtins.fromJSON "
            '(builtins.getEnv "VLLM_VARIANTS_EVAL_NAMES")))',
            *support.override(),
            env=env,
        ).stdout
    )
    offered = {v.name for v in MATRIX.enabled}
    assert {n for n, ok in got.items() if ok} == offered & set(names)
    refused = {n for n, ok in got.items() if not ok}
    assert refused and all(MATRIX.by_name(n).disabled for n in refused), refused


WHEEL = next(v for v in MATRIX.default_set if v.torch_wheel)


@pytest.mark.parametrize("torch_bin", ["2.9.0", "2.9.1", "2.10.0"])
def test_the_wheel_rows_build_gets_past_the_build_system_check(flake, standin, torch_bin, tmp_path):
    """vllm's pyproject.toml pins its torch in [build-system] (postPatch makes it
    `torch >= 2.9.1`; pythonRelaxDeps does not reach it) and nixpkgs' pypa build hook
    checks it (no --skip-dependency-check): a torch-bin that lags the source torch stops
    the build before anything compiles, unless the flake relaxes that one requirement.
    Which torch-bin the pin carries is not settled (2.9.0, 2.9.1 and 2.10.0 are stored)."""
    fresh = standin(torchBinVersion=torch_bin, salt=f"buildsystem-{torch_bin}-{tmp_path.name}")
    attr = f"{flake}#{WHEEL.attr_path()}"
    proc = support.nix("build", "--no-link", "--print-out-paths", attr, *support.override(fresh), check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERROR Missing dependencies" not in proc.stderr
    site = Path(proc.stdout.strip()) / "lib" / "python3.12" / "site-packages"
    assert json.loads((site / "torch" / "_nix_build.json").read_text())["version"] == torch_bin
    # relaxed only where torch-bin lags: a pin whose torch-bin meets it keeps the check whole
    relaxes = support.nix_eval(
        flake, f"{WHEEL.attr_path()}.vllm", apply="v: v.vllmVariantsRelaxedBuildSystem or false", standin=fresh
    )
    assert relaxes == (torch_bin == "2.9.0")


def test_a_torch_wheel_row_lives_on_the_wheels_cuda_line(tmp_path):
    """torch-bin's x86_64 wheels are +cu128 (binary-hashes.nix) and it links its
    instance's cudaPackages: a wheel row on CUDA 12.9 puts a 12.8 wheel on 12.9
    libraries. [pin] carries the wheel's line and the matrix disables a wheel row on
    another line with that reason (both sides); the flake reads the line back from
    torch-bin's own src, so a matrix without the fact fails evaluation, naming it."""
    wheels = [(v.name, v.cuda, v.min_driver, v.disabled) for v in MATRIX.variants if v.torch_wheel]
    assert wheels == [("vllm-python312-cuda12_8-sm90-torchbin", WHEEL_CUDA, 570, None)]
    root = support.make_project(tmp_path / "p", git_init=False)
    toml = root / "nix" / "variants.toml"
    support.write_matrix(
        root,
        toml.read_text()
        + '\n[[variant]]\nsm = "90"\ncapability = "9.0"\narch = "Hopper"\ngpus = ["H100"]\n'
        + 'system = "x86_64-linux"\ntorch = "wheel"\ncuda = "12.9"\ndefault = false\n',
    )
    twin = "vllm-python312-cuda12_9-sm90-torchbin"
    reason = 'torch-bin 2.9.0 at the pin is a CUDA 12.8 wheel: a torch = "wheel" row must be on CUDA 12.8'
    python_view = Matrix.load(toml)
    assert python_view.by_name(twin).disabled == reason
    ref = support.flake_ref(root)
    assert support.nix_eval(ref, "lib.variants") == python_view.to_json()
    assert twin not in support.nix_eval(ref, "packages.x86_64-linux", apply="builtins.attrNames")
    # without the fact in [pin], the flake itself refuses the row
    support.write_matrix(root, toml.read_text().replace('torch_bin_cuda = "12.8"', ""))
    assert not Matrix.load(toml).by_name(twin).disabled
    proc = support.nix("eval", f"{ref}#packages.x86_64-linux.{twin}.drvPath", *support.override(), check=False)
    assert proc.returncode != 0
    assert (
        f"{twin}: nixpkgs' torch-bin 2.9.0 is a CUDA 12.8 wheel (download.pytorch.org/whl/cu128/...); "
        'a torch = "wheel" row must be on CUDA 12.8, not 12.9'
    ) in proc.stderr


def test_a_builder_without_big_parallel_refuses_vllm(flake, standin, tmp_path):
    """vllm (as nixpkgs' torch) requires the big-parallel system feature; Nix itself
    refuses to build it on a machine that does not advertise it (a remote builder must)."""
    fresh = standin(salt=f"features-{tmp_path.name}")
    attr = f"{flake}#packages.x86_64-linux.vllm-python312-cuda12_9-sm90"
    proc = support.nix(
        "build", "--no-link", attr, *support.override(fresh), "--option", "system-features", "kvm", check=False
    )
    assert proc.returncode != 0
    assert "with features {big-parallel} is required to build" in proc.stderr
    assert "-python3.12-torch-2.9.1.drv" in proc.stderr or "-python3.12-vllm-0.15.1.drv" in proc.stderr
