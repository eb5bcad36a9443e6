"""`invoke publish`: copy built variants' closures to a binary cache with `nix copy`.

A per-SM variant misses every public cache (torch is recompiled per SM), so a
team builds once and shares the result through its own cache: any store URI
Nix accepts (file:///srv/cache, s3://bucket?region=..., ssh-ng://host, ...).

Plan first, then act (invocations' release tasks are the model): the plan
reads the `result-<variant>` links, the closures and what the cache already
holds, and changes nothing; `--dry-run` stops there.

Signing, as tried on a single-user root install (Nix 2.26):
- Binary caches (file://, s3://, http(s)://): the key goes on the store URI as
  `secret-key=FILE`, and Nix signs each narinfo as it writes it. Nothing is
  written to the local store, so this also works for a plain user of a root
  install (reading it as `local?read-only=true`). Paths the cache already
  held are signed in place afterwards with `nix store sign --store <cache>`
  when they lack this key's signature (`nix copy` skips held paths).
- Other stores (ssh-ng://, ssh://, local?root=...): `nix store sign
  --recursive` in the local store first, and `nix copy` carries the
  signatures. That writes the local store's database: root, or a trusted user
  of the daemon (a plain user of a root install gets "attempt to write a
  readonly database").

`--check` evaluates the variants' out paths (one Nix process, no build) and
asks the cache for them: `nix copy` uploads references before the paths that
need them, so a cache written by it that holds the out path holds the closure.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

from . import lifecycle, userfiles
from .errors import CommandError, PublishError
from .matrix import Variant
from .nix import Nix, flake_ref, input_ref, is_valid_info
from .project import Project
from .resources import format_bytes
from .selection import Selection

# Stores that Nix writes as a binary cache (narinfo + nar files); they take
# `secret-key` as a store setting and sign as they write.
BINARY_CACHE_SCHEMES = ("file", "http", "https", "s3")
SECRET_KEY_BYTES = 64  # ed25519 secret key; a public key is 32
KEY_LIMIT = 64 * 1024  # a key file is one line; a bound far above it (issue #21)


# -- store URIs and keys ------------------------------------------------------


def scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def is_binary_cache(uri: str) -> bool:
    return scheme(uri) in BINARY_CACHE_SCHEMES


def file_cache_dir(uri: str) -> Path | None:
    """The folder of a file:// binary cache (None for another store)."""
    return Path(uri[len("file://") :].split("?", 1)[0]) if scheme(uri) == "file" else None


def missing_file_cache(uri: str) -> bool:
    """A file:// cache that is no cache yet (no folder, or no nix-cache-info in
    it): it holds nothing. Asking Nix would make one there, and a plan or
    --check must change nothing."""
    folder = file_cache_dir(uri)
    return folder is not None and not (folder / "nix-cache-info").exists()


def query_params(uri: str) -> dict[str, str]:
    query = uri.split("?", 1)[1] if "?" in uri else ""
    return dict(part.partition("=")[::2] for part in query.split("&") if part)


def with_param(uri: str, name: str, value: str) -> str:
    """`uri` with `name=value` added to its query (value percent-encoded, as Nix decodes it)."""
    return f"{uri}{'&' if '?' in uri else '?'}{name}={quote(value, safe='/')}"


@dataclass(frozen=True)
class SigningKey:
    """A secret key file as `nix key generate-secret` writes it: NAME:BASE64."""

    path: Path
    name: str

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> SigningKey:
        path = Path(path).expanduser().absolute()
        try:
            text = userfiles.read_text(path, f"the signing key {path}", limit=KEY_LIMIT).strip()
        except userfiles.UserFileError as exc:
            raise PublishError(
                f"cannot read {exc}; make one with `nix key generate-secret --key-name NAME > FILE`"
            ) from None
        path = userfiles.real(path)
        name, sep, data = text.partition(":")
        try:
            size = len(base64.b64decode(data, validate=True)) if sep and name else -1
        except binascii.Error:
            size = -1
        if size == SECRET_KEY_BYTES // 2:
            raise PublishError(f"{path} holds a public key ({name}); --sign-key needs the secret key it was made from")
        if size != SECRET_KEY_BYTES:
            raise PublishError(f"{path} is not a Nix secret key (NAME:BASE64 from `nix key generate-secret`)")
        return cls(path, name)


