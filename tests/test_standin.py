"""The nixpkgs stand-in has teeth: a flake that would be wrong against real
nixpkgs fails here too.

Each mutation below breaks the flake the way a plausible mistake would, with
the flake's own read-back guard (`assert checked;` in nix/variant.nix) taken
out, so that only the stand-in's nixpkgs semantics can catch it. The second
half checks those semantics directly (the behaviour read from nixpkgs).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import support

pytestmark = pytest.mark.nix

SM90 = "packages.x86_64-linux.vllm-python312-cuda12_9-sm90"
SM90_WHEEL = "packages.x86_64-linux.vllm-python312-cuda12_8-sm90-torchbin"


def mutated(tmp_path: Path, edits: dict[str, list[tuple[str, str]]]) -> str:
    return support.flake_ref(support.mutated_project(tmp_path / "mutant", edits))


def build(flake: str, attr: str = SM90, check: bool = True, standin: Path = support.STANDIN):
    return support.nix("build", "--json", "--no-link", f"{flake}#{attr}", *support.override(standin), check=check)


def built_info(flake: str, module: str, attr: str = SM90) -> dict:
    out = json.loads(build(flake, attr).stdout)[0]["outputs"]["out"]
    probe = f"import json, {module}, pathlib; print((pathlib.Path({module}.__file__).parent / '_nix_build.json').read_text())"
    return json.loads(
        subprocess.run([f"{out}/bin/python", "-c", probe], capture_output=True, text=True, check=True).stdout
    )


def test_guard_removed_flake_still_builds(tmp_path):
    """The baseline: taking the guard out alone breaks nothing."""
    info = built_info(mutated(tmp_path, {}), "vllm")
    assert info["cuda"]["cuda"] == "12.9"


def test_forgetting_allow_unfree_is_refused(tmp_path):
    flake = mutated(tmp_path, {"nix/variant.nix": [("allowUnfree = true;", "")]})
    proc = build(flake, check=False)
    assert proc.returncode != 0
    assert "has an unfree license (‘CUDA EULA’)" in proc.stderr
    assert "Refusing to evaluate package 'cuda12.9-" in proc.stderr


def test_typo_in_a_config_key_builds_every_default_arch(tmp_path):
    flake = mutated(tmp_path, {"nix/variant.nix": [("cudaCapabilities = [", "cudaCapabilites = [")]})
    info = built_info(flake, "vllm")
    assert info["cmakeFlags"][0] == "-DTORCH_CUDA_ARCH_LIST:STRING=7.5;8.0;8.6;8.9;9.0;10.0;10.3;12.0;12.1"


def test_without_the_cuda_overlay_the_build_uses_cuda_12_8(tmp_path):
    flake = mutated(
        tmp_path,
        {
            "nix/overlays/cuda.nix": [
                ("cudaPackages = final.${variant.cuda_packages};", ""),
                ('"cudaPackages_${cudaMajor}" = final.${variant.cuda_packages};', ""),
            ]
        },
    )
    info = built_info(flake, "vllm")
    assert info["cuda"]["cuda"] == "12.8"


def test_forward_compat_left_on_is_visible_in_flags(tmp_path):
    flake = mutated(tmp_path, {"nix/variant.nix": [("cudaForwardCompat = false;", "")]})
    arches = support.nix_eval(flake, f"{SM90}.pkgs.cudaPackages.flags.arches")
    assert arches == ["sm_90", "compute_90"]


def test_bitsandbytes_for_every_arch_hits_the_cccl_bug(tmp_path):
    flake = mutated(
        tmp_path, {"nix/overlays/bitsandbytes.nix": [('postPatch = (old.postPatch or "") + bitsandbytesOneSm;', "")]}
    )
    proc = build(flake, check=False)
    assert proc.returncode != 0
    assert "_CCCL_PP_SPLICE_WITH_IMPL20" in proc.stderr


def test_a_compute_capability_cmake_flag_reaches_the_second_cmake_run_glued_on(tmp_path):
    """The first round's fix (a -DCOMPUTE_CAPABILITY cmakeFlag): the cmake phase
    gets it, but nixpkgs' scikit-build-core hook hands cmakeFlags to the second
    run as one argument, so COMPUTE_BACKEND swallows it and that run builds the
    CPU library (or, per-arg, is fine): a flake that relied on it is wrong."""
    flake = mutated(
        tmp_path,
        {
            "nix/overlays/bitsandbytes.nix": [
                (
                    'postPatch = (old.postPatch or "") + bitsandbytesOneSm;',
                    'cmakeFlags = (old.cmakeFlags or [ ]) ++ [ (lib.cmakeFeature "COMPUTE_CAPABILITY" variant.sm) ];',
                )
            ]
        },
    )
    runs = built_info(flake, "bitsandbytes")["cmakeRuns"]
    assert [(r["run"], r["COMPUTE_BACKEND"], r["COMPUTE_CAPABILITY"]) for r in runs] == [
        ("cmake-phase", "cuda", "90"),
        ("scikit-build-core", "cuda -DCOMPUTE_CAPABILITY:STRING=90", "${POSSIBLE_CAPABILITIES}"),
    ]


def test_bitsandbytes_swapped_only_in_vllm_inputs_still_builds_the_stock_one(tmp_path):
    """compressed-tensors keeps the stock bitsandbytes, which fails under 12.9."""
    flake = mutated(
        tmp_path,
        {
            "nix/overlays/bitsandbytes.nix": [
                ("bitsandbytes = pyPrev.bitsandbytes.overrideAttrs", "bnbPerSm = pyPrev.bitsandbytes.overrideAttrs"),
            ],
            "nix/overlays/vllm.nix": [
                (
                    "vllm = (clampJobs pyPrev.vllm)",
                    "vllm = (clampJobs (pyPrev.vllm.override { bitsandbytes = pyFinal.bnbPerSm; }))",
                ),
            ],
        },
    )
    proc = build(flake, check=False)
    assert proc.returncode != 0
    assert "python3.12-bitsandbytes-0.48.2.drv' failed" in proc.stderr
    assert "_CCCL_PP_SPLICE_WITH_IMPL20" in proc.stderr


def test_two_bitsandbytes_in_the_closure_fail_the_build(tmp_path):
    flake = mutated(
        tmp_path,
        {
            "nix/overlays/vllm.nix": [
                (
                    "vllm = (clampJobs pyPrev.vllm)",
                    "vllm = (clampJobs (pyPrev.vllm.override { bitsandbytes = pyFinal.bitsandbytes.overrideAttrs"
                    ' { NVCC_APPEND_FLAGS = "-lineinfo"; }; }))',
                ),
            ]
        },
    )
    proc = build(flake, check=False)
    assert proc.returncode != 0
    assert "Found duplicated packages in closure for dependency 'bitsandbytes'" in proc.stderr


def test_per_sm_vllm_made_outside_the_package_set_is_not_in_the_env(tmp_path):
    """ps.vllm stays the stock one when the per-SM vllm is an overrideAttrs beside the set."""
    flake = mutated(
        tmp_path,
        {
            "nix/overlays/vllm.nix": [
                ("vllm = (clampJobs pyPrev.vllm).overrideAttrs", "vllmPerSm = (clampJobs pyPrev.vllm).overrideAttrs")
            ]
        },
    )
    info = built_info(flake, "vllm")
    assert "big-parallel" not in info.get("requiredSystemFeatures", "")
    assert "buildJobsFrom" in info and info["pname"] == "vllm"


# -- the torch-bin row (issue #14): what a flake that forgets a step meets -------

WHEEL_PASSTHRU = """passthru = (old.passthru or { }) // {
                cudaSupport = true;
                rocmSupport = false;
                inherit (final) cudaPackages;
                # what packages built against this torch target: the variant's SM
                cudaCapabilities = [ variant.capability ];
                vllmVariantsSourceTorchVersion = pyPrev.torch.version;
              };"""
WHEEL_ON_BACKEND = """(pyPrev.torch-bin.override {
            buildPythonPackage = pyPrev.buildPythonPackage.override { stdenv = final.cudaPackages.backendStdenv; };
          })"""


def test_torch_bin_as_is_does_not_evaluate_under_xformers(tmp_path):
    """torch-bin has no passthru.cudaCapabilities (nor cudaSupport): swapping it in bare fails."""
    flake = mutated(tmp_path, {"nix/overlays/torch-bin.nix": [(WHEEL_PASSTHRU, "")]})
    proc = support.nix("eval", f"{flake}#{SM90_WHEEL}.drvPath", *support.override(), check=False)
    assert proc.returncode != 0
    assert "attribute 'cudaCapabilities' missing" in proc.stderr or "attribute 'cudaSupport' missing" in proc.stderr


def test_torch_bin_swapped_in_vllm_alone_gives_two_torches(tmp_path):
    flake = mutated(
        tmp_path,
        {
            "nix/overlays/torch-bin.nix": [
                ("        if torchIsWheel then\n", "        if false then\n"),
            ],
            "nix/overlays/vllm.nix": [
                (
                    "vllm = (clampJobs pyPrev.vllm)",
                    "vllm = (clampJobs (pyPrev.vllm.override { torch = pyPrev.torch-bin.overrideAttrs (old: { "
                    + WHEEL_PASSTHRU
                    + " }); }))",
                ),
            ],
        },
    )
    proc = build(flake, SM90_WHEEL, check=False)
    assert proc.returncode != 0
    assert "Found duplicated packages in closure for dependency 'torch'" in proc.stderr


def test_torch_bin_lagging_vllm_pin_fails_unless_relaxed(tmp_path, standin):
    """A pin whose vllm does not relax its torch pin: the flake relaxes exactly that one."""
    strict = standin(vllmRelaxDeps=[])
    info = built_info_with(support.flake_ref(support.make_project(tmp_path / "p", git_init=False)), strict)
    assert info["version"] == "0.15.1"
    flake = mutated(
        tmp_path,
        {
            "nix/overlays/vllm.nix": [
                (
                    "lib.optionalAttrs (torchIsWheel && pyFinal.torch.version != pyPrev.torch.version)",
                    "lib.optionalAttrs false",
                )
            ]
        },
    )
    proc = build(flake, SM90_WHEEL, check=False, standin=strict)
    assert proc.returncode != 0
    assert "torch==2.9.1 not satisfied by version 2.9.0" in proc.stderr


def test_torch_bin_on_its_own_stdenv_compiles_vllm_with_the_default_compiler(tmp_path):
    """torch-bin comes with the plain stdenv; nixpkgs builds vllm with torch.stdenv, so a
    wheel row that takes torch-bin as it is compiles vllm with the default compiler (gcc 15
    here, newer than nvcc 12.x accepts) where every source row uses nvcc's backendStdenv.
    The stand-in shows it in the build; the flake's read-back refuses it at evaluation."""
    edits = {"nix/overlays/torch-bin.nix": [(WHEEL_ON_BACKEND, "pyPrev.torch-bin")]}
    info = built_info(mutated(tmp_path / "unguarded", edits), "vllm", SM90_WHEEL)
    assert info["standinCcVersion"] == "15.2.0" and info["CC"] == "cc"
    guarded = support.make_project(tmp_path / "guarded", git_init=False)
    overlay = guarded / "nix" / "overlays" / "torch-bin.nix"
    overlay.write_text(overlay.read_text().replace(WHEEL_ON_BACKEND, "pyPrev.torch-bin"))
    proc = support.nix("eval", f"{support.flake_ref(guarded)}#{SM90_WHEEL}.drvPath", *support.override(), check=False)
    assert proc.returncode != 0
    assert (
        "vllm-python312-cuda12_8-sm90-torchbin: vllm is built with gcc-wrapper-15.2.0, not with "
        "cudaPackages.backendStdenv's gcc-wrapper-14.3.0, the one nvcc 12.8 supports"
    ) in proc.stderr


