# The overlay that turns a CUDA-configured nixpkgs into one variant's package set.
#
# - cudaPackages = the variant's CUDA set (cudaPackages_12_9) for every package
#   of this instance, not only vllm: torch, nccl, magma... all agree.
# - bitsandbytes builds for the variant's SM only (COMPUTE_CAPABILITY). As
#   packaged it builds every arch, which under CUDA 12.9 hits the CCCL 2.8.2
#   _CCCL_PP_SPLICE_WITH_IMPL20 bug. It is replaced through
#   pythonPackagesExtensions so every consumer in the closure gets the same one;
#   swapping it in vllm's inputs alone would leave two copies, which
#   pythonCatchConflictsHook rejects.
# - torch, xformers, flashinfer and vllm clamp their build jobs to the
#   builder's RAM at build time (nix/build-jobs.sh).
# - vllm is renamed to the variant, needs a big-parallel builder, is limited to
#   the variant's system, and carries the variant's record.
{
  variant,
  ramPerJobGib,
  # e.g. "nixpkgs 0182a3613243"; recorded in the variant's metadata
  pinText,
}:
final: prev:
let
  inherit (final) lib;

  clampJobsPhase =
    builtins.replaceStrings [ "@ramPerJobGib@" ] [ (toString ramPerJobGib) ]
      (builtins.readFile ./build-jobs.sh);

  clampJobs =
    drv:
    drv.overrideAttrs (old: {
      vllmVariantsClampJobsPhase = clampJobsPhase;
      prePhases = (old.prePhases or [ ]) ++ [ "vllmVariantsClampJobsPhase" ];
    });
in
{
  cudaPackages = final.${variant.cuda_packages};

  pythonPackagesExtensions = prev.pythonPackagesExtensions ++ [
    (pyFinal: pyPrev: {
      bitsandbytes = pyPrev.bitsandbytes.overrideAttrs (old: {
        cmakeFlags = (old.cmakeFlags or [ ]) ++ [ (lib.cmakeFeature "COMPUTE_CAPABILITY" variant.sm) ];
      });

      torch = clampJobs pyPrev.torch;
      xformers = clampJobs pyPrev.xformers;
      flashinfer = clampJobs pyPrev.flashinfer;

      vllm = (clampJobs pyPrev.vllm).overrideAttrs (old: {
        pname = variant.name;
        requiredSystemFeatures = lib.unique ((old.requiredSystemFeatures or [ ]) ++ [ "big-parallel" ]);

        # What `nox -s smoke` reads back from a result: <result>/share/vllm-variants/variant.json
        vllmVariantsInfo = builtins.toJSON (
          variant
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
            + "(${variant.arch}, SM ${variant.sm}, CUDA ${final.cudaPackages.cudaMajorMinorVersion})";
        };
      });
    })
  ];
}
