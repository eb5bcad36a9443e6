"""Tasks for vllm-variants (Invoke). Run `invoke --list`, `invoke --help <task>`.

Each task is a thin shim over the vllm_variants package. Imports stay inside
the tasks: `invoke --list` must not load rich, tomli or the subprocess layer
(benchmarks/bench_tasks.py measures it).
"""

from pathlib import Path

from invoke import Collection, task

ROOT = Path(__file__).resolve().parent


def _project():
    from vllm_variants.project import Project

    return Project(ROOT)


def _call(func, *args, **kwargs):
    from vllm_variants.boundary import call

    return call(func, *args, **kwargs)


@task(help={"json": "print the matrix as JSON (what `nix eval .#lib.variants` prints)"})
def variants(c, json=False):
    """Show the variant matrix (from nix/variants.toml; no Nix needed)."""
    from vllm_variants.variants_cmd import show

    _call(show, _project(), as_json=json)


@task(help={"check": "only check: fail if README.md is out of date, change nothing"})
def readme(c, check=False):
    """Regenerate README.md's generated sections (variant table, versions)."""
    from vllm_variants.readme import update

    changed = _call(update, _project(), check=check)
    print("README.md updated" if changed else "README.md is up to date")


ns = Collection(variants, readme)
