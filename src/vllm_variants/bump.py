"""`invoke bump-pin <rev>`: move the nixpkgs pin on one or many branches, all or nothing.

The plan comes first and has no side effects (input checks and git reads;
`--dry-run` prints it and stops). Then, for each branch, in a temporary
worktree outside the checkout: rewrite `inputs.nixpkgs.url` in flake.nix
(the durable pin), relock with Nix, regenerate nix/variants.json (the matrix
the flake reads) from the branch's nix/variants.toml, evaluate what the pin
ships (every package's passthru.versions), write nix/versions.json,
regenerate the generated sections of README.md and docs/*.md from it and
commit. Only when every branch has its commit do the branches move, in one
ref transaction that checks each old value (git.Git.update_refs): a failure
anywhere moves none of them, and the report names each failure. The
branches and the checkouts on them then move together (lifecycle.critical,
with a journal the next bump-pin finishes after a SIGKILL: issue #21).

Branch strategy (the seed's): `main` follows the newest pin; each older vLLM
keeps a `vllm-<version>` branch. `--release-branch` cuts that branch from
main's current commit, in the same transaction, when main's vLLM gets newer.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from . import lifecycle, sections, userfiles, versions
from .errors import BumpError, CommandError, GitError, PinError, VariantsError
from .git import Git, RefUpdate, Worktree
from .matrix import generated
from .nix import Nix, error_message, flake_ref
from .outputs import write_text
from .project import Project
from .versions import PinVersions, version_key

DEFAULT_URL_TEMPLATE = "github:NixOS/nixpkgs/{rev}"
RELEASE_SOURCE = "main"  # --release-branch cuts vllm-<version> from this branch
# and nix/variants.json where the branch has one (generated.update), and every
# file `sections.update` regenerates (README.md, docs/*.md)
COMMITTED = ("flake.nix", "flake.lock", versions.PATH)
EXAMPLE_REV = "0182a361324364ae3f436a63005877674cf45efb"

_REV = re.compile(r"[0-9a-f]{40}")
_URL_LINE = re.compile(r'^([ \t]*inputs\.nixpkgs\.url[ \t]*=[ \t]*)"([^"\n]*)"([ \t]*;)', re.MULTILINE)
_URL_UNSAFE = re.compile(r'[\s"\\]|\$\{')  # would need escaping inside a Nix string
# -- input -------------------------------------------------------------------


def check_rev(rev: str) -> str:
    """A full commit (40 hex digits), lower-cased; anything else is refused."""
    if not _REV.fullmatch(rev.lower()):
        raise PinError(f"'{rev}' is not a full commit: give all 40 hex digits of a nixpkgs commit, e.g. {EXAMPLE_REV}")
    return rev.lower()


def pin_url(template: str, rev: str) -> str:
    """The flake URL of the pin: `template` with {rev} replaced."""
    if template.count("{rev}") != 1:
        raise PinError(f"--url-template '{template}' must contain {{rev}} once, e.g. {DEFAULT_URL_TEMPLATE}")
    url = template.replace("{rev}", rev)
    if _URL_UNSAFE.search(url):
        raise PinError(
            f"--url-template '{template}' holds whitespace, a quote, a backslash or '${{'; "
            f"give a flake URL such as {DEFAULT_URL_TEMPLATE} or git+file:///path/to/nixpkgs?rev={{rev}}"
        )
    return url


def flake_url(flake_nix: str) -> str:
    """The `inputs.nixpkgs.url = "...";` of a flake.nix (it must appear exactly once)."""
    found = _URL_LINE.findall(flake_nix)
    if len(found) != 1:
        raise PinError(
            f'flake.nix must set `inputs.nixpkgs.url = "...";` on a line of its own, once (found {len(found)})'
        )
    return str(found[0][1])


def with_url(flake_nix: str, url: str) -> str:
    flake_url(flake_nix)
    return _URL_LINE.sub(lambda m: f'{m.group(1)}"{url}"{m.group(3)}', flake_nix, count=1)


def short(rev: str | None) -> str:
    return rev[:12] if rev else "unknown"


# -- the plan ----------------------------------------------------------------


@dataclass(frozen=True)
class BranchPlan:
    name: str
    commit: str
    url: str  # inputs.nixpkgs.url now
    locked: str | None  # the commit flake.lock locks now
    before: PinVersions | None  # nix/versions.json now; None when the branch has none
    current: bool  # already at the pin, versions recorded: nothing to do


@dataclass(frozen=True)
class BumpPlan:
    rev: str
    url: str
    branches: tuple[BranchPlan, ...]
    release: str | None = None  # branch to cut from main if main's vLLM gets newer

    @property
    def todo(self) -> list[BranchPlan]:
        return [b for b in self.branches if not b.current]

    def lines(self) -> list[str]:
        lines = [f"bump-pin: nixpkgs -> {self.rev} ({self.url})"]
        for b in self.branches:
            head = f"  {b.name} at {short(b.commit)}: nixpkgs {short(b.locked)}"
            if b.current:
                lines.append(f"{head}, already pinned there: nothing to do")
                continue
            shipped = f" (vllm {b.before.text('vllm')})" if b.before else " (versions not recorded)"
            lines.append(
                f"{head}{shipped} -> {short(self.rev)}: rewrite inputs.nixpkgs.url, relock, evaluate, "
                f"write {versions.PATH}, regenerate {generated.PATH}, README.md and docs/, commit"
            )
        if self.release:
            old = self.release.removeprefix("vllm-")
            lines.append(
                f"  {self.release}: create at {RELEASE_SOURCE}'s {short(self._commit(RELEASE_SOURCE))} "
                f"if the new pin's vllm is newer than {old}"
            )
        todo = len(self.todo)
        lines.append(
            f"then move {todo} branch(es) in one ref transaction; if any branch fails, none moves"
            if todo
            else "nothing to do: every branch is at this pin"
        )
        return lines

    def _commit(self, branch: str) -> str:
        return next(b.commit for b in self.branches if b.name == branch)


def make_plan(
    git: Git,
    rev: str,
    *,
    url_template: str = DEFAULT_URL_TEMPLATE,
    branches: Sequence[str] = (),
    globs: Sequence[str] = (),
    release_branch: bool = False,
) -> BumpPlan:
    """Check the request and read each branch's pin; runs git reads only."""
    rev = check_rev(rev)
    url = pin_url(url_template, rev)
    top = git.toplevel()
    _refuse_changes(git, top, "your checkout")
    if not branches and not globs:
        current = git.current_branch()
        if current is None:
            raise GitError("HEAD is detached: name the branches to bump with --branch NAME or --branches GLOB")
        branches = [current]
    names = git.select_branches(branches, globs)
    for worktree in git.worktrees():
        if worktree.branch in names and worktree.path != top and worktree.path.exists():
            _refuse_changes(git, worktree.path, f"the worktree of {worktree.branch}")
    plans = tuple(_branch_plan(git, name, rev, url) for name in names)
    release = _release_branch(git, plans) if release_branch else None
    return BumpPlan(rev=rev, url=url, branches=plans, release=release)


