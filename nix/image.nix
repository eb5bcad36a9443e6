# One variant as an OCI image: nixpkgs' dockerTools.streamLayeredImage over the
# variant's Python environment. The result is a script that streams the image
# (an uncompressed docker-archive) to stdout; `invoke image` pipes it to skopeo.
#
# Usage (what flake.nix does for every package):
#   import ./image.nix {
#     env = packages.x86_64-linux."vllm-python312-cuda12_9-sm90";
#     pinTag = "0182a36";              # nixpkgs.shortRev; without a rev (path:), 12 hex of sha256(narHash)
#     pinText = "nixpkgs 0182a361324364ae3f436a63005877674cf45efb";
#     revision = self.rev or "dirty";
#   }
#   # => stream script; .imageName "vllm-python312-cuda12_9-sm90", .imageTag "0.15.1-0182a36"
#
# - Layers: the image holds the closure of its config (the environment, the CA
#   bundle) and nothing else. streamLayeredImage puts the most depended-on
#   store paths (glibc, python, the CUDA redistributables, torch, ...) in a
#   layer each, up to maxLayers, so two variants of one pin share the layers
#   of every store path they share; a registry stores and a node pulls those
#   once. torch, nccl, magma, flashinfer, xformers and vllm are compiled per
#   SM, so they differ between variants; the CUDA redistributables (cudnn,
#   cublas, cudart, ...) and the pure-Python dependencies do not.
# - The NVIDIA driver: nixpkgs' CUDA libraries look for libcuda.so in
#   /run/opengl-driver/lib (addDriverRunpath's driverLink, a NixOS path).
#   The NVIDIA container toolkit mounts the driver's libraries into the
#   container instead: libnvidia-container picks /usr/lib/<arch>-linux-gnu
#   when the image has /etc/debian_version and /usr/lib64 otherwise (ours has
#   none), and CDI specs mount them at the host's own paths (often
#   /usr/lib/<arch>-linux-gnu); GKE and the nvidia/cuda images use
#   /usr/local/nvidia/lib64, and one GPU container platform we ran on mounts
#   libcuda.so.1 in /usr/lib. nixpkgs' glibc does not read the
#   /etc/ld.so.cache the toolkit writes, so LD_LIBRARY_PATH names them all
#   (the dynamic loader skips a library of the wrong architecture).
#   NVIDIA_* variables ask the toolkit for the compute libraries and refuse a
#   driver older than the variant's CUDA needs.
{
  env,
  pinTag,
  pinText,
  revision,
}:
let
  inherit (env) variant vllm pkgs;
  inherit (pkgs) dockerTools cacert;

  multiarch = {
    x86_64-linux = "x86_64-linux-gnu";
    aarch64-linux = "aarch64-linux-gnu";
  }.${variant.system};
  driverDirs = [
    "/run/opengl-driver/lib" # NixOS hosts that bind-mount it
    "/usr/lib64" # libnvidia-container, image without /etc/debian_version (ours)
    "/usr/lib/${multiarch}" # libnvidia-container on Debian layouts; CDI on Debian/Ubuntu hosts
    "/usr/local/nvidia/lib64" # GKE's device plugin, the nvidia/cuda images' convention
    "/usr/lib" # seen holding libcuda.so.1 in a GPU container platform
  ];

  labels = {
    "org.opencontainers.image.title" = variant.name;
    "org.opencontainers.image.description" = vllm.meta.description or variant.name;
    "org.opencontainers.image.version" = vllm.version;
    "org.opencontainers.image.revision" = revision;
    # Where the software in the image comes from: vLLM, built by nixpkgs at the pin.
    "org.opencontainers.image.source" = vllm.meta.homepage or "https://github.com/vllm-project/vllm";
    "io.vllm-variants.variant" = variant.name;
    "io.vllm-variants.pin" = pinText;
    "io.vllm-variants.sm" = variant.sm;
    "io.vllm-variants.capability" = variant.capability;
    "io.vllm-variants.cuda" = variant.cuda;
    "io.vllm-variants.min-driver" = toString variant.min_driver;
    "io.vllm-variants.system" = variant.system;
  };
in
dockerTools.streamLayeredImage {
  name = variant.name;
  tag = "${vllm.version}-${pinTag}";
  # The CA bundle where other distributions' binaries look for it; vLLM
  # downloads models over HTTPS.
  contents = [ dockerTools.caCertificates ];
  # A writable /tmp and a home for ~/.cache (Hugging Face, vLLM, torch).
  extraCommands = ''
    mkdir -p tmp root
    chmod 1777 tmp
  '';
  config = {
    Entrypoint = [ "${env}/bin/vllm" ];
    Cmd = [ "serve" ];
    Env = [
      "PATH=${env}/bin"
      "HOME=/root"
      "SSL_CERT_FILE=${cacert}/etc/ssl/certs/ca-bundle.crt"
      "LD_LIBRARY_PATH=${builtins.concatStringsSep ":" driverDirs}"
      "NVIDIA_VISIBLE_DEVICES=all"
      "NVIDIA_DRIVER_CAPABILITIES=compute,utility"
      "NVIDIA_REQUIRE_CUDA=cuda>=${variant.cuda}"
    ];
    ExposedPorts = {
      "8000/tcp" = { }; # vllm serve's default port
    };
    Labels = labels;
  };
}
