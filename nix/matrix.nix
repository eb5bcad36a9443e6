# The variants for the flake: nix/variants.json, which the Python side
# validated and expanded from nix/variants.toml (`invoke variants --write`,
# vllm_variants.matrix). No rule of the matrix is written here: this file
# only selects from the records. A TOML changed since the JSON was made
# (its sha256 is in the JSON) is refused in one line naming the command.
#
# Pure data: this file never touches nixpkgs, so `nix eval .#lib.variants`
# works without fetching or importing it.
#
# Usage:
#   matrix = import ./matrix.nix { generated = ./variants.json; source = ./variants.toml; };
#   matrix.variants."vllm-python312-cuda12_9-sm90".capability  # => "9.0"
{ generated, source }:
let
  regenerate = "run `invoke variants --write`";
  json = builtins.fromJSON (builtins.readFile generated);
  data =
    if !(builtins.pathExists generated) then
      throw "nix/variants.json is missing; ${regenerate}"
    else if (json.source.sha256 or null) != builtins.hashFile "sha256" source then
      throw "nix/variants.json is stale: nix/variants.toml changed since it was generated; ${regenerate}"
    else
      json;
  enabledFor = system: builtins.filter (v: v.system == system && v.disabled == null) (builtins.attrValues data.variants);
in
{
  # { <name> = record; } for every variant, disabled ones included.
  inherit (data) variants;

  # The systems the matrix covers, e.g. [ "aarch64-linux" "x86_64-linux" ].
  systems = builtins.attrNames data.systems;

  # Variants that get a package: the valid ones of `system`.
  inherit enabledFor;

  # The default set of `system`: what hydraJobs and `nix flake check` cover.
  defaultFor = system: builtins.filter (v: v.default) (enabledFor system);

  # One nvcc job per this many GiB of builder RAM (nix/build-jobs.sh).
  inherit (data) ramPerJobGib;
}