def signers(info: Mapping) -> list[str]:
    """Key names that signed a path ('cache.example-1' from 'cache.example-1:sig')."""
    return [sig.split(":", 1)[0] for sig in info.get("signatures", []) or []]


# Stores named by a host (or a bucket) after the scheme.
HOST_SCHEMES = ("ssh", "ssh-ng", "s3", "http", "https", "gs")


def require_uri(to: str) -> None:
    """A store URI Nix would write where the user means: refused, in one line,
    when it is empty, a bare path, a file:// or local?root= store whose path
    is empty or relative (Nix takes `file://` as the file system's root and a
    relative path from wherever it runs: issue #21), or a remote one with no
    host."""
    if not to.strip():
        raise PublishError("--to needs a store URI, e.g. file:///srv/nix-cache, s3://bucket or ssh-ng://host")
    if to.startswith(("/", "./", "../", "~")):
        # Nix reads a bare path as a local chroot store (a whole /nix/store
        # under it), which nobody means by "publish to /srv/cache" (issue #11).
        where = Path(to).expanduser().absolute()
        raise PublishError(
            f"--to {to} is a path, not a store URI: give file://{where} for a binary cache or "
            f"local?root={where} for a chroot store"
        )
    kind = scheme(to)
    folder = file_cache_dir(to)
    root = query_params(to).get("root") if to.split("?", 1)[0] == "local" else None
    for path, form in ((folder, "file://{}"), (Path(root) if root is not None else None, "local?root={}")):
        if path is not None and not path.is_absolute():
            empty = str(path) in ("", ".")
            example = form.format("/srv/nix-cache" if empty else Path(os.path.expanduser(str(path))).absolute())
            what = "an empty path is the file system's root" if empty else "a relative one"
            raise PublishError(f"--to {to}: the path in a store URI must be absolute ({what}); give e.g. {example}")
    if kind in HOST_SCHEMES and not to.split("://", 1)[1].split("?", 1)[0].strip("/"):
        raise PublishError(f"--to {to} names no host; give e.g. {kind}://host.example.com")


def held_paths(nix: Nix, paths: Sequence[str], store: str) -> dict[str, list[str]]:
    """{path: signers} for the paths `store` holds.

    Nix.realised's way, asked of the cache: Nix >= 2.19 prints null for a
    path the store lacks, older ones may fail the whole call instead, so a
    failing batch is asked path by path. Unlike Nix.realised (local store,
    closure sizes), a failure that is the store's own (an unknown scheme, an
    unreachable host: the store does not even open) is raised, never read
    as "the cache holds nothing".
    """
    if missing_file_cache(store) or not paths:
        return {}
    try:
        infos = nix.path_info(list(paths), closure=False, store=store)
    except CommandError:
        opens = nix.run("store", "info" if nix.new_cli else "ping", "--store", store, check=False)
        if opens.returncode != 0:
            raise
        infos = {}
        for path in paths:
            try:
                infos.update(nix.path_info([path], closure=False, store=store))
            except CommandError:
                pass  # how an older Nix says the store lacks it
    return {path: signers(info) for path, info in infos.items() if is_valid_info(info)}


# -- what is built -----------------------------------------------------------


def built_paths(project: Project, variants: Iterable[Variant]) -> dict[str, str]:
    """{variant name: store path} from the result links; every variant must be built."""
    found: dict[str, str] = {}
    missing: list[tuple[Variant, str]] = []
    for variant in variants:
        link = project.result_link(variant)
        if not link.is_symlink():
            kind = "a directory" if link.is_dir() else "a file" if link.exists() else None
            missing.append((variant, f"{link.name} is {kind}, not a result link" if kind else f"no {link.name}"))
        elif not link.exists():
            missing.append((variant, f"{link.name} points to {os.readlink(link)}, which is gone"))
        else:
            found[variant.name] = os.readlink(link)
    if missing:
        raise not_built(missing)
    return found


def not_built(missing: Sequence[tuple[Variant, str]]) -> PublishError:
    reasons = ", ".join(f"{v.name} ({why})" for v, why in missing)
    commands = " and ".join(f"`{v.build_command}`" for v, _ in missing)
    return PublishError(f"not built: {reasons}; build with {commands} first")


# -- the plan ----------------------------------------------------------------


