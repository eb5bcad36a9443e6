"""The nix CLI wrapper (vllm_variants.nix) across Nix versions.

Version-dependent arguments are checked against each side of the version
where Nix changed; the side this machine's Nix is on also runs for real.
"""

from __future__ import annotations

import pytest
import support

from vllm_variants.errors import PreflightError
from vllm_variants.nix import Nix, is_valid_info, parse_version


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


def at_version(version: tuple[int, int, int], **kwargs) -> Nix:
    """A Nix that believes it is `version` (the real one runs what it is asked)."""
    nix = Nix(env=support.nix_env(), **kwargs)
    nix.__dict__["version"] = version  # the cached_property's slot
    return nix


@pytest.mark.nix
@pytest.mark.parametrize(("version", "command"), [((2, 19, 3), ["show-config"]), ((2, 20, 0), ["config", "show"])])
def test_config_show_is_named_as_that_nix_names_it(version, command):
    """`nix config show` is new in Nix 2.20 (release notes, NixOS/nix#9477); 2.19 has only
    `nix show-config`, which later Nix keeps as an alias, so both run here for real."""
    nix = at_version(version, options=[("cores", "7")])
    assert nix.config_argv()[1:] == [*command, "--extra-experimental-features", "nix-command", "--option", "cores", "7"]
    assert nix.setting("cores") == "7" and "flakes" in nix.setting("experimental-features").split()


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ((2, 18, 1), ["--json"]),
        ((2, 32, 9), ["--json"]),  # 2.32 rejects --json-format
        ((2, 33, 0), ["--json", "--json-format", "1"]),  # 2.33 warns without it (NixOS/nix#14704)
    ],
)
def test_path_info_asks_for_the_keyed_json_where_nix_has_the_flag(version, expected):
    assert at_version(version).path_info_json() == expected


@pytest.mark.nix
def test_path_info_reads_this_nix_and_an_absent_path(tmp_path):
    nix = Nix(env=support.nix_env())
    (tmp_path / "f").write_text("vllm-variants path-info\n")
    path = support.nix("store", "add-path", tmp_path / "f", env=nix.env).stdout.strip()
    absent = path.replace(path.split("/")[-1][:32], "0" * 32)
    infos = nix.path_info([path, absent])
    assert is_valid_info(infos[path]) and infos[path]["closureSize"] > 0
    assert not is_valid_info(infos.get(absent))
    assert nix.realised([path, absent]).keys() == {path}


@pytest.mark.nix
def test_options_nix_rejects_are_problems_but_nix_conf_s_own_warnings_are_not():
    env = support.nix_env("no-such-conf-setting = 1")
    nix = Nix(options=[("cores", "abc"), ("no-such-setting", "1"), ("sandbox", "false")], env=env)
    assert nix.problems() == [
        "Nix rejects --option cores=abc: setting 'cores' has invalid value 'abc'",
        "Nix rejects --option no-such-setting=1: unknown setting 'no-such-setting'",
    ]
    assert Nix(options=[("sandbox", "false")], env=env).problems() == []
