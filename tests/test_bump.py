"""`invoke bump-pin`: real git, real Nix, offline (issue #4).

The project is a temporary git repository of this checkout with `main` and two
release branches; nixpkgs is a git repository of the stand-in with commits
whose knobs ship different versions: A (vllm 0.15.1, torch 2.9.1, as the
pin), B (vllm 0.16.0, torch 2.10.0) and C (B with Blackwell left out of
vllm's supported list, as nixpkgs had it at vllm 0.11.0: the SM 100 and
SM 120 variants no longer evaluate). Everything lives under tmp_path.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import support

from vllm_variants import bump, sections, versions
from vllm_variants import nix as nix_module
from vllm_variants.errors import BumpError, GitError, PinError
from vllm_variants.project import Project

pytestmark = pytest.mark.nix

RELEASES = ("vllm-0.14.0", "vllm-0.13.0")
NO_BLACKWELL = support.NO_BLACKWELL


@dataclass
class Nixpkgs:
    path: Path
    a: str
    b: str
    c: str

    @property
    def template(self) -> str:
        return f"git+file://{self.path}?rev={{rev}}"


def _knobs(repo: Path, message: str, **knobs) -> str:
    data = json.loads((repo / "knobs.json").read_text())
    data.update(knobs)
    (repo / "knobs.json").write_text(json.dumps(data, indent=2) + "\n")
    support.commit_all(repo, message)
    return support.git(repo, "rev-parse", "HEAD").stdout.strip()


@pytest.fixture
def nixpkgs(tmp_path) -> Nixpkgs:
    repo = support.copy_standin(tmp_path / "nixpkgs")
    support.git(repo, "init", "-q", "-b", "master")
    support.commit_all(repo, "as the pin: vllm 0.15.1")
    a = support.git(repo, "rev-parse", "HEAD").stdout.strip()
    b = _knobs(repo, "vllm 0.16.0", vllmVersion="0.16.0", torchVersion="2.10.0")
    c = _knobs(repo, "vllm without Blackwell", vllmSupportedCapabilities=NO_BLACKWELL)
    return Nixpkgs(repo, a, b, c)


@pytest.fixture
def repo(tmp_path) -> Path:
    """main (the seed, at vllm 0.15.1) and two release branches, each with a commit of its own."""
    root = support.make_project(tmp_path / "project")
    for name in RELEASES:
        support.git(root, "branch", name, "main")
        support.git(root, "worktree", "add", "-q", tmp_path / name, name)
        (tmp_path / name / "RELEASE").write_text(name + "\n")
        support.commit_all(tmp_path / name, f"{name}: release notes")
        support.git(root, "worktree", "remove", tmp_path / name)
    return root


@pytest.fixture
def env():
    return support.nix_env()


@pytest.fixture
def run_bump(tmp_path, env, nixpkgs):
    """bump_pin as the task calls it, its report captured; temporary worktrees under tmp_path."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def call(root: Path, rev: str, **kwargs):
        out = io.StringIO()
        kwargs.setdefault("url_template", nixpkgs.template)
        try:
            result = bump.bump_pin(root, rev, env=kwargs.pop("env", env), tmpdir=scratch, out=out, **kwargs)
        finally:
            call.out = out.getvalue()
        assert list(scratch.iterdir()) == [], "temporary worktrees were left behind"
        return result

    return call


def refs(root: Path) -> str:
    """Every ref, HEAD and the worktree list: what must not change when a bump is refused."""
    return "\n".join(
        [
            support.git(root, "for-each-ref", "--format=%(refname) %(objectname)").stdout,
            support.git(root, "symbolic-ref", "-q", "HEAD", check=False).stdout,
            support.git(root, "rev-parse", "HEAD").stdout,
            support.git(root, "worktree", "list", "--porcelain").stdout,
        ]
    )


