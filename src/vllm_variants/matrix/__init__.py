"""The variant matrix: nix/variants.toml, validated and expanded in one place.

- `schema`: what a valid file is, and the variants it expands into (the one
  validator; `pin`: what the pinned nixpkgs can build, from [pin]);
- `variant`: one variant's record; `model`: the matrix and its queries.
"""

from __future__ import annotations

from ..userfiles import tomllib  # noqa: F401 - tomli on Python 3.10; the tests read TOML through it
from .model import Matrix, normalise_sm, unique
from .pin import Pin
from .variant import Variant, sm_number

__all__ = [
    "Matrix",
    "Pin",
    "Variant",
    "normalise_sm",
    "sm_number",
    "unique",
]
