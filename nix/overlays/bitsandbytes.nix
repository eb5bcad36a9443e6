# bitsandbytes builds for the variant's SM only. As packaged it builds every
# arch, which under CUDA 12.9 hits the CCCL 2.8.2 _CCCL_PP_SPLICE_WITH_IMPL20
# bug. Its CMake runs twice: in the cmake phase (cmakeFlags) and again from
# setup.py through scikit-build-core, which gets cmakeFlags only through
# nixpkgs' scikit-build-core setup hook; one version of that hook passes
# them joined into ONE argument, so an added -DCOMPUTE_CAPABILITY flag would
# turn COMPUTE_BACKEND into "cuda -DCOMPUTE_CAPABILITY..." (the CPU branch)
# in the second run. So cmakeFlags stay as nixpkgs has them and postPatch
# changes the CMake default of COMPUTE_CAPABILITY, which both runs read.
# The default is "<sm>-real", not "<sm>": bitsandbytes' CMakeLists turns every
# capability into a "-real" CUDA architecture (SASS) except the newest, which
# it leaves bare, and a bare one gets PTX as well (CMake's CUDA_ARCHITECTURES);
# one capability is the newest, so "90" would ship compute_90 PTX beside the
# sm_90 SASS, code an H100 never runs (`invoke audit --check` refuses it,
# issue #25). "90-real" stays SASS alone.
# It is replaced through pythonPackagesExtensions so every consumer in the
# closure gets the same one; swapping it in vllm's inputs alone would leave
# two copies, which pythonCatchConflictsHook rejects.
{ variant, ... }:
final: prev:
let
  inherit (final) lib;

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
  pythonPackagesExtensions = prev.pythonPackagesExtensions ++ [
    (pyFinal: pyPrev: {
      bitsandbytes = pyPrev.bitsandbytes.overrideAttrs (old: {
        vllmVariantsComputeCapability = "${variant.sm}-real";
        postPatch = (old.postPatch or "") + bitsandbytesOneSm;
      });
    })
  ];
}
