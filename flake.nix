{
  description = "vLLM built for exactly one NVIDIA GPU architecture (SM) per variant, from one matrix";

  # The pin is the rev in this URL: `nix flake update` relocks the same commit.
  # Move it with `invoke bump-pin <rev>`, never by hand.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/0182a361324364ae3f436a63005877674cf45efb";

  outputs =
    { self, nixpkgs }:
    let
      # Pure data: nix/variants.toml as the Python side validated and expanded
      # it (nix/variants.json, `invoke variants --write`); never imports nixpkgs.
      matrix = import ./nix/matrix.nix {
        generated = ./nix/variants.json;
        source = ./nix/variants.toml;
      };

      forSystems = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) matrix.systems);
      byName = f: variants: builtins.listToAttrs (map (v: { name = v.name; value = f v; }) variants);

      mkVariant =
        { nixpkgs, pinText }:
        variant:
        import ./nix/variant.nix {
          inherit nixpkgs pinText variant;
          inherit (matrix) ramPerJobGib;
        };

      pinnedText = "nixpkgs " + (nixpkgs.rev or "path ${nixpkgs.narHash or "(unlocked)"}");
      pinned = mkVariant {
        inherit nixpkgs;
        pinText = pinnedText;
      };
    in
    {
      lib = {
        # { <variant name> = { name sm capability arch gpus system python cuda ... }; }
        inherit (matrix) variants systems ramPerJobGib;

        # The nixpkgs this evaluation uses (what nix/versions.json records).
        pin = {
          rev = nixpkgs.rev or null;
          narHash = nixpkgs.narHash or null;
        };

        # What nixpkgs resolved for each named variant, for `invoke eval`:
        #   resolve [ "vllm-python312-cuda12_9-sm90" ]
        #   # => { vllm-python312-cuda12_9-sm90 = { ok = true; resolved = { versions arch ... }; }; }
        # A variant whose evaluation throws gives { ok = false; } (tryEval keeps
        # no message: invoke eval asks Nix for that variant alone to get it).
        resolve =
          names:
          builtins.listToAttrs (
            map (
              name:
              let
                v = matrix.variants.${name};
                attempt = builtins.tryEval (
                  let
                    r = self.packages.${v.system}.${name}.resolved;
                  in
                  builtins.deepSeq r r
                );
              in
              {
                inherit name;
                value = if attempt.success then { ok = true; resolved = attempt.value; } else { ok = false; };
              }
            ) names
          );
      };

      # packages.<system>.<variant name>: a Python 3.12 environment holding that
      # variant's vllm (result/bin/python, result/bin/vllm). passthru: vllm,
      # torch, bitsandbytes, variant, versions, pkgs.
      packages = forSystems (system: byName pinned (matrix.enabledFor system));

      # images.<system>.<variant name>: the variant as an OCI image, a script
      # that streams it (nixpkgs' dockerTools.streamLayeredImage; nix/image.nix).
      # `invoke image` builds it and copies it to a registry with skopeo. Not
      # under packages: those are the variants (invoke, bump-pin and checks
      # read every package as one); `nix flake check` accepts the extra output.
      images = forSystems (
        system:
        builtins.mapAttrs (
          name: env:
          import ./nix/image.nix {
            inherit env;
            pinText = pinnedText;
            pinTag =
              nixpkgs.shortRev or (builtins.substring 0 12 (builtins.hashString "sha256" (nixpkgs.narHash or "unlocked")));
            revision = self.rev or self.dirtyRev or "unknown";
          }
        ) self.packages.${system}
      );

      # Per-SM vllm for another flake, built from *its* nixpkgs:
      #   pkgs = import nixpkgs { system = "x86_64-linux"; overlays = [ vllm-variants.overlays.default ]; };
      #   pkgs.vllmVariants."vllm-python312-cuda12_9-sm90"
      overlays.default = final: prev: {
        vllmVariants = byName (mkVariant {
          nixpkgs = final.path;
          pinText = "nixpkgs at ${toString final.path}";
        }) (matrix.enabledFor final.stdenv.hostPlatform.system);
      };

      # Hydra: one job per variant of the default set and its system, e.g.
      # hydraJobs.<name>.x86_64-linux (every other valid variant builds by name).
      hydraJobs = builtins.mapAttrs (name: v: { ${v.system} = self.packages.${v.system}.${name}; }) (
        builtins.listToAttrs (
          builtins.concatMap (system: map (v: { name = v.name; value = v; }) (matrix.defaultFor system)) matrix.systems
        )
      );

      # Eval-only: each check forces a default-set variant's derivation (and
      # every read-back assertion in nix/variant.nix) without building it.
      checks = forSystems (
        system:
        builtins.listToAttrs (
          map (
            v:
            let
              pkg = self.packages.${system}.${v.name};
            in
            {
              inherit (v) name;
              value = pkg.pkgs.runCommandLocal "check-${v.name}" {
                variantDrv = builtins.unsafeDiscardStringContext pkg.drvPath;
              } ''echo "$variantDrv" > "$out"'';
            }
          ) (matrix.defaultFor system)
        )
      );

      # `nix fmt`: nixfmt (RFC 166 style) over every *.nix file, as
      # huggingface/kernel-builder does.
      formatter = forSystems (system: nixpkgs.legacyPackages.${system}.nixfmt-tree);

      devShells = forSystems (
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
        in
        {
          default = pkgs.mkShell {
            packages = [
              (pkgs.python312.withPackages (ps: [
                ps.invoke
                ps.nox
                ps.rich
                ps.pytest
                ps.pytest-xdist
                ps.pyyaml # tests/test_matrix_task.py, as the test extra
              ]))
              pkgs.git
              pkgs.ruff
              pkgs.mypy
            ];
            # tasks.py and noxfile.py import vllm_variants from this checkout.
            shellHook = ''export PYTHONPATH="$PWD/src''${PYTHONPATH:+:$PYTHONPATH}"'';
          };
        }
      );
    };
}
