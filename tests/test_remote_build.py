"""A real remote build: the aarch64-linux variant, built from this x86_64-linux
host by a remote builder reached through ssh-ng:// — an sshd on 127.0.0.1
that the test starts.

How it is set up, and why (everything lives under tmp_path, on a free port,
so tests running in parallel never meet):

- sshd is Debian's openssh-server (/usr/sbin/sshd; .ci/run installs it), run
  in the foreground with its own config, a throwaway host key and one
  authorized client key. Started as root, sshd insists on its privilege
  separation directory /run/sshd, which the package's boot script creates;
  the fixture creates it when it is missing.
- The client key's authorized_keys line is `restrict,command="<remote-nix>"`:
  whatever the client asks to run, the login runs that script. It sets the
  remote machine's Nix configuration (NIX_CONFIG: `extra-platforms =
  aarch64-linux`, no substituters, no builders of its own; `big-parallel` is
  among Nix's default system-features) and execs `nix-daemon --stdio`, the
  daemon on PATH: the remote side of an ssh-ng:// store.
- Client and remote share this machine's /nix/store. If both worked in it,
  the client's build goal would hold the output path locks while the remote
  daemon waits for the same locks. So the client uses a chroot store
  (`store = local?root=<tmp>/client`): evaluation and the .drv files live
  there, `max-jobs = 0` forbids it to build anything, and every derivation
  goes through Nix's build hook to the remote, which builds it in /nix/store
  and sends the outputs back into the client's store.
- The client reaches the builder with the machines line `ssh-ng://USER@127.0.0.1
  aarch64-linux <client key> 4 1 big-parallel` (4 jobs: each derivation is one
  ssh session, and independent ones go in parallel); NIX_SSHOPTS carries the
  port, a known_hosts file holding the throwaway host key, and BatchMode.
- The stand-in's builders are the host's bash, so a builder that claims
  aarch64-linux through extra-platforms really can build the arm64 variant;
  the client, an x86_64-linux store with no builds of its own, cannot (the
  test shows that first).
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import support

from vllm_variants.machines import BuildCapabilities
from vllm_variants.matrix import Matrix
from vllm_variants.nix import Nix

pytestmark = pytest.mark.nix

MATRIX = Matrix.load(support.REPO / "nix" / "variants.toml")
ARM = MATRIX.resolve("90", arm64=True)
SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Builder:
    """An sshd on 127.0.0.1 whose only login runs a Nix daemon for aarch64-linux."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.user = getpass.getuser()
        self.client_key = root / "client_key"
        host_key = root / "host_key"
        for key in (self.client_key, host_key):
            support.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", key], env=os.environ)
        remote_config = "\n".join(
            [
                "extra-platforms = aarch64-linux",
                "substituters =",
                "builders =",
                "sandbox = false",
                "experimental-features = nix-command flakes",
            ]
        )
        self.remote_nix = root / "remote-nix"
        self.remote_nix.write_text(
            f"#!/bin/sh\nexport NIX_CONFIG='{remote_config}'\nexec {shutil.which('nix-daemon')} --stdio\n"
        )
        self.remote_nix.chmod(0o755)
        (root / "authorized_keys").write_text(
            f'restrict,command="{self.remote_nix}" {self.client_key.with_suffix(".pub").read_text()}'
        )
        self.log = root / "sshd.log"
        self.host_key_line = " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
        self.proc: subprocess.Popen | None = None
        self.port = 0
        for _ in range(5):  # another process may take the port between probe and bind
            if self._start(_free_port()):
                return
        raise AssertionError(f"sshd did not start:\n{self.log.read_text()}")

    def _start(self, port: int) -> bool:
        config = self.root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {port}",
                    f"HostKey {self.root / 'host_key'}",
                    f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    "StrictModes no",  # tmp_path's modes are the test runner's
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "",
                ]
            )
        )
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", config], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if "Server listening" in self.log.read_text():
                self.port = port
                (self.root / "known_hosts").write_text(f"[127.0.0.1]:{port} {self.host_key_line}\n")
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        self.stop()
        return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    @property
    def spec(self) -> str:
        """The machines line: URI, systems, ssh key, max jobs, speed factor, features."""
        return f"ssh-ng://{self.user}@127.0.0.1 aarch64-linux {self.client_key} 4 1 big-parallel"

    @property
    def sshopts(self) -> str:
        return (
            f"-F /dev/null -p {self.port} -o UserKnownHostsFile={self.root / 'known_hosts'} "
            "-o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes"
        )

    def logins(self) -> int:
        return self.log.read_text().count("Accepted publickey for")


