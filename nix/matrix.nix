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
  smKeys = [ "sm" "capability" "arch" "gpus" "system" "disabled" "default" ];
  excludeKeys = [ "sm" "system" "python" "cuda" ];
  # torch = "source" (nixpkgs' torch for this SM) or "wheel" (torch-bin); the
  # wheel is a CUDA one on x86_64-linux only (torch/bin/binary-hashes.nix).
  torchSuffix = { source = ""; wheel = "-torchbin"; };
  torchWheelSystems = [ "x86_64-linux" ];
  requiredKeys = [ "sm" "capability" "arch" "gpus" "system" ];
  variantKeys = requiredKeys ++ defaultKeys ++ [ "disabled" "default" ];
  topLevelKeys = [ "defaults" "build" "systems" "variant" "axes" "sm" "cuda" "exclude" "pin" ];

  dropDots = replaceStrings [ "." ] [ "" ];
  unknownIn = valid: attrs: filter (k: !(elem k valid)) (attrNames attrs);
  check = cond: msg: value: if cond then value else throw "nix/variants.toml: ${msg}";
  # checkAll [ [ cond msg ] ... ] value: value, or the first pair's message
  # whose cond is false. In order, and lazily: a cond is read only once every
  # pair before it held (a later one may read a key an earlier one requires).
  checkAll =
    pairs: value:
    let
      failed = builtins.foldl' (
        found: pair:
        if found != null then
          found
        else if builtins.elemAt pair 0 then
          null
        else
          builtins.elemAt pair 1
      ) null pairs;
    in
    if failed == null then value else throw "nix/variants.toml: ${failed}";

  defaults = toml.defaults or { };
  systems = builtins.mapAttrs (_: spec: spec.suffix) (toml.systems or { });
  explicitRows = toml.variant or [ ];
  lines = toml.cuda or { };
  # a row's min_driver comes from its CUDA line unless it or [defaults] sets one
  withLine =
    row:
    let
      cuda = row.cuda or defaults.cuda or null;
    in
    if row ? min_driver || defaults ? min_driver || !(lines ? ${cuda}) then
      row
    else
      row // { inherit (lines.${cuda}) min_driver; };

  # The product: every [[sm]] x [axes] python x [axes] cuda; [[exclude]]
  # disables with its reason; the default line is the default set.
  axes = toml.axes or { };
  pythonLine = axes.python or [ defaults.python ];
  cudaLine = axes.cuda or [ defaults.cuda ];
  excludes = toml.exclude or [ ];
  excluded =
    row:
    let
      hits = filter (rule: builtins.all (k: !(rule ? ${k}) || rule.${k} == (row.${k} or null)) excludeKeys) excludes;
    in
    if hits == [ ] then null else (builtins.head hits).reason;
  smTables = toml.sm or [ ];
  productRows = builtins.concatMap (
    i:
    let
      sm = builtins.elemAt smTables i;
    in
    check (unknownIn smKeys sm == [ ]) "sm #${toString (i + 1)}: unknown key(s) ${concatStringsSep ", " (unknownIn smKeys sm)}" (
      builtins.concatMap (
        python:
        map (
          cuda:
          let
            row = sm // {
              inherit python cuda;
              default = python == (defaults.python or null) && cuda == (defaults.cuda or null) && (sm.default or true) == true;
            };
            reason = if sm ? disabled then null else excluded row;
          in
          {
            where = "sm #${toString (i + 1)} (${python}, CUDA ${cuda})";
            row = if reason == null then row else row // { disabled = reason; };
          }
        ) cudaLine
      ) pythonLine
    )
  ) (genList (i: i) (length smTables));
  rows =
    map (r: r // { row = withLine r.row; }) productRows
    ++ genList (i: { where = "variant #${toString (i + 1)}"; row = withLine (builtins.elemAt explicitRows i); }) (length explicitRows);

  # What the pin can target ([pin], read from its files): a combination it
  # cannot build is listed, disabled with the fact that rules it out.
  pin = toml.pin or { };
  older = a: b: builtins.compareVersions a b < 0;
  whyNot =
    v:
    let
      cap = v.capability;
      bounds = pin.cuda_capabilities or null;
      pair = if bounds == null then null else bounds.${cap} or null;
      listed = key: !(pin ? ${key}) || elem cap pin.${key};
      named = key: if pin ? ${key} then "${pin.${key}} " else "";
    in
    if bounds != null && pair == null then
      "nixpkgs at the pin knows no CUDA capability ${cap}"
    else if pair != null && older v.cuda (builtins.elemAt pair 0) then
      "capability ${cap} needs CUDA ${builtins.elemAt pair 0} or newer (nixpkgs' CUDA capability table)"
    else if pair != null && builtins.elemAt pair 1 != "" && older (builtins.elemAt pair 1) v.cuda then
      "CUDA ${v.cuda} no longer supports capability ${cap} (last: CUDA ${builtins.elemAt pair 1})"
    else if v.torch != "wheel" && !(listed "torch_capabilities") then
      "torch ${named "torch_version"}at the pin cannot target ${cap} (not on its list)"
    else if !(listed "vllm_capabilities") then
      "vllm ${named "vllm_version"}at the pin cannot target ${cap} (not on its list)"
    else
      null;
  checked = v: if v.disabled != null then v else v // { disabled = whyNot v; };

  mkVariant =
    { where, row }:
    let
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
        default = v.default or true;
      };
      unknown = unknownIn variantKeys row;
      missing = filter (k: !(row ? ${k})) requiredKeys;
      missingDefaults = filter (k: !(v ? ${k})) defaultKeys;
    in
    checkAll [
      [ (unknown == [ ]) "${where}: unknown key(s) ${concatStringsSep ", " unknown}" ]
      [ (missing == [ ]) "${where}: missing key(s) ${concatStringsSep ", " missing}" ]
      [
        (missingDefaults == [ ])
        "${where}: no value for ${concatStringsSep ", " missingDefaults} (set it in [defaults])"
      ]
      [ (isString sm && match "[0-9]{2,3}[af]?" sm != null) "${where}: sm must be a string like \"90\"" ]
      [ (dropDots v.capability == sm) "${where}: capability '${v.capability}' does not match sm '${sm}'" ]
      [
        (systems ? ${v.system})
        "${where}: system '${v.system}' is not one of ${concatStringsSep ", " (attrNames systems)}"
      ]
      [ (torchSuffix ? ${v.torch}) "${where}: torch '${v.torch}' is not one of source, wheel" ]
      [
        (v.torch != "wheel" || elem v.system torchWheelSystems)
        "${where}: torch = \"wheel\" needs x86_64-linux: nixpkgs' torch-bin is the CPU wheel on ${v.system}"
      ]
      [ (isList v.gpus && v.gpus != [ ]) "${where}: gpus must be a non-empty list" ]
      [
        (record.disabled == null || (isString record.disabled && record.disabled != ""))
        "${where}: disabled must be a reason (a non-empty string)"
      ]
    ] record;

  list = map (r: checked (mkVariant r)) rows;
  # groupBy, not a count per name: linear in the rows (issue #13)
  byName = builtins.groupBy (v: v.name) list;
  duplicates = filter (n: length byName.${n} > 1) (attrNames byName);

  variants = checkAll [
    [
      (unknownIn topLevelKeys toml == [ ])
      "unknown top-level key(s) ${concatStringsSep ", " (unknownIn topLevelKeys toml)}"
    ]
    [ (unknownIn defaultKeys defaults == [ ]) "unknown key(s) in [defaults]" ]
    [ (rows != [ ]) "no [[variant]] or [[sm]] tables" ]
    [ (duplicates == [ ]) "duplicate variant name(s): ${concatStringsSep ", " duplicates}" ]
  ] (listToAttrs (map (v: { name = v.name; value = v; }) list));
  enabledFor =
    system: builtins.filter (v: v.system == system && v.disabled == null) (builtins.attrValues variants);
in
{
  # { <name> = record; } for every variant, disabled ones included.
  inherit variants;

  # The systems the matrix covers, e.g. [ "aarch64-linux" "x86_64-linux" ].
  systems = attrNames systems;

  # Variants that get a package: the valid ones of `system`.
  inherit enabledFor;

  # The default set of `system`: what hydraJobs and `nix flake check` cover.
  defaultFor = system: builtins.filter (v: v.default) (enabledFor system);

  # One nvcc job per this many GiB of builder RAM (nix/build-jobs.sh).
  ramPerJobGib = check (toml ? build.ram_per_job_gib) "[build] needs ram_per_job_gib" toml.build.ram_per_job_gib;
}
