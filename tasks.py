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


# -- bump-pin (issue #4) --------------------------------------------------------


@task(
    positional=["rev"],
    iterable=["branch", "branches"],
    help={
        "rev": "the nixpkgs commit to pin: all 40 hex digits",
        "branch": "a branch to bump (repeatable); default: the checked-out branch",
        "branches": "bump every local branch matching this glob, e.g. 'vllm-*' (repeatable)",
        "url-template": "the pin's flake URL with {rev} for the commit, for mirrors "
        "(default github:NixOS/nixpkgs/{rev}; e.g. git+file:///srv/nixpkgs?rev={rev})",
        "dry-run": "print the plan per branch and change nothing",
        "release-branch": "when main's vllm gets newer, first create vllm-<old version> at main's "
        "current commit (refused if it exists)",
    },
)
def bump_pin(c, rev, branch=None, branches=None, url_template=None, dry_run=False, release_branch=False):
    """Move the nixpkgs pin on branches, all or nothing: relock, evaluate versions, README, commit."""
    from vllm_variants.bump import bump_pin as bump

    _call(bump, ROOT, rev, branches=branch or (), globs=branches or (), url_template=url_template,
          dry_run=dry_run, release_branch=release_branch)


# -- doctor, which, audit: know the machine, pick the variant, check a build (#5)


@task(help={"json": "print the findings as JSON (exit status 1 still means something blocks)"})
def doctor(c, json=False):
    """Check this machine: Nix, builders, cores/RAM, GPUs and the variant for each."""
    from vllm_variants.doctor import show

    _call(show, _project(), as_json=json)


@task(help={"json": "print each GPU with its variant as JSON"})
def which(c, json=False):
    """Show the variant for each local GPU (what `build --sm auto` picks)."""
    from vllm_variants.which import show

    _call(show, _project(), as_json=json)


@task(
    help={
        "path": "a result link, store path, directory, ELF library (.so) or wheel (.whl)",
        "sm": "the SM(s) you own, e.g. 90 or 80,90, or 'auto' for this machine's GPUs",
        "variant": "a variant name (or its SM); default: the variant named by PATH, if any",
        "json": "print the report as JSON",
        "reader": "auto (cuobjdump if found, else the fatbin headers), fatbin or cuobjdump",
        "cuobjdump": "the cuobjdump to run (default: the one on PATH)",
        "check": "exit 1 when code for any other SM is found",
    }
)
def audit(c, path, sm=None, variant=None, json=False, reader="auto", cuobjdump=None, check=False):
    """List the GPU architectures (SASS, PTX) and their sizes in a build, wheel or library."""
    from vllm_variants.audit import show

    _call(show, path, matrix=_project().matrix, sm=sm, variant=variant, as_json=json, reader=reader,
          cuobjdump=cuobjdump, check=check)


ns = Collection(variants, readme, bump_pin, doctor, which, audit)