def _refuse_changes(git: Git, worktree: Path, what: str) -> None:
    changed = git.changes(worktree)
    if changed:
        raise GitError(
            f"{what} at {worktree} has uncommitted changes ({_some(changed)}); commit or stash them: "
            "bump-pin moves branches and never works on top of local changes"
        )


def _some(paths: Sequence[str]) -> str:
    return ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")


def _branch_plan(git: Git, name: str, rev: str, url: str) -> BranchPlan:
    commit = git.branch_commit(name)
    assert commit is not None  # select_branches only returns existing branches
    flake = git.show(commit, "flake.nix")
    if flake is None:
        raise GitError(f"branch {name} has no flake.nix: it is not a vllm-variants branch")
    try:
        current_url = flake_url(flake)
        lock = git.show(commit, "flake.lock")
        locked = versions.lock_rev(lock) if lock is not None else None
        recorded = git.show(commit, versions.PATH)
        before = PinVersions.parse(recorded) if recorded is not None else None
    except VariantsError as exc:
        raise PinError(f"branch {name}: {exc}") from None
    current = current_url == url and locked == rev and before is not None and before.rev == rev
    return BranchPlan(name=name, commit=commit, url=current_url, locked=locked, before=before, current=current)


def _release_branch(git: Git, plans: Sequence[BranchPlan]) -> str:
    main = next((b for b in plans if b.name == RELEASE_SOURCE), None)
    if main is None:
        raise GitError(
            f"--release-branch cuts vllm-<version> from {RELEASE_SOURCE}, which is not among the branches "
            f"to bump ({', '.join(b.name for b in plans)}); add --branch {RELEASE_SOURCE}"
        )
    old = main.before.values("vllm") if main.before else []
    if len(old) != 1:
        raise PinError(
            f"--release-branch: {RELEASE_SOURCE}'s vllm version is not recorded in {versions.PATH}, "
            "so the release branch cannot be named; bump without --release-branch first"
        )
    name = f"vllm-{old[0]}"
    if not git.valid_branch_name(name):
        raise GitError(f"--release-branch: '{name}' is not a valid branch name")
    existing = git.branch_commit(name)
    if existing:
        raise GitError(
            f"--release-branch: branch {name} already exists (at {short(existing)}); "
            "delete it or leave out --release-branch"
        )
    return name