def test_the_build_system_torch_pin_stops_the_wheel_row_unless_relaxed(tmp_path):
    """vllm's [build-system] pins torch (`torch >= 2.9.1` after nixpkgs' postPatch) and the
    pypa build hook checks it: torch-bin 2.9.0 stops the build before anything compiles.
    pythonRelaxDeps (true already) does not reach it."""
    flake = mutated(
        tmp_path,
        {
            "nix/overlays/vllm.nix": [
                (
                    "lib.optionalAttrs (torchIsWheel && lib.versionOlder pyFinal.torch.version pyPrev.torch.version)",
                    "lib.optionalAttrs false",
                )
            ]
        },
    )
    proc = build(flake, SM90_WHEEL, check=False)
    assert proc.returncode != 0
    assert "ERROR Missing dependencies:" in proc.stderr
    assert "torch>=2.9.1" in proc.stderr.split("ERROR Missing dependencies:")[1]


def built_info_with(flake: str, standin: Path) -> dict:
    out = json.loads(build(flake, SM90_WHEEL, standin=standin).stdout)[0]["outputs"]["out"]
    site = Path(out) / "lib" / "python3.12" / "site-packages"
    return json.loads((site / "vllm" / "_nix_build.json").read_text())


# -- nixpkgs semantics, directly -------------------------------------------------


