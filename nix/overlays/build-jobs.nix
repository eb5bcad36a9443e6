# torch, xformers and flashinfer clamp their build jobs to the builder's RAM
# at build time (nix/build-jobs.sh); vllm does too, in ./vllm.nix.
{ ramPerJobGib, ... }:
final: prev:
let
  clampJobs = import ../clamp-jobs.nix { inherit ramPerJobGib; };
in
{
  pythonPackagesExtensions = prev.pythonPackagesExtensions ++ [
    (pyFinal: pyPrev: {
      torch = clampJobs pyPrev.torch;
      xformers = clampJobs pyPrev.xformers;
      flashinfer = clampJobs pyPrev.flashinfer;
    })
  ];
}
