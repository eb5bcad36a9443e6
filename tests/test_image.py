"""`invoke image`: a built variant's OCI image (the flake's images.<system>.<variant>,
nixpkgs' dockerTools.streamLayeredImage as the stand-in mirrors it), inspected
by the real skopeo and pushed to a real registry (Debian's docker-registry,
started here on 127.0.0.1 with its own config and storage, stopped after).

skopeo and docker-registry are Debian packages that .ci/run installs: in CI a
missing one fails these tests, elsewhere it skips them, as for sshd in
test_remote_build.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest
import support

from vllm_variants.image import Destination, conf_of
from vllm_variants.matrix import Matrix
from vllm_variants.nix import Nix

pytestmark = pytest.mark.nix

MATRIX = Matrix.load(support.REPO / "nix" / "variants.toml")
SM90 = MATRIX.resolve("90")
SM80 = MATRIX.resolve("80")
SKOPEO = "/usr/bin/skopeo"
REGISTRY = "/usr/bin/docker-registry"


def _tools_unavailable() -> str | None:
    for tool, package in ((SKOPEO, "skopeo"), (REGISTRY, "docker-registry")):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing: install Debian's {package} (.ci/run does)"
    return None


@pytest.fixture(autouse=True)
def tools():
    reason = _tools_unavailable()
    if reason:
        if os.environ.get("CI"):  # .ci/run installs them: there a missing one is a failure
            pytest.fail(reason)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Registry:
    """docker-registry on 127.0.0.1:<free port>, storage and access log under `root`."""

    def __init__(self, root: Path, *, readonly: bool = False, users: dict[str, str] | None = None) -> None:
        root.mkdir(parents=True)
        self.storage = root / "storage"
        self.port = _free_port()
        self.host = f"127.0.0.1:{self.port}"
        storage = {"filesystem": {"rootdirectory": str(self.storage)}}
        if readonly:
            storage["maintenance"] = {"readonly": {"enabled": True}}
        config = root / "config.yml"  # YAML is a superset of JSON
        config.write_text(
            json.dumps(
                {
                    "version": 0.1,
                    "log": {"level": "info", "formatter": "text"},
                    "storage": storage,
                    "http": {"addr": self.host, "secret": "vllm-variants-tests"},
                    **(
                        {"auth": {"htpasswd": {"realm": "vllm-variants-tests", "path": str(root / "htpasswd")}}}
                        if users
                        else {}
                    ),
                }
            )
        )
        if users:  # docker-registry's htpasswd takes bcrypt entries only
            (root / "htpasswd").write_text("".join(f"{user}:{bcrypt(password)}\n" for user, password in users.items()))
        self.log = root / "registry.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except urllib.error.HTTPError as answer:
                if users and answer.code == 401:  # up, and asking for a login
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"docker-registry did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def uploads(self) -> list[str]:
        """Digests of the blobs clients uploaded (each upload ends with a PUT ?digest=, 201)."""
        found = []
        for uri in re.findall(r'"PUT (\S+/blobs/uploads/\S+) HTTP/[0-9.]+" 201', self.log.read_text()):
            found += parse_qs(urlparse(uri).query).get("digest", [])
        return [unquote(d) for d in found]

    def blob_bytes(self, digest: str) -> int:
        algo, hexa = digest.split(":", 1)
        return (self.storage / "docker/registry/v2/blobs" / algo / hexa[:2] / hexa / "data").stat().st_size


def bcrypt(password: str) -> str:
    """A bcrypt hash ($2y$, cost 5) for an htpasswd file, from the C library's crypt
    (libxcrypt: Debian's libcrypt1, an essential package) through ctypes: no
    apache2-utils, no PyPI package."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("crypt")
    assert name, "no libcrypt to make bcrypt htpasswd entries with (Debian: libcrypt1)"
    lib = ctypes.CDLL(name)
    lib.crypt_gensalt.restype = lib.crypt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2y$", 5, None, 0)
    hashed = lib.crypt(password.encode(), salt) if salt else None
    assert hashed and hashed.startswith(b"$2y$05$"), f"{name} makes no bcrypt hashes"
    return hashed.decode()


@pytest.fixture
def registry(tmp_path):
    running = Registry(tmp_path / "registry")
    yield running
    running.stop()


class Built:
    """A checkout with SM 90 and SM 80 built against a salted copy of the stand-in."""

    def __init__(self, root: Path) -> None:
        self.standin = support.copy_standin(root / "nixpkgs", salt="image-tests")
        self.project = support.make_project(root / "project")
        self.paths = support.build_results(self.project, self.standin, (SM90, SM80))

    def image(self, *args: str, env=None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "invoke", "image", *args, "--nixpkgs", str(self.standin)],
            cwd=self.project,
            capture_output=True,
            text=True,
            env=env or support.nix_env(),
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"invoke image {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def conf(self, variant) -> dict:
        return conf_of(Nix(env=support.nix_env()), os.readlink(self.project / f"image-{variant.name}"))

    def closure(self, *paths: str) -> set[str]:
        return set(json.loads(support.nix("path-info", "--json", "--recursive", *paths).stdout))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    return Built(tmp_path_factory.mktemp("image"))


def skopeo(*args: str) -> dict:
    return json.loads(support.run([SKOPEO, *args], env=os.environ).stdout)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def manifest_digest(proc: subprocess.CompletedProcess[str]) -> str:
    (digest,) = re.findall(r"\(manifest (sha256:[0-9a-f]{64})\)", proc.stdout)
    return digest


# -- the image, as skopeo reads it ---------------------------------------------------


def test_skopeo_reads_config_entrypoint_labels_and_layers(built, tmp_path):
    archive = tmp_path / "sm90.tar"
    proc = built.image("--sm", "90", "--to", f"oci-archive:{archive}")
    env_path = built.paths[SM90.name]
    conf = built.conf(SM90)
    tag = conf["repo_tag"].rpartition(":")[2]
    assert conf["repo_tag"] == f"{SM90.name}:{tag}" and tag.startswith("0.15.1-")

    config = skopeo("inspect", "--config", f"oci-archive:{archive}:{conf['repo_tag']}")
    cfg = config["config"]
    assert cfg["Entrypoint"] == [f"{env_path}/bin/vllm"] and cfg["Cmd"] == ["serve"]
    env = dict(item.split("=", 1) for item in cfg["Env"])
    # libcuda.so where nixpkgs looks (NixOS) and where the NVIDIA toolkit mounts it
    # (/usr/lib64 in an image without /etc/debian_version, /usr/lib/<triplet> under CDI)
    assert env["LD_LIBRARY_PATH"].split(":") == [
        "/run/opengl-driver/lib",
        "/usr/lib64",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/local/nvidia/lib64",
        "/usr/lib",
    ]
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility" and env["NVIDIA_REQUIRE_CUDA"] == "cuda>=12.9"
    assert env["SSL_CERT_FILE"].endswith("/etc/ssl/certs/ca-bundle.crt") and Path(env["SSL_CERT_FILE"]).is_file()
    assert env["PATH"] == f"{env_path}/bin"
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.version"] == "0.15.1"
    assert labels["org.opencontainers.image.source"] == "https://github.com/vllm-project/vllm"
    assert {k: labels[f"io.vllm-variants.{k}"] for k in ("sm", "capability", "min-driver", "cuda", "variant")} == {
        "sm": "90",
        "capability": "9.0",
        "min-driver": "575",
        "cuda": "12.9",
        "variant": SM90.name,
    }
    assert labels["io.vllm-variants.pin"].startswith("nixpkgs ")
    assert config["architecture"] == "amd64" and config["os"] == "linux"

    # One layer per store layer of the conf, plus the customisation layer, in order.
    layers = config["rootfs"]["diff_ids"]
    assert len(layers) == len(conf["store_layers"]) + 1
    assert len(skopeo("inspect", f"oci-archive:{archive}:{conf['repo_tag']}")["Layers"]) == len(layers)
    # What the task printed is the same image.
    assert f"{len(layers)} layers" in proc.stdout and f"layer {len(layers)}" in proc.stdout

    # The image holds the variant's closure and the CA bundle, each path once, and nothing else.
    stored = [p for layer in conf["store_layers"] for p in layer]
    assert len(stored) == len(set(stored))
    assert built.closure(env_path) <= set(stored)
    extra = {Path(p).name.split("-", 1)[1] for p in set(stored) - built.closure(env_path)}
    assert extra == {"nss-cacert-3.117", "ca-certificates"}

    # The last layer: the CA bundle where other distributions look, a writable /tmp, a home.
    import tarfile

    with tarfile.open(Path(conf["customisation_layer"]) / "layer.tar") as layer:
        members = {m.name.removeprefix("./"): m for m in layer.getmembers()}
    for bundle in (
        "etc/ssl/certs/ca-bundle.crt",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/pki/tls/certs/ca-bundle.crt",
    ):
        assert members[bundle].issym() and os.path.realpath(members[bundle].linkname) == env["SSL_CERT_FILE"]
    assert members["tmp"].isdir() and members["tmp"].mode & 0o7777 == 0o1777
    assert members["root"].isdir() and env["HOME"] == "/root"


def test_dry_run_lists_layers_and_sizes_and_copies_nothing(built, tmp_path):
    proc = built.image("--sm", "90", "--dry-run")
    conf = built.conf(SM90)
    torch = next(p for layer in conf["store_layers"] for p in layer if "-torch-" in p)
    size = json.loads(support.nix("path-info", "--json", torch).stdout)[torch]["narSize"]
    from vllm_variants.resources import format_bytes

    assert re.search(rf"layer +\d+ +{re.escape(format_bytes(size))}  python3.12-torch-2.9.1$", proc.stdout, re.M), (
        proc.stdout
    )
    assert "nothing was copied" in proc.stdout and "skopeo copy" not in proc.stderr
    # the plan: the image's own derivations are named after the variant ("vllm-..."),
    # not vllm compiles (issue #22; tests/test_plan_text.py)
    (plan,) = [line for line in proc.stdout.splitlines() if line.startswith(f"  {SM90.name} (")]
    assert "compiles" not in plan, plan


def test_the_tag_says_where_it_comes_from_for_a_nixpkgs_without_a_revision(built):
    """Issue #22: the tag is <vLLM version>-<nixpkgs short rev> (docs/distributing.md);
    a path: nixpkgs (the stand-in here) has no revision, so the flake ends the tag
    in the first 12 hex digits of the sha256 of its narHash instead. The dry run
    says which, from the image's own labels."""
    import hashlib

    proc = built.image("--sm", "90", "--dry-run")
    nar_hash = json.loads(support.nix("flake", "metadata", "--json", f"path:{built.standin}").stdout)["locked"][
        "narHash"
    ]
    tag = f"0.15.1-{hashlib.sha256(nar_hash.encode()).hexdigest()[:12]}"
    assert built.conf(SM90)["repo_tag"] == f"{SM90.name}:{tag}"
    assert (
        f"  tag {tag}: vLLM 0.15.1, nixpkgs path {nar_hash} (no revision: the tag ends in a hash of its narHash)"
        in proc.stdout.splitlines()
    ), proc.stdout


def test_the_tag_ends_in_the_short_rev_of_a_nixpkgs_with_one(tmp_path):
    """A nixpkgs with a revision (a git checkout here, github:NixOS/nixpkgs/<rev> for
    the pin) gives <vLLM version>-<short rev>, Nix's shortRev: 7 hex digits."""
    repo = support.copy_standin(tmp_path / "nixpkgs-git", salt=f"image-tag-{os.getpid()}-{time.time_ns()}")
    support.git(repo, "init", "-q")
    support.commit_all(repo, "mirror")
    rev = support.git(repo, "rev-parse", "HEAD").stdout.strip()
    project = support.make_project(tmp_path / "project")
    support.nix(
        "build",
        "--out-link",
        project / f"result-{SM90.name}",
        f"{support.flake_ref(project)}#{SM90.attr_path()}",
        "--override-input",
        "nixpkgs",
        f"git+file://{repo}",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "image", "--sm", "90", "--dry-run", "--nixpkgs", str(repo)],
        cwd=project,
        capture_output=True,
        text=True,
        env=support.nix_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert f"image {SM90.name}:0.15.1-{rev[:7]} (amd64)" in proc.stdout, proc.stdout
    assert f"  tag 0.15.1-{rev[:7]}: vLLM 0.15.1, nixpkgs {rev}" in proc.stdout.splitlines(), proc.stdout


# -- a real registry -------------------------------------------------------------------


def test_push_pull_same_digest_and_second_variant_reuses_shared_layers(built, registry, tmp_path):
    first = built.image("--sm", "90", "--to", f"docker://{registry.host}/fleet/vllm-sm90", "--insecure")
    digest = manifest_digest(first)
    tag = built.conf(SM90)["repo_tag"].rpartition(":")[2]
    remote = f"docker://{registry.host}/fleet/vllm-sm90:{tag}"
    assert skopeo("inspect", "--tls-verify=false", remote)["Digest"] == digest

    # A pull back gives the same manifest, byte for byte.
    pulled = tmp_path / "pulled"
    support.run([SKOPEO, "copy", "--src-tls-verify=false", remote, f"dir:{pulled}"], env=os.environ)
    import hashlib

    assert "sha256:" + hashlib.sha256((pulled / "manifest.json").read_bytes()).hexdigest() == digest

    uploaded_first = set(registry.uploads())
    built.image("--sm", "80", "--to", f"docker://{registry.host}/fleet/vllm-sm80", "--insecure")
    uploaded_second = set(registry.uploads()) - uploaded_first

    # Layers of store paths both variants hold are the same blobs (torch is
    # compiled per SM; python, the CUDA redistributables, cacert are not).
    conf90, conf80 = built.conf(SM90), built.conf(SM80)
    paths90 = {tuple(layer) for layer in conf90["store_layers"]}
    same = [layer for layer in conf80["store_layers"] if tuple(layer) in paths90]
    names = {Path(p).name.split("-", 1)[1] for layer in same for p in layer}
    assert {"python3-3.12.12", "nss-cacert-3.117", "cuda12.9-cuda_nvcc-12.9.86"} <= names
    assert not any("torch" in n or "vllm" in n for n in names), names

    layers90 = set(skopeo("inspect", "--tls-verify=false", remote)["Layers"])
    layers80 = skopeo(
        "inspect",
        "--tls-verify=false",
        f"docker://{registry.host}/fleet/vllm-sm80:{conf80['repo_tag'].rpartition(':')[2]}",
    )["Layers"]
    shared = layers90 & set(layers80)
    # the shared store layers, and the customisation layer (the same links to the CA bundle)
    assert len(shared) == len(same) + 1
    raw80 = json.loads(
        support.run(
            [
                SKOPEO,
                "inspect",
                "--raw",
                "--tls-verify=false",
                f"docker://{registry.host}/fleet/vllm-sm80:{conf80['repo_tag'].rpartition(':')[2]}",
            ],
            env=os.environ,
        ).stdout
    )
    # Uploaded for SM 80: its own layers and its config, never a shared layer.
    assert uploaded_second == (set(layers80) - shared) | {raw80["config"]["digest"]}
    bytes_second = sum(registry.blob_bytes(d) for d in uploaded_second)
    bytes_whole = sum(registry.blob_bytes(d) for d in layers80) + registry.blob_bytes(raw80["config"]["digest"])
    assert bytes_second == bytes_whole - sum(registry.blob_bytes(d) for d in shared) < bytes_whole


USER, PASSWORD = "fleet", "s3cret-Pa55word"


def _auth_entry(user: str, password: str) -> str:
    import base64

    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_registry_that_needs_a_login_gets_skopeos_and_no_secret_is_shown(built, tmp_path):
    """Issue #22: a registry with htpasswd auth (docker-registry on 127.0.0.1). The
    login is skopeo's own (`skopeo login`, REGISTRY_AUTH_FILE): no password passes
    through invoke's command line, and none is ever printed."""
    locked = Registry(tmp_path / "locked", users={USER: PASSWORD})
    auth = tmp_path / "auth.json"  # skopeo's auth file for this test alone
    env = support.nix_env(REGISTRY_AUTH_FILE=str(auth))
    to = f"docker://{locked.host}/fleet/vllm-sm90"
    secrets = (PASSWORD, f"wrong-{PASSWORD}", _auth_entry(USER, PASSWORD), _auth_entry(USER, f"wrong-{PASSWORD}"))
    try:
        # not logged in: one line, saying how to log in
        proc = built.image("--sm", "90", "--to", to, "--insecure", env=env, check=False)
        line = one_line_error(proc)
        assert re.fullmatch(
            rf"error: {re.escape(locked.host)} refused {SM90.name}:\S+: unauthorized: authentication required; "
            rf"skopeo has no login for {re.escape(locked.host)}: log in with "
            rf"`skopeo login --tls-verify=false {re.escape(locked.host)}` \(or point REGISTRY_AUTH_FILE at an "
            r"auth file that has one\)",
            line,
        ), line

        # a wrong password (a stale login in the auth file): one line, the user named, no secret
        auth.write_text(json.dumps({"auths": {locked.host: {"auth": _auth_entry(USER, f"wrong-{PASSWORD}")}}}))
        proc = built.image("--sm", "90", "--to", to, "--insecure", env=env, check=False)
        line = one_line_error(proc)
        assert line.endswith(
            f"unauthorized: authentication required; the login skopeo has for {locked.host} ({USER}) was "
            f"refused: log in again with `skopeo login --tls-verify=false {locked.host}`"
        ), line
        assert not any(secret in proc.stdout + proc.stderr for secret in secrets)

        # logged in with skopeo (password on stdin): the push goes through
        support.run(
            [SKOPEO, "login", "--tls-verify=false", "--username", USER, "--password-stdin", locked.host],
            env={**os.environ, "REGISTRY_AUTH_FILE": str(auth)},
            input=PASSWORD,
        )
        proc = built.image("--sm", "90", "--to", to, "--insecure", env=env)
        digest = manifest_digest(proc)
        assert not any(secret in proc.stdout + proc.stderr for secret in secrets)
        tag = built.conf(SM90)["repo_tag"].rpartition(":")[2]
        inspected = json.loads(
            support.run(
                [SKOPEO, "inspect", "--tls-verify=false", f"{to}:{tag}"],
                env={**os.environ, "REGISTRY_AUTH_FILE": str(auth)},
            ).stdout
        )
        assert inspected["Digest"] == digest
    finally:
        locked.stop()


def test_credentials_in_the_reference_are_refused_without_being_echoed(built):
    proc = built.image("--sm", "90", "--to", f"docker://{USER}:{PASSWORD}@127.0.0.1:5000/fleet/vllm", check=False)
    line = one_line_error(proc)
    assert line == (
        "error: --to docker://***@127.0.0.1:5000/fleet/vllm: credentials do not go in the reference "
        "(they would show in logs and `ps`); log in with `skopeo login 127.0.0.1:5000` instead"
    )
    assert PASSWORD not in proc.stdout + proc.stderr and proc.stdout == ""


# -- refusals: one line, exit 1, nothing half-done --------------------------------------


def _path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH holding nix, git and this python, without the named tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("nix", "git"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    assert not any((bin_dir / m).exists() for m in missing)
    return f"{bin_dir}:{Path(sys.executable).parent}"


def test_bad_destinations_are_refused_before_anything_is_built(built):
    for to, says in (
        ("ftp://host/x", "unknown destination"),
        ("docker://Registry.Example/UPPER", "not a registry reference"),
        ("docker://reg.example/x@sha256:abcd", "not a registry reference"),
        ("oci-archive:/no/such/dir/x.tar", "no such directory /no/such/dir"),
    ):
        proc = built.image("--sm", "90", "--to", to, check=False)
        line = one_line_error(proc)
        assert line.startswith(f"error: --to {to}: {says}"), line
        assert proc.stdout == ""  # no plan: nothing evaluated or built
    line = one_line_error(built.image("--sm", "90", "--to", "oci-archive:x.tar", "--load", check=False))
    assert "exclusive" in line
    line = one_line_error(built.image("--sm", "90", check=False))
    assert line.startswith("error: say where the image goes: --to docker://")
    line = one_line_error(built.image("--dry-run", check=False))
    assert line == "error: give the variant: --sm SM, e.g. --sm 90 (H100) or --sm 90 --arm64 (GH200)"
    line = one_line_error(built.image("--sm", "90,80", "--dry-run", check=False))
    assert line.startswith("error: one variant per image: --sm selected 2 (")


def test_missing_skopeo_and_docker_are_refused_saying_how_to_get_them(built, tmp_path):
    env = support.nix_env(PATH=_path_without(tmp_path, "skopeo", "docker"))
    proc = built.image("--sm", "90", "--to", f"oci-archive:{tmp_path / 'x.tar'}", env=env, check=False)
    assert one_line_error(proc) == (
        "error: 'skopeo' was not found on PATH: install it: apt-get install skopeo "
        "(Debian, Ubuntu), dnf install skopeo (Fedora, RHEL)"
    )
    assert proc.stdout == "" and not (tmp_path / "x.tar").exists()
    proc = built.image("--sm", "90", "--load", env=env, check=False)
    assert one_line_error(proc) == (
        "error: 'docker' was not found on PATH: --load needs docker or podman "
        "(apt-get install docker.io, or podman); or give --to docker://REGISTRY/NAME "
        "or --to oci-archive:PATH instead"
    )
    # Listing the layers needs neither.
    assert built.image("--sm", "90", "--dry-run", env=env).returncode == 0


def test_an_unbuilt_variant_is_refused_and_nothing_is_built(built, tmp_path, standin):
    other = standin(salt=f"image-unbuilt-{os.getpid()}-{time.time_ns()}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "image",
            "--sm",
            "90",
            "--to",
            f"oci-archive:{tmp_path / 'x.tar'}",
            "--nixpkgs",
            str(other),
        ],
        cwd=built.project,
        capture_output=True,
        text=True,
        env=support.nix_env(),
    )
    line = one_line_error(proc)
    assert re.fullmatch(
        rf"error: {SM90.name} is not built \(/nix/store/\S+-{SM90.name}-0\.15\.1 is not in the "
        r"Nix store\); build it with `invoke build --sm 90` first",
        line,
    ), line
    out = re.search(r"\((/nix/store/\S+) is not", line)[1]
    assert support.nix("path-info", out, check=False).returncode != 0  # still not built
    assert not (tmp_path / "x.tar").exists()


def test_a_registry_that_refuses_the_push_is_one_line_and_leaves_no_archive(built, tmp_path):
    readonly = Registry(tmp_path / "readonly", readonly=True)
    try:
        work = tmp_path / "work"
        work.mkdir()
        proc = built.image(
            "--sm",
            "90",
            "--to",
            f"docker://{readonly.host}/fleet/vllm",
            "--insecure",
            "--tmpdir",
            str(work),
            check=False,
        )
    finally:
        readonly.stop()
    line = one_line_error(proc)
    assert line.startswith(f"error: {readonly.host}/fleet/vllm refused {SM90.name}:0.15.1-"), line
    assert list(work.iterdir()) == []  # the temporary archive is gone
    proc = built.image("--sm", "90", "--to", "docker://127.0.0.1:1/fleet/vllm", "--insecure", check=False)
    line = one_line_error(proc)
    # skopeo's own reason, without its log wrapper (time="..." level=fatal msg="...")
    assert line.endswith('Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused'), line
    assert "level=fatal" not in line and 'msg="' not in line


# -- the stand-in's dockerTools follows the real interface ------------------------------


def _stand_in_image(args: str, attr: str = "", *, check: bool = True):
    expr = (
        f'let pkgs = import {support.STANDIN} {{ system = "x86_64-linux"; }}; '
        f"in (pkgs.dockerTools.streamLayeredImage ({args})){attr}"
    )
    return support.nix("eval", "--impure", "--json", "--expr", expr, check=check)


def test_stand_in_stream_layered_image_rejects_arguments_nixpkgs_does_not_take():
    # Labels go in config.Labels; an argument streamLayeredImage lacks is an
    # error in nixpkgs (a function with a fixed argument set), so here too.
    proc = _stand_in_image('{ name = "x"; labels = { }; }', ".drvPath", check=False)
    assert proc.returncode != 0 and "unexpected argument 'labels'" in proc.stderr
    proc = _stand_in_image('{ name = "x"; maxLayers = 1; }', ".drvPath", check=False)
    assert "the maxLayers argument of dockerTools.buildLayeredImage function must be greather than 1" in proc.stderr
    assert json.loads(_stand_in_image('{ name = "Mixed/Case"; tag = "t"; }', ".imageName").stdout) == "mixed/case"
    assert json.loads(_stand_in_image('{ name = "x"; tag = "t"; }', ".imageTag").stdout) == "t"
    assert json.loads(_stand_in_image('{ name = "x"; passthru.a = 1; }', ".isExe").stdout) is True


def test_stand_in_layers_by_popularity_within_max_layers(built, tmp_path):
    """maxLayers 4: one layer kept for the customisation layer, the two most
    depended-on paths alone, every other path of the closure in one layer.
    Only store paths the config carries as string context are in the image
    (builtins.storePath here; "${env}" in nix/image.nix)."""
    env_path = built.paths[SM90.name]
    expr = (
        f'let pkgs = import {built.standin} {{ system = "x86_64-linux"; }}; '
        f'in pkgs.dockerTools.streamLayeredImage {{ name = "small"; maxLayers = 4; '
        f'config.Entrypoint = [ "${{builtins.storePath {env_path}}}/bin/vllm" ]; }}'
    )
    script = support.nix("build", "--impure", "--no-link", "--print-out-paths", "--expr", expr).stdout.strip()
    conf = conf_of(Nix(env=support.nix_env()), script)
    layers = conf["store_layers"]
    assert [len(layer) for layer in layers[:2]] == [1, 1] and len(layers) == 3
    assert sorted(p for layer in layers for p in layer) == sorted(built.closure(env_path))
    assert env_path in layers[2]  # the root is the least popular
    # tag = null: the hash part of the conf's own store path
    info = json.loads(support.nix("path-info", "--json", script).stdout)[script]
    (conf_path,) = [r for r in info["references"] if r.endswith("-conf.json")]
    assert conf["repo_tag"] == f"small:{Path(conf_path).name.split('-')[0]}"


# -- units -------------------------------------------------------------------------------


def test_destination_references():
    assert Destination.parse("docker://reg.example:5000/a/b").reference("n:1-x") == "docker://reg.example:5000/a/b:1-x"
    assert Destination.parse("docker://localhost/a:t").reference("n:1-x") == "docker://localhost/a:t"
    assert Destination.parse("docker://vllm").reference("n:1") == "docker://vllm:1"
    assert Destination.parse("oci-archive:/tmp/a.tar:v1").reference("n:1") == "oci-archive:/tmp/a.tar:v1"
    assert Destination.parse("oci-archive:/tmp/a.tar").reference("n:1") == "oci-archive:/tmp/a.tar:n:1"
    assert Destination.parse(None) is None and Destination.parse(None, load=True).kind == "load"


def test_ci_installs_skopeo_and_docker_registry():
    """CI must push for real, not skip: .ci/run installs both before the tests."""
    ci = (support.REPO / ".ci" / "run").read_text()
    assert "skopeo" in ci and "docker-registry" in ci
    assert ci.index("docker-registry") < ci.index("pytest -n auto")


# -- a container runtime, where one can run ----------------------------------------------


def test_podman_runs_the_image_and_its_python_imports_vllm(built, tmp_path, request):
    """`python -c "import vllm"` in a container of the image, under podman as root.

    Skipped where podman cannot run containers (no podman or runc, or a sandbox
    that refuses them). What it takes in a container like the test bed's:
    runc with cgroupfs (crun refuses hybrid cgroups), no default ulimits (no
    CAP_SYS_RESOURCE to raise them), storage of its own (vfs, under tmp_path).
    The stand-in's interpreter is the host's python3 behind a bash script, not
    a store path, so the host's /usr, /bin and /lib are mounted read-only;
    against real nixpkgs the closure holds both and nothing is mounted.
    """
    podman, runc = shutil.which("podman"), shutil.which("runc")
    if not podman or not runc or os.geteuid() != 0:
        pytest.skip("needs podman and runc, as root (apt-get install podman runc)")
    archive = tmp_path / "image.tar"
    built.image("--sm", "90", "--to", f"oci-archive:{archive}")
    conf = tmp_path / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    import tempfile

    runroot = tempfile.mkdtemp(prefix="vv-podman-", dir="/tmp")  # podman wants it under 50 characters
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    base = [
        podman,
        "--root",
        tmp_path / "storage",
        "--runroot",
        runroot,
        "--storage-driver",
        "vfs",
        "--runtime",
        runc,
        "--cgroup-manager",
        "cgroupfs",
    ]
    loaded = support.run([*base, "load", "-i", archive], env=env).stdout
    (image,) = re.findall(r"^Loaded image(?:\(s\))?: (\S+)$", loaded, re.M)
    assert image == f"localhost/{built.conf(SM90)['repo_tag']}"  # the archive names it NAME:TAG
    python = f"{built.paths[SM90.name]}/bin/python"
    mounts = [arg for d in ("/usr", "/bin", "/lib", "/lib64") if Path(d).is_dir() for arg in ("-v", f"{d}:{d}:ro")]
    proc = support.run(
        [
            *base,
            "run",
            "--rm",
            "--network",
            "none",
            *mounts,
            "--entrypoint",
            python,
            image,
            "-c",
            "import os, vllm; print(vllm.__version__, os.environ['LD_LIBRARY_PATH'])",
        ],
        env=env,
        check=False,
    )
    if proc.returncode != 0 and re.search(r"OCI runtime|crun:|runc:|cgroup|not permitted", proc.stderr):
        pytest.skip(f"podman cannot run containers here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "0.15.1",
        "/run/opengl-driver/lib:/usr/lib64:/usr/lib/x86_64-linux-gnu:/usr/local/nvidia/lib64:/usr/lib",
    ]
    # The default entrypoint is vllm's CLI.
    proc = support.run([*base, "run", "--rm", "--network", "none", *mounts, image, "--help"], env=env, check=False)
    assert "usage: vllm [--version] {serve," in proc.stdout + proc.stderr


def test_load_streams_the_image_into_podman_without_docker(built, tmp_path, request):
    """--load with no docker on PATH: the script piped into `podman load`
    (storage of its own under tmp_path). Skipped where podman cannot run."""
    podman = shutil.which("podman")
    if not podman or os.geteuid() != 0:
        pytest.skip("needs podman, as root")
    import tempfile

    runroot = tempfile.mkdtemp(prefix="vv-load-", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(runroot, ignore_errors=True))
    storage = tmp_path / "storage.conf"
    storage.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path / "graph"}"\nrunroot = "{runroot}"\n')
    bin_dir = Path(_path_without(tmp_path, "docker").split(":")[0])
    (bin_dir / "podman").symlink_to(podman)
    env = support.nix_env(PATH=f"{bin_dir}:{Path(sys.executable).parent}", CONTAINERS_STORAGE_CONF=str(storage))
    proc = built.image("--sm", "90", "--load", env=env)
    repo_tag = built.conf(SM90)["repo_tag"]
    assert f"loaded {repo_tag} with podman" in proc.stdout
    images = support.run([podman, "images", "--format", "{{.Repository}}:{{.Tag}}"], env=env).stdout.split()
    assert f"localhost/{repo_tag}" in images


