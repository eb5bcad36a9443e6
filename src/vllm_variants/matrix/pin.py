"""What the pinned nixpkgs can build ([pin] of nix/variants.toml): the facts, read from its files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .variant import Variant


@dataclass(frozen=True)
class Pin:
    """What the pinned nixpkgs can build, as data read from its files ([pin])."""

    torch_version: str | None = None
    vllm_version: str | None = None
    torch_capabilities: tuple[str, ...] | None = None
    vllm_capabilities: tuple[str, ...] | None = None
    cuda_capabilities: Mapping[str, tuple[str, str | None]] | None = None  # cap -> (min, max), inclusive
    # nixpkgs' torch-bin: its version and the CUDA line its x86_64 wheels are built
    # for (+cu128: torch/bin/binary-hashes.nix); it links the instance's cudaPackages
    torch_bin_version: str | None = None
    torch_bin_cuda: str | None = None

    def why_not(self, variant: Variant) -> str | None:
        """Why the pin cannot build this combination, or None: the facts, never hope."""
        cap = variant.capability
        if self.cuda_capabilities is not None:
            bounds = self.cuda_capabilities.get(cap)
            if bounds is None:
                return f"nixpkgs at the pin knows no CUDA capability {cap}"
            low, high = bounds
            if version_key(variant.cuda) < version_key(low):
                return f"capability {cap} needs CUDA {low} or newer (nixpkgs' CUDA capability table)"
            if high is not None and version_key(variant.cuda) > version_key(high):
                return f"CUDA {variant.cuda} no longer supports capability {cap} (last: CUDA {high})"
        if variant.torch_wheel and self.torch_bin_cuda is not None and variant.cuda != self.torch_bin_cuda:
            return (
                f"{_named('torch-bin', self.torch_bin_version)} at the pin is a CUDA {self.torch_bin_cuda} wheel: "
                f'a torch = "wheel" row must be on CUDA {self.torch_bin_cuda}'
            )
        if not variant.torch_wheel and self.torch_capabilities is not None and cap not in self.torch_capabilities:
            return f"{_named('torch', self.torch_version)} at the pin cannot target {cap} (not on its list)"
        if self.vllm_capabilities is not None and cap not in self.vllm_capabilities:
            return f"{_named('vllm', self.vllm_version)} at the pin cannot target {cap} (not on its list)"
        return None


def _named(package: str, version: str | None) -> str:
    return f"{package} {version}" if version else package


def version_key(version: str) -> tuple[int, ...]:
    """'12.9' -> (12, 9): versions compared as numbers."""
    return tuple(int(part) for part in version.split("."))