def checkout_state(root: Path) -> dict:
    """HEAD, index, tracked and untracked files of the user's checkout, byte for byte
    (but Python's gitignored bytecode of tasks.py, written by the first task: issue #13)."""
    files = {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not {".git", "__pycache__"} & set(p.relative_to(root).parts)
    }
    untracked = support.git(root, "ls-files", "--others").stdout.splitlines()
    return {
        "HEAD": (root / ".git" / "HEAD").read_text(),
        "index": hashlib.sha256((root / ".git" / "index").read_bytes()).hexdigest(),
        "files": files,
        "untracked": [line for line in untracked if "__pycache__/" not in line],
    }


def at(root: Path, branch: str, path: str) -> str:
    return support.git(root, "show", f"{branch}:{path}").stdout


def locked(root: Path, branch: str) -> str:
    return json.loads(at(root, branch, "flake.lock"))["nodes"]["nixpkgs"]["locked"]["rev"]


def pinned_url(root: Path, branch: str) -> str:
    return bump.flake_url(at(root, branch, "flake.nix"))


def subject_and_body(root: Path, branch: str) -> tuple[str, str]:
    subject, _, body = support.git(root, "log", "-1", "--format=%B", branch).stdout.partition("\n\n")
    return subject.strip(), body


def evaluated(root: Path, branch: str) -> dict:
    """What the branch's committed flake ships, evaluated independently of bump-pin."""
    commit = support.git(root, "rev-parse", branch).stdout.strip()
    data = json.loads(
        support.nix(
            "eval", "--json", f"git+file://{root}?rev={commit}#{versions.EVAL_ATTR}", "--apply", versions.EVAL
        ).stdout
    )
    return {name: v for name, by_system in data.items() for v in by_system.values()}


# -- bumping -------------------------------------------------------------------------


def test_bump_moves_every_named_branch_and_commits_by_the_convention(repo, nixpkgs, run_bump):
    (repo / "notes.txt").write_text("untracked, mine\n")
    branches = ("main", *RELEASES)

    run_bump(repo, nixpkgs.a, branches=["main"], globs=["vllm-*"])
    for branch in branches:
        assert pinned_url(repo, branch) == f"git+file://{nixpkgs.path}?rev={nixpkgs.a}"
        assert locked(repo, branch) == nixpkgs.a
        subject, body = subject_and_body(repo, branch)
        assert subject == f"flake: bump nixpkgs to {nixpkgs.a[:12]}"  # vllm stayed 0.15.1
        assert f"nixpkgs: 0182a3613243 -> {nixpkgs.a[:12]}" in body
        assert "vllm: 0.15.1 (unchanged)" in body
    # each release branch kept its own history
    for name in RELEASES:
        assert at(repo, name, "RELEASE") == name + "\n"

    run_bump(repo, nixpkgs.b, branches=["main"], globs=["vllm-*"])
    for branch in branches:
        assert locked(repo, branch) == nixpkgs.b
        assert pinned_url(repo, branch) == f"git+file://{nixpkgs.path}?rev={nixpkgs.b}"
        subject, body = subject_and_body(repo, branch)
        assert subject == "vllm: update to 0.16.0"
        assert f"nixpkgs: {nixpkgs.a[:12]} -> {nixpkgs.b[:12]}" in body
        assert "vllm: 0.15.1 -> 0.16.0" in body and "torch: 2.9.0, 2.9.1 -> 2.9.0, 2.10.0" in body
        assert "python: 3.12.12 (unchanged)" in body and "cuda: 12.8, 12.9 (unchanged)" in body
        # the recorded versions are what the committed flake evaluates to, and the README shows them
        recorded = versions.PinVersions.parse(at(repo, branch, versions.PATH))
        assert recorded.rev == nixpkgs.b and dict(recorded.variants) == evaluated(repo, branch)
        # ... from the nixpkgs flake.lock now locks, said so, and not marked unverified
        lock = json.loads(at(repo, branch, "flake.lock"))
        assert recorded.nar_hash == lock["nodes"]["nixpkgs"]["locked"]["narHash"] and recorded.unverified is None
        table = sections.section_body(at(repo, branch, "docs/pin.md"), "versions")
        assert "| the other 14 variants | 0.16.0 | 2.10.0 | 3.12.12 | 12.9 |" in table
        assert "| `vllm-python312-cuda12_8-sm90-torchbin` | 0.16.0 | 2.9.0 | 3.12.12 | 12.8 |" in table
        assert nixpkgs.b in table
        # every generated section moved with the pin, in the same commit (docs/distributing.md: the image tag)
        tag = sections.section_body(at(repo, branch, "docs/distributing.md"), "image-tag")
        assert f"`0.16.0-{nixpkgs.b[:7]}`" in tag, tag
    assert "vllm: 0.15.1 -> 0.16.0" in run_bump.out and "torch: 2.9.0, 2.9.1 -> 2.9.0, 2.10.0" in run_bump.out

    # The checkout was on main, which moved: it shows main's new files, as a
    # pull would, with nothing staged or modified and the untracked file kept.
    assert support.git(repo, "symbolic-ref", "HEAD").stdout.strip() == "refs/heads/main"
    assert support.git(repo, "status", "--porcelain").stdout == "?? notes.txt\n"
    assert (repo / "notes.txt").read_text() == "untracked, mine\n"
    assert (repo / "flake.lock").read_text() == at(repo, "main", "flake.lock")
    sections.update(Project(repo), check=True)
    assert support.git(repo, "worktree", "list").stdout.count("\n") == 1


