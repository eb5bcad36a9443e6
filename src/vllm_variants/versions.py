"""What the pinned nixpkgs ships: nix/versions.json and the README's version matrix.

`invoke bump-pin` writes nix/versions.json from an evaluation of the flake
(every package's passthru.versions, see nix/variant.nix), never by hand.
README.md's `versions` section is rendered from that file, so
`invoke readme --check` verifies README and data agree offline, and it fails
when the file describes another commit than flake.lock locks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import userfiles
from .errors import VariantsError
from .nix import locked_value, nix_expression
from .project import Project

PATH = "nix/versions.json"
INPUT = "nixpkgs"  # the flake input that pins nixpkgs
KEYS = ("vllm", "torch", "python", "cuda")
LABELS = {"vllm": "vLLM", "torch": "PyTorch", "python": "Python", "cuda": "CUDA"}

# `nix eval --json <flake>#hydraJobs --apply <expressions/versions.nix>` -> {variant: {system:
# versions}}: the default set (every other valid variant builds by name; `invoke eval`
# covers any). The expression is a file of this package (see it for why not the flake's).
EVAL_ATTR = "hydraJobs"
EVAL = nix_expression("versions.nix")
# `nix eval --json <flake>#lib.pin` -> {rev, narHash}: the nixpkgs that evaluation used
PIN_ATTR = "lib.pin"

_VERSION_PART = re.compile(r"\d+|[a-z]+")


@dataclass(frozen=True)
class PinVersions:
    """The versions one nixpkgs commit gives each variant."""

    rev: str
    url: str
    variants: Mapping[str, Mapping[str, str]]  # variant name -> {vllm, torch, python, cuda}
    # The narHash of the nixpkgs the versions were evaluated from (flake.lock
    # must lock the same), or None with `unverified` saying why there is none.
    nar_hash: str | None = None
    unverified: str | None = None

    @classmethod
    def from_eval(
        cls, rev: str, url: str, packages: Mapping[str, Mapping[str, Any]], nar_hash: str | None = None
    ) -> PinVersions:
        """From EVAL's output; every package must report every key of KEYS."""
        variants: dict[str, dict[str, str]] = {}
        for name, by_system in packages.items():
            for versions in by_system.values():
                missing = [k for k in KEYS if not isinstance(versions.get(k), str)]
                if missing:
                    raise VariantsError(f"{name}: passthru.versions lacks {', '.join(missing)}")
                variants[name] = {k: versions[k] for k in KEYS}
        if not variants:
            raise VariantsError("the flake exports no packages to read versions from")
        return cls(rev=rev, url=url, variants=dict(sorted(variants.items())), nar_hash=nar_hash)

    @classmethod
    def parse(cls, text: str) -> PinVersions:
        data = userfiles.parse_json(text, PATH)
        try:
            pin = data["nixpkgs"]
            return cls(
                rev=pin["rev"],
                url=pin["url"],
                variants={n: {k: v[k] for k in KEYS} for n, v in data["variants"].items()},
                nar_hash=pin.get("narHash"),
                unverified=pin.get("unverified"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise VariantsError(f"{PATH} is malformed ({exc!r}); regenerate it with `invoke bump-pin <rev>`") from None

    def dumps(self) -> str:
        data = {
            "generated_by": "invoke bump-pin: nix eval of hydraJobs.<variant>.<system>.versions (the default set)",
            "nixpkgs": {
                "rev": self.rev,
                "url": self.url,
                "narHash": self.nar_hash,
                **({"unverified": self.unverified} if self.unverified else {}),
            },
            "variants": self.variants,
        }
        return json.dumps(data, indent=2) + "\n"

    def values(self, key: str) -> list[str]:
        """The distinct versions of `key` across variants, oldest first."""
        return sorted({v[key] for v in self.variants.values()}, key=version_key)

    def text(self, key: str) -> str:
        return ", ".join(self.values(key))

    def summary(self) -> str:
        """'vllm 0.15.1, torch 2.9.1, python 3.12.12, cuda 12.9'."""
        return ", ".join(f"{k} {self.text(k)}" for k in KEYS)


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order versions like '0.9.2' < '0.10.0rc1' < '0.10.0' < '0.10.0.post1'."""
    key: list[tuple[int, int | str]] = []
    for part in _VERSION_PART.findall(version.lower()):
        if part.isdigit():
            key.append((2, int(part)))
        elif part == "post":
            key.append((3, 0))
        else:  # a, b, rc, dev: before the release they qualify
            key.append((1, part))
    # The end sorts after any pre-release tag and before further numbers.
    return (*key, (1, "~"))


def changes(old: PinVersions | None, new: PinVersions) -> list[str]:
    """One line per key: 'vllm: 0.15.1 -> 0.16.0' or 'torch: 2.9.1 (unchanged)'."""
    lines = []
    for key in KEYS:
        before = old.text(key) if old else "unknown"
        after = new.text(key)
        lines.append(f"{key}: {after} (unchanged)" if before == after else f"{key}: {before} -> {after}")
    return lines


def load(project: Project) -> PinVersions:
    """nix/versions.json of a checkout."""
    path = project.root / PATH
    if not path.exists() and not path.is_symlink():
        raise VariantsError(f"{PATH} is missing; `invoke bump-pin <rev>` writes it")
    return PinVersions.parse(userfiles.read_text(path, PATH, limit=userfiles.MIB))


def _lock_field(text: str, key: str, where: str = "flake.lock") -> str | None:
    """A field ('rev', 'narHash') a flake.lock (its text) locks for nixpkgs; None when it locks none."""
    try:
        data = userfiles.parse_json(text, where)
    except userfiles.UserFileError as exc:
        raise VariantsError(f"{exc}; restore it from git") from None
    try:
        return locked_value(data, INPUT, key)
    except (AttributeError, TypeError):  # JSON, but not shaped like a lock file
        raise VariantsError(f"{where} is not a Nix lock file (no nodes/root); restore it from git") from None


def lock_rev(text: str, where: str = "flake.lock") -> str | None:
    """The nixpkgs commit a flake.lock (its text) locks; None when it locks none."""
    return _lock_field(text, "rev", where)


def _lock_text(project: Project) -> str:
    if not project.flake_lock.exists() and not project.flake_lock.is_symlink():
        raise VariantsError(
            "flake.lock is missing: it records the nixpkgs commit; restore it with `git checkout -- flake.lock`"
        )
    return userfiles.read_text(project.flake_lock, "flake.lock", limit=userfiles.MIB)


def locked(project: Project) -> str | None:
    """The nixpkgs commit a checkout's flake.lock locks; None when it locks none."""
    return lock_rev(_lock_text(project))


def readme_section(project: Project) -> str:
    """The README's version matrix; refuses data that describes another pin than flake.lock."""
    pin = load(project)
    lock_text = _lock_text(project)
    locked_now = lock_rev(lock_text)
    if locked_now is None:
        raise VariantsError(
            f"flake.lock locks no {INPUT} commit; run `invoke bump-pin {pin.rev}` to lock the one {PATH} describes"
        )
    if locked_now != pin.rev:
        raise VariantsError(
            f"{PATH} describes nixpkgs {pin.rev} but flake.lock locks {locked_now}; "
            f"run `invoke bump-pin {locked_now}` to re-evaluate the versions"
        )
    lock_hash = _lock_field(lock_text, "narHash")
    if pin.unverified:
        provenance = f"**Unverified:** {pin.unverified}"
    elif pin.nar_hash != lock_hash:
        raise VariantsError(
            f"{PATH} was evaluated from nixpkgs narHash {pin.nar_hash}, but flake.lock locks {lock_hash}; "
            f"run `invoke bump-pin {locked_now}` to re-evaluate the versions"
        )
    else:
        provenance = f"Evaluated from that commit (narHash `{pin.nar_hash}`, as flake.lock locks it)."
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, versions in pin.variants.items():
        groups.setdefault(tuple(versions[k] for k in KEYS), []).append(name)
    lines = [
        f"Pinned nixpkgs: `{pin.rev}` (`{pin.url}`).",
        "",
        provenance,
        "",
        "| Variants | " + " | ".join(LABELS[k] for k in KEYS) + " |",
        "|---" * (len(KEYS) + 1) + "|",
    ]
    # The largest group is named by count ("the other 10 variants"), the rest by name.
    largest = max(groups.values(), key=len)
    for row, names in sorted(groups.items(), key=lambda item: len(item[1])):
        if len(groups) == 1:
            who = f"all {len(names)} variants"
        elif names is largest and len(names) > 1:
            who = f"the other {len(names)} variants"
        else:
            who = ", ".join(f"`{n}`" for n in names)
        lines.append(f"| {who} | " + " | ".join(row) + " |")
    return "\n".join(lines)