# -- acting ------------------------------------------------------------------


@dataclass
class BranchResult:
    plan: BranchPlan
    commit: str | None = None
    after: PinVersions | None = None
    subject: str = ""
    failure: str | None = None


@dataclass
class BumpOutcome:
    plan: BumpPlan
    results: list[BranchResult] = field(default_factory=list)
    moved: dict[str, tuple[str, str]] = field(default_factory=dict)  # branch -> (old, new)
    created: dict[str, str] = field(default_factory=dict)  # branch -> commit


MIRROR_HINT = "use --url-template with a mirror you can reach"


def fetch(nix: Nix, url: str, rev: str) -> None:
    """Fetch the pin once, before any branch; say whether the network, the repository or the commit failed."""
    try:
        info = nix.flake_prefetch(url)
    except CommandError as exc:
        raise PinError(f"cannot fetch {url}: {error_message(exc.stderr)}") from None
    locked = info.get("locked", {}).get("rev")
    if locked and locked != rev:
        raise PinError(
            f"{url} resolves to commit {locked}, not {rev}: put {{rev}} where the commit goes in --url-template"
        )


def commit_message(branch: BranchPlan, rev: str, url: str, after: PinVersions) -> tuple[str, str]:
    """The seed's convention: `vllm: update to X` when vllm changed, else `flake: bump nixpkgs to R`."""
    old_vllm = branch.before.values("vllm") if branch.before else None
    if old_vllm != after.values("vllm"):
        subject = f"vllm: update to {after.text('vllm')}"
    else:
        subject = f"flake: bump nixpkgs to {short(rev)}"
    body = [
        f"nixpkgs: {short(branch.locked)} -> {short(rev)}",
        *versions.changes(branch.before, after),
        "",
        f"Pin: {url}",
        "Versions evaluated by `invoke bump-pin` from hydraJobs.<variant>.<system>.versions (the default set)",
        f"and recorded in {versions.PATH}.",
    ]
    return subject, "\n".join(body)


