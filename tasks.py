"""Tasks for vllm-variants (Invoke). Run `invoke --list`, `invoke --help <task>`.

Each task is a thin shim over the vllm_variants package. Imports stay inside
the tasks: `invoke --list` must not load rich, tomli or the subprocess layer
(benchmarks/bench_tasks.py measures it).
"""

import inspect
import os
import sys
from pathlib import Path

from invoke import Collection, Task, task

# Invoke turns .pyc writing off (sys.dont_write_bytecode, its --write-pyc flag)
# before it loads this file, so an editable checkout would compile src/ and this
# file again on every task. Compile once (issue #13): the package's modules get
# their cache as they are imported, this file gets its own the first time.
sys.dont_write_bytecode = False
if __cached__ and not os.path.exists(__cached__):
    import py_compile

    try:
        py_compile.compile(__file__, cfile=__cached__, doraise=True)
    except (OSError, py_compile.PyCompileError):  # a read-only checkout: compile each time, as before
        pass

ROOT = Path(__file__).resolve().parent

# -- the selection: which variants a task acts on (issue #24) ----------------------

# Its flags, their defaults and help, once. A task that takes them names the
# flags in `selects` and has one `selection` parameter where they go: the flags
# are parsed once, before its body runs, into vllm_variants.selection.Selection.
SELECTION = {
    "sm": (
        None,
        "SM(s): 90, sm90, 9.0, a full variant name, or 'auto' for this machine's GPUs (see `invoke which`); "
        "repeat it or give a list (--sm 80,89,90)",
    ),
    "arm64": (False, "the aarch64-linux (Grace) variant of each --sm (GH200: --sm 90 --arm64)"),
    "system": (None, "every enabled variant of this system (x86_64-linux, aarch64-linux); repeatable"),
    "all": (False, "every enabled variant (of the default set, or of the --python/--cuda line)"),
    # which line of the matrix' axes (variants.toml [axes])
    "python": (None, "the Python line, e.g. 313 (default: the matrix's default line, python312)"),
    "cuda": (None, "the CUDA line, e.g. 12.8 (default: the matrix's default line, 12.9)"),
}
REPEATABLE = ("sm", "system")

# -- every task answers --help and -h (issue #22) --------------------------------

HELP_WORDS = ("--help", "-h")


class HelpfulTask(Task):
    """A task of this collection. `invoke TASK --help` and `invoke TASK -h` show
    its help, as `invoke --help TASK` does: `-h` is never one of its own short
    flags, and Invoke's parser, which hands the word after a task name to a
    positional argument still missing (`bump-pin --help` made '--help' the
    commit), is answered here. Option values are checked here for every task
    (no control characters), and the selection flags parsed here (SELECTION)."""

    def __init__(self, body, *, selects=(), **kwargs):
        self.selects = tuple(selects)
        if self.selects:
            kwargs["help"] = {**{flag: SELECTION[flag][1] for flag in self.selects}, **kwargs.get("help", {})}
            kwargs["iterable"] = [*(f for f in REPEATABLE if f in self.selects), *kwargs.get("iterable", [])]
        super().__init__(body, **kwargs)

    def argspec(self, body):
        """The body's signature with its `selection` parameter spelled as the flags it takes."""
        signature = super().argspec(body)
        if not self.selects:
            return signature
        params = []
        for param in signature.parameters.values():
            if param.name != "selection":
                params.append(param)
                continue
            for flag in self.selects:
                params.append(inspect.Parameter(flag, param.POSITIONAL_OR_KEYWORD, default=SELECTION[flag][0]))
        return signature.replace(parameters=params)

    def arg_opts(self, name, default, taken_names):
        taken_names.add("h")  # no auto short flag -h: it means --help
        return super().arg_opts(name, default, taken_names)

    def __call__(self, *args, **kwargs):
        given = [*args[1:], *(kwargs.get(name) for name in self.positional)]
        if any(isinstance(value, str) and value in HELP_WORDS for value in given):
            from invoke import Program

            name = next(key for key, value in ns.tasks.items() if value.body is self.body)
            Program(namespace=ns, binary="inv[oke]").run(["invoke", "--help", name])
        from vllm_variants.options import refuse_control_characters

        flags = {name: name.upper() if name in self.positional else "--" + name.replace("_", "-") for name in kwargs}
        _call(refuse_control_characters, {flags[name]: value for name, value in kwargs.items()})
        if self.selects:
            from vllm_variants.selection import Selection

            chosen = {flag: kwargs.pop(flag) for flag in self.selects if flag in kwargs}
            kwargs["selection"] = _call(Selection.parse, **chosen)
        return super().__call__(*args, **kwargs)


def command(*args, **kwargs):
    """@task for this collection: every task is a HelpfulTask; `selects=(...)`: the
    selection flags it takes, given to its body as one `selection`."""
    return task(*args, klass=HelpfulTask, **kwargs)


def _project():
    from vllm_variants.project import Project

    return Project(ROOT)


def _call(func, *args, **kwargs):
    from vllm_variants.boundary import call

    return call(func, *args, **kwargs)


