"""vllm-variants: vLLM built per NVIDIA GPU architecture with Nix.

This package holds the logic behind tasks.py (Invoke) and noxfile.py (Nox).
Keep this module empty of imports: `invoke --list` imports nothing from here,
and every task imports only the module it needs (see benchmarks/bench_tasks.py).
"""

__version__ = "0.1.0"