# -- the stand-in catches an image expression that real nixpkgs would reject ---------------


def test_labels_given_as_an_argument_fail_evaluation(tmp_path):
    from test_standin import mutated

    flake = mutated(
        tmp_path,
        {
            "nix/image.nix": [
                ("    Labels = labels;\n", ""),
                ("  name = variant.name;\n", "  name = variant.name;\n  labels = labels;\n"),
            ]
        },
    )
    proc = support.nix("eval", f"{flake}#images.x86_64-linux.{SM90.name}.drvPath", *support.override(), check=False)
    assert proc.returncode != 0 and "unexpected argument 'labels'" in proc.stderr


def test_an_entrypoint_without_string_context_leaves_vllm_out_of_the_image(tmp_path):
    """streamLayeredImage finds the image's store paths through the string
    context of its config: a path written as a plain string is not in the image."""
    from test_standin import mutated

    flake = mutated(
        tmp_path,
        {
            "nix/image.nix": [
                (
                    'Entrypoint = [ "${env}/bin/vllm" ];',
                    'Entrypoint = [ "${builtins.unsafeDiscardStringContext env.outPath}/bin/vllm" ];',
                ),
                ('"PATH=${env}/bin"', '"PATH=${builtins.unsafeDiscardStringContext env.outPath}/bin"'),
            ]
        },
    )
    script = support.nix(
        "build", "--no-link", "--print-out-paths", f"{flake}#images.x86_64-linux.{SM90.name}", *support.override()
    ).stdout.strip()
    env_path = support.nix("eval", "--raw", f"{flake}#{SM90.attr_path()}.outPath", *support.override()).stdout
    stored = [p for layer in conf_of(Nix(env=support.nix_env()), script)["store_layers"] for p in layer]
    assert stored and env_path not in stored and not any("-vllm-" in p for p in stored)


def test_arm64_images_are_arm64_with_the_aarch64_driver_path(tmp_path):
    """Evaluated only (building needs an aarch64-linux builder): the config that
    the arm64 image's base JSON holds."""
    arm = MATRIX.resolve("90", arm64=True)
    root = support.make_project(tmp_path / "p", git_init=False)
    drv = support.nix(
        "eval", "--raw", f"{support.flake_ref(root)}#images.aarch64-linux.{arm.name}.drvPath", *support.override()
    ).stdout
    shown = json.loads(support.nix("derivation", "show", "--recursive", drv).stdout)
    (base,) = [d for d in shown.values() if d["env"].get("name", "").endswith("-base.json")]
    data = json.loads(base["env"]["text"])
    assert data["architecture"] == "arm64" and data["config"]["Labels"]["io.vllm-variants.system"] == "aarch64-linux"
    env = dict(item.split("=", 1) for item in data["config"]["Env"])
    assert env["LD_LIBRARY_PATH"] == (
        "/run/opengl-driver/lib:/usr/lib64:/usr/lib/aarch64-linux-gnu:/usr/local/nvidia/lib64:/usr/lib"
    )
