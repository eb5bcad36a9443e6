"""git, through vllm_variants.runner: branches, worktrees, one ref transaction.

Work happens in temporary worktrees (detached, outside the checkout), so the
user's checkout, its index and its untracked files are never used for it.
Branches move only in `update_refs`, one `git update-ref --stdin` transaction
that checks every ref's old value: all move or none does.

Reads that could refresh the index (git status) run with
--no-optional-locks, so looking at a checkout never writes to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from . import lifecycle
from .errors import CommandError, GitError, tail
from .runner import run

ZERO = "0" * 40


@dataclass(frozen=True)
class Worktree:
    path: Path
    head: str | None
    branch: str | None  # short name; None when detached (or bare)


@dataclass(frozen=True)
class RefUpdate:
    """Move `ref` from `old` to `new`; old=None creates it (it must not exist)."""

    ref: str
    new: str
    old: str | None

    def line(self) -> str:
        if self.old is None:
            return f"create {self.ref} {self.new}"
        return f"update {self.ref} {self.new} {self.old}"


@dataclass
class Git:
    """git commands run in (or for the repository of) `root`."""

    root: Path
    env: Mapping[str, str] | None = None

    def run(
        self,
        *args: str | os.PathLike[str],
        cwd: Path | None = None,
        input: str | None = None,
        check: bool = True,
        new_session: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        return run(
            ["git", *(os.fspath(a) for a in args)],
            cwd=cwd or self.root,
            env=self.env,
            input=input,
            check=check,
            new_session=new_session,
        )

    def out(self, *args: str | os.PathLike[str], cwd: Path | None = None) -> str:
        return self.run(*args, cwd=cwd).stdout.strip()

    # -- the repository --------------------------------------------------

    def common_dir(self) -> Path:
        """The repository's own folder, shared by its worktrees ($GIT_COMMON_DIR)."""
        return Path(os.path.realpath(self.root / self.out("rev-parse", "--git-common-dir")))  # relative, or absolute

    def toplevel(self) -> Path:
        proc = self.run("rev-parse", "--show-toplevel", check=False)
        if proc.returncode != 0:
            raise GitError(f"{self.root} is not a git checkout: {tail(proc.stderr, 1)}")
        return Path(proc.stdout.strip())

    def current_branch(self, cwd: Path | None = None) -> str | None:
        proc = self.run("symbolic-ref", "--quiet", "--short", "HEAD", cwd=cwd, check=False)
        return proc.stdout.strip() or None

    def local_branches(self) -> list[str]:
        return self.out("for-each-ref", "--format=%(refname:lstrip=2)", "refs/heads/").splitlines()

    def commit_of(self, ref: str) -> str | None:
        proc = self.run("rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def branch_commit(self, branch: str) -> str | None:
        return self.commit_of(f"refs/heads/{branch}")

    def show(self, commit: str, path: str) -> str | None:
        """A file's text at `commit`, or None when it has no such file."""
        proc = self.run("cat-file", "-p", f"{commit}:{path}", check=False)
        return proc.stdout if proc.returncode == 0 else None

    def valid_branch_name(self, name: str) -> bool:
        return self.run("check-ref-format", "--branch", name, check=False).returncode == 0

    def select_branches(self, names: Sequence[str] = (), globs: Sequence[str] = ()) -> list[str]:
        """Named branches (each must exist) plus those matching the globs, in order, once each."""
        local = self.local_branches()
        unknown = [n for n in names if n not in local]
        if unknown:
            raise GitError(
                f"unknown branch(es) {', '.join(n.strip() and n or repr(n) for n in unknown)}; "
                f"local branches: {', '.join(local) or '(none)'}"
            )
        chosen = list(names)
        for glob in globs:
            matched = [b for b in local if fnmatchcase(b, glob)]
            if not matched:
                raise GitError(f"no local branch matches '{glob}'; local branches: {', '.join(local)}")
            chosen += matched
        return list(dict.fromkeys(chosen))

    # -- worktrees ---------------------------------------------------------

    def worktrees(self) -> list[Worktree]:
        """Every worktree of the repository, the main checkout first."""
        found: list[Worktree] = []
        for block in self.run("worktree", "list", "--porcelain").stdout.split("\n\n"):
            fields = dict(line.partition(" ")[::2] for line in block.splitlines() if line)
            if "worktree" not in fields:
                continue
            branch = fields.get("branch", "")
            found.append(
                Worktree(
                    path=Path(fields["worktree"]),
                    head=fields.get("HEAD"),
                    branch=branch.removeprefix("refs/heads/") or None,
                )
            )
        return found

    def changes(self, worktree: Path) -> list[str]:
        """Uncommitted changes to tracked files (untracked files do not count)."""
        proc = self.run("--no-optional-locks", "status", "--porcelain", "--untracked-files=no", cwd=worktree)
        return [line[3:] for line in proc.stdout.splitlines() if line.strip()]

    @contextmanager
    def temporary_worktree(self, commit: str, *, parent: Path | None = None, name: str = "wt") -> Iterator[Path]:
        """A detached worktree at `commit` in a fresh temporary directory, removed afterwards,
        whatever ends the task (lifecycle).

        `git worktree add` runs in its own session with signals held: a Ctrl-C
        cannot kill it half way and leave an entry in .git/worktrees behind.
        Only this worktree is cleaned up: `git worktree prune` would also drop
        the entries of the user's own worktrees whose directories are missing
        (an unmounted disk, a moved folder), which are theirs to keep.
        """
        with lifecycle.temporary_directory(prefix="vllm-variants-", dir=parent) as base:
            path = base / name
            admin: Path | None = None  # $GIT_DIR/worktrees/<id>, this worktree's entry
            token = None
            try:
                with lifecycle.critical():
                    self.run("worktree", "add", "--quiet", "--detach", path, commit, new_session=True)
                    admin = Path(self.out("rev-parse", "--absolute-git-dir", cwd=path))
                    entry = admin
                    token = lifecycle.register(f"git worktree {path}", lambda: self._drop_worktree(path, entry))
                yield path
            finally:
                if admin is not None:
                    self._drop_worktree(path, admin)
                if token is not None:
                    lifecycle.unregister(token)

    def _drop_worktree(self, path: Path, admin: Path) -> None:
        removed = self.run("worktree", "remove", "--force", path, check=False, new_session=True).returncode == 0
        if not removed:
            _drop_worktree_entry(admin, path)

    def commit(self, worktree: Path, paths: Sequence[str], subject: str, body: str) -> str:
        """Commit `paths` in `worktree`; returns the new commit."""
        self.run("add", "--", *paths, cwd=worktree)
        self.run("commit", "--quiet", "-m", subject, "-m", body, cwd=worktree)
        return self.out("rev-parse", "HEAD", cwd=worktree)

    def fast_forward(self, worktree: Path, old: str, new: str, *, dry_run: bool = False) -> None:
        """Bring a clean worktree's index and files from `old` to `new` (refs untouched).

        read-tree's two-tree merge is what `git checkout` does: it changes only
        the files that differ between the two commits and refuses to overwrite
        local changes or untracked files. dry_run: only find out whether it
        would refuse (CommandError), changing nothing.
        """
        self.run("read-tree", "-m", "-u", *(["-n"] if dry_run else []), old, new, cwd=worktree, new_session=True)

    # -- refs --------------------------------------------------------------

    def update_refs(self, updates: Sequence[RefUpdate]) -> None:
        """Apply every update in one transaction, each checked against its old value."""
        lines = ["start", *(u.line() for u in updates), "prepare", "commit"]
        try:
            self.run("update-ref", "--stdin", input="\n".join(lines) + "\n", new_session=True)
        except CommandError as exc:
            raise GitError(f"no branch moved: git refused the ref transaction: {tail(exc.stderr, 1)}") from None


def _drop_worktree_entry(admin: Path, path: Path) -> None:
    """Delete one worktree's administrative entry, as `git worktree prune` would for it alone.

    Only when the entry still names `path` (its `gitdir` file points at
    `path/.git`), so an entry git has since given to another worktree stays.
    """
    try:
        points_at = (admin / "gitdir").read_text(encoding="utf-8").strip()
    except OSError:
        return
    if os.path.realpath(points_at) != os.path.realpath(path / ".git"):  # git records it resolved
        return
    shutil.rmtree(admin, ignore_errors=True)
    try:
        admin.parent.rmdir()  # $GIT_DIR/worktrees, when this was its last entry (as git leaves it)
    except OSError:
        pass
