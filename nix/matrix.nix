# The variant records, derived from nix/variants.toml with builtins only.
#
# Pure data: this file never touches nixpkgs, so `nix eval .#lib.variants`
# works without fetching or importing it. vllm_variants/matrix.py derives the
# same records from the same file; tests/test_matrix.py checks they agree, so
# a rule changed here must change there too.
#
# Usage:
#   matrix = import ./matrix.nix { toml = builtins.fromTOML (builtins.readFile ./variants.toml); };
#   matrix.variants."vllm-python312-cuda12_9-sm90".capability  # => "9.0"
{ toml }:
let
  inherit (builtins)
    attrNames
    concatStringsSep
    elem
    filter
    genList
    isList
    isString
    length
    listToAttrs
    match
    replaceStrings
    throw
    ;

  defaultKeys = [ "python" "cuda" "min_driver" "torch" ];
  # torch = "source" (nixpkgs' torch for this SM) or "wheel" (torch-bin); the
  # wheel is a CUDA one on x86_64-linux only (torch/bin/binary-hashes.nix).
  torchSuffix = { source = ""; wheel = "-torchbin"; };
  torchWheelSystems = [ "x86_64-linux" ];
  requiredKeys = [ "sm" "capability" "arch" "gpus" "system" ];
  variantKeys = requiredKeys ++ defaultKeys ++ [ "disabled" ];
  topLevelKeys = [ "defaults" "build" "systems" "variant" ];

  dropDots = replaceStrings [ "." ] [ "" ];
  unknownIn = valid: attrs: filter (k: !(elem k valid)) (attrNames attrs);
  check = cond: msg: value: if cond then value else throw "nix/variants.toml: ${msg}";

  defaults = toml.defaults or { };
  systems = builtins.mapAttrs (_: spec: spec.suffix) (toml.systems or { });
  rows = toml.variant or [ ];

  mkVariant =
    index: row:
    let
      where = "variant #${toString (index + 1)}";
      v = defaults // row;
      sm = v.sm;
      cudaTag = "cuda" + replaceStrings [ "." ] [ "_" ] v.cuda;
      record = {
        name = "vllm-${v.python}-${cudaTag}-sm${sm}${torchSuffix.${v.torch} or ""}${systems.${v.system}}";
        inherit sm;
        inherit (v) capability arch gpus system python cuda min_driver torch;
        cuda_tag = cudaTag;
        cuda_packages = "cudaPackages_" + replaceStrings [ "." ] [ "_" ] v.cuda;
        disabled = v.disabled or null;
      };
      unknown = unknownIn variantKeys row;
      missing = filter (k: !(row ? ${k})) requiredKeys;
      missingDefaults = filter (k: !(v ? ${k})) defaultKeys;
    in
    check (unknown == [ ]) "${where}: unknown key(s) ${concatStringsSep ", " unknown}" (
      check (missing == [ ]) "${where}: missing key(s) ${concatStringsSep ", " missing}" (
        check (missingDefaults == [ ])
          "${where}: no value for ${concatStringsSep ", " missingDefaults} (set it in [defaults])"
          (
            check (isString sm && match "[0-9]{2,3}[af]?" sm != null)
              "${where}: sm must be a string like \"90\""
              (
                check (dropDots v.capability == sm)
                  "${where}: capability '${v.capability}' does not match sm '${sm}'"
                  (
                    check (systems ? ${v.system})
                      "${where}: system '${v.system}' is not one of ${concatStringsSep ", " (attrNames systems)}"
                      (
                        check (torchSuffix ? ${v.torch}) "${where}: torch '${v.torch}' is not one of source, wheel" (
                        check (v.torch != "wheel" || elem v.system torchWheelSystems)
                          "${where}: torch = \"wheel\" needs x86_64-linux: nixpkgs' torch-bin is the CPU wheel on ${v.system}" (
                        check (isList v.gpus && v.gpus != [ ]) "${where}: gpus must be a non-empty list" (
                          check (record.disabled == null || (isString record.disabled && record.disabled != ""))
                            "${where}: disabled must be a reason (a non-empty string)"
                            record
                        )
                        ))
                      )
                  )
              )
          )
      )
    );

  list = genList (i: mkVariant i (builtins.elemAt rows i)) (length rows);
  names = map (v: v.name) list;
  # groupBy, not a count per name: linear in the rows (issue #13).
  byName = builtins.groupBy (n: n) names;
  duplicates = filter (n: length byName.${n} > 1) (attrNames byName);

  variants =
    check (unknownIn topLevelKeys toml == [ ]) "unknown top-level key(s) ${concatStringsSep ", " (unknownIn topLevelKeys toml)}" (
      check (unknownIn defaultKeys defaults == [ ]) "unknown key(s) in [defaults]" (
        check (rows != [ ]) "no [[variant]] tables" (
          check (duplicates == [ ]) "duplicate variant name(s): ${concatStringsSep ", " duplicates}" (
            listToAttrs (map (v: { name = v.name; value = v; }) list)
          )
        )
      )
    );
in
{
  # { <name> = record; } for every variant, disabled ones included.
  inherit variants;

  # The systems the matrix covers, e.g. [ "aarch64-linux" "x86_64-linux" ].
  systems = attrNames systems;

  # Variants that get a package: enabled ones of `system`.
  enabledFor =
    system: builtins.filter (v: v.system == system && v.disabled == null) (builtins.attrValues variants);

  # One nvcc job per this many GiB of builder RAM (nix/build-jobs.sh).
  ramPerJobGib = check (toml ? build.ram_per_job_gib) "[build] needs ram_per_job_gib" toml.build.ram_per_job_gib;
}
