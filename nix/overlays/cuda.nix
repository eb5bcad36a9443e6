# cudaPackages = the variant's CUDA set (cudaPackages_12_9) for every package
# of this instance, not only vllm: torch, nccl, magma... all agree. The alias
# of its major line (cudaPackages_12) follows it: nixpkgs defines that alias
# on its own (12.8 at the pin), so a package taking cudaPackages_12 directly
# would otherwise bring a second CUDA into the closure.
{ variant, ... }:
final: prev:
let
  cudaMajor = builtins.head (builtins.splitVersion variant.cuda);
in
{
  cudaPackages = final.${variant.cuda_packages};
  "cudaPackages_${cudaMajor}" = final.${variant.cuda_packages};
}
