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


# -- beyond one machine: binary caches and CI (issue #6) ----------------------

_SELECT_HELP = {
    "sm": "SM(s): 90, sm90, 80,89 or a full variant name (repeatable)",
    "arm64": "with --sm: the aarch64-linux (Grace) variant of that SM",
    "system": "every enabled variant of this system, e.g. aarch64-linux (repeatable)",
}


@task(
    iterable=["sm", "system"],
    help={
        "to": "store URI to copy to: file:///srv/cache, s3://bucket?region=..., ssh-ng://host, ...",
        **_SELECT_HELP,
        "all": "every enabled variant (with --check, the default)",
        "sign_key": "secret key file (nix key generate-secret) to sign the copied paths with",
        "check": "only tell which variants the cache holds (evaluates, builds nothing); exit 1 if one is missing",
        "nixpkgs": "with --check: the nixpkgs the variants were built with (path or flake ref), as for build",
        "dry_run": "print the plan (paths, sizes, signing) and copy nothing",
    },
)
def publish(c, to, sm=None, arm64=False, system=None, all=False, sign_key=None, check=False, nixpkgs=None,
            dry_run=False):
    """Copy built variants' closures to a binary cache (nix copy), signed with --sign-key."""
    from vllm_variants import publish as pub
    from vllm_variants.nix import input_ref

    project = _project()
    if check:
        picked = _call(project.matrix.select, sm, arm64=arm64, systems=system, all=all or not (sm or system))
        overrides = {"nixpkgs": input_ref(nixpkgs)} if nixpkgs else None
        _call(pub.check, project, picked, to=to, overrides=overrides)
        return
    picked = _call(project.matrix.select, sm, arm64=arm64, systems=system, all=all)
    _call(pub.publish, project, picked, to=to, sign_key=sign_key, dry_run=dry_run)


@task(
    iterable=["sm", "system"],
    help={"format": "output format; valid: github (the JSON strategy.matrix takes)", **_SELECT_HELP},
)
def matrix(c, format="github", sm=None, arm64=False, system=None):
    """Print the CI build matrix (GitHub Actions JSON) for the enabled variants."""
    from vllm_variants.ci_matrix import show

    _call(show, _project(), fmt=format, sms=sm, arm64=arm64, systems=system)


ns = Collection(variants, readme, bump_pin, publish, matrix)
