"""One variant: a row of the matrix with its derived fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import compat


@dataclass(frozen=True)
class Variant:
    """One row of the matrix with its derived fields."""

    name: str
    sm: str
    capability: str
    arch: str
    gpus: tuple[str, ...]
    system: str
    python: str
    cuda: str
    cuda_tag: str
    cuda_packages: str
    min_driver: int
    disabled: str | None = None
    torch: str = "source"
    # in the default set: what --all, `invoke matrix` and hydraJobs build unless told otherwise
    default: bool = True

    @property
    def torch_wheel(self) -> bool:
        """torch is nixpkgs' torch-bin (the upstream wheel, every SM), not built for this SM."""
        return self.torch == "wheel"

    @property
    def arm64(self) -> bool:
        return self.system.startswith("aarch64-")

    @property
    def enabled(self) -> bool:
        return self.disabled is None

    @property
    def sm_number(self) -> str:
        """The SM without its arch-specific suffix ('90a' -> '90'): what a GPU reports."""
        return sm_number(self.sm)

    @property
    def label(self) -> str:
        """Short human form: 'sm90' or 'sm90 (arm64)'."""
        return f"sm{self.sm}" + (" (arm64)" if self.arm64 else "")

    @property
    def selector(self) -> str:
        """The task options that select this variant: '--sm 90', '--sm 90 --arm64', or its name."""
        if self.torch_wheel:
            return f"--sm {self.name}"
        return f"--sm {self.sm}" + (" --arm64" if self.arm64 else "")

    @property
    def build_command(self) -> str:
        """The command that builds this variant: 'invoke build --sm 90 --arm64'."""
        return f"invoke build {self.selector}"

    def attr_path(self) -> str:
        """The flake attribute that builds this variant."""
        return f"packages.{self.system}.{self.name}"

    def to_json(self) -> dict[str, Any]:
        """The record as the flake exports it in `lib.variants` (nix/variants.json holds these)."""
        return {
            "name": self.name,
            "sm": self.sm,
            "capability": self.capability,
            "arch": self.arch,
            "gpus": list(self.gpus),
            "system": self.system,
            "python": self.python,
            "cuda": self.cuda,
            "cuda_tag": self.cuda_tag,
            "cuda_packages": self.cuda_packages,
            "min_driver": self.min_driver,
            "torch": self.torch,
            "default": self.default,
            "disabled": self.disabled,
        }


def sm_number(sm: str) -> str:
    """'90a' -> '90', '100f' -> '100': the SM a GPU and a cubin report, without the arch-specific suffix.

    compat's rule (as the smoke check's): the a/f suffix names a code target, not another GPU."""
    return compat.sm_of(sm)
