# Applied to the flake's lib.resolve by `invoke eval` (vllm_variants.eval_task):
#   VLLM_VARIANTS_EVAL_NAMES='["vllm-python312-cuda12_9-sm90"]' \
#     nix eval --json --impure <flake>#lib.resolve --apply "<this file's text>"
# The names come as data in the environment (JSON), never as Nix source.
resolve: resolve (builtins.fromJSON (builtins.getEnv "VLLM_VARIANTS_EVAL_NAMES"))