@dataclass(frozen=True)
class PublishEntry:
    """One variant: its result and closure, and what the cache already holds of it."""

    variant: Variant
    path: str
    closure: Mapping[str, int]  # store path -> NAR size
    held: Mapping[str, list[str]]  # closure paths the cache holds -> their signers

    @property
    def closure_bytes(self) -> int:
        return sum(self.closure.values())

    @property
    def to_copy(self) -> list[str]:
        return [p for p in self.closure if p not in self.held]


@dataclass(frozen=True)
class PublishPlan:
    to: str
    key: SigningKey | None
    entries: tuple[PublishEntry, ...]

    @property
    def binary_cache(self) -> bool:
        return is_binary_cache(self.to)

    @property
    def copy_uri(self) -> str:
        """Where `nix copy` writes: a binary cache gets the key as `secret-key`."""
        if self.key and self.binary_cache:
            return with_param(self.to, "secret-key", str(self.key.path))
        return self.to

    @property
    def to_copy(self) -> dict[str, int]:
        """{path: NAR size} to upload, over all entries (closures share paths)."""
        return {p: e.closure[p] for e in self.entries for p in e.to_copy}

    @property
    def to_resign(self) -> list[str]:
        """Paths the cache holds without this key's signature (`nix copy` skips them)."""
        if not self.key:
            return []
        unsigned = {path for entry in self.entries for path, names in entry.held.items() if self.key.name not in names}
        return sorted(unsigned)

    def signing_text(self) -> str:
        if not self.key:
            return "unsigned (no --sign-key)"
        how = (
            "by the store URI's secret-key as Nix writes each path"
            if self.binary_cache
            else "in the local store first (nix store sign), then copied with the paths"
        )
        return f"signed with key '{self.key.name}' {how}"

    def lines(self) -> list[str]:
        out = [f"publish {len(self.entries)} variant(s) to {self.to}, {self.signing_text()}:"]
        for e in self.entries:
            copy = e.to_copy
            out.append(f"  {e.variant.name}  {e.path}")
            out.append(
                f"    closure {len(e.closure)} paths, {format_bytes(e.closure_bytes)}; "
                f"cache holds {len(e.held)}; to copy {len(copy)} paths, "
                f"{format_bytes(sum(e.closure[p] for p in copy))}"
            )
        total = self.to_copy
        summary = f"total: copy {len(total)} paths, {format_bytes(sum(total.values()))}"
        if self.key and self.binary_cache:
            summary += f"; sign {len(self.to_resign)} path(s) the cache already held"
        out.append(summary)
        return out


def make_plan(project: Project, variants: Sequence[Variant], to: str, key: SigningKey | None, nix: Nix) -> PublishPlan:
    """Read links, closures and the cache; change nothing."""
    require_uri(to)
    if key and "secret-key" in query_params(to):
        raise PublishError(f"{to} already names a secret-key; drop it or --sign-key, not both")
    outs = built_paths(project, variants)
    local = nix.realised(list(outs.values()))
    gone = [(v, f"{outs[v.name]} is not valid in the Nix store") for v in variants if outs[v.name] not in local]
    if gone:
        raise not_built(gone)
    entries = []
    closures = {}
    for variant in variants:
        info = nix.path_info([outs[variant.name]], closure=False, recursive=True)
        closures[variant.name] = {path: int(i.get("narSize") or 0) for path, i in info.items()}
    held = held_paths(nix, sorted({p for c in closures.values() for p in c}), to)
    for variant in variants:
        closure = closures[variant.name]
        entries.append(PublishEntry(variant, outs[variant.name], closure, {p: held[p] for p in closure if p in held}))
    return PublishPlan(to, key, tuple(entries))


def execute(plan: PublishPlan, nix: Nix, out: TextIO) -> None:
    """Sign (where it must come first), copy, sign what the cache already held."""
    roots = [e.path for e in plan.entries]
    if plan.key and not plan.binary_cache:
        nix.sign(roots, key_file=plan.key.path, recursive=True, echo=True)
    with _new_cache_undone_on_failure(plan.to):
        nix.copy(roots, to=plan.copy_uri, echo=True)
        if plan.key and plan.binary_cache and plan.to_resign:
            nix.sign(plan.to_resign, key_file=plan.key.path, store=plan.to, echo=True)
    total = plan.to_copy
    print(f"copied {len(total)} paths ({format_bytes(sum(total.values()))}) to {plan.to}", file=out)
    for entry in plan.entries:
        print(f"  {entry.variant.name}: {entry.path} (closure {format_bytes(entry.closure_bytes)})", file=out)