def in_store(root: Path, path: Path) -> Path:
    """Where `path` (a /nix/store path) lies in the chroot store at `root`,
    following the store's absolute symlinks inside that store."""
    physical = root / str(path).lstrip("/")
    while physical.is_symlink():
        target = os.readlink(physical)
        physical = root / target.lstrip("/") if target.startswith("/") else physical.parent / target
    assert physical.exists(), f"{path} is not in the store at {root}"
    return physical


def _sshd_unavailable() -> str | None:
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is missing: install Debian's openssh-server (.ci/run does)"
    if not shutil.which("ssh-keygen") or not shutil.which("ssh"):
        return "ssh and ssh-keygen are missing: install openssh-client"
    if not os.access("/nix/store", os.W_OK):
        return "the remote side builds into /nix/store, which this user cannot write (a daemon install)"
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        # sshd (as root) refuses to start without its privilege separation directory
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    return None


@pytest.fixture
def builder(tmp_path):
    reason = _sshd_unavailable()
    if reason:
        message = f"no sshd for a remote builder: {reason}"
        if os.environ.get("CI"):  # .ci/run installs it: there a missing sshd is a failure
            pytest.fail(message)
        pytest.skip(message)
    remote = Builder(tmp_path / "builder")
    yield remote
    remote.stop()


def test_arm64_variant_builds_on_the_remote_builder(builder, tmp_path):
    project = support.make_project(tmp_path / "project")
    standin = support.copy_standin(tmp_path / "nixpkgs", salt=f"remote-{secrets.token_hex(6)}")  # a real build
    client = tmp_path / "client"
    env = support.nix_env(f"store = local?root={client}\nmax-jobs = 0", NIX_SSHOPTS=builder.sshopts)
    link = project / f"result-{ARM.name}"

    def build(*builders: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "invoke", "build", "--sm", "90", "--arm64", *builders, "--nixpkgs", str(standin)]
        return support.run(argv, cwd=project, env=env, check=False)

    # Without the builder nothing can build it (the client has no builds of its
    # own): refused before anything is evaluated, in one line.
    alone = build()
    assert alone.returncode == 1 and not link.exists(), alone.stderr
    assert "no machine can build aarch64-linux variants" in alone.stderr
    assert builder.logins() == 0

    # What Nix reports with the builder added: the arm64 system is buildable, remotely only.
    caps = BuildCapabilities.from_settings(Nix(env=env).config(), extra_builders=builder.spec)
    assert not caps.local_can_build(ARM.system) and caps.can_build(ARM.system)

    proc = build("--builders", builder.spec)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert builder.logins() > 0
    (log,) = (project / "logs").glob(f"{ARM.name}-*.log")
    text = log.read_text()
    vllm_drv = [
        line
        for line in text.splitlines()
        if line.startswith("building '") and f"-{ARM.name}-" in line and " on ssh-ng://" in line
    ]
    assert vllm_drv, text[-4000:]
    assert "Running phase: vllmVariantsClampJobsPhase" in text  # the remote really built it

    # The result is in the client's store, as an aarch64-linux variant.
    out = os.readlink(link)
    client_store = f"local?root={client}"
    assert support.nix("path-info", "--store", client_store, out, env=env).stdout.strip() == out
    claimed = json.loads(in_store(client, Path(out, "share", "vllm-variants", "variant.json")).read_text())
    assert claimed["system"] == "aarch64-linux" and claimed["sm"] == "90" and claimed["name"] == ARM.name
    drv = json.loads(support.nix("derivation", "show", "--store", client_store, out, env=env).stdout)
    assert [d["system"] for d in drv.values()] == ["aarch64-linux"]


def test_ci_provides_sshd():
    """CI must run the remote build, not skip it: .ci/run installs sshd and its directory."""
    ci = (support.REPO / ".ci" / "run").read_text()
    assert "apt-get install" in ci and "openssh-server" in ci and "mkdir -p -m 0755 /run/sshd" in ci
    assert ci.index("openssh-server") < ci.index("pytest -n auto")
