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
      # No forward-compat PTX arch. At the pin only packages that build from
      # cudaPackages.flags.gencode (nccl, magma) change with it; torch, vllm
      # and the others take their arch lists from cudaCapabilities and never
      # add PTX either way. Kept false as nixpkgs' pkgsForCudaArch does.
      cudaForwardCompat = false;
    };
    # Small overlays, one job each (as huggingface/kernel-builder has them).
    # Order matters once: vllm.nix reads the source torch as pyPrev.torch, so
    # it comes before torch-bin.nix puts the wheel in its place.
    overlays =
      map (overlay: import overlay { inherit variant ramPerJobGib pinText; }) [
        ./overlays/cuda.nix
        ./overlays/bitsandbytes.nix
        ./overlays/build-jobs.nix
        ./overlays/vllm.nix
        ./overlays/torch-bin.nix
      ];
  };
  inherit (pkgs) lib;

  python = pkgs.${variant.python};
  ps = python.pkgs;
  inherit (ps) vllm torch bitsandbytes;
  torchIsWheel = variant.torch == "wheel";
  cuda = pkgs.cudaPackages;
  cudaMajor = builtins.head (builtins.splitVersion variant.cuda);

  fail = what: got: want:
    throw (
      "${variant.name}: ${what} is ${builtins.toJSON got}, expected ${builtins.toJSON want} "
      + "(${pinText}); the variant's configuration did not take effect"
    );
  expect = what: got: want: if got == want then true else fail what got want;
  # Capability lists are compared as sets: nixpkgs' intersectLists keeps the
  # duplicates of a package's own list (torch 2.9.1 lists "10.0" twice, so its
  # cudaCapabilities for 10.0 is [ "10.0" "10.0" ], which nixpkgs accepts).
  expectSet =
    what: got: want:
    if got != null && lib.unique got == want then true else fail what got want;

  cmakeValue =
    name: flags:
    let
      found = builtins.filter (m: m != null) (
        map (flag: builtins.match "-D${name}(:[A-Z]+)?=(.*)" flag) flags
      );
    in
    if found == [ ] then null else builtins.elemAt (builtins.head found) 1;

  archListOf = drv: cmakeValue "TORCH_CUDA_ARCH_LIST" drv.cmakeFlags;

  # nixpkgs' vllm builds the intersection of cudaCapabilities with its own
  # supported list and throws "No supported GPU targets specified" when that
  # is empty (at some revisions Blackwell is commented out of the list). We do
  # not force gpuTargets past that: torch carries the same kind of list, and a
  # capability nixpkgs left out is one it does not build. Name the SM and the
  # pin instead of leaving the user with the bare throw, but only for that
  # decision: tryEval cannot tell one throw from another, so when it fails the
  # same vllm is evaluated again with its documented `gpuTargets` argument
  # (which bypasses the decision, nothing else) outside tryEval. Any other
  # failure in its cmakeFlags (a source that does not fetch, an assertion)
  # then surfaces with its own message.
  vllmArchList =
    let
      attempt = builtins.tryEval (
        let
          value = archListOf vllm;
        in
        builtins.deepSeq value value
      );
      bypassed = archListOf (vllm.override { gpuTargets = [ variant.capability ]; });
    in
    if attempt.success then
      attempt.value
    else
      builtins.deepSeq bypassed (
        throw (
          "${variant.name}: vllm ${vllm.version} in ${pinText} cannot target CUDA capability "
          + "${variant.capability} (SM ${variant.sm}): its derivation refuses the arch list "
          + "(nixpkgs' vllm only builds the capabilities on its supported list). Use a nixpkgs pin "
          + "whose vllm supports ${variant.capability}, or mark this variant "
          + "`disabled = \"<reason>\"` in nix/variants.toml."
        )
      );

  splitList = value: if value == null then null else lib.splitString ";" value;

  # nixpkgs' torch-bin, whatever this row's torch: its version, and the CUDA
  # line its wheel was built for, read from its src URL (".../whl/cu128/...",
  # torch/bin/binary-hashes.nix); null for the CPU wheel. Both are shown for
  # every row (`invoke eval`); a system or Python torch-bin has no wheel for
  # leaves them null, except on a wheel row, where it is an error.
  torchBin = ps.torch-bin;
  wheelUrl = builtins.head (torchBin.src.urls or [ torchBin.src.url ]);
  wheelCudaOf = url: let tag = builtins.match ".*/whl/cu([0-9]+)([0-9])/.*" url; in
    if tag == null then null else "${builtins.elemAt tag 0}.${builtins.elemAt tag 1}";
  # "download.pytorch.org/whl/cu128" of the wheel's URL
  wheelWhere = let m = builtins.match "[a-z]+://([^/]+/[^/]+/[^/]+)/.*" wheelUrl; in
    if m == null then wheelUrl else builtins.head m;
  torchBinFacts =
    let
      facts = { version = torchBin.version; cuda = wheelCudaOf wheelUrl; url = wheelUrl; };
      attempt = builtins.tryEval (builtins.deepSeq facts facts);
    in
    if torchIsWheel || attempt.success then facts else { version = null; cuda = null; url = null; };
  wheelCudaChecked =
    torchBinFacts.cuda == variant.cuda
    || throw (
      "${variant.name}: nixpkgs' torch-bin ${torchBinFacts.version} is a "
      + "${if torchBinFacts.cuda == null then "CPU" else "CUDA ${torchBinFacts.cuda}"} wheel "
      + "(${wheelWhere}/...); "
      + "a torch = \"wheel\" row must be on CUDA ${if torchBinFacts.cuda == null then "(none)" else torchBinFacts.cuda}, not ${variant.cuda} "
      + "(${pinText}; nix/variants.toml [pin] torch_bin_cuda)"
    );

  # nixpkgs builds vllm with torch.stdenv: for the source torch that is
  # cudaPackages.backendStdenv, a compiler this CUDA line's nvcc supports. It
  # must stay so on every row (a torch-bin with the plain stdenv would hand
  # vllm the default compiler; nix/overlays/torch-bin.nix).
  vllmStdenvChecked =
    vllm.stdenv.drvPath == cuda.backendStdenv.drvPath
    || throw (
      "${variant.name}: vllm is built with ${vllm.stdenv.cc.name or "another compiler"}, not with "
      + "cudaPackages.backendStdenv's ${cuda.backendStdenv.cc.name or "compiler"}, the one nvcc "
      + "${cuda.cudaMajorMinorVersion} supports (${pinText}); torch.stdenv is not the CUDA backend stdenv"
    );

  # Every CUDA package set a package of the closure names (nixpkgs passes it as
  # passthru.cudaPackages); one version in all of them, and the major line's
  # alias agrees (nix/overlays/cuda.nix).
  cudaVersions = {
    "cudaPackages_${cudaMajor}" = pkgs."cudaPackages_${cudaMajor}".cudaMajorMinorVersion;
    torch = torch.cudaPackages.cudaMajorMinorVersion;
    bitsandbytes = bitsandbytes.cudaPackages.cudaMajorMinorVersion or cuda.cudaMajorMinorVersion;
  };

  # What nixpkgs resolved for this variant: read back below, and printed by
  # `invoke eval` (passthru.resolved).
  resolved = {
    inherit (variant) name;
    pin = pinText;
    versions = {
      vllm = vllm.version;
      torch = torch.version;
      python = python.version;
      cuda = cuda.cudaMajorMinorVersion;
    };
    arch = {
      cudaCapabilities = cuda.flags.cudaCapabilities;
      # a torch-bin row: the wheel's own kernels, for every SM it ships
      torch = if torchIsWheel then "every SM of the wheel" else torch.cudaCapabilities or null;
      vllm = splitList vllmArchList;
      # xformers and flashinfer build for torch.cudaCapabilities
      xformers = torch.cudaCapabilities or null;
      flashinfer = torch.cudaCapabilities or null;
      bitsandbytes = bitsandbytes.vllmVariantsComputeCapability or null;
    };
    forwardCompat = cuda.flags.cudaForwardCompat;
    cuda = cudaVersions;
    torch = {
      kind = variant.torch;
      # torch-bin lags the source torch vllm was packaged with: shown, not hidden
      sourceVersion = torch.vllmVariantsSourceTorchVersion or torch.version;
      # nixpkgs' torch-bin at this pin, on every row: which versions the pin
      # carries is not settled from the files (nix/variants.toml [pin])
      binVersion = torchBinFacts.version;
      binCuda = torchBinFacts.cuda;
    };
    # the compiler vllm is built with (torch.stdenv), and nvcc's (backendStdenv's)
    compilers = {
      vllm = vllm.stdenv.cc.version or null;
      backend = cuda.backendStdenv.cc.version or null;
    };
  };

  checks = [
    (expect "config.allowUnfree" (pkgs.config.allowUnfree or null) true)
    (expect "config.cudaSupport" (pkgs.config.cudaSupport or null) true)
    (expect "cudaPackages.cudaMajorMinorVersion" cuda.cudaMajorMinorVersion variant.cuda)
    (expectSet "cudaPackages.flags.cudaCapabilities" cuda.flags.cudaCapabilities [ variant.capability ])
    (expect "cudaPackages.flags.cudaForwardCompat" cuda.flags.cudaForwardCompat false)
    (expectSet "torch.cudaCapabilities" (torch.cudaCapabilities or null) [ variant.capability ])
    (expectSet "vllm's TORCH_CUDA_ARCH_LIST" (splitList vllmArchList) [ variant.capability ])
    # The CMake default both of bitsandbytes' CMake runs read (nix/overlays/bitsandbytes.nix);
    # a -DCOMPUTE_CAPABILITY flag would reach the second run glued to another.
    (expect "bitsandbytes' COMPUTE_CAPABILITY default" (
      bitsandbytes.vllmVariantsComputeCapability or null
    ) "${variant.sm}-real")
    (expect "bitsandbytes' COMPUTE_CAPABILITY cmake flag" (cmakeValue "COMPUTE_CAPABILITY" bitsandbytes.cmakeFlags) null)
    (expect "the CUDA versions in the closure" (lib.unique (builtins.attrValues cudaVersions)) [ variant.cuda ])
    # One torch for the whole set: torch-bin on a wheel row (the same wheel, on
    # the CUDA backend stdenv), the source torch otherwise.
    (expect "torch is torch-bin" (torchIsWheel && torch.src.drvPath or null == torchBin.src.drvPath) torchIsWheel)
    vllmStdenvChecked
  ]
  ++ lib.optional torchIsWheel wheelCudaChecked;

  checked = builtins.deepSeq checks true;

  env = python.withPackages (p: [ p.vllm ]);
in
assert checked;
env.overrideAttrs (old: {
  # The variant's name is where users see it: on the environment that is the
  # flake output (result -> /nix/store/...-vllm-python312-cuda12_9-sm90-0.15.1),
  # its meta and passthru. The Python package inside keeps pname "vllm".
  name = "${variant.name}-${vllm.version}";
  passthru = (old.passthru or { }) // {
    inherit variant vllm torch bitsandbytes pkgs resolved;
    versions = resolved.versions;
  };
  meta = (old.meta or { }) // {
    inherit (vllm.meta) description;
    platforms = [ variant.system ];
  };
})
