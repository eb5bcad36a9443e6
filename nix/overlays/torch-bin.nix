# A `torch = "wheel"` row puts nixpkgs' torch-bin (the upstream wheel, every
# SM, linked against this instance's cudaPackages) in place of torch for the
# whole Python set, so every package links the one torch. torch-bin carries
# no passthru (no cudaSupport, cudaPackages, cudaCapabilities), which
# xformers, flashinfer, bitsandbytes and vllm read from torch; they get the
# variant's here, so they still build for its SM alone. The wheel is not
# job-clamped: nothing of it is compiled.
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
          pyPrev.torch;
    })
  ];
}
