# Applied to a flake's hydraJobs by `invoke bump-pin` (vllm_variants.versions):
#   nix eval --json <flake>#hydraJobs --apply "<this file's text>"
# { <variant> = { <system> = job; }; } -> { <variant> = { <system> = job.versions; }; }
# (job.versions: { vllm torch python cuda }, nix/variant.nix's passthru.versions).
#
# It ships with the Python package, not the flake: bump-pin evaluates every
# release branch's flake with today's code, and a branch's flake may predate
# any output this file could have been.
hydraJobs: builtins.mapAttrs (name: builtins.mapAttrs (system: job: job.versions)) hydraJobs