@command(
    help={
        "json": "print the matrix as JSON, every combination (what `nix eval .#lib.variants` prints)",
        "all": "every combination of the axes, the disabled ones with the reason (default: the default set)",
        "write": "write nix/variants.json, the matrix validated and expanded for the flake (after editing "
        "nix/variants.toml)",
        "check": "only check: fail if nix/variants.json is out of date with nix/variants.toml, change nothing",
    }
)
def variants(c, json=False, all=False, write=False, check=False):
    """Show the variant matrix (from nix/variants.toml; no Nix needed); --write writes the flake's copy."""
    from vllm_variants.variants import show

    _call(show, _project(), as_json=json, everything=all, write=write, check=check)


@command(help={"check": "only check: fail if README.md is out of date, change nothing"})
def readme(c, check=False):
    """Regenerate the generated sections of README.md and docs/*.md (variant table, versions, image tag)."""
    from vllm_variants.readme import show

    _call(show, _project(), check=check)


# -- bump-pin (issue #4) --------------------------------------------------------


@command(
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

    _call(
        bump,
        ROOT,
        rev,
        branches=branch or (),
        globs=branches or (),
        url_template=url_template,
        dry_run=dry_run,
        release_branch=release_branch,
    )


# -- build (issue #2) -----------------------------------------------------------

# Evaluation in batches sized from RAM (issue #13): build and eval.
_EVAL_HELP = {
    "eval-jobs": "at most this many variants (nixpkgs instances) per Nix evaluation; default: sized from RAM",
    "eval-max-memory": "memory one Nix evaluation may use, e.g. 24G (binary units); batches are sized from it "
    "(default: half of this machine's RAM)",
}


@command(
    auto_shortflags=False,  # no -j meaning --json to someone used to `nix build -j 4`
    selects=("sm", "arm64", "all", "system", "python", "cuda"),
    iterable=["option"],
    help={
        "dry-run": "evaluate and print the plan (what Nix would build and fetch); build and change nothing",
        "cores": "Nix --cores: cores per build (0: all); default: planned from RAM when several variants",
        "max-jobs": "Nix --max-jobs: builds at once (0: remote builders only); default: planned from RAM "
        "when several variants",
        "builders": "Nix --builders: remote builders, e.g. 'ssh-ng://user@host aarch64-linux - 8 1 big-parallel' "
        "or @machines-file (replaces the builders Nix is configured with)",
        "keep-going": "keep building what does not depend on a failed derivation (and the other variants)",
        "option": "extra Nix option NAME=VALUE (e.g. --option sandbox true); repeatable",
        "nixpkgs": "build against this nixpkgs instead of the pin: a checkout's path or a flake reference "
        "(github:NixOS/nixpkgs/<rev>, git+https://mirror/nixpkgs); flake.lock is never rewritten",
        "json": "also write the summary (or, with --dry-run, the plan) as JSON to this file, for CI",
        **_EVAL_HELP,
    },
)
def build(
    c,
    selection,
    dry_run=False,
    cores=None,
    max_jobs=None,
    builders=None,
    keep_going=False,
    option=None,
    nixpkgs=None,
    json=None,
    eval_jobs=None,
    eval_max_memory=None,
):
    """Build variants with Nix: plan, progress, logs, result-<variant> links."""
    from vllm_variants.build import main

    _call(
        main,
        _project(),
        selection=selection,
        dry_run=dry_run,
        cores=cores,
        max_jobs=max_jobs,
        builders=builders,
        keep_going=keep_going,
        option=option,
        nixpkgs=nixpkgs,
        json_path=json,  # build writes its summary there: a path, where the other tasks print JSON (as_json)
        eval_jobs=eval_jobs,
        eval_max_memory=eval_max_memory,
    )


# -- smoke (issue #3) ---------------------------------------------------------


@command(
    help={
        "results": "comma-separated results to check: variant names, SMs (90, sm90) or result paths "
        "(default: every result-* link in the checkout)",
        "generate": "also start the engine on a tiny dummy model and generate a few tokens (needs a GPU)",
        "allow_no_gpu": "without a GPU, skip the GPU checks instead of failing them (build hosts)",
        "jobs": "results checked at once (default 0: all of them, one at a time with --generate)",
        "report_dir": "where smoke-report.json and smoke-junit.xml go (default: the checkout)",
    }
)
def smoke(c, results="", generate=False, allow_no_gpu=False, jobs=None, report_dir=""):
    """Smoke-check built results in their own Python: vllm, torch and GPU, variant vs GPU, driver."""
    from vllm_variants.smoke.session import smoke as run_smoke

    _call(
        run_smoke,
        _project(),
        [results],
        generate=generate,
        allow_no_gpu=allow_no_gpu,
        jobs=jobs,
        report_dir=report_dir or None,
    )


# -- doctor, which, audit: know the machine, pick the variant, check a build (#5)


@command(help={"json": "print the findings as JSON (exit status 1 still means something blocks)"})
def doctor(c, json=False):
    """Check this machine: Nix, builders, cores/RAM, GPUs and the variant for each."""
    from vllm_variants.doctor import show

    _call(show, _project(), as_json=json)


@command(help={"json": "print each GPU with its variant as JSON"})
def which(c, json=False):
    """Show the variant for each local GPU (what `build --sm auto` picks)."""
    from vllm_variants.which import show

    _call(show, _project(), as_json=json)


@command(
    help={
        "path": "a result link, store path, directory, ELF library (.so) or wheel (.whl)",
        "sm": "the SM(s) you own, e.g. 90 or 80,90, or 'auto' for this machine's GPUs",
        "variant": "a variant name (or its SM); default: the variant named by PATH, if any",
        "json": "print the report as JSON",
        "reader": "auto (cuobjdump if found, else the fatbin headers), fatbin or cuobjdump",
        "cuobjdump": "the cuobjdump to run (default: the one on PATH)",
        "check": "exit 1 when some code is never used by the SM(s), or the two readers disagree",
    }
)
def audit(c, path, sm=None, variant=None, json=False, reader="auto", cuobjdump=None, check=False):
    """List the GPU architectures (SASS, PTX) and their sizes in a build, wheel or library."""
    from vllm_variants.audit import show

    _call(
        show,
        path,
        matrix=_project().matrix,
        sm=sm,
        variant=variant,
        as_json=json,
        reader=reader,
        cuobjdump=cuobjdump,
        check=check,
    )


# -- beyond one machine: binary caches and CI (issue #6) ----------------------


@command(
    selects=("sm", "arm64", "system", "all"),
    help={
        "to": "store URI to copy to: file:///srv/cache, s3://bucket?region=..., ssh-ng://host, ...",
        "sign_key": "secret key file (nix key generate-secret) to sign the copied paths with",
        "check": "only tell which variants the cache holds (evaluates, builds nothing); exit 1 if one is missing",
        "nixpkgs": "with --check: the nixpkgs the variants were built with (path or flake ref), as for build",
        "dry_run": "print the plan (paths, sizes, signing) and copy nothing",
    },
)
def publish(c, to, selection, sign_key=None, check=False, nixpkgs=None, dry_run=False):
    """Copy built variants' closures to a binary cache (nix copy), signed with --sign-key.

    With --check and nothing selected: every variant of the default set."""
    from vllm_variants.publish import main

    _call(
        main,
        _project(),
        to=to,
        selection=selection,
        sign_key=sign_key,
        check=check,
        nixpkgs=nixpkgs,
        dry_run=dry_run,
    )


@command(
    selects=("sm", "arm64"),
    help={
        "to": "where the image goes: docker://REGISTRY/NAME[:TAG] or oci-archive:PATH[:TAG] "
        "(TAG defaults to <vllm version>-<pin>)",
        "load": "load the image into the local Docker (docker image load, streamed) or, without docker, podman",
        "dry-run": "build the image script and list its layers and sizes; copy nothing",
        "insecure": "with docker://: plain HTTP or no TLS verification (skopeo --dest-tls-verify=false)",
        "tmpdir": "where the uncompressed archive skopeo reads is written, then removed (default $TMPDIR)",
        "nixpkgs": "the nixpkgs the variant was built with (path or flake ref), as for build",
    },
)
def image(c, selection, to=None, load=False, dry_run=False, insecure=False, tmpdir=None, nixpkgs=None):
    """Build a built variant's OCI image (dockerTools) and copy it to a registry or archive with skopeo.

    One variant per image: --sm names it."""
    from vllm_variants.image import main

    _call(
        main,
        _project(),
        selection=selection,
        to=to,
        load=load,
        dry_run=dry_run,
        insecure=insecure,
        tmpdir=tmpdir,
        nixpkgs=nixpkgs,
    )


@command(
    name="eval",
    selects=("sm", "arm64", "system", "all", "python", "cuda"),
    help={
        "nixpkgs": "evaluate against this nixpkgs instead of the pin: a checkout's path or a flake reference "
        "(github:NixOS/nixpkgs/<rev>); flake.lock is never rewritten",
        "json": "print the result as JSON (for CI) instead of text",
        **_EVAL_HELP,
    },
)
def eval_(c, selection, nixpkgs=None, json=False, eval_jobs=None, eval_max_memory=None):
    """Evaluate variants at the pin (in batches sized to RAM, nothing built): versions, arch lists, CUDA; or why not.

    Nothing selected: the default set (or the --python/--cuda line)."""
    from vllm_variants.eval_task import main

    _call(
        main,
        _project(),
        selection=selection,
        nixpkgs=nixpkgs,
        as_json=json,
        eval_jobs=eval_jobs,
        eval_max_memory=eval_max_memory,
    )


@command(
    selects=("sm", "arm64", "system", "python", "cuda"),
    help={"format": "output format; valid: github (the JSON strategy.matrix takes)"},
)
def matrix(c, selection, format="github"):
    """Print the CI build matrix (GitHub Actions JSON) for the default set (or a --python/--cuda line)."""
    from vllm_variants.matrix_task import show

    _call(show, _project(), format=format, selection=selection)


ns = Collection(variants, readme, build, eval_, bump_pin, smoke, doctor, which, audit, publish, image, matrix)