def test_a_stale_worktree_of_the_users_survives(repo, nixpkgs, run_bump, tmp_path):
    """bump-pin removes its own temporary worktrees, never prunes the user's entries."""
    gone = tmp_path / "on-a-detached-disk"
    support.git(repo, "worktree", "add", "-q", "-b", "experiment", gone)
    shutil.rmtree(gone)

    run_bump(repo, nixpkgs.b, branches=["main"])

    assert locked(repo, "main") == nixpkgs.b
    assert f"worktree {gone}\n" in support.git(repo, "worktree", "list", "--porcelain").stdout
    assert (repo / ".git" / "worktrees" / gone.name / "gitdir").is_file()


def test_a_branch_name_that_is_no_path_for_nix(repo, nixpkgs, run_bump):
    """'#' starts a flake reference's fragment: the branch name must not reach a path Nix reads."""
    support.git(repo, "branch", "fix#1", "main")
    run_bump(repo, nixpkgs.b, branches=["fix#1"])
    assert locked(repo, "fix#1") == nixpkgs.b
    assert subject_and_body(repo, "fix#1")[0] == "vllm: update to 0.16.0"


def test_checkout_on_another_branch_is_untouched(repo, nixpkgs, run_bump):
    support.git(repo, "switch", "-q", "-c", "work")
    (repo / "notes.txt").write_text("untracked, mine\n")
    (repo / "result-vllm-python312-cuda12_9-sm90").symlink_to("/nonexistent")  # ignored by .gitignore
    before = checkout_state(repo)
    head = support.git(repo, "rev-parse", "HEAD").stdout

    run_bump(repo, nixpkgs.b, branches=["main"], globs=["vllm-*"])

    assert locked(repo, "main") == nixpkgs.b
    assert checkout_state(repo) == before
    assert support.git(repo, "rev-parse", "HEAD").stdout == head
    assert (repo / "result-vllm-python312-cuda12_9-sm90").is_symlink()


def test_dry_run_prints_the_plan_per_branch_and_changes_nothing(repo, nixpkgs, run_bump):
    before = refs(repo), checkout_state(repo)
    plan = run_bump(repo, nixpkgs.b, globs=["vllm-*"], dry_run=True)
    assert isinstance(plan, bump.BumpPlan)
    lines = run_bump.out.splitlines()
    for name in RELEASES:
        (line,) = [line for line in lines if line.startswith(f"  {name} at ")]
        assert f"nixpkgs 0182a3613243 (vllm 0.15.1) -> {nixpkgs.b[:12]}" in line
    assert lines[-1] == "dry run: nothing changed"
    assert (refs(repo), checkout_state(repo)) == before


