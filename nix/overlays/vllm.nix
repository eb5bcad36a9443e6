# vllm keeps its own pname (nixpkgs' python metadata check hook, PR #532778,
# asks importlib.metadata.version("$pname")); it needs a big-parallel
# builder, is limited to the variant's system, clamps its build jobs to the
# builder's RAM (nix/build-jobs.sh), and carries the variant's record. The
# variant's name goes on the environment (nix/variant.nix). On a
# `torch = "wheel"` row vllm pins the torch it was packaged with (pyPrev.torch
# here: this overlay comes before ./torch-bin.nix); when torch-bin's version
# differs, that pin is relaxed, by name, and the mismatch recorded
# (variant.json, eval).
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