def standin_eval(expr: str, *, standin: Path = support.STANDIN, check: bool = True):
    return support.nix("eval", "--json", "--impure", "--expr", f"let nixpkgs = {standin}; in {expr}", check=check)


def test_default_cuda_is_12_8_and_12_9_is_its_own_set():
    got = json.loads(
        standin_eval("""
      let pkgs = import nixpkgs { system = "x86_64-linux"; }; in {
        default = pkgs.cudaPackages.cudaMajorMinorVersion;
        twelve = pkgs.cudaPackages_12.cudaMajorMinorVersion;
        v129 = pkgs.cudaPackages_12_9.cudaMajorMinorVersion;
        defaults129 = pkgs.cudaPackages_12_9.flags.cudaCapabilities;
      }""").stdout
    )
    assert got == {
        "default": "12.8",
        "twelve": "12.8",
        "v129": "12.9",
        "defaults129": ["7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "10.3", "12.0", "12.1"],
    }


def test_flags_follow_nixpkgs_format_capabilities():
    flags = json.loads(
        standin_eval("""
      builtins.removeAttrs (import nixpkgs { system = "x86_64-linux"; config.cudaCapabilities = [ "7.5" "8.6" ]; })
        .cudaPackages.flags [ "dropDots" ]
    """).stdout
    )
    assert {k: flags[k] for k in ("archNames", "realArches", "arches", "gencode", "cmakeCudaArchitecturesString")} == {
        "archNames": ["Ampere", "Turing"],
        "realArches": ["sm_75", "sm_86"],
        "arches": ["sm_75", "sm_86", "compute_86"],
        "gencode": [
            "-gencode=arch=compute_75,code=sm_75",
            "-gencode=arch=compute_86,code=sm_86",
            "-gencode=arch=compute_86,code=compute_86",
        ],
        "cmakeCudaArchitecturesString": "75;86",
    }


def test_unknown_config_keys_pass_silently_unless_warned():
    quiet = standin_eval(
        '(import nixpkgs { system = "x86_64-linux"; config.cudaCapabilites = [ "9.0" ]; })'
        ".cudaPackages.flags.cudaCapabilities"
    )
    assert "undeclared" not in quiet.stderr and json.loads(quiet.stdout)[0] == "7.5"
    loud = standin_eval(
        '(import nixpkgs { system = "x86_64-linux"; config = { warnUndeclaredOptions = true;'
        ' cudaCapabilites = [ "9.0" ]; }; }).cudaPackages.flags.cudaCapabilities'
    )
    assert "undeclared Nixpkgs option set: config.cudaCapabilites" in loud.stderr


def test_declared_options_are_type_checked():
    proc = standin_eval(
        '(import nixpkgs { system = "x86_64-linux"; config.cudaCapabilities = "9.0"; }).config', check=False
    )
    assert "is not of type `list of string'" in proc.stderr


def test_unsupported_capability_fails_as_soon_as_flags_are_read():
    """The capability assertions live with backendStdenv; nixpkgs derives flags
    from it, so reading flags alone fails (NIXPKGS-FACTS.md)."""
    proc = standin_eval(
        """
      (import nixpkgs { system = "x86_64-linux"; config = { allowUnfree = true; cudaSupport = true;
        cudaCapabilities = [ "10.3" ]; }; }).cudaPackages.flags.cudaCapabilities
    """,
        check=False,
    )
    assert proc.returncode != 0 and 'Unsupported CUDA capabilities: ["10.3"]' in proc.stderr


def test_torch_keeps_the_duplicate_in_its_capability_list():
    """torch 2.9.1's list holds "10.0" twice (nixpkgs 6b516b42) and intersectLists
    keeps duplicates: nixpkgs itself accepts ["10.0" "10.0"]."""
    got = json.loads(
        standin_eval("""
      let torchFor = cap: (import nixpkgs { system = "x86_64-linux"; config = { allowUnfree = true;
        cudaSupport = true; cudaCapabilities = [ cap ]; }; }).python312Packages.torch;
      in { b200 = (torchFor "10.0").cudaCapabilities; h100 = (torchFor "9.0").cudaCapabilities;
           thor = (torchFor "10.1").cudaCapabilities;
           thor13 = builtins.tryEval (builtins.deepSeq (torchFor "11.0").cudaCapabilities true); }""").stdout
    )
    # 10.1 (Jetson Thor before CUDA 13) is on torch 2.9.1's list; 11.0 is not, and CUDA 12.8 refuses it
    assert got == {
        "b200": ["10.0", "10.0"],
        "h100": ["9.0"],
        "thor": ["10.1"],
        "thor13": {"success": False, "value": False},
    }


def test_vllm_intersection_order_and_gpu_targets_priority():
    got = json.loads(
        standin_eval("""
      let pkgs = import nixpkgs { system = "x86_64-linux"; config = { allowUnfree = true; cudaSupport = true;
        cudaCapabilities = [ "9.0" "8.0" ]; }; };
      in {
        default = pkgs.python312Packages.vllm.cmakeFlags;
        forced = (pkgs.python312Packages.vllm.override { gpuTargets = [ "8.9" ]; }).cmakeFlags;
      }""").stdout
    )
    assert got["default"][0] == "-DTORCH_CUDA_ARCH_LIST:STRING=8.0;9.0"  # vllm's list order
    assert got["forced"][0] == "-DTORCH_CUDA_ARCH_LIST:STRING=8.9"


def test_overlays_must_be_a_list_of_functions():
    proc = standin_eval('(import nixpkgs { system = "x86_64-linux"; overlays = [ {} ]; }).stdenv', check=False)
    assert "All overlays passed to nixpkgs must be functions." in proc.stderr


def test_system_is_required_in_pure_evaluation(tmp_path):
    flake = tmp_path / "f"
    flake.mkdir()
    (flake / "flake.nix").write_text(
        '{ inputs.nixpkgs.url = "path:%s"; outputs = { self, nixpkgs }: { x = (import nixpkgs { }).stdenv.hostPlatform.system; }; }'
        % support.STANDIN
    )
    proc = support.nix("eval", f"path:{flake}#x", "--no-write-lock-file", check=False)
    assert proc.returncode != 0 and "currentSystem" in proc.stderr


def test_torch_bin_is_the_wheel_with_no_passthru():
    got = json.loads(
        standin_eval("""
      let pkgsFor = system: import nixpkgs { inherit system; config = { allowUnfree = true; cudaSupport = true;
        cudaCapabilities = [ "9.0" ]; }; };
          bin = (pkgsFor "x86_64-linux").python312Packages.torch-bin;
          arm = (pkgsFor "aarch64-linux").python312Packages.torch-bin;
      in { inherit (bin) pname version; caps = bin ? cudaCapabilities; support = bin ? cudaSupport;
           x86Cuda = bin ? CUDA_HOME; armCuda = arm ? CUDA_HOME; }""").stdout
    )
    assert got == {
        "pname": "torch",
        "version": "2.9.0",
        "caps": False,
        "support": False,
        "x86Cuda": True,
        "armCuda": False,
    }


def test_torch_bin_is_the_cu128_wheel_linked_to_the_instances_cuda():
    """binary-hashes.nix: the x86_64 wheel is +cu128 (the CPU wheel on aarch64), and
    torch-bin links whatever cudaPackages its instance has: a CUDA 12.9 instance gives
    a CUDA 12.8 wheel on 12.9 libraries. It is built with the default stdenv."""
    got = json.loads(
        standin_eval("""
      let pkgsFor = system: cuda: import nixpkgs { inherit system; config = { allowUnfree = true;
        cudaSupport = true; cudaCapabilities = [ "9.0" ]; }; overlays = [ (f: p: { cudaPackages = f.${cuda}; }) ]; };
          bin = cuda: (pkgsFor "x86_64-linux" cuda).python312Packages.torch-bin;
          arm = (pkgsFor "aarch64-linux" "cudaPackages_12_8").python312Packages.torch-bin;
      in { x86 = (bin "cudaPackages_12_9").src.urls; arm = arm.src.urls;
           builtWith = (bin "cudaPackages_12_9").standinTorchBuiltWithCuda;
           links = map (d: d.name) (bin "cudaPackages_12_9").buildInputs;
           cc = (bin "cudaPackages_12_9").stdenv.cc.version; }""").stdout
    )
    assert got["x86"] == [
        "https://download.pytorch.org/whl/cu128/torch-2.9.0%2Bcu128-cp312-cp312-manylinux_2_28_x86_64.whl"
    ]
    assert got["arm"] == [
        "https://download.pytorch.org/whl/cpu/torch-2.9.0%2Bcpu-cp312-cp312-manylinux_2_28_aarch64.whl"
    ]
    assert got["builtWith"] == "12.8"
    assert "cuda12.9-cuda_cudart-12.9.79" in got["links"]
    assert got["cc"] == "15.2.0"


def test_backend_stdenv_carries_a_compiler_nvcc_supports():
    """backendStdenv.nix (c10e8fec): the default stdenv when its gcc is within the CUDA
    line's range (nvcc.nix: 6 to 14 for 12.8 and 12.9), else the newest supported gcc's."""
    expr = """
      let pkgs = import nixpkgs { system = "x86_64-linux"; config = { allowUnfree = true; cudaSupport = true;
        cudaCapabilities = [ "9.0" ]; }; };
      in { default = pkgs.stdenv.cc.version; backend = pkgs.cudaPackages_12_9.backendStdenv.cc.version;
           same = pkgs.cudaPackages_12_9.backendStdenv.drvPath == pkgs.stdenv.drvPath;
           torch = pkgs.python312Packages.torch.stdenv.cc.version;
           vllm = pkgs.python312Packages.vllm.stdenv.cc.version; }"""
    assert json.loads(standin_eval(expr).stdout) == {
        "default": "15.2.0",
        "backend": "14.3.0",
        "same": False,
        "torch": "14.3.0",
        "vllm": "14.3.0",
    }


def test_backend_stdenv_is_the_default_one_when_its_compiler_is_supported(tmp_path):
    older = support.copy_standin(tmp_path / "nixpkgs", defaultGccMajor=14)
    expr = """
      let pkgs = import nixpkgs { system = "x86_64-linux"; config = { allowUnfree = true; cudaSupport = true;
        cudaCapabilities = [ "9.0" ]; }; };
      in { backend = pkgs.cudaPackages_12_9.backendStdenv.cc.version;
           same = pkgs.cudaPackages_12_9.backendStdenv.drvPath == pkgs.stdenv.drvPath; }"""
    assert json.loads(standin_eval(expr, standin=older).stdout) == {"backend": "14.3.0", "same": True}


NVCC_TOO_NEW = "unsupported GNU version! gcc versions later than 14 are not supported!"


def test_nvcc_refuses_a_host_compiler_newer_than_its_lines_maximum(tmp_path):
    """A CUDA extension built the way torch's extension builder does it (nvcc gets
    -ccbin $CC, the stdenv's compiler): on the default stdenv (gcc 15) nvcc 12.9 refuses
    it; on backendStdenv (gcc 14) it builds; through CMake (setupCudaHook names
    backendStdenv's compiler) it builds on either stdenv."""
    fresh = support.copy_standin(tmp_path / "nixpkgs", salt=f"nvcc-{tmp_path.name}")

    def build(stdenv: str, route: str) -> subprocess.CompletedProcess[str]:
        expr = f"""
          let nixpkgs = {fresh}; pkgs = import nixpkgs {{ system = "x86_64-linux"; config = {{ allowUnfree = true;
            cudaSupport = true; cudaCapabilities = [ "9.0" ]; }}; }};
              cuda = pkgs.cudaPackages_12_9; ps = pkgs.python312Packages;
          in (ps.buildPythonPackage.override {{ stdenv = {stdenv}; }}) {{
            pname = "extension"; version = "1.0"; nativeBuildInputs = [ cuda.cuda_nvcc ];
            env = {{ CUDA_HOME = "${{cuda.cuda_nvcc}}"; standinNvccHost = "{route}"; }};
          }}"""
        return support.nix("build", "--no-link", "--impure", "--expr", expr, check=False)

    refused = build("pkgs.stdenv", "cc")
    assert refused.returncode != 0 and NVCC_TOO_NEW in refused.stderr, refused.stderr[-1500:]
    assert "nvcc: host compiler gcc 15.2.0 (cc)" in refused.stderr
    for stdenv, route in (("cuda.backendStdenv", "cc"), ("pkgs.stdenv", "backend")):
        proc = build(stdenv, route)
        assert proc.returncode == 0, (stdenv, route, proc.stderr[-1500:])


def device_code():
    """The stand-in's kernel compiler (cuda-modules/device-code/device-code.py), as a module.

    Loaded from its text: an import would write __pycache__ into the stand-in, which
    changes its `path:` hash, and so every store path, under the feet of the tests
    that build with it (conftest's standin listing holds the run to that)."""
    return support.load_file(
        support.STANDIN / "pkgs" / "development" / "cuda-modules" / "device-code" / "device-code.py"
    )


def test_reading_the_standins_scripts_leaves_it_as_it_was(tmp_path, monkeypatch):
    """The run's guard (conftest): a test that loads the stand-in's device-code.py
    writes nothing beside it (an import wrote __pycache__, and the stand-in's path:
    hash moved under the tests beside it), and a file added or rewritten is named."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as on CI (no PYTHONDONTWRITEBYTECODE)
    copy = support.copy_standin(tmp_path / "standin")
    before = support.standin_listing(copy)
    script = copy / "pkgs" / "development" / "cuda-modules" / "device-code" / "device-code.py"
    assert callable(support.load_file(script).torch_cmake)
    assert support.standin_changes(before, support.standin_listing(copy)) == []
    (copy / "junk.txt").write_text("x")
    (copy / "knobs.json").write_text((copy / "knobs.json").read_text() + " ")
    assert support.standin_changes(before, support.standin_listing(copy)) == ["junk.txt", "knobs.json"]


CMAKE_ALL_12_8 = "50-real;52-real;53-real;60-real;61-real;62-real;70-real;72-real;75-real;80-real;86-real;87-real;89-real;90-real;100-real;101-real;120"


def test_device_code_derives_gencode_as_each_packages_build_tool_does():
    """The -gencode arguments each package's own build derives (issue #25): torch's CMake
    (select_compute_arch.cmake), torch's extension builder (xformers), vllm's CMakeLists
    (its _C), bitsandbytes' CMakeLists with CMake's CUDA_ARCHITECTURES. Read from the files
    the conformance table names."""
    dc = device_code()
    # torch's CMake: duplicates once, "+PTX" adds the compute_ PTX, "a" kept, names expanded
    assert dc.torch_cmake("10.0;10.0") == [["-gencode", "arch=compute_100,code=sm_100"]]
    assert dc.torch_cmake("8.0;9.0+PTX") == [
        ["-gencode", "arch=compute_80,code=sm_80"],
        ["-gencode", "arch=compute_90,code=sm_90"],
        ["-gencode", "arch=compute_90,code=compute_90"],
    ]
    assert dc.torch_cmake("9.0a") == [["-gencode", "arch=compute_90a,code=sm_90a"]]
    assert dc.torch_cmake("Hopper+PTX")[-1] == ["-gencode", "arch=compute_90,code=compute_90"]
    with pytest.raises(dc.RuleError, match="Unknown CUDA Architecture Name in CUDA_SELECT_NVCC_ARCH_FLAGS: 9.x"):
        dc.torch_cmake("9.x")
    # torch.utils.cpp_extension: one flag form, sorted and deduplicated; unknown arches refused
    assert dc.torch_extension("10.0;10.0") == [["-gencode=arch=compute_100,code=sm_100"]]
    assert dc.torch_extension("12.0+PTX") == [
        ["-gencode=arch=compute_120,code=compute_120"],
        ["-gencode=arch=compute_120,code=sm_120"],
    ]
    with pytest.raises(dc.RuleError, match=r"Unknown CUDA arch \(10.1\) or GPU not supported"):
        dc.torch_extension("10.1")
    # vllm's _C: torch's flags, then the loose intersection with CUDA_SUPPORTED_ARCHS
    flags, read, why = dc.vllm_cmake("-DTORCH_CUDA_ARCH_LIST:STRING=9.0 -DCUTLASS_NVCC_ARCHS_ENABLED:STRING=90", "12.9")
    assert flags == [["-gencode", "arch=compute_90,code=sm_90"]] and why is None
    assert read["selected"] == ["9.0"]
    assert dc.vllm_cmake("-DTORCH_CUDA_ARCH_LIST:STRING=8.0;9.0", "12.9")[0] == [
        ["-gencode", "arch=compute_80,code=sm_80"],
        ["-gencode", "arch=compute_90,code=sm_90"],
    ]
    flags, _, why = dc.vllm_cmake("-DTORCH_CUDA_ARCH_LIST:STRING=7.0", "12.9")  # 7.0 left CUDA_SUPPORTED_ARCHS at 12.8
    assert flags == [] and "selects no CUDA architecture for 7.0" in why
    assert dc.vllm_cmake("-DTORCH_CUDA_ARCH_LIST:STRING=7.0", "12.6")[0] == [["-gencode", "arch=compute_70,code=sm_70"]]
    assert dc.loose_intersection(["8.0+PTX"], ["9.0"]) == ["8.0+PTX"]  # vllm's own example
    assert dc.loose_intersection(["7.5", "8.0", "8.6", "9.0", "9.0a"], ["8.0", "8.9", "9.0"]) == ["9.0a", "8.0", "8.6"]
    # bitsandbytes: every capability "-real" but the newest, which also gets PTX
    assert dc.bitsandbytes_cmake("90", CMAKE_ALL_12_8)[0] == [
        ["--generate-code=arch=compute_90,code=[compute_90,sm_90]"]
    ]
    assert dc.bitsandbytes_cmake("90-real", CMAKE_ALL_12_8)[0] == [["--generate-code=arch=compute_90,code=[sm_90]"]]
    every, read = dc.bitsandbytes_cmake("${POSSIBLE_CAPABILITIES}", CMAKE_ALL_12_8)
    assert read["CMAKE_CUDA_ARCHITECTURES"][0] == "50-real" and read["CMAKE_CUDA_ARCHITECTURES"][-1] == "120"
    assert len(every) == 17 and every[-1] == ["--generate-code=arch=compute_120,code=[compute_120,sm_120]"]


@pytest.mark.nvcc
def test_stand_in_torch_reads_its_arch_list_from_its_own_kernels(tmp_path):
    """torch._C._cuda_getArchFlags() answers from torch/lib/libtorch_cuda.so: the SASS and
    PTX of the containers holding torch's kernel, not nccl's linked in beside it, and no
    recorded string (none is here): None when no kernel was compiled."""
    nvcc = support.nvcc_executable()
    kernel = support.STANDIN / "pkgs" / "development" / "cuda-modules" / "device-code" / "kernel.cu"
    package = tmp_path / "torch"
    shutil.copytree(support.STANDIN / "pkgs" / "development" / "python-modules" / "torch" / "src" / "torch", package)
    probe = [sys.executable, "-c", "from torch import _C; print(_C._cuda_getArchFlags())"]

    def arch_flags() -> str:
        # _C alone: the package's __init__ reads _nix_build.json, which this test has not got
        proc = subprocess.run([*probe], cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": ""})
        return proc.stdout.strip() or proc.stderr

    def compile_(name: str, *gencode: str) -> Path:
        obj = tmp_path / f"{name}.o"
        flags = [arg for g in gencode for arg in ("-gencode", g)]
        argv = [nvcc, "-c", "-Xcompiler", "-fPIC", f"-DSTANDIN_KERNEL=standin_{name}_kernel", *flags, "-o", obj, kernel]
        subprocess.run(argv, check=True, capture_output=True)
        return obj

    (package / "__init__.py").write_text("")
    assert arch_flags() == "None"
    torch = compile_(
        "torch", "arch=compute_80,code=sm_80", "arch=compute_90,code=sm_90", "arch=compute_90,code=compute_90"
    )
    nccl = compile_("nccl", "arch=compute_100,code=sm_100", "arch=compute_100,code=compute_100")
    (package / "lib").mkdir(exist_ok=True)
    subprocess.run(["g++", "-shared", "-o", package / "lib" / "libtorch_cuda.so", torch, nccl], check=True)
    assert arch_flags() == "sm_80 sm_90 compute_90"


def test_cuda_nvcc_without_a_host_nvcc_fails_naming_where_it_looked(tmp_path):
    """The stand-in compiles with the host's nvcc (as it runs the host's python3): none
    there is a build failure that says so, never a build without device code."""
    missing = str(tmp_path / "no-cuda" / "bin" / "nvcc")
    standin = support.copy_standin(tmp_path / "nixpkgs", hostNvcc=[missing])
    proc = build(support.flake_ref(support.make_project(tmp_path / "p", git_init=False)), standin=standin, check=False)
    assert proc.returncode != 0
    assert f"stand-in cuda_nvcc: no host nvcc at {missing} (knobs.json hostNvcc)" in proc.stderr, proc.stderr[-2000:]


def test_pypa_build_checks_the_build_system_requirements(tmp_path):
    """nixpkgs' pypa build hook runs pyproject-build --no-isolation without
    --skip-dependency-check: [build-system] requires must be met before anything builds."""
    fresh = support.copy_standin(tmp_path / "nixpkgs", salt=f"pypa-{tmp_path.name}")

    def build(requirement: str, flags: str = "") -> subprocess.CompletedProcess[str]:
        expr = f"""
          let nixpkgs = {fresh}; pkgs = import nixpkgs {{ system = "x86_64-linux"; }}; ps = pkgs.python312Packages;
          in ps.buildPythonPackage {{
            pname = "probe"; version = "1.0"; pyproject = true; build-system = [ ps.tomli ];
            pypaBuildFlags = [ {flags} ];
            src = pkgs.runCommand "probe-source" {{ }} ''
              mkdir -p $out && printf '[build-system]\nrequires = ["{requirement}"]\n' > $out/pyproject.toml
            '';
          }}"""
        return support.nix("build", "--no-link", "--impure", "--expr", expr, check=False)

    assert build("tomli >= 2.2").returncode == 0
    refused = build("tomli >= 2.9.1")
    assert refused.returncode != 0 and "ERROR Missing dependencies:" in refused.stderr
    assert "tomli>=2.9.1" in refused.stderr.split("ERROR Missing dependencies:")[1]
    assert "ERROR Missing dependencies" in build("setuptools").stderr
    assert build("tomli >= 2.9.1", '"--skip-dependency-check"').returncode == 0


def test_synthetic_closure_is_shared_between_variants_but_for_the_per_sm_part(tmp_path):
    """knobs.json syntheticClosure (issue #13): N CUDA-independent derivations in
    every variant's closure, one store path each for all variants, and M built per
    capability under torch."""
    standin = support.copy_standin(tmp_path / "nixpkgs", syntheticClosure={"shared": 100, "perSm": 7})
    project = support.make_project(tmp_path / "project")
    closures = {}
    for sm in ("80", "90"):
        attr = f"{support.flake_ref(project)}#packages.x86_64-linux.vllm-python312-cuda12_9-sm{sm}"
        drv = support.nix("eval", "--raw", f"{attr}.drvPath", *support.override(standin)).stdout
        closures[sm] = {p for p in support.nix("path-info", "--recursive", drv).stdout.split() if p.endswith(".drv")}
    libs = {sm: {p for p in c if "-standin-lib-" in p} for sm, c in closures.items()}
    kernels = {sm: {p for p in c if "-standin-cuda-kernels-" in p} for sm, c in closures.items()}
    assert len(libs["80"]) == 100 and libs["80"] == libs["90"]
    assert len(kernels["80"]) == len(kernels["90"]) == 7 and not kernels["80"] & kernels["90"]
    # the default adds nothing: the closure of the stand-in as committed
    plain = support.nix(
        "eval",
        "--raw",
        f"{support.flake_ref(project)}#packages.x86_64-linux.vllm-python312-cuda12_9-sm90.drvPath",
        *support.override(),
    ).stdout
    assert not [
        p
        for p in support.nix("path-info", "--recursive", plain).stdout.split()
        if "-standin-lib-" in p or "-standin-cuda-kernels-" in p
    ]


def test_phases_run_in_nixpkgs_order(tmp_path):
    """setup.sh's genericBuild (nixpkgs 183939da): prePhases first, postPhases last, the
    pre*Phases lists before their phase; the flake's job clamp relies on prePhases."""
    fresh = support.copy_standin(tmp_path / "nixpkgs", salt=f"phases-{tmp_path.name}")
    names = ["pre", "preConfigure", "preBuild", "preInstall", "preFixup", "preDist", "post"]
    phases = " ".join(f'{n}Phases = [ "{n}Mark" ]; {n}Mark = "mkdir -p $out; echo {n} >> $out/order";' for n in names)
    expr = f"""
      let pkgs = import {fresh} {{ system = "x86_64-linux"; }}; in pkgs.stdenv.mkDerivation {{
        name = "phases"; {phases} postInstall = "echo install >> $out/order";
      }}"""
    out = support.nix("build", "--no-link", "--print-out-paths", "--impure", "--expr", expr).stdout.strip()
    assert (Path(out) / "order").read_text().split() == [
        "pre",
        "preConfigure",
        "preBuild",
        "preInstall",
        "install",
        "preFixup",
        "preDist",
        "post",
    ]


def test_python_imports_check_fails_the_build(tmp_path):
    """pythonImportsCheck (python-imports-check-hook.sh 46a29a64, in preDistPhases):
    every named module is imported from $out at the end of the build."""
    fresh = support.copy_standin(tmp_path / "nixpkgs", salt=f"imports-{tmp_path.name}")

    def build(check: str) -> subprocess.CompletedProcess[str]:
        expr = f"""
          let ps = (import {fresh} {{ system = "x86_64-linux"; }}).python312Packages;
          in ps.buildPythonPackage {{ pname = "probe"; version = "1.0"; pythonImportsCheck = [ {check} ]; }}"""
        return support.nix("build", "--no-link", "--impure", "--expr", expr, check=False)

    assert build('"probe"').returncode == 0
    refused = build('"probe" "probe.missing"')
    assert refused.returncode != 0 and "No module named 'probe.missing'" in refused.stderr
    assert "Check whether the following modules can be imported: probe probe.missing" in refused.stderr


def test_meta_platforms_refuse_another_system_unless_allowed():
    """check-meta.nix: a package whose meta.platforms lacks the host system is refused
    when instantiated ("is not available on the requested hostPlatform"), unless
    config.allowUnsupportedSystem; name, meta and passthru stay readable."""
    expr = """
      let pkg = allow: (import nixpkgs { system = "aarch64-linux"; config.allowUnsupportedSystem = allow; })
        .stdenv.mkDerivation { name = "x86-only"; buildCommand = "mkdir $out"; meta.platforms = [ "x86_64-linux" ]; };
      in { name = (pkg false).name; available = (pkg false).meta.available;
           refused = builtins.tryEval (pkg false).drvPath; allowed = builtins.isString (pkg true).drvPath; }"""
    got = json.loads(standin_eval(expr).stdout)
    assert got == {
        "name": "x86-only",
        "available": False,
        "refused": {"success": False, "value": False},
        "allowed": True,
    }
    proc = standin_eval(
        '(import nixpkgs { system = "aarch64-linux"; }).stdenv.mkDerivation { name = "x86-only";'
        ' buildCommand = "mkdir $out"; meta.platforms = [ "x86_64-linux" ]; }',
        check=False,
    )
    assert "Refusing to evaluate package 'x86-only'" in proc.stderr
    assert "is not available on the requested hostPlatform" in proc.stderr


def test_run_command_local_is_built_locally_never_substituted():
    """trivial-builders (77d57157): runCommandLocal = preferLocalBuild, no substitutes."""
    got = json.loads(
        standin_eval(
            'let d = (import nixpkgs { system = "x86_64-linux"; }).runCommandLocal "x" { } "touch $out"; in'
            " { inherit (d.drvAttrs) preferLocalBuild allowSubstitutes; }"
        ).stdout
    )
    assert got == {"preferLocalBuild": True, "allowSubstitutes": False}


def test_every_test_the_conformance_table_names_exists():
    """The table is the contract: a row naming a test that is gone (or misspelled) checks nothing."""
    readme = (support.STANDIN / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ") and "::" in line]
    assert len(rows) > 30
    named: set[tuple[str, str]] = set()
    for row in rows:
        cell = row.rstrip(" |").rsplit(" | ", 1)[1]
        current = None
        for item in re.findall(r"`([^`]+)`", cell):
            file, _, name = item.rpartition("::")
            current = file or current
            if current and current.endswith(".py") and name.startswith("test_"):
                named.add((current, re.sub(r"\[.*", "", name)))
    defined = {
        (path.name, node.name)
        for path in (support.REPO / "tests").glob("test_*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
    }
    assert named and sorted(named - defined) == []