def _edit_on_branch(repo: Path, branch: str, tmp_path: Path, old: str, new: str, message: str) -> None:
    """Commit one change to a branch's nix/variants.toml, through a worktree of its own."""
    tree = tmp_path / f"edit-{branch}"
    support.git(repo, "worktree", "add", "-q", tree, branch)
    matrix = tree / "nix" / "variants.toml"
    matrix.write_text(matrix.read_text().replace(old, new, 1))
    support.commit_all(tree, message)
    support.git(repo, "worktree", "remove", tree)


def test_a_failing_branch_moves_no_branch(repo, nixpkgs, run_bump, tmp_path):
    # vllm-0.13.0's flake no longer evaluates (a typo in its matrix)
    _edit_on_branch(repo, "vllm-0.13.0", tmp_path, 'arch = "Volta"', 'arhc = "Volta"', "matrix: a typo")
    before = refs(repo)

    with pytest.raises(BumpError) as caught:
        run_bump(repo, nixpkgs.b, branches=["main"], globs=["vllm-*"])

    message = str(caught.value)
    assert message.startswith("no branch moved: vllm-0.13.0 failed to evaluate: ")
    assert "nix/variants.toml: sm #2: unknown key(s) arhc" in message
    assert "\n" not in message
    assert "main: nixpkgs 0182a3613243" in run_bump.out  # main did get as far as its commit
    assert refs(repo) == before


def test_a_stale_matrix_json_on_a_branch_is_regenerated_and_committed(repo, nixpkgs, run_bump, tmp_path):
    """bump-pin commits what it regenerates: a branch whose nix/variants.toml changed
    without `invoke variants --write` would not evaluate (the flake refuses the stale
    JSON); its bump commit carries the JSON expanded from the branch's own TOML."""
    _edit_on_branch(
        repo,
        "vllm-0.13.0",
        tmp_path,
        'gpus = ["V100", "Titan V"]',
        'gpus = ["V100", "Titan V", "GV100"]',
        "matrix: one more GPU, nix/variants.json not regenerated",
    )

    run_bump(repo, nixpkgs.b, branches=["vllm-0.13.0"])

    committed = json.loads(at(repo, "vllm-0.13.0", "nix/variants.json"))
    assert committed["variants"]["vllm-python312-cuda12_9-sm70"]["gpus"] == ["V100", "Titan V", "GV100"]
    toml_bytes = at(repo, "vllm-0.13.0", "nix/variants.toml").encode()
    assert committed["source"]["sha256"] == hashlib.sha256(toml_bytes).hexdigest()
    changed = support.git(repo, "diff", "--name-only", "vllm-0.13.0~1", "vllm-0.13.0").stdout.split()
    assert "nix/variants.json" in changed


# -- --release-branch ----------------------------------------------------------------


def test_release_branch_keeps_the_old_vllm_when_main_moves_on(repo, nixpkgs, run_bump):
    # same vllm (0.15.1 -> 0.15.1): no release branch
    run_bump(repo, nixpkgs.a, release_branch=True)
    assert support.git(repo, "branch", "--list", "vllm-0.15.1").stdout == ""
    assert "vllm-0.15.1: not created" in run_bump.out
    at_a = support.git(repo, "rev-parse", "main").stdout.strip()

    outcome = run_bump(repo, nixpkgs.b, release_branch=True)
    assert outcome.created == {"vllm-0.15.1": at_a}
    assert support.git(repo, "rev-parse", "vllm-0.15.1").stdout.strip() == at_a
    assert locked(repo, "vllm-0.15.1") == nixpkgs.a
    assert locked(repo, "main") == nixpkgs.b
    assert subject_and_body(repo, "main")[0] == "vllm: update to 0.16.0"


