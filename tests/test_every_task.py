"""Every task holds to the policies it goes through, walked from tasks.py itself
(issues #21, #22): a task added tomorrow is covered by these tables without a
row being written for it.

- `invoke TASK --help` and `invoke TASK -h` print what `invoke --help TASK` does;
- a closed standard output is one line and exit 1, never a silent exit 0;
- a newline in any string option's value never splits the error in two;
- each kind of bad file or path, wherever a task reads one (the matrix every
  task reads, and each option that names a file or a folder), is one line.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import support

pytestmark = pytest.mark.nix

STANDIN = str(support.STANDIN)
REV = "0182a361324364ae3f436a63005877674cf45efb"
LEAK = "NEWLINE-LEAK"


def _collection() -> Any:
    return support.tasks_module().ns


NS = _collection()
TASKS = sorted(NS.tasks)

# A cheap run of each task that gets as far as reading its options; a task
# added to tasks.py without one here fails test_every_task_has_a_base_run.
BASE: dict[str, list[str]] = {
    "variants": [],
    "readme": ["--check"],
    "build": ["--sm", "90", "--dry-run", "--nixpkgs", STANDIN],
    "eval": ["--sm", "90", "--nixpkgs", STANDIN],
    "bump-pin": [REV, "--dry-run"],
    "smoke": ["--results", "90"],
    "doctor": [],
    "which": [],
    "audit": ["nix"],
    "publish": ["file:///nonexistent/cache", "--sm", "90", "--dry-run"],
    "image": ["--sm", "90", "--dry-run", "--nixpkgs", STANDIN],
    "matrix": [],
}
POSITIONAL = {"bump-pin": 0, "audit": 0, "publish": 0}  # where the positional argument sits in BASE


def invoke(root: Path, *argv: str, env: dict[str, str] | None = None, shell_prefix: list[str] | None = None):
    return subprocess.run(
        [*(shell_prefix or []), sys.executable, "-m", "invoke", *argv],
        cwd=root,
        env=env or support.nix_env("builders =\nextra-platforms ="),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A checkout with the SM 90 variant built (smoke, publish and image need it)."""
    from vllm_variants.matrix import Matrix

    root = support.make_project(tmp_path_factory.mktemp("every") / "project")
    support.build_results(root, support.STANDIN, [Matrix.load(root / "nix" / "variants.toml").resolve("90")])
    return root


def test_every_task_has_a_base_run():
    assert set(TASKS) == set(BASE)


# -- --help and -h ------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_every_task_answers_help_after_its_name(task, project):
    """`invoke bump-pin --help` used to say "'--help' is not a full commit", `invoke
    audit --help` "no such file", `invoke publish --help` "no variant selected",
    and on audit -h meant --check."""
    reference = invoke(project, "--help", task)
    assert reference.returncode == 0 and reference.stdout.startswith("Usage: inv[oke] [--core-opts] " + task)
    for flag in ("--help", "-h"):
        proc = invoke(project, task, flag)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == reference.stdout and proc.stderr == ""


@pytest.mark.parametrize("task", TASKS)
def test_no_task_takes_h_for_one_of_its_own_flags(task):
    for argument in NS.tasks[task].get_arguments():
        assert "h" not in argument.names, f"{task}: -h is --{argument.name}'s short flag"


# -- a closed standard output ------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_a_closed_stdout_is_one_line_and_exit_1(task, project):
    """`invoke variants >&-` exited 0 having printed nothing."""
    proc = invoke(project, task, *BASE[task], shell_prefix=["sh", "-c", 'exec "$@" >&-', "sh"])
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: standard output is closed (>&-): nothing could be printed; "
        "redirect it to a file or to /dev/null instead of closing it"
    ]


# -- a newline in any string option --------------------------------------------------------


def _string_options() -> list[tuple[str, str]]:
    found = []
    for task in TASKS:
        for argument in NS.tasks[task].get_arguments():
            if argument.kind in (str, list):
                found.append((task, argument.name))
    return found