def _new_cache_undone_on_failure(to: str) -> contextlib.AbstractContextManager[None]:
    """A file:// cache this publish makes is removed again if the publish fails
    (Nix writes its skeleton before it refuses, say, a bad compression)."""
    folder = file_cache_dir(to)
    if folder is None or folder.exists() or folder.is_symlink():
        return contextlib.nullcontext()
    first_new = next(p for p in (folder, *folder.parents) if p.parent.exists() or p.parent == p)
    return lifecycle.undo_on_failure(f"the new cache {first_new}", lambda: shutil.rmtree(first_new, ignore_errors=True))


def publish(
    project: Project,
    variants: Sequence[Variant],
    *,
    to: str,
    sign_key: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    nix: Nix | None = None,
    out: TextIO | None = None,
) -> PublishPlan:
    """Copy the variants' closures to `to`, signed with `sign_key` when given."""
    out = out or sys.stdout
    nix = nix or Nix()
    nix.preflight()
    if sign_key is not None and not str(sign_key).strip():  # an unset variable: never publish unsigned for it
        raise PublishError(
            f"--sign-key '{sign_key}' is empty; give the secret key file "
            "(`nix key generate-secret --key-name NAME > FILE`), or leave --sign-key out"
        )
    key = SigningKey.read(sign_key) if sign_key is not None else None
    plan = make_plan(project, variants, to, key, nix)
    print("\n".join(plan.lines()), file=out, flush=True)
    if dry_run:
        print("dry run: nothing copied or signed", file=out)
        return plan
    execute(plan, nix, out)
    return plan


def main(
    project: Project,
    *,
    to: str,
    selection: Selection | None = None,
    sign_key: str | None = None,
    check: bool = False,
    nixpkgs: str | None = None,
    dry_run: bool = False,
) -> None:
    """`invoke publish`: select the variants, then copy them or (--check) ask the cache."""
    # --check with no selection looks at every variant; copying needs a choice
    picked = (selection or Selection()).variants(project.matrix, none_means_all=check)
    if check:
        overrides = {"nixpkgs": input_ref(nixpkgs)} if nixpkgs is not None else None
        check_cache(project, picked, to=to, overrides=overrides)
        return
    publish(project, picked, to=to, sign_key=sign_key, dry_run=dry_run)


# -- --check -------------------------------------------------------------------


@dataclass(frozen=True)
class Holding:
    variant: Variant
    path: str
    held: bool
    signers: tuple[str, ...] = ()

    def line(self) -> str:
        status = "held   " if self.held else "missing"
        signed = f"  signed by {', '.join(self.signers)}" if self.signers else ("  unsigned" if self.held else "")
        return f"  {status}  {self.variant.name}  {self.path}{signed}"


def check_cache(
    project: Project,
    variants: Sequence[Variant],
    *,
    to: str,
    overrides: Mapping[str, str] | None = None,
    nix: Nix | None = None,
    out: TextIO | None = None,
) -> list[Holding]:
    """Which variants `to` holds: their out paths evaluated (nothing built), then asked for.

    Raises PublishError (after the listing) when any variant is missing.
    """
    out = out or sys.stdout
    require_uri(to)
    nix = nix or Nix()
    nix.preflight()
    flake = flake_ref(project.root)
    evaluated = nix.out_paths(flake, [v.attr_path() for v in variants], overrides, cwd=project.root)
    paths = {variant.name: path for variant, path in zip(variants, evaluated)}
    held = held_paths(nix, list(paths.values()), to)
    holdings = [Holding(v, paths[v.name], paths[v.name] in held, tuple(held.get(paths[v.name], ()))) for v in variants]
    missing = [h.variant for h in holdings if not h.held]
    print(f"{to} holds {len(holdings) - len(missing)} of {len(holdings)} variant(s):", file=out)
    for holding in holdings:
        print(holding.line(), file=out)
    out.flush()
    if missing:
        steps = "; ".join(f"`{v.build_command}` then `invoke publish --to {to} {v.selector}`" for v in missing)
        raise PublishError(f"{to} lacks {', '.join(v.name for v in missing)}: {steps}")
    return holdings