def test_release_branch_is_refused_when_it_exists(repo, nixpkgs, run_bump):
    support.git(repo, "branch", "vllm-0.15.1", "vllm-0.14.0")
    before = refs(repo)
    with pytest.raises(GitError, match=r"--release-branch: branch vllm-0\.15\.1 already exists"):
        run_bump(repo, nixpkgs.b, release_branch=True)
    assert refs(repo) == before


def test_release_branch_needs_main_among_the_branches(repo, nixpkgs, run_bump):
    with pytest.raises(GitError, match="not among the branches to bump"):
        run_bump(repo, nixpkgs.b, globs=["vllm-*"], release_branch=True)


# -- refusals: each changes nothing ---------------------------------------------------------


@pytest.mark.parametrize(
    "rev",
    [
        "abc",
        "0182a3613243",
        "0182a361324364ae3f436a63005877674cf45efb0",
        "HEAD",
        "g182a361324364ae3f436a63005877674cf45efb",
        "",
    ],
)
def test_not_a_full_commit_is_refused(rev):
    with pytest.raises(PinError, match=r"is not a full commit: give all 40 hex digits"):
        bump.check_rev(rev)


def test_bad_rev_is_one_line_from_invoke_and_changes_nothing(repo, env):
    before = refs(repo), checkout_state(repo)
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "bump-pin", "0182a36"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: '0182a36' is not a full commit: give all 40 hex digits of a nixpkgs commit, "
        "e.g. 0182a361324364ae3f436a63005877674cf45efb"
    ]
    assert (refs(repo), checkout_state(repo)) == before


def test_dry_run_through_invoke(repo, nixpkgs, env):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "bump-pin",
            nixpkgs.b,
            "--branch",
            "main",
            "--branches",
            "vllm-*",
            "--url-template",
            nixpkgs.template,
            "--dry-run",
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    planned = [line.split()[0] for line in proc.stdout.splitlines() if " at " in line]
    assert planned == ["main", "vllm-0.13.0", "vllm-0.14.0"]  # named first, then the glob's, sorted


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("checkout", r"your checkout at .* has uncommitted changes \(flake.nix\)"),
        ("worktree", r"the worktree of vllm-0\.14\.0 at .* has uncommitted changes \(flake.nix\)"),
    ],
)
def test_uncommitted_changes_are_refused(repo, nixpkgs, run_bump, tmp_path, where, message):
    tree = repo
    if where == "worktree":  # a worktree holding a branch that would move
        tree = tmp_path / "wt-0.14"
        support.git(repo, "worktree", "add", "-q", tree, "vllm-0.14.0")
    (tree / "flake.nix").write_text("# mid-edit\n")
    before = refs(repo)
    with pytest.raises(GitError, match=message):
        run_bump(repo, nixpkgs.b, globs=["vllm-*"])
    assert refs(repo) == before and (tree / "flake.nix").read_text() == "# mid-edit\n"


def test_clean_worktree_of_a_moved_branch_follows_it(repo, nixpkgs, run_bump, tmp_path):
    tree = tmp_path / "wt-0.14"
    support.git(repo, "worktree", "add", "-q", tree, "vllm-0.14.0")
    run_bump(repo, nixpkgs.b, branches=["vllm-0.14.0"])
    assert support.git(tree, "status", "--porcelain").stdout == ""
    assert json.loads((tree / "flake.lock").read_text())["nodes"]["nixpkgs"]["locked"]["rev"] == nixpkgs.b


def test_changes_made_while_bumping_are_refused_before_any_branch_moves(repo, nixpkgs, run_bump, monkeypatch):
    """make_plan saw a clean checkout; the user edits while the branches are evaluated."""
    real = bump.bump_branch

    def then_edit(*args, **kwargs):
        result = real(*args, **kwargs)
        (repo / "flake.nix").write_text("# edited mid-bump\n")
        return result

    monkeypatch.setattr(bump, "bump_branch", then_edit)
    before = refs(repo)
    with pytest.raises(
        GitError,
        match=rf"^no branch moved: {repo} \(on main\) got uncommitted changes "
        r"while bump-pin ran \(flake.nix\); commit or stash them",
    ):
        run_bump(repo, nixpkgs.b, branches=["main"], globs=["vllm-*"])
    assert refs(repo) == before
    assert (repo / "flake.nix").read_text() == "# edited mid-bump\n"