def _with_value(task: str, name: str, value: str) -> list[str]:
    argv = list(BASE[task])
    argument = next(a for a in NS.tasks[task].get_arguments() if a.name == name)
    if argument.positional:
        argv[POSITIONAL[task]] = value
        return argv
    flag = "--" + name.replace("_", "-")
    if flag in argv:
        argv[argv.index(flag) + 1] = value
        return argv
    return [*argv, flag, value]


@pytest.mark.parametrize(("task", "option"), _string_options(), ids=[f"{t}-{o}" for t, o in _string_options()])
def test_a_newline_in_any_option_never_splits_the_error(task, option, project, tmp_path):
    """`--sm $'9\\n0'` printed its error on two lines."""
    proc = invoke(project, task, *_with_value(task, option, f"bad\n{LEAK}"))
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert not any(line.startswith(LEAK) for line in proc.stderr.splitlines()), proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    if proc.returncode != 0:
        assert proc.returncode == 1 and len(errors) == 1, proc.stderr
        assert LEAK not in errors[0] or f"\\n{LEAK}" in errors[0], errors[0]


# -- bad files and paths -------------------------------------------------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _loop(path: Path) -> None:
    path.symlink_to(path.name)  # a link to itself


def _directory(path: Path) -> None:
    path.mkdir()


def _file(path: Path) -> None:
    path.write_text("a file\n")


def _not_utf8(path: Path) -> None:
    path.write_bytes(b'[defaults]\npython = "\xff\xfe"\n')


def _huge(path: Path) -> None:
    with open(path, "wb") as handle:
        handle.truncate(40 * 1024 * 1024)  # sparse: 40 MiB of zero bytes


def _deep_toml(path: Path) -> None:
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")


def _deep_json(path: Path) -> None:
    path.write_text("[" * 100000 + "]" * 100000)


def _dangling(path: Path) -> None:
    path.symlink_to("gone-" + path.name)


KINDS = {
    "directory": (_directory, "is a directory"),
    "fifo": (_fifo, "is a FIFO (named pipe)"),
    "symlink-loop": (_loop, "a symlink loop (ELOOP)"),
    "not-utf8": (_not_utf8, "not UTF-8 text (byte 0xff"),
    "huge": (_huge, "the most this file may hold"),
    "deep": (_deep_toml, "nested deeper than 64 levels"),
    "device": (None, "is a character device"),
}


def _copy(project: Path, tmp_path: Path) -> Path:
    root = support.make_project(tmp_path / "project", git_init=True)
    for link in project.glob("result-*"):
        (root / link.name).symlink_to(os.readlink(link))
    return root


