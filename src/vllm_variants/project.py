"""Where things live in a checkout of this project."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from . import userfiles
from .errors import PreflightError
from .matrix import Matrix, Variant

MATRIX = Path("nix/variants.toml")


@dataclass(frozen=True)
class Project:
    root: Path

    @classmethod
    def find(cls, start: Path | str | None = None) -> Project:
        """The checkout containing `start` (default: the working directory)."""
        here = userfiles.real(start or Path.cwd())
        for candidate in (here, *here.parents):
            if (candidate / "flake.nix").is_file() and (candidate / MATRIX).is_file():
                return cls(candidate)
        raise PreflightError(f"no vllm-variants checkout at or above {here} (looked for flake.nix and {MATRIX})")

    @property
    def matrix_path(self) -> Path:
        return self.root / MATRIX

    @property
    def flake_nix(self) -> Path:
        return self.root / "flake.nix"

    @property
    def flake_lock(self) -> Path:
        return self.root / "flake.lock"

    @property
    def readme(self) -> Path:
        return self.root / "README.md"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @cached_property
    def matrix(self) -> Matrix:
        return Matrix.load(self.matrix_path)

    def result_link(self, variant: Variant) -> Path:
        """result-<variant name> in the project root (the seed's convention)."""
        return self.root / f"result-{variant.name}"

    def result_links(self) -> list[Path]:
        return sorted(p for p in self.root.glob("result-*") if p.is_symlink())
