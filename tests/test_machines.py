"""Remote builders and local platforms, as Nix reports them."""

from __future__ import annotations

import pytest
import support

from vllm_variants.errors import PreflightError
from vllm_variants.machines import BuildCapabilities, Builder, parse_builders
from vllm_variants.nix import Nix


def test_builder_lines_follow_the_nix_manual(tmp_path):
    machines = tmp_path / "machines"
    machines.write_text(
        "# GH200 nodes\n"
        "ssh-ng://builder@gh200 aarch64-linux /root/.ssh/id_ed25519 8 2 big-parallel,kvm - c3NoLWVk\n"
        "ssh://old-box x86_64-linux,i686-linux - 2\n"
    )
    builders = parse_builders(f"@{machines}; ssh-ng://laptop", local_system="x86_64-linux")
    assert builders == [
        Builder(
            "ssh-ng://builder@gh200",
            ("aarch64-linux",),
            "/root/.ssh/id_ed25519",
            8,
            2.0,
            ("big-parallel", "kvm"),
            (),
            "c3NoLWVk",
        ),
        Builder("ssh://old-box", ("x86_64-linux", "i686-linux"), None, 2, 1.0, (), (), None),
        Builder("ssh-ng://laptop", ("x86_64-linux",)),
    ]
    assert builders[0].can_build("aarch64-linux")
    assert not builders[1].can_build("x86_64-linux"), "no big-parallel"
    assert builders[1].can_build("x86_64-linux", features=())


def test_missing_machines_file_means_no_builders():
    assert parse_builders("@/nonexistent/machines", local_system="x86_64-linux") == []


def test_bad_numbers_are_one_line():
    with pytest.raises(PreflightError, match="max jobs .* must be numbers"):
        parse_builders("ssh://x x86_64-linux - lots", local_system="x86_64-linux")


def test_mandatory_features_must_be_asked_for():
    b = Builder(
        "ssh://gpu", ("x86_64-linux",), max_jobs=4, supported_features=("big-parallel",), mandatory_features=("cuda",)
    )
    assert not b.can_build("x86_64-linux")
    assert b.can_build("x86_64-linux", features=("big-parallel", "cuda"))


@pytest.mark.nix
def test_capabilities_from_the_real_nix_config(tmp_path):
    env = support.nix_env(
        "system-features = big-parallel kvm\nextra-platforms = i686-linux\n"
        "builders = ssh-ng://gh200 aarch64-linux - 4 1 big-parallel"
    )
    caps = BuildCapabilities.from_settings(Nix(env=env).config())
    assert caps.system == "x86_64-linux"
    assert caps.local_can_build("x86_64-linux") and caps.local_can_build("i686-linux")
    assert caps.can_build("aarch64-linux") and not caps.local_can_build("aarch64-linux")
    assert [b.uri for b in caps.builders_for("aarch64-linux")] == ["ssh-ng://gh200"]
    assert caps.buildable_systems() == ["x86_64-linux", "i686-linux", "aarch64-linux"]


@pytest.mark.nix
def test_without_a_builder_aarch64_is_explained():
    caps = BuildCapabilities.from_settings(Nix(env=support.nix_env("builders =")).config())
    assert not caps.can_build("aarch64-linux")
    message = caps.explain_missing("aarch64-linux")
    assert "CUDA is never cross-compiled" in message and "big-parallel" in message and "\n" not in message
    extra = BuildCapabilities.from_settings(
        Nix(env=support.nix_env("builders =")).config(),
        extra_builders="ssh-ng://gb200 aarch64-linux - 2 1 big-parallel",
    )
    assert extra.can_build("aarch64-linux")