def bump_branch(git: Git, nix: Nix, plan: BumpPlan, branch: BranchPlan, *, tmpdir: Path | None = None) -> BranchResult:
    """Relock, evaluate, regenerate and commit one branch in a temporary worktree; refs untouched."""
    result = BranchResult(plan=branch)
    stage = "to check out"
    try:
        # A fixed name, never the branch's: Nix reads the path as a flake reference,
        # where '#' (valid in a branch name: fix#1) starts a fragment.
        with git.temporary_worktree(branch.commit, parent=tmpdir, name="flake") as tree:
            stage = "to lock"
            flake_nix = tree / "flake.nix"
            text = userfiles.read_text(flake_nix, f"{branch.name}'s flake.nix", limit=userfiles.MIB)
            flake_nix.write_text(with_url(text, plan.url), encoding="utf-8")
            nix.flake_update(flake_ref(tree), versions.INPUT, cwd=tree)
            locked = versions.locked(Project(tree))
            if locked != plan.rev:
                raise PinError(f"flake.lock locked {locked}, not {plan.rev}")
            stage = "to evaluate"
            # the matrix the flake reads, from the branch's own TOML: a branch from
            # before nix/variants.json reads its TOML in Nix and has none to write
            expanded = [generated.PATH] if (tree / generated.PATH).exists() else []
            if expanded:
                generated.update(tree, label=generated.SOURCE)
            packages = nix.eval_json(f"{flake_ref(tree)}#{versions.EVAL_ATTR}", apply=versions.EVAL, cwd=tree)
            evaluated = nix.eval_json(f"{flake_ref(tree)}#{versions.PIN_ATTR}", cwd=tree)
            after = PinVersions.from_eval(plan.rev, plan.url, packages, nar_hash=evaluated.get("narHash"))
            stage = "to regenerate README.md and docs/"
            (tree / versions.PATH).write_text(after.dumps(), encoding="utf-8")
            regenerated = sections.update(Project(tree))
            stage = "to commit"
            subject, body = commit_message(branch, plan.rev, plan.url, after)
            result.commit = git.commit(tree, [*COMMITTED, *expanded, *regenerated], subject, body)
            result.after, result.subject = after, subject
    except CommandError as exc:
        result.failure = f"{stage}: {error_message(exc.stderr) or exc}"
    except VariantsError as exc:
        result.failure = f"{stage}: {exc}"
    return result


def release_update(plan: BumpPlan, results: Sequence[BranchResult]) -> RefUpdate | None:
    """The release branch to create, if main's vllm got newer."""
    main = next((r for r in results if r.plan.name == RELEASE_SOURCE), None)
    if not plan.release or main is None or main.after is None:
        return None
    old = plan.release.removeprefix("vllm-")
    if version_key(main.after.values("vllm")[-1]) <= version_key(old):
        return None
    return RefUpdate(f"refs/heads/{plan.release}", main.plan.commit, None)