def _run_bad(root: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    proc = invoke(root, *argv)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert proc.returncode == 1, output
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, proc.stderr
    return proc


MATRIX_KINDS = ["directory", "fifo", "symlink-loop", "not-utf8", "huge", "deep", "device"]


@pytest.mark.parametrize("kind", MATRIX_KINDS)
@pytest.mark.parametrize("task", [t for t in TASKS if t not in ("bump-pin", "audit")])
def test_a_bad_matrix_file_is_one_line_for_every_task(task, kind, project, tmp_path):
    """Every task reads nix/variants.toml through the one reader (bump-pin reads
    the branches' files through git; audit only with --variant)."""
    root = _copy(project, tmp_path)
    matrix = root / "nix" / "variants.toml"
    matrix.unlink()
    make, fragment = KINDS[kind]
    if make is None:
        matrix.symlink_to("/dev/zero")
    else:
        make(matrix)
    proc = _run_bad(root, [task, *BASE[task]])
    assert fragment in proc.stderr and "variants.toml" in proc.stderr, proc.stderr


# Each option that names a file or folder the task reads or writes into, and
# the kinds that are wrong for it: (task, argv with {p} for the path, kinds).
PATH_OPTIONS = [
    ("build", ["--sm", "90", "--dry-run", "--nixpkgs", "{p}"], ["fifo", "symlink-loop", "device", "file"]),
    (
        "build",
        ["--sm", "90", "--dry-run", "--nixpkgs", STANDIN, "--builders", "@{p}"],
        ["fifo", "directory", "symlink-loop"],
    ),
    ("build", ["--sm", "90", "--dry-run", "--nixpkgs", STANDIN, "--json", "{p}"], ["directory", "symlink-loop"]),
    ("eval", ["--sm", "90", "--nixpkgs", "{p}"], ["fifo", "symlink-loop", "file"]),
    ("image", ["--sm", "90", "--dry-run", "--nixpkgs", "{p}"], ["fifo", "symlink-loop", "file"]),
    (
        "image",
        ["--sm", "90", "--to", "oci-archive:x.tar", "--tmpdir", "{p}"],
        ["file", "fifo", "symlink-loop", "missing"],
    ),
    (
        "publish",
        ["file://{tmp}/cache", "--sm", "90", "--sign-key", "{p}"],
        ["directory", "fifo", "symlink-loop", "not-utf8", "huge", "device"],
    ),
    ("publish", ["file://{tmp}/cache", "--check", "--sm", "90", "--nixpkgs", "{p}"], ["fifo", "symlink-loop", "file"]),
    ("smoke", ["--results", "90", "--report-dir", "{p}"], ["file", "fifo", "symlink-loop"]),
    ("audit", ["{p}"], ["fifo", "symlink-loop", "device", "missing"]),
]
WHERE_WANTED = {
    "file": "is a file, not",
    "missing": "no such file or directory",
}


def _path_rows() -> list[tuple[str, list[str], str]]:
    return [(task, argv, kind) for task, argv, kinds in PATH_OPTIONS for kind in kinds]


@pytest.mark.parametrize(
    ("task", "argv", "kind"), _path_rows(), ids=[f"{t}-{'-'.join(a)[:40]}-{k}" for t, a, k in _path_rows()]
)
def test_a_bad_path_in_an_option_is_one_line(task, argv, kind, project, tmp_path):
    """Audit of a FIFO hung; a symlink loop raised RuntimeError('Symlink loop')."""
    root = _copy(project, tmp_path)
    target = tmp_path / "target"
    if kind == "device":
        target = Path("/dev/zero")
        fragment = KINDS[kind][1]
    elif kind in WHERE_WANTED:
        fragment = WHERE_WANTED[kind]
        if kind == "file":
            _file(target)
    else:
        make, fragment = KINDS[kind]
        assert make is not None
        make(target)
    proc = _run_bad(root, [task, *(a.format(p=target, tmp=tmp_path) for a in argv)])
    assert fragment in proc.stderr, proc.stderr
    assert str(target) in proc.stderr or os.path.basename(target) in proc.stderr, proc.stderr


def test_a_read_only_report_folder_is_one_line(project, tmp_path):
    """Root writes into any folder but a read-only file system: bind one there."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = False
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
        mounted = True
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
    else:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        proc = _run_bad(_copy(project, tmp_path), ["smoke", "--results", "90", "--report-dir", str(folder)])
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
    assert f"--report-dir {folder}: on a read-only file system (EROFS)" in proc.stderr or "EACCES" in proc.stderr


# -- what Nix answers ------------------------------------------------------------------------

UNREACHABLE = "github:NixOS/nixpkgs/0182a361324364ae3f436a63005877674cf45efb?host=github.invalid"
# The tasks that evaluate the flake, each run against a nixpkgs that cannot be fetched.
FETCHING = {
    "build": ["--sm", "90", "--nixpkgs", UNREACHABLE],
    "eval": ["--nixpkgs", UNREACHABLE],
    "image": ["--sm", "90", "--dry-run", "--nixpkgs", UNREACHABLE],
    "publish": ["file:///nonexistent/cache", "--check", "--nixpkgs", UNREACHABLE],
}


@pytest.mark.parametrize("task", sorted(FETCHING))
def test_an_unreachable_pin_is_one_line_that_says_what_to_do(task, project):
    """Before #22 these ended in Nix's raw "unable to download ...", and eval
    printed it once per variant and once more (16 times)."""
    env = support.nix_env("builders =\nextra-platforms =\ndownload-attempts = 1")
    proc = invoke(project, task, *FETCHING[task], env=env)
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: cannot fetch nixpkgs (github:NixOS/nixpkgs/0182a361"), errors[0]
    assert "the network failed (" in errors[0] and "Could not resolve host" in errors[0]
    assert "--nixpkgs /path/to/nixpkgs" in errors[0]  # the next step


def test_eval_asks_nix_once_when_the_inputs_cannot_be_fetched(project):
    from vllm_variants import eval_task
    from vllm_variants.nix import InputsUnreachable
    from vllm_variants.project import Project

    nix = support.recording_nix(env=support.nix_env("download-attempts = 1"))
    with pytest.raises(InputsUnreachable):
        eval_task.main(Project(project), nixpkgs=UNREACHABLE, nix=nix, eval_jobs=1)
    evaluations = [c for c in nix.commands if c[0] == "eval"]
    assert len(evaluations) == 1, evaluations  # not one per variant of the default set


# The tasks that run Nix, each given a NIX_CONFIG line Nix cannot parse.
RUNS_NIX = ["build", "eval", "image", "publish", "doctor"]


@pytest.mark.parametrize("task", RUNS_NIX)
def test_a_garbage_nix_config_line_is_named(task, project):
    """Nix refuses it in `nix --version` already; the line used to be its usage hint."""
    env = support.nix_env()
    env["NIX_CONFIG"] += "this is not a setting\n"
    proc = invoke(project, task, *BASE[task], env=env)
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    said = errors[0] if task != "doctor" else proc.stdout  # doctor lists its problems, then counts them
    assert "syntax error in configuration line 'this is not a setting' in 'NIX_CONFIG'" in said, said
    assert "fix or unset the NIX_CONFIG environment variable" in said
    assert "Try 'nix --help'" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ("sandbox=maybe", "option 'sandbox' has invalid value 'maybe'"),
        ("keep-going=maybe", "Boolean setting 'keep-going' has invalid value 'maybe'"),
        ("cores=-5", "setting 'cores' has invalid value '-5'"),
        ("no-such-setting=1", "unknown setting 'no-such-setting'"),
    ],
)
def test_an_option_nix_rejects_is_an_error_whatever_its_wording(option, words, project):
    """`--option sandbox=maybe` used to build without it (exit 0): Nix only warns,
    in words that differ by the setting's type."""
    proc = invoke(project, "build", *BASE["build"], "--option", option)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: Nix rejects --option {option}: {words}"]


NOTHING_ENABLED = {
    "build": ["--all", "--dry-run", "--nixpkgs", STANDIN],
    "eval": ["--nixpkgs", STANDIN],
    "publish": ["file:///nonexistent/cache", "--check"],
    "matrix": [],
}


@pytest.mark.parametrize("task", sorted(NOTHING_ENABLED))
def test_a_matrix_with_nothing_enabled_is_one_line(task, tmp_path):
    """Nix answered `nix build` with no installables by building the flake's
    `default`: "does not provide attribute 'packages.x86_64-linux.default'"."""
    root = support.make_project(tmp_path / "project")
    matrix = root / "nix" / "variants.toml"
    text = matrix.read_text()
    assert "\n[[variant]]\n" in text  # explicit rows are disabled one by one; [[exclude]] takes the product
    text = text.replace("\n[[variant]]\n", '\n[[variant]]\ndisabled = "not yet"\n')
    support.write_matrix(root, text + '\n[[exclude]]\nreason = "nothing yet"\n')
    proc = invoke(root, task, *NOTHING_ENABLED[task])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "enables no variant" in errors[0], proc.stderr
    assert "does not provide attribute" not in proc.stderr


def test_paths_with_a_space_or_a_hash_reach_nix_encoded(tmp_path):
    """A space in --nixpkgs broke the flake reference; '#' and '?' would start a
    fragment or a query. Both the checkout and --nixpkgs are handed over encoded."""
    import shutil

    root = support.make_project(tmp_path / "my checkout #1")
    nixpkgs = tmp_path / "nix pkgs?x"
    shutil.copytree(support.STANDIN, nixpkgs)
    proc = invoke(root, "eval", "--sm", "90", "--nixpkgs", str(nixpkgs))
    assert proc.returncode == 0, proc.stderr
    assert "1 of 1 variant(s) evaluate against nixpkgs" in proc.stdout
