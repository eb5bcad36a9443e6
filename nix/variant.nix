# One variant: a nixpkgs instance configured for exactly one CUDA capability
# (as nixpkgs' own pkgsForCudaArch does), and the Python environment that holds
# its vllm, so `result/bin/python -c "import vllm"` and `result/bin/vllm` work.
#
# Usage (what flake.nix does for every enabled row of nix/variants.toml):
#   import ./variant.nix {
#     inherit nixpkgs;                       # a nixpkgs source tree / flake input
#     pinText = "nixpkgs 0182a3613243";
#     variant = lib.variants."vllm-python312-cuda12_9-sm90";
#     ramPerJobGib = 8;
#   }
#   # => python3.12 environment; .vllm, .torch, .bitsandbytes, .variant, .versions
#
# nixpkgs keeps config keys it does not know without a word (a typo such as
# `cudaCapabilites` silently builds the default arch list). warnUndeclaredOptions
# only warns, and at some pins warns about cudaCapabilities/cudaForwardCompat
# themselves (they were declared in config.nix only in 2026), so instead we read
# back what nixpkgs actually resolved and refuse to evaluate the variant when it
# differs from the request: a typo fails evaluation, naming the key.
{
  nixpkgs,
  pinText,
  variant,
  ramPerJobGib,
}:
let
  pkgs = import nixpkgs {
    inherit (variant) system;
    config = {
      allowUnfree = true; # CUDA is unfree
      cudaSupport = true;
      cudaCapabilities = [ variant.capability ];
      cudaForwardCompat = false; # SASS for this SM only, no PTX for newer GPUs
    };
    overlays = [ (import ./overlay.nix { inherit variant ramPerJobGib pinText; }) ];
  };
  inherit (pkgs) lib;

  python = pkgs.${variant.python};
  ps = python.pkgs;
  inherit (ps) vllm torch bitsandbytes;
  cuda = pkgs.cudaPackages;

  fail = what: got: want:
    throw (
      "${variant.name}: ${what} is ${builtins.toJSON got}, expected ${builtins.toJSON want} "
      + "(${pinText}); the variant's configuration did not take effect"
    );
  expect = what: got: want: if got == want then true else fail what got want;

  cmakeValue =
    name: flags:
    let
      found = builtins.filter (m: m != null) (
        map (flag: builtins.match "-D${name}(:[A-Z]+)?=(.*)" flag) flags
      );
    in
    if found == [ ] then null else builtins.elemAt (builtins.head found) 1;

  # nixpkgs' vllm builds the intersection of cudaCapabilities with its own
  # supported list and throws "No supported GPU targets specified" when that
  # is empty (at some revisions Blackwell is commented out of the list). We do
  # not force gpuTargets past that: torch carries the same kind of list, and a
  # capability nixpkgs left out is one it does not build. Name the SM and the pin
  # instead of leaving the user with the bare throw.
  vllmArchList =
    let
      attempt = builtins.tryEval (
        let
          value = cmakeValue "TORCH_CUDA_ARCH_LIST" vllm.cmakeFlags;
        in
        builtins.deepSeq value value
      );
    in
    if attempt.success then
      attempt.value
    else
      throw (
        "${variant.name}: vllm ${vllm.version} in ${pinText} cannot target CUDA capability "
        + "${variant.capability} (SM ${variant.sm}): its derivation refuses the arch list "
        + "(nixpkgs' vllm only builds the capabilities on its supported list). Use a nixpkgs pin "
        + "whose vllm supports ${variant.capability}, or mark this variant "
        + "`disabled = \"<reason>\"` in nix/variants.toml."
      );

  checks = [
    (expect "config.allowUnfree" (pkgs.config.allowUnfree or null) true)
    (expect "config.cudaSupport" (pkgs.config.cudaSupport or null) true)
    (expect "cudaPackages.cudaMajorMinorVersion" cuda.cudaMajorMinorVersion variant.cuda)
    (expect "cudaPackages.flags.cudaCapabilities" cuda.flags.cudaCapabilities [ variant.capability ])
    (expect "cudaPackages.flags.cudaForwardCompat" cuda.flags.cudaForwardCompat false)
    (expect "torch.cudaCapabilities" (torch.cudaCapabilities or null) [ variant.capability ])
    (expect "vllm's TORCH_CUDA_ARCH_LIST" vllmArchList variant.capability)
    (expect "bitsandbytes' COMPUTE_CAPABILITY" (cmakeValue "COMPUTE_CAPABILITY" bitsandbytes.cmakeFlags) variant.sm)
  ];

  checked = builtins.deepSeq checks true;

  env = python.withPackages (p: [ p.vllm ]);
in
assert checked;
env.overrideAttrs (old: {
  passthru = (old.passthru or { }) // {
    inherit variant vllm torch bitsandbytes pkgs;
    versions = {
      vllm = vllm.version;
      torch = torch.version;
      python = python.version;
      cuda = cuda.cudaMajorMinorVersion;
    };
  };
  meta = (old.meta or { }) // {
    inherit (vllm.meta) description;
    platforms = [ variant.system ];
  };
})