def execute(plan: BumpPlan, git: Git, nix: Nix, *, out: TextIO, tmpdir: Path | None = None) -> BumpOutcome:
    outcome = BumpOutcome(plan=plan)
    for branch in plan.branches:
        if branch.current:
            print(f"{branch.name}: already at nixpkgs {short(plan.rev)}; nothing to do", file=out)
    if not plan.todo:
        return outcome
    nix.preflight()
    fetch(nix, plan.url, plan.rev)
    for branch in plan.todo:
        result = bump_branch(git, nix, plan, branch, tmpdir=tmpdir)
        outcome.results.append(result)
        if result.failure:
            print(f"{branch.name}: failed {result.failure}", file=out)
            continue
        assert result.after is not None and result.commit is not None
        print(f"{branch.name}: nixpkgs {short(branch.locked)} -> {short(plan.rev)}", file=out)
        for line in versions.changes(branch.before, result.after):
            print(f"  {line}", file=out)
        named_for = branch.name.removeprefix("vllm-") if branch.name.startswith("vllm-") else None
        if named_for and result.after.values("vllm") != [named_for]:
            print(f"  note: {branch.name} now ships vllm {result.after.text('vllm')}", file=out)
        print(f"  committed {short(result.commit)} {result.subject}", file=out)

    failed = [r for r in outcome.results if r.failure]
    if failed:
        by_cause: dict[str, list[str]] = {}  # one new pin often breaks every branch the same way
        for r in failed:
            by_cause.setdefault(r.failure or "", []).append(r.plan.name)
        reasons = "; ".join(f"{', '.join(names)} failed {cause}" for cause, names in by_cause.items())
        raise BumpError(f"no branch moved: {reasons}")

    moving: dict[str, tuple[str, str]] = {}  # branch -> (old, new)
    for r in outcome.results:
        assert r.commit is not None  # a result without a commit has a failure, refused above
        moving[r.plan.name] = (r.plan.commit, r.commit)
    # The long evaluation gave the user time to edit: look again at the
    # worktrees that will follow before any branch moves.
    followers = _followers(git, moving)
    _refuse_followers_in_the_way(git, followers, moving)
    updates = [RefUpdate(f"refs/heads/{name}", new, old) for name, (old, new) in moving.items()]
    release = release_update(plan, outcome.results)
    if plan.release and release is None:
        print(f"{plan.release}: not created, {RELEASE_SOURCE}'s vllm did not get newer", file=out)
    # From here the branches and the checkouts on them move together: signals
    # wait until both are done (issue #21), and the journal lets the next
    # bump-pin finish the checkouts if we are killed in between.
    with lifecycle.critical():
        journal = Journal.of(git)
        journal.write(followers, moving)
        try:
            git.update_refs([*updates, *([release] if release else [])])
        except BaseException:
            journal.remove()  # nothing moved
            raise
        outcome.moved = moving
        if release and plan.release:
            outcome.created[plan.release] = release.new
        print(
            "moved "
            + ", ".join(f"{name} {short(old)} -> {short(new)}" for name, (old, new) in outcome.moved.items())
            + "".join(f"; created {name} at {short(at)}" for name, at in outcome.created.items()),
            file=out,
        )
        lifecycle.checkpoint("step", "branches moved")
        _follow(git, followers, outcome.moved, out)
        journal.remove()
    return outcome


@dataclass(frozen=True)
class Journal:
    """$GIT_COMMON_DIR/vllm-variants-bump.json: the checkouts that must follow
    moved branches, written before the refs move and removed once they
    followed. One left behind means a bump-pin died in between (SIGKILL, a
    power cut): the next bump-pin finishes those checkouts first and says so."""

    path: Path

    @classmethod
    def of(cls, git: Git) -> Journal:
        return cls(git.common_dir() / "vllm-variants-bump.json")

    def write(self, followers: Sequence[Worktree], moving: Mapping[str, tuple[str, str]]) -> None:
        entries = []
        for w in followers:
            assert w.branch is not None  # _followers: on a moving branch
            entries.append(
                {"path": str(w.path), "branch": w.branch, "old": moving[w.branch][0], "new": moving[w.branch][1]}
            )
        write_text(self.path, json.dumps({"followers": entries}, indent=2) + "\n")

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def resume(self, git: Git, out: TextIO) -> None:
        """Finish what a killed bump-pin left: checkouts still showing their branch's old files."""
        if not self.path.exists():
            return
        try:
            entries = userfiles.read_json(self.path, str(self.path), limit=userfiles.MIB)["followers"]
            followers = [(Path(e["path"]), str(e["branch"]), str(e["old"]), str(e["new"])) for e in entries]
        except (userfiles.UserFileError, KeyError, TypeError) as exc:
            raise GitError(
                f"{self.path} is unreadable ({exc}); remove it and check your checkouts with git status"
            ) from None
        with lifecycle.critical():
            for path, branch, old, new in followers:
                if not path.exists() or git.current_branch(path) != branch or git.branch_commit(branch) != new:
                    continue  # gone, or moved on since: nothing of ours to finish
                try:
                    git.fast_forward(path, old, new)
                except CommandError as exc:
                    raise GitError(
                        f"an earlier bump-pin moved {branch} to {short(new)} but was stopped before {path} "
                        f"followed, and it cannot now: {error_message(exc.stderr)}; move what is in the way, "
                        f"then run `git read-tree -m -u {old} {new}` there"
                    ) from None
                print(
                    f"{path}: finished what an earlier, interrupted bump-pin began: {branch} now shows {short(new)}",
                    file=out,
                )
            self.remove()


