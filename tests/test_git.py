"""vllm_variants.git against a real repository (no Nix)."""

from __future__ import annotations

import shutil
from pathlib import Path

import support

from vllm_variants.git import Git


def _repo(root: Path) -> Path:
    root.mkdir()
    support.git(root, "init", "-q", "-b", "main")
    support.commit_all(root, "seed")
    return root


def _stale_worktree(repo: Path, where: Path) -> None:
    """A worktree of the user's whose directory is gone (an unmounted disk, say)."""
    support.git(repo, "worktree", "add", "-q", "-b", "elsewhere", where)
    shutil.rmtree(where)


def test_temporary_worktree_cleans_up_only_its_own_entry(tmp_path):
    repo = _repo(tmp_path / "repo")
    _stale_worktree(repo, tmp_path / "gone")
    git = Git(repo, env=support.git_env())

    with git.temporary_worktree("HEAD", parent=tmp_path) as tree:
        # git cannot remove a locked worktree: the entry must be dropped by hand, ours alone
        support.git(repo, "worktree", "lock", tree)
        shutil.rmtree(tree)

    listed = support.git(repo, "worktree", "list", "--porcelain").stdout
    assert f"worktree {tmp_path / 'gone'}\n" in listed
    assert str(tree) not in listed
    assert sorted(p.name for p in (repo / ".git" / "worktrees").iterdir()) == ["gone"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("vllm-variants-")] == []
