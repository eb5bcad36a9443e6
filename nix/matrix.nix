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
    all
    attrNames
    concatMap
    concatStringsSep
    elem
    elemAt
    filter
    genList
    isAttrs
    isBool
    isFloat
    isInt
    isList
    isString
    length
    listToAttrs
    match
    replaceStrings
    sort
    throw
    toJSON
    typeOf
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
  pinKeys = [
    "torch_version"
    "vllm_version"
    "torch_bin_version"
    "torch_bin_cuda"
    "torch_capabilities"
    "vllm_capabilities"
    "cuda_capabilities"
  ];
  # [pin]'s version strings, in matrix.py's order (PIN_VERSIONS), with an example each
  pinVersions = [
    { key = "torch_version"; example = "2.9.1"; }
    { key = "vllm_version"; example = "0.15.1"; }
    { key = "torch_bin_version"; example = "2.9.0"; }
    { key = "torch_bin_cuda"; example = "12.8"; }
  ];

  dropDots = replaceStrings [ "." ] [ "" ];
  commas = concatStringsSep ", ";
  sorted = sort builtins.lessThan;
  unknownIn = valid: attrs: filter (k: !(elem k valid)) (attrNames attrs);
  # the names or items of a value a pair before has checked; [ ] until then,
  # so that building the list of pairs never reads a malformed value
  namesOf = value: if isAttrs value then attrNames value else [ ];
  itemsOf = value: if isList value then value else [ ];
  imap = f: list: genList (i: f (toString (i + 1)) (elemAt list i)) (length list);
  # Python's str.strip() also strips Unicode spaces (U+00A0, ...); [[:space:]]
  # is ASCII's: a reason of only U+00A0 passes here and fails there.
  blank = text: match "[[:space:]]*" text != null;

  # checkAll [ [ cond msg ] ... ] value: value, or the first pair's message
  # whose cond is false. In order, and lazily: a cond is read only once every
  # pair before it held (a later one may read a key an earlier one requires).
  # The pairs follow matrix.py's raises in its order, with its messages after
  # the file's name (tests/test_matrix.py checks each on both sides).
  checkAll =
    pairs: value:
    let
      failed = builtins.foldl' (
        found: pair:
        if found != null then
          found
        else if elemAt pair 0 then
          null
        else
          elemAt pair 1
      ) null pairs;
    in
    if failed == null then value else throw "nix/variants.toml: ${failed}";

  # matrix.py's value types: _described, _table, _string and _integer. The
  # last branch is for completeness: TOML has no null, fromTOML refuses dates.
  described =
    value:
    if isString value then
      "\"${value}\""
    else if isBool value then
      (if value then "true" else "false")
    else if isInt value || isFloat value then
      # toJSON, not toString: 525.6, not 525.600000 (Python's str of a float)
      "the number ${toJSON value}"
    else if isAttrs value then
      "a table"
    else if isList value then
      "an array"
    else
      "a ${typeOf value}";
  aTable = value: where: holding: [
    (isAttrs value)
    "${where} must be a table (holding ${holding}), not ${described value}"
  ];
  aString' =
    empty: table: key: where: example:
    let
      value = table.${key};
    in
    [
      (isString value && (empty || !(blank value)))
      "${where}: ${key} must be a string like ${example}, not ${described value}"
    ];
  aString = aString' false;
  aWhole = table: key: where: example: [
    (isInt table.${key} && table.${key} >= 1)
    "${where}: ${key} must be a positive whole number like ${example}, not ${described table.${key}}"
  ];

  defaults = toml.defaults or { };
  systemTables = toml.systems or { };
  systems = builtins.mapAttrs (_: spec: spec.suffix) systemTables;
  build = toml.build or { };
  explicitRows = toml.variant or [ ];
  lines = toml.cuda or { };
  # a row's min_driver comes from its CUDA line unless it or [defaults] sets one
  withLine =
    row:
    let
      cuda = row.cuda or defaults.cuda or null;
    in
    if
      !(isAttrs row) || row ? min_driver || defaults ? min_driver || !(isString cuda) || !(lines ? ${cuda})
    then
      row
    else
      row // { inherit (lines.${cuda}) min_driver; };

  # The product: every [[sm]] x [axes] python x [axes] cuda; [[exclude]]
  # disables with its reason; the default line is the default set.
  axes = toml.axes or { };
  # an axis not given is the default line's value alone
  line = key: axes.${key} or (if defaults ? ${key} then [ defaults.${key} ] else [ ]);
  excludes = toml.exclude or [ ];
  excluded =
    row:
    let
      hits = filter (rule: all (k: !(rule ? ${k}) || rule.${k} == (row.${k} or null)) excludeKeys) excludes;
    in
    if hits == [ ] then null else (builtins.head hits).reason;
  smTables = toml.sm or [ ];
  productRows = concatMap (
    i:
    let
      sm = elemAt smTables i;
    in
    concatMap (
      python:
      map (
        cuda:
        let
          row = sm // {
            inherit python cuda;
            default = python == (defaults.python or null) && cuda == (defaults.cuda or null) && (sm.default or true);
          };
          reason = if sm ? disabled then null else excluded row;
        in
        {
          where = "sm #${toString (i + 1)} (${python}, CUDA ${cuda})";
          row = if reason == null then row else row // { disabled = reason; };
        }
      ) (line "cuda")
    ) (line "python")
  ) (genList (i: i) (length smTables));
  rows =
    map (r: r // { row = withLine r.row; }) productRows
    ++ imap (i: row: { where = "variant #${i}"; row = withLine row; }) explicitRows;

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
    else if pair != null && older v.cuda (elemAt pair 0) then
      "capability ${cap} needs CUDA ${elemAt pair 0} or newer (nixpkgs' CUDA capability table)"
    else if pair != null && elemAt pair 1 != "" && older (elemAt pair 1) v.cuda then
      "CUDA ${v.cuda} no longer supports capability ${cap} (last: CUDA ${elemAt pair 1})"
    # torch-bin's x86_64 wheels are built for one CUDA line (+cu128) and it links
    # the instance's cudaPackages: a wheel row lives on that line
    else if v.torch == "wheel" && pin ? torch_bin_cuda && v.cuda != pin.torch_bin_cuda then
      "${if pin ? torch_bin_version then "torch-bin ${pin.torch_bin_version}" else "torch-bin"} at the pin is a "
      + "CUDA ${pin.torch_bin_cuda} wheel: a torch = \"wheel\" row must be on CUDA ${pin.torch_bin_cuda}"
    else if v.torch != "wheel" && !(listed "torch_capabilities") then
      "torch ${named "torch_version"}at the pin cannot target ${cap} (not on its list)"
    else if !(listed "vllm_capabilities") then
      "vllm ${named "vllm_version"}at the pin cannot target ${cap} (not on its list)"
    else
      null;
  checked = v: if v.disabled != null then v else v // { disabled = whyNot v; };

  # The whole-file shapes, in matrix.py's order (Matrix.from_toml, _cuda_lines,
  # _pin, _product): one pass over each table, never over pairs of rows.
  buildPairs = [
    [
      (unknownIn topLevelKeys toml == [ ])
      "unknown top-level key(s) ${commas (unknownIn topLevelKeys toml)}; valid: ${commas (sorted topLevelKeys)}"
    ]
    (aTable defaults "[defaults]" (commas defaultKeys))
    [
      (unknownIn defaultKeys defaults == [ ])
      "unknown key(s) in [defaults]: ${commas (unknownIn defaultKeys defaults)}; valid: ${commas defaultKeys}"
    ]
    (aTable systemTables "[systems]" "[systems.<system>] tables")
    [ (systemTables != { }) "no [systems.<system>] table" ]
  ]
  # Attribute order, where matrix.py goes in the file's (fromTOML does not
  # keep it): with two malformed [systems.X], [cuda."X"] or
  # [pin.cuda_capabilities] entries, the sides may name different ones first.
  ++ concatMap (
    system:
    let
      spec = systemTables.${system};
      where = "[systems.${system}]";
    in
    [
      (aTable spec where "exactly `suffix`")
      [ (attrNames spec == [ "suffix" ]) "${where} must hold exactly `suffix`" ]
      (aString' true spec "suffix" where "\"-arm64\" (or \"\")")
    ]
  ) (namesOf systemTables)
  ++ [
    (aTable build "[build]" "ram_per_job_gib")
    [ (build ? ram_per_job_gib) "[build] needs an integer ram_per_job_gib" ]
    (aWhole build "ram_per_job_gib" "[build]" "8 (GiB)")
  ];
  tablePairs =
    buildPairs
    ++ [
      [ (isList explicitRows) "variant must be [[variant]] tables, not ${described explicitRows}" ]
      (aTable lines "[cuda]" "[cuda.\"12.9\"] tables")
    ]
    ++ concatMap (
      cuda:
      let
        spec = lines.${cuda};
        where = "[cuda.\"${cuda}\"]";
      in
      [
        (aTable spec where "min_driver")
        [ (attrNames spec == [ "min_driver" ]) "${where} must hold exactly min_driver" ]
        (aWhole spec "min_driver" where "575")
      ]
    ) (namesOf lines)
    ++ [
      (aTable pin "[pin]" (commas (sorted pinKeys)))
      [
        (unknownIn pinKeys pin == [ ])
        "unknown key(s) in [pin]: ${commas (unknownIn pinKeys pin)}; valid: ${commas (sorted pinKeys)}"
      ]
    ]
    ++ map (
      { key, example }:
      [
        (!(pin ? ${key}) || isString pin.${key} && match "[0-9]+([.][0-9]+)+" pin.${key} != null)
        "[pin] ${key} must be a version like \"${example}\", not ${described (pin.${key} or null)}"
      ]
    ) pinVersions
    ++ (
      if pin ? cuda_capabilities then
        [
          (aTable pin.cuda_capabilities "[pin.cuda_capabilities]" ''capability = ["min CUDA", "max CUDA" or ""]'')
        ]
        ++ map (
          cap:
          let
            pair = pin.cuda_capabilities.${cap};
          in
          [
            (isList pair && length pair == 2 && all isString pair && elemAt pair 0 != "")
            "[pin.cuda_capabilities] \"${cap}\" must be [\"min\", \"max\" or \"\"]"
          ]
        ) (namesOf pin.cuda_capabilities)
      else
        [ ]
    )
    ++ map (key: [
      (!(pin ? ${key}) || isList pin.${key} && all isString pin.${key})
      "[pin] ${key} must be a list of capabilities like \"9.0\""
    ]) [ "torch_capabilities" "vllm_capabilities" ]
    ++ [
      [ (isList smTables) "sm must be [[sm]] tables, not ${described smTables}" ]
      (aTable axes "[axes]" "python, cuda")
      [
        (unknownIn [ "python" "cuda" ] axes == [ ])
        "unknown key(s) in [axes]: ${commas (unknownIn [ "python" "cuda" ] axes)}; valid: cuda, python"
      ]
    ]
    ++ map (key: [
      (isList (line key) && line key != [ ] && all isString (line key))
      "[axes] ${key} must be a non-empty list of strings"
    ]) [ "python" "cuda" ]
    ++ [ [ (isList excludes) "exclude must be [[exclude]] tables, not ${described excludes}" ] ]
    ++ concatMap (
      { i, rule }:
      [
        (aTable rule "exclude #${i}" "sm, system, python, cuda and reason")
        [
          (
            unknownIn (excludeKeys ++ [ "reason" ]) rule == [ ]
            && isString (rule.reason or null)
            && !(blank rule.reason)
          )
          "exclude #${i} needs a reason and only ${commas excludeKeys}"
        ]
      ]
    ) (imap (i: rule: { inherit i rule; }) (itemsOf excludes))
    ++ concatMap (
      { i, sm }:
      [
        (aTable sm "sm #${i}" (commas (sorted smKeys)))
        [
          (unknownIn smKeys sm == [ ])
          "sm #${i}: unknown key(s) ${commas (unknownIn smKeys sm)}; valid: ${commas (sorted smKeys)}"
        ]
        # a default that is no bool would drop the SM from the default set unsaid
        [
          (isBool (sm.default or true))
          "sm #${i}: default must be true or false, not ${described sm.default}"
        ]
      ]
    ) (imap (i: sm: { inherit i sm; }) (itemsOf smTables))
    ++ [ [ (rows != [ ]) "no [[variant]] or [[sm]] tables" ] ];

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
      # a wrong value is reported where it was written
      at = key: if row ? ${key} then where else "[defaults]";
      aValue = key: aString v key (at key);
    in
    checkAll [
      (aTable row where (commas (sorted variantKeys)))
      [
        (unknown == [ ])
        "${where}: unknown key(s) ${commas unknown}; valid: ${commas (sorted variantKeys)}"
      ]
      [ (missing == [ ]) "${where}: missing key(s) ${commas missing}" ]
      # the CUDA line decides min_driver: its type first
      (if v ? cuda then aValue "cuda" "\"12.9\"" else [ true "" ])
      [ (missingDefaults == [ ]) "${where}: no value for ${commas missingDefaults} (set it in [defaults])" ]
      (aValue "sm" "\"90\"")
      (aValue "capability" "\"9.0\"")
      (aValue "system" "\"x86_64-linux\"")
      (aValue "python" "\"python312\"")
      (aValue "arch" "\"Hopper\"")
      (aWhole v "min_driver" (at "min_driver") "560 (the driver's major version)")
      (aValue "torch" "\"source\" or \"wheel\"")
      [ (torchSuffix ? ${v.torch}) "${at "torch"}: torch '${v.torch}' is not one of source, wheel" ]
      [ (match "[1-9][0-9]{1,2}[af]?" sm != null) "${where}: sm '${sm}' is not like \"90\" or \"100\"" ]
      [
        (match "[1-9][0-9]?[.][0-9][af]?" v.capability != null && dropDots v.capability == sm)
        "${where}: capability '${v.capability}' does not match sm '${sm}'"
      ]
      [ (match "[0-9]+[.][0-9]+" v.cuda != null) "${at "cuda"}: cuda '${v.cuda}' is not like \"12.9\"" ]
      # the one message that differs: the systems in attribute order, where
      # matrix.py lists them in the file's (which fromTOML does not keep)
      [
        (systems ? ${v.system})
        "${where}: system '${v.system}' is not one of ${commas (attrNames systems)}"
      ]
      [
        (v.torch != "wheel" || elem v.system torchWheelSystems)
        (
          "${where}: torch = \"wheel\" needs ${commas torchWheelSystems}: "
          + "nixpkgs' torch-bin is the CPU wheel on ${v.system}"
        )
      ]
      [
        (isList v.gpus && v.gpus != [ ] && all isString v.gpus)
        "${where}: gpus must be a non-empty list of strings"
      ]
      [ (isBool record.default) "${where}: default must be true or false, not ${described record.default}" ]
      [
        (record.disabled == null || isString record.disabled && !(blank record.disabled))
        "${where}: disabled must be a reason (a non-empty string)"
      ]
    ] record;

  list = map (r: checked (mkVariant r)) rows;
  # groupBy, not a count per name: linear in the rows (issue #13)
  byName = builtins.groupBy (v: v.name) list;
  duplicates = filter (n: length byName.${n} > 1) (attrNames byName);

  variants = checkAll (
    tablePairs ++ [ [ (duplicates == [ ]) "duplicate variant name(s): ${commas duplicates}" ] ]
  ) (listToAttrs (map (v: { name = v.name; value = v; }) list));
  enabledFor = system: filter (v: v.system == system && v.disabled == null) (builtins.attrValues variants);
in
{
  # { <name> = record; } for every variant, disabled ones included.
  inherit variants;

  # The systems the matrix covers, e.g. [ "aarch64-linux" "x86_64-linux" ].
  systems = attrNames systems;

  # Variants that get a package: the valid ones of `system`.
  inherit enabledFor;

  # The default set of `system`: what hydraJobs and `nix flake check` cover.
  defaultFor = system: filter (v: v.default) (enabledFor system);

  # One nvcc job per this many GiB of builder RAM (nix/build-jobs.sh).
  ramPerJobGib = checkAll buildPairs build.ram_per_job_gib;
}
