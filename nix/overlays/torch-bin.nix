# A `torch = "wheel"` row puts nixpkgs' torch-bin (the upstream wheel, every
# SM, linked against this instance's cudaPackages) in place of torch for the
# whole Python set, so every package links the one torch. Two things the
# source torch carries and torch-bin does not:
# - its stdenv: the source torch builds with cudaPackages.backendStdenv (a
#   compiler nvcc supports), and nixpkgs builds vllm with torch.stdenv; the
#   wheel comes with the plain stdenv, whose compiler can be newer than the
#   CUDA line's nvcc accepts (issue #23). So torch-bin is built (unpacked:
#   nothing of it is compiled) with backendStdenv too, and torch.stdenv is
#   that for everything that takes it;
# - its passthru (cudaSupport, cudaPackages, cudaCapabilities), which
#   xformers, flashinfer, bitsandbytes and vllm read from torch; they get the
#   variant's here, so they still build for its SM alone.
# The wheel is not job-clamped: nothing of it is compiled.
{ variant, ... }:
final: prev:
let
  torchIsWheel = variant.torch == "wheel";
in
{
  pythonPackagesExtensions = prev.pythonPackagesExtensions ++ [
    (pyFinal: pyPrev: {
      torch =
        if torchIsWheel then
          (pyPrev.torch-bin.override {
            buildPythonPackage = pyPrev.buildPythonPackage.override { stdenv = final.cudaPackages.backendStdenv; };
          }).overrideAttrs
            (old: {
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
          pyPrev.torch;
    })
  ];
}