def _followers(git: Git, moving: Mapping[str, tuple[str, str]]) -> list[Worktree]:
    """Worktrees (your checkout included) on a branch about to move, at its old commit."""
    return [
        w
        for w in git.worktrees()
        if w.branch is not None and w.branch in moving and w.path.exists() and w.head == moving[w.branch][0]
    ]


def _refuse_followers_in_the_way(
    git: Git, followers: Sequence[Worktree], moving: Mapping[str, tuple[str, str]]
) -> None:
    """Refuse, before any branch moves, what would stop a follower getting its branch's new files.

    make_plan refused uncommitted changes, but the bump takes minutes: files
    edited since, or an untracked file where the new commit adds one, would
    make `_follow` fail after the branches moved, leaving that checkout stale.
    """
    for worktree in followers:
        what = f"{worktree.path} (on {worktree.branch})"
        changed = git.changes(worktree.path)
        if changed:
            raise GitError(
                f"no branch moved: {what} got uncommitted changes while bump-pin ran ({_some(changed)}); "
                "commit or stash them and run it again"
            )
        assert worktree.branch is not None  # _followers: on a moving branch
        old, new = moving[worktree.branch]
        try:
            git.fast_forward(worktree.path, old, new, dry_run=True)
        except CommandError as exc:
            raise GitError(
                f"no branch moved: {what} could not take the new files: {error_message(exc.stderr)}; "
                "move what is in the way and run bump-pin again"
            ) from None


def _follow(git: Git, followers: Sequence[Worktree], moved: Mapping[str, tuple[str, str]], out: TextIO) -> None:
    """Worktrees on a moved branch get its new files, as a pull would.

    They were clean and nothing was in the way just before the branches
    moved (_refuse_followers_in_the_way); untracked files stay.
    """
    for worktree in followers:
        assert worktree.branch is not None  # _followers: on a moving branch
        old, new = moved[worktree.branch]
        try:
            git.fast_forward(worktree.path, old, new)
        except CommandError as exc:
            raise GitError(
                f"the branches moved, but {worktree.path} (on {worktree.branch}) still holds the files of "
                f"{short(old)}: {error_message(exc.stderr)}; move what is in the way, then run "
                f"`git read-tree -m -u {old} {new}` there"
            ) from None
        print(f"{worktree.path}: checked-out {worktree.branch} now shows {short(new)}", file=out)


def bump_pin(
    root: Path,
    rev: str,
    *,
    branches: Sequence[str] = (),
    globs: Sequence[str] = (),
    url_template: str | None = None,
    dry_run: bool = False,
    release_branch: bool = False,
    env: Mapping[str, str] | None = None,
    nix: Nix | None = None,
    tmpdir: Path | None = None,
    out: TextIO | None = None,
) -> BumpPlan | BumpOutcome:
    """Plan, then (unless dry_run) bump every branch and move them all at once."""
    out = out or sys.stdout
    git = Git(Path(root), env=env)
    git.toplevel()  # a git checkout at all, before its journal is looked for
    Journal.of(git).resume(git, out)
    template = DEFAULT_URL_TEMPLATE if url_template is None else url_template  # '' is a mistake, not the default
    plan = make_plan(git, rev, url_template=template, branches=branches, globs=globs, release_branch=release_branch)
    if dry_run:
        print("\n".join([*plan.lines(), "dry run: nothing changed"]), file=out)
        return plan
    return execute(plan, git, nix or Nix(env=env, fetch_instead=MIRROR_HINT), out=out, tmpdir=tmpdir)
