# The overlay that turns a CUDA-configured nixpkgs into one variant's package set.
#
# - cudaPackages = the variant's CUDA set (cudaPackages_12_9) for every package
#   of this instance, not only vllm: torch, nccl, magma... all agree. The alias
#   of its major line (cudaPackages_12) follows it: nixpkgs defines that alias
#   on its own (12.8 at the pin), so a package taking cudaPackages_12 directly
#   would otherwise bring a second CUDA into the closure.
# - bitsandbytes builds for the variant's SM only. As packaged it builds every
#   arch, which under CUDA 12.9 hits the CCCL 2.8.2 _CCCL_PP_SPLICE_WITH_IMPL20
#   bug. Its CMake runs twice: in the cmake phase (cmakeFlags) and again from
#   setup.py through scikit-build-core, which gets cmakeFlags only through
#   nixpkgs' scikit-build-core setup hook; one version of that hook passes
#   them joined into ONE argument, so an added -DCOMPUTE_CAPABILITY flag would
#   turn COMPUTE_BACKEND into "cuda -DCOMPUTE_CAPABILITY..." (the CPU branch)
#   in the second run. So cmakeFlags stay as nixpkgs has them and postPatch
#   changes the CMake default of COMPUTE_CAPABILITY, which both runs read.
#   It is replaced through pythonPackagesExtensions so every consumer in the
#   closure gets the same one; swapping it in vllm's inputs alone would leave
#   two copies, which pythonCatchConflictsHook rejects.
# - torch, xformers, flashinfer and vllm clamp their build jobs to the
#   builder's RAM at build time (nix/build-jobs.sh).
# - A `torch = "wheel"` row puts nixpkgs' torch-bin (the upstream wheel, every
#   SM, linked against this instance's cudaPackages) in place of torch for the
#   whole Python set, so every package links the one torch. torch-bin carries
#   no passthru (no cudaSupport, cudaPackages, cudaCapabilities), which
#   xformers, flashinfer, bitsandbytes and vllm read from torch; they get the
#   variant's here, so they still build for its SM alone. vllm pins the torch
#   it was packaged with; when torch-bin's version differs, that pin is
#   relaxed here, by name, and the mismatch recorded (variant.json, eval).
# - vllm keeps its own pname (nixpkgs' python metadata check hook, PR #532778,
#   asks importlib.metadata.version("$pname")); it needs a big-parallel
#   builder, is limited to the variant's system, and carries the variant's
#   record. The variant's name goes on the environment (nix/variant.nix).
{
  variant,
  ramPerJobGib,
  # e.g. "nixpkgs 0182a3613243"; recorded in the variant's metadata
  pinText,
}:
final: prev:
let
  inherit (final) lib;

  cudaMajor = builtins.head (builtins.splitVersion variant.cuda);
  torchIsWheel = variant.torch == "wheel";

  clampJobsPhase =
    builtins.replaceStrings [ "@ramPerJobGib@" ] [ (toString ramPerJobGib) ]
      (builtins.readFile ./build-jobs.sh);

  clampJobs =
    drv:
    drv.overrideAttrs (old: {
      vllmVariantsClampJobsPhase = clampJobsPhase;
      prePhases = (old.prePhases or [ ]) ++ [ "vllmVariantsClampJobsPhase" ];
    });

  # bitsandbytes' CMakeLists.txt: set(COMPUTE_CAPABILITY "<all>" CACHE STRING ...).
  # The pattern matches the default whatever it is called at a pin; the check
  # after it fails the build loudly when the line has moved.
  bitsandbytesOneSm = ''
    sed -i -E 's/^([[:space:]]*set\(COMPUTE_CAPABILITY[[:space:]]+)"[^"]*"([[:space:]]+CACHE)/\1"'"$vllmVariantsComputeCapability"'"\2/' CMakeLists.txt
    if ! grep -qE '^[[:space:]]*set\(COMPUTE_CAPABILITY[[:space:]]+"'"$vllmVariantsComputeCapability"'"[[:space:]]+CACHE' CMakeLists.txt; then
      echo "vllm-variants: could not set the COMPUTE_CAPABILITY default in bitsandbytes' CMakeLists.txt" >&2
      exit 1
    fi
  '';
in
{
  cudaPackages = final.${variant.cuda_packages};
  "cudaPackages_${cudaMajor}" = final.${variant.cuda_packages};

  pythonPackagesExtensions = prev.pythonPackagesExtensions ++ [
    (pyFinal: pyPrev: {
      bitsandbytes = pyPrev.bitsandbytes.overrideAttrs (old: {
        vllmVariantsComputeCapability = variant.sm;
        postPatch = (old.postPatch or "") + bitsandbytesOneSm;
      });

      torch =
        if torchIsWheel then
          pyPrev.torch-bin.overrideAttrs (old: {
            passthru = (old.passthru or { }) // {
              cudaSupport = true;
              rocmSupport = false;
              inherit (final) cudaPackages;
              # what packages built against this torch target: the variant's SM
              cudaCapabilities = [ variant.capability ];
              vllmVariantsSourceTorchVersion = pyPrev.torch.version;
            };
          })
        else
          clampJobs pyPrev.torch;
      xformers = clampJobs pyPrev.xformers;
      flashinfer = clampJobs pyPrev.flashinfer;

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