def test_an_untracked_file_in_the_way_is_refused_before_any_branch_moves(repo, nixpkgs, run_bump):
    """The new commit adds nix/versions.json where the checkout holds an untracked one."""
    support.git(repo, "switch", "-q", "-c", "unrecorded")
    support.git(repo, "rm", "-q", versions.PATH)
    support.commit_all(repo, "versions not recorded yet")
    (repo / versions.PATH).write_text("mine\n")
    before = refs(repo)
    with pytest.raises(
        GitError,
        match=r"^no branch moved: .* \(on unrecorded\) could not take the new files: "
        r".*nix/versions.json.* would be overwritten",
    ):
        run_bump(repo, nixpkgs.b)
    assert refs(repo) == before
    assert (repo / versions.PATH).read_text() == "mine\n"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"branches": ["main", "nope"]},
            r"unknown branch\(es\) nope; local branches: main, vllm-0\.13\.0, vllm-0\.14\.0",
        ),
        ({"globs": ["release-*"]}, r"no local branch matches 'release-\*'"),
    ],
)
def test_unknown_branch_is_refused(repo, nixpkgs, run_bump, kwargs, message):
    before = refs(repo)
    with pytest.raises(GitError, match=message):
        run_bump(repo, nixpkgs.b, **kwargs)
    assert refs(repo) == before


def test_a_branch_with_a_broken_flake_lock_is_refused_by_name(repo, nixpkgs, run_bump):
    support.git(repo, "switch", "-q", "vllm-0.13.0")
    (repo / "flake.lock").write_text("{ not json")
    support.commit_all(repo, "a broken lock")
    support.git(repo, "switch", "-q", "main")
    before = refs(repo)
    with pytest.raises(PinError, match=r"^branch vllm-0\.13\.0: flake.lock: not valid JSON \(.*\); restore it"):
        run_bump(repo, nixpkgs.b, branches=["main"], globs=["vllm-*"])
    assert refs(repo) == before


def test_not_a_git_checkout_is_refused(tmp_path, nixpkgs, run_bump):
    root = support.make_project(tmp_path / "plain", git_init=False)
    with pytest.raises(GitError, match="is not a git checkout"):
        run_bump(root, nixpkgs.b, env={**support.nix_env(), "GIT_CEILING_DIRECTORIES": str(tmp_path)})


def test_detached_head_needs_named_branches(repo, nixpkgs, run_bump):
    support.git(repo, "switch", "-q", "--detach")
    with pytest.raises(GitError, match="HEAD is detached"):
        run_bump(repo, nixpkgs.b)


def test_missing_commit_is_refused(repo, nixpkgs, run_bump):
    absent = "1" * 40
    before = refs(repo)
    with pytest.raises(PinError, match=rf"cannot fetch git\+file://.*{absent}: the commit is not there"):
        run_bump(repo, absent, globs=["vllm-*"])
    assert refs(repo) == before


@pytest.mark.parametrize(
    "template", ["github:NixOS/nixpkgs/{rev}?host=github.invalid", "git+https://nixpkgs.invalid/nixpkgs.git?rev={rev}"]
)
def test_unreachable_network_is_refused(repo, nixpkgs, run_bump, template):
    # .invalid never resolves (RFC 2606): the fetch fails on the network, offline or not.
    # git reports the host, then Nix says the revision is missing: the host must win.
    before = refs(repo)
    with pytest.raises(PinError, match=r"cannot fetch .*: the network failed \(.*Could not resolve host"):
        run_bump(repo, nixpkgs.b, globs=["vllm-*"], url_template=template, env=support.nix_env("download-attempts = 1"))
    assert refs(repo) == before


