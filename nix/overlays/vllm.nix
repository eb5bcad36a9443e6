# vllm keeps its own pname (nixpkgs' python metadata check hook, PR #532778,
# asks importlib.metadata.version("$pname")); it needs a big-parallel
# builder, is limited to the variant's system, clamps its build jobs to the
# builder's RAM (nix/build-jobs.sh), and carries the variant's record. The
# variant's name goes on the environment (nix/variant.nix). On a
# `torch = "wheel"` row vllm pins the torch it was packaged with (pyPrev.torch
# here: this overlay comes before ./torch-bin.nix) twice:
# - at run time (Requires-Dist, pythonRuntimeDepsCheck): when torch-bin's
#   version differs, that pin is relaxed, by name;
# - at build time, in pyproject.toml's [build-system], which nixpkgs' postPatch
#   turns into `torch >= <its torch>` ("pythonRelaxDeps does not cover
#   build-system") and which nixpkgs' pypa build hook checks before anything
#   compiles (no --skip-dependency-check): when torch-bin is older, that one
#   requirement loses its version, and the build fails loudly if a pinned torch
#   requirement is left (issue #23).
# Either mismatch is recorded (variant.json, eval).
{
  variant,
  ramPerJobGib,
  # e.g. "nixpkgs 0182a3613243"; recorded in the variant's metadata
  pinText,
}:
final: prev:
let
  inherit (final) lib;

  torchIsWheel = variant.torch == "wheel";
  clampJobs = import ../clamp-jobs.nix { inherit ramPerJobGib; };

  # the build-system requirement, relaxed: any `"torch <op> <version>"` of
  # pyproject.toml becomes `"torch"`; a pinned one left over fails the build
  relaxBuildSystemTorch = ''
    sed -i -E 's/"torch *(==|>=|~=)[^"]*"/"torch"/' pyproject.toml
    if grep -qE '"torch *[<>=!~]' pyproject.toml; then
      echo "vllm-variants: pyproject.toml still pins torch in [build-system]; torch-bin $vllmVariantsTorchBinVersion would not satisfy it" >&2
      exit 1
    fi
  '';
in
{
  pythonPackagesExtensions = prev.pythonPackagesExtensions ++ [
    (pyFinal: pyPrev: {
      vllm = (clampJobs pyPrev.vllm).overrideAttrs (old: {
        requiredSystemFeatures = lib.unique ((old.requiredSystemFeatures or [ ]) ++ [ "big-parallel" ]);
      } // lib.optionalAttrs (torchIsWheel && pyFinal.torch.version != pyPrev.torch.version) {
        # vllm was packaged against the source torch; torch-bin lags it. Relax
        # exactly that pin (true already relaxes every one).
        pythonRelaxDeps =
          if (old.pythonRelaxDeps or [ ]) == true then true else lib.unique ((old.pythonRelaxDeps or [ ]) ++ [ "torch" ]);
      } // lib.optionalAttrs (torchIsWheel && lib.versionOlder pyFinal.torch.version pyPrev.torch.version) {
        # after nixpkgs' own postPatch, which makes the pin `torch >=`
        postPatch = (old.postPatch or "") + relaxBuildSystemTorch;
        vllmVariantsTorchBinVersion = pyFinal.torch.version;
        vllmVariantsRelaxedBuildSystem = true;
      } // {

        # What `nox -s smoke` reads back from a result: <result>/share/vllm-variants/variant.json
        vllmVariantsInfo = builtins.toJSON (
          variant
          // lib.optionalAttrs torchIsWheel {
            torchWheel = { version = pyFinal.torch.version; vllmPackagedWith = pyPrev.torch.version; };
          }
          // {
            pin = pinText;
            versions = {
              vllm = old.version;
              torch = pyFinal.torch.version;
              python = pyFinal.python.version;
              cuda = final.cudaPackages.cudaMajorMinorVersion;
            };
          }
        );
        postInstall = (old.postInstall or "") + ''
          mkdir -p "$out/share/vllm-variants"
          printf '%s\n' "$vllmVariantsInfo" > "$out/share/vllm-variants/variant.json"
        '';

        passthru = (old.passthru or { }) // {
          inherit variant;
        };

        meta = (old.meta or { }) // {
          platforms = [ variant.system ];
          description =
            "vLLM ${old.version} for ${lib.concatStringsSep ", " variant.gpus} "
            + "(${variant.arch}, SM ${variant.sm}, CUDA ${final.cudaPackages.cudaMajorMinorVersion}"
            + lib.optionalString torchIsWheel ", torch ${pyFinal.torch.version} wheel"
            + ")";
        };
      });
    })
  ];
}
