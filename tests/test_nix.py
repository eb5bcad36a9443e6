"""The nix CLI wrapper (vllm_variants.nix) across Nix versions.

Version-dependent arguments are checked against each side of the version
where Nix changed; the side this machine's Nix is on also runs for real.
"""

from __future__ import annotations

import pytest

from vllm_variants.errors import PreflightError
from vllm_variants.nix import parse_version


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nix (Nix) 2.26.3\n", (2, 26, 3)),
        ("nix (Nix) 2.18.1", (2, 18, 1)),
        ("nix (Nix) 2.34.0pre20260101_abcdef", (2, 34, 0)),
        ("nix (Nix) 2.20", (2, 20, 0)),
        # Determinate Nix names its own version first; the last one is Nix's
        ("nix (Determinate Nix 3.18.1) 2.33.4", (2, 33, 4)),
    ],
)
def test_the_nix_version_is_the_last_one_on_the_line(text, expected):
    assert parse_version(text) == expected


def test_an_unreadable_version_is_one_line():
    with pytest.raises(PreflightError, match="^cannot read the Nix version from 'nix'$"):
        parse_version("nix\n")