def test_missing_repository_is_refused(repo, nixpkgs, run_bump, tmp_path):
    with pytest.raises(PinError, match=r"no repository there \(.*does not appear to be a git repository\)"):
        run_bump(repo, nixpkgs.b, url_template=f"git+file://{tmp_path}/nowhere?rev={{rev}}")


def test_github_404_is_a_missing_commit_not_the_network():
    # what Nix prints for a commit GitHub does not have (no network here to provoke it)
    stderr = (
        "error:\n       … while fetching the input 'github:NixOS/nixpkgs/" + "1" * 40 + "'\n\n"
        "       error: unable to download 'https://api.github.com/repos/NixOS/nixpkgs/commits/"
        + "1" * 40
        + "': HTTP error 422\n"
    )
    message = nix_module.unreachable(stderr, bump.MIRROR_HINT, "github:NixOS/nixpkgs/" + "1" * 40)
    assert message is not None
    assert f"cannot fetch github:NixOS/nixpkgs/{'1' * 40}: the commit is not there (unable to download" in message
    assert "network" not in message


def test_pin_whose_vllm_does_not_evaluate_is_refused(repo, nixpkgs, run_bump):
    before = refs(repo)
    with pytest.raises(BumpError) as caught:
        run_bump(repo, nixpkgs.c, branches=["main"], globs=["vllm-*"])
    message = str(caught.value)
    # one cause, said once for the branches it stopped (issue #11), not once per branch
    assert message.startswith(
        f"no branch moved: main, {', '.join(sorted(RELEASES))} failed to evaluate: vllm-python312-cuda12_9-sm100"
    ), message
    assert message.count(f"vllm 0.16.0 in nixpkgs {nixpkgs.c} cannot target CUDA capability 10.0 (SM 100)") == 1
    assert "\n" not in message
    assert refs(repo) == before


@pytest.mark.parametrize(
    "template",
    ["github:NixOS/nixpkgs/main", "git+file:///x?rev={rev}&x={rev}", 'github:NixOS/nixpkgs/{rev}"; evil = "'],
)
def test_bad_url_template_is_refused(template):
    with pytest.raises(PinError, match="--url-template"):
        bump.pin_url(template, "0" * 40)


# -- the pieces ---------------------------------------------------------------------


def test_url_rewrite_touches_only_the_url():
    text = (support.REPO / "flake.nix").read_text()
    new = bump.with_url(text, "git+file:///srv/nixpkgs?rev=" + "a" * 40)
    assert bump.flake_url(new) == "git+file:///srv/nixpkgs?rev=" + "a" * 40
    assert [a for a, b in zip(text.splitlines(), new.splitlines()) if a != b] == [
        '  inputs.nixpkgs.url = "github:NixOS/nixpkgs/0182a361324364ae3f436a63005877674cf45efb";'
    ]
    with pytest.raises(PinError, match="exactly once|once"):
        bump.flake_url(text + '\n  inputs.nixpkgs.url = "github:x/y";\n')


def test_version_order():
    order = ["0.9.2", "0.10.0rc1", "0.10.0", "0.10.0.post1", "0.10.1", "0.15.1", "0.16.0"]
    assert sorted(reversed(order), key=versions.version_key) == order


def test_recorded_versions_are_what_the_pin_evaluates_to(tmp_path):
    """The committed nix/versions.json against the stand-in, which ships what the pin ships."""
    flake = support.flake_ref(support.make_project(tmp_path / "p"))
    data = support.nix_eval(flake, versions.EVAL_ATTR, apply=versions.EVAL)
    shipped = {name: v for name, by_system in data.items() for v in by_system.values()}
    recorded = versions.load(Project(support.REPO))
    assert recorded.variants == {name: shipped[name] for name in recorded.variants}
    assert recorded.url == bump.flake_url((support.REPO / "flake.nix").read_text())
