"""`invoke publish`: built variants copied to a real file:// binary cache, signed
with a real key, and verified by a second store that requires signatures."""

from __future__ import annotations

import io
import json
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import support

from vllm_variants.errors import CommandError, PublishError
from vllm_variants.matrix import Matrix
from vllm_variants.nix import Nix
from vllm_variants.project import Project
from vllm_variants.publish import SigningKey, check_cache, held_paths, is_binary_cache, make_plan, with_param
from vllm_variants.resources import format_bytes

pytestmark = pytest.mark.nix

MATRIX = Matrix.load(support.REPO / "nix" / "variants.toml")
SM90 = MATRIX.resolve("90")
SM80 = MATRIX.resolve("80")


class Built:
    """A checkout with result-<variant> links for SM 90 and SM 80, built with
    `nix build` against a copy of the stand-in (salted: these tests' own paths)."""

    def __init__(self, root: Path) -> None:
        self.standin = support.copy_standin(root / "nixpkgs", salt="publish-tests")
        self.project = support.make_project(root / "project")
        self.paths = support.build_results(self.project, self.standin, (SM90, SM80))

    def closure(self, variant) -> dict[str, int]:
        info = json.loads(support.nix("path-info", "--json", "--recursive", self.paths[variant.name]).stdout)
        return {path: data["narSize"] for path, data in info.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    return Built(tmp_path_factory.mktemp("publish"))


class Key:
    """A real key pair from `nix key generate-secret`, its name unique to this run
    (Nix picks the public key to check a signature by its name)."""

    def __init__(self, folder: Path, role: str) -> None:
        self.name = f"{role}-{secrets.token_hex(4)}-1"
        self.secret = folder / f"{self.name}.sec"
        self.secret.write_text(support.nix("key", "generate-secret", "--key-name", self.name).stdout)
        self.public = support.run(
            [support.nix_executable(), "key", "convert-secret-to-public"], input=self.secret.read_text()
        ).stdout.strip()


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Key:
    return Key(tmp_path_factory.mktemp("keys"), "test-cache")


@pytest.fixture(scope="module")
def other_key(tmp_path_factory) -> Key:
    return Key(tmp_path_factory.mktemp("keys"), "someone-else")


def invoke(root: Path, *args: str, env=None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=root, capture_output=True, text=True, env=env or support.nix_env()
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"invoke {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def fetch(cache: Path, path: str, public_key: str, dest: Path) -> subprocess.CompletedProcess[str]:
    """A second store reads `path` from the cache, accepting only `public_key`'s signatures."""
    return support.nix(
        "copy",
        "--from",
        f"file://{cache}",
        "--to",
        f"local?root={dest}",
        path,
        "--option",
        "require-sigs",
        "true",
        "--option",
        "trusted-public-keys",
        public_key,
        check=False,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_signed_copy_verifies_in_a_second_store(built, key, other_key, tmp_path):
    cache = tmp_path / "cache"
    proc = invoke(built.project, "publish", "--to", f"file://{cache}", "--sm", "90", "--sign-key", str(key.secret))

    closure = built.closure(SM90)
    size = format_bytes(sum(closure.values()))
    assert f"closure {len(closure)} paths, {size}; cache holds 0; to copy {len(closure)} paths, {size}" in proc.stdout
    assert f"copied {len(closure)} paths ({size}) to file://{cache}" in proc.stdout
    assert f"signed with key '{key.name}' by the store URI's secret-key" in proc.stdout
    narinfos = list(cache.glob("*.narinfo"))
    assert len(narinfos) == len(closure)
    assert all(f"\nSig: {key.name}:" in n.read_text() for n in narinfos)

    # the signature is what lets a store that requires signatures take the paths
    path = built.paths[SM90.name]
    assert fetch(cache, path, key.public, tmp_path / "verifier").returncode == 0
    held = support.nix("path-info", "--store", f"local?root={tmp_path / 'verifier'}", path).stdout.strip()
    assert held == path
    refused = fetch(cache, path, other_key.public, tmp_path / "stranger")
    assert refused.returncode != 0 and "lacks a signature by a trusted key" in refused.stderr


def test_check_before_and_after_publishing(built, key, tmp_path):
    cache = f"file://{tmp_path / 'cache'}"
    check = ["publish", "--check", "--to", cache, "--sm", "90,80", "--nixpkgs", str(built.standin)]

    before = invoke(built.project, *check, check=False)
    assert "holds 0 of 2 variant(s)" in before.stdout
    for variant in (SM80, SM90):  # the evaluated out paths are the built ones
        assert f"missing  {variant.name}  {built.paths[variant.name]}" in before.stdout
    assert "invoke build --sm 80" in one_line_error(before)
    assert not (tmp_path / "cache").exists(), "a check must not create the cache"

    invoke(built.project, "publish", "--to", cache, "--sm", "90")
    middle = invoke(built.project, *check, check=False)
    assert f"held     {SM90.name}  {built.paths[SM90.name]}" in middle.stdout
    assert key.name not in middle.stdout
    assert f"missing  {SM80.name}" in middle.stdout
    line = one_line_error(middle)
    assert SM80.name in line and SM90.name not in line

    invoke(built.project, "publish", "--to", cache, "--sm", "80", "--sign-key", str(key.secret))
    after = invoke(built.project, *check)
    assert "holds 2 of 2 variant(s)" in after.stdout
    assert f"held     {SM80.name}  {built.paths[SM80.name]}  signed by " in after.stdout
    assert key.name in after.stdout.split(SM80.name, 1)[1]


def test_check_evaluates_every_variant_in_one_nix_process(built, tmp_path):
    cache = f"file://{tmp_path / 'cache'}"
    invoke(built.project, "publish", "--to", cache, "--sm", "90")
    arm = MATRIX.resolve("90", arm64=True)
    commands: list[list[str]] = []

    class Recording(Nix):
        def argv(self, *args):
            argv = super().argv(*args)
            commands.append(argv[1:])
            return argv

    nix = Recording(env=support.nix_env())
    out = io.StringIO()
    with pytest.raises(PublishError, match=f"lacks {SM80.name}, {arm.name}: "):
        check_cache(
            Project(built.project),
            [SM90, SM80, arm],
            to=cache,
            overrides={"nixpkgs": support.standin_ref(built.standin)},
            nix=nix,
            out=out,
        )
    for variant in (SM90, SM80):  # the evaluated out paths are the built ones, each by its name
        assert f"  {variant.name}  {built.paths[variant.name]}" in out.getvalue()
    evaluating = [c for c in commands if c[0] in ("eval", "build", "derivation")]
    assert len(evaluating) == 1 and evaluating[0][:4] == ["build", "--dry-run", "--json", "--no-write-lock-file"]


def test_check_evaluates_only_the_variants_asked_for(built, tmp_path, standin):
    """A nixpkgs whose vllm cannot target Blackwell: SM 100 does not evaluate,
    which must not fail a check of SM 90."""
    no_blackwell = standin(vllmSupportedCapabilities=["7.0", "7.5", "8.0", "8.6", "8.9", "9.0"])
    out = io.StringIO()
    with pytest.raises(PublishError, match=f"lacks {SM90.name}: "):
        check_cache(
            Project(built.project),
            [SM90],
            to=f"file://{tmp_path / 'cache'}",
            overrides={"nixpkgs": support.standin_ref(no_blackwell)},
            nix=Nix(env=support.nix_env()),
            out=out,
        )
    assert f"missing  {SM90.name}  /nix/store/" in out.getvalue()


def test_check_never_writes_flake_lock(tmp_path):
    """Without --nixpkgs too: a checkout whose flake.lock is missing stays without one."""
    root = support.make_project(tmp_path / "p")
    flake = root / "flake.nix"
    flake.write_text(
        re.sub(
            r'inputs\.nixpkgs\.url = "[^"]*";', f'inputs.nixpkgs.url = "{support.standin_ref()}";', flake.read_text()
        )
    )
    (root / "flake.lock").unlink()
    support.commit_all(root, "pin the stand-in, unlocked")
    with pytest.raises(PublishError, match="lacks"):
        check_cache(
            Project(root), [SM90], to=f"file://{tmp_path / 'cache'}", nix=Nix(env=support.nix_env()), out=io.StringIO()
        )
    assert not (root / "flake.lock").exists()


def test_paths_already_in_the_cache_get_signed_too(built, key, tmp_path):
    """`nix copy` skips paths a cache holds; publish signs those in the cache itself."""
    cache = tmp_path / "cache"
    invoke(built.project, "publish", "--to", f"file://{cache}", "--sm", "90")
    path = built.paths[SM90.name]
    assert "lacks a signature by a trusted key" in fetch(cache, path, key.public, tmp_path / "v1").stderr

    again = invoke(built.project, "publish", "--to", f"file://{cache}", "--sm", "90", "--sign-key", str(key.secret))
    closure = built.closure(SM90)
    assert f"cache holds {len(closure)}; to copy 0 paths, 0 B" in again.stdout
    assert f"sign {len(closure)} path(s) the cache already held" in again.stdout
    assert fetch(cache, path, key.public, tmp_path / "v2").returncode == 0


def test_held_paths_asks_path_by_path_when_the_batch_fails(built, tmp_path):
    """Nix < 2.19 may fail the whole `path-info --store` call over one path the cache
    lacks; a path that is not in the store at all makes 2.26 fail the same way."""
    cache = f"file://{tmp_path / 'cache'}"
    invoke(built.project, "publish", "--to", cache, "--sm", "90")
    held, lacking = built.paths[SM90.name], built.paths[SM80.name]
    nix = Nix(env=support.nix_env())
    assert held_paths(nix, [held, lacking, "/nix/store/not-a-store-path"], cache) == {held: []}
    with pytest.raises(CommandError, match="don't know how to open Nix store"):
        held_paths(nix, [held, "/nix/store/not-a-store-path"], "bogus://somewhere")


def test_dry_run_prints_the_plan_and_changes_nothing(built, key, tmp_path):
    cache = tmp_path / "cache"
    proc = invoke(
        built.project,
        "publish",
        "--to",
        f"file://{cache}",
        "--sm",
        "90",
        "--sm",
        "80",
        "--sign-key",
        str(key.secret),
        "--dry-run",
    )
    for variant in (SM90, SM80):
        assert f"  {variant.name}  {built.paths[variant.name]}" in proc.stdout
    union = {**built.closure(SM90), **built.closure(SM80)}
    assert f"total: copy {len(union)} paths, {format_bytes(sum(union.values()))}" in proc.stdout
    assert proc.stdout.rstrip().endswith("dry run: nothing copied or signed")
    assert "$ nix" not in proc.stderr and not cache.exists()


def test_unbuilt_variants_are_refused_by_name(built, tmp_path):
    root = support.make_project(tmp_path / "fresh", git_init=False)
    (root / f"result-{SM80.name}").symlink_to("/nix/store/00000000000000000000000000000000-collected")
    (root / f"result-{SM90.name}").symlink_to(built.paths[SM90.name])
    cache = tmp_path / "cache"
    proc = invoke(root, "publish", "--to", f"file://{cache}", "--sm", "90,80,89", check=False)
    line = one_line_error(proc)
    assert line == (
        f"error: not built: {SM80.name} (result-{SM80.name} points to "
        "/nix/store/00000000000000000000000000000000-collected, which is gone), "
        f"vllm-python312-cuda12_9-sm89 (no result-vllm-python312-cuda12_9-sm89); "
        "build with `invoke build --sm 80` and `invoke build --sm 89` first"
    )
    assert proc.stdout == "" and not cache.exists()


def test_other_stores_get_paths_signed_locally_first(built, key, tmp_path):
    """ssh-ng:// or a local store takes no secret-key: publish signs in the local
    store (`nix store sign`), and `nix copy` carries the signatures along.

    The "local" store here is a chroot store holding a copy of the closure, so
    the signatures land there and not in the /nix/store other tests share."""
    source = f"local?root={tmp_path / 'source'}"
    path = built.paths[SM80.name]
    support.nix("copy", "--no-check-sigs", "--to", source, path)
    dest = f"local?root={tmp_path / 'dest'}"
    env = support.nix_env(f"store = {source}\nrequire-sigs = true\ntrusted-public-keys = {key.public}")
    proc = invoke(built.project, "publish", "--to", dest, "--sm", "80", "--sign-key", str(key.secret), env=env)
    assert "in the local store first (nix store sign)" in proc.stdout
    for store in (source, dest):
        info = json.loads(support.nix("path-info", "--json", "--store", store, path).stdout)
        assert any(sig.startswith(f"{key.name}:") for sig in info[path]["signatures"]), store
    shared = json.loads(support.nix("path-info", "--json", path).stdout)
    assert not any(sig.startswith(f"{key.name}:") for sig in shared[path]["signatures"] or [])


def test_bad_keys_are_one_line(built, key, tmp_path):
    public_file = tmp_path / "key.pub"
    public_file.write_text(key.public + "\n")
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    cases = {
        str(public_file): f"holds a public key ({key.name}); --sign-key needs the secret key",
        str(garbage): "is not a Nix secret key (NAME:BASE64 from `nix key generate-secret`)",
        str(tmp_path / "absent"): "cannot read the signing key",
    }
    for key_file, message in cases.items():
        proc = invoke(
            built.project,
            "publish",
            "--to",
            f"file://{tmp_path / 'c'}",
            "--sm",
            "90",
            "--sign-key",
            key_file,
            check=False,
        )
        assert message in one_line_error(proc)
    assert not (tmp_path / "c").exists()
    with pytest.raises(PublishError, match="already names a secret-key"):
        make_plan(
            Project(built.project),
            [SM90],
            f"file://{tmp_path}/c?secret-key={key.secret}",
            SigningKey.read(key.secret),
            nix=None,
        )  # refused before any Nix call


def test_store_uri_helpers():
    assert is_binary_cache("s3://bucket?region=eu-west-1") and is_binary_cache("file:///srv/c")
    assert not is_binary_cache("ssh-ng://builder") and not is_binary_cache("local?root=/x")
    assert with_param("file:///c", "secret-key", "/k e&y") == "file:///c?secret-key=/k%20e%26y"
    assert with_param("s3://b?region=x", "secret-key", "/k") == "s3://b?region=x&secret-key=/k"
    assert [format_bytes(n) for n in (0, 1023, 1536, 5 * 1024**3)] == ["0 B", "1023 B", "1.5 KiB", "5.0 GiB"]


@pytest.mark.parametrize(
    ("to", "message"),
    [
        # the plan cannot ask the store: one line carrying Nix's reason
        ("bogus://somewhere", "error: nix path-info failed (exit code 1): don't know how to open Nix store"),
        # the copy fails: Nix's own progress and error went to stderr just before
        (
            "file:///dev/null/cache",
            "error: command failed with exit code 1: nix copy --to file:///dev/null/cache ...: see nix's error above",
        ),
    ],
)
def test_store_failures_end_in_one_line(built, to, message):
    proc = invoke(built.project, "publish", "--to", to, "--sm", "90", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(message), proc.stderr
    if to.startswith("file:"):
        assert "Not a directory" in proc.stderr
