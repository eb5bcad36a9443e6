"""What this Nix can build for: its own system, extra-platforms, remote builders.

`invoke build` refuses an aarch64 variant on an x86_64 host (or the reverse)
when nothing can build it, and `invoke doctor` lists the same facts. CUDA is
never cross-compiled in nixpkgs: a variant's system needs a machine of that
system, local (native or extra-platforms) or remote, that has the
`big-parallel` feature the heavy builds require.

Builder specs follow the Nix manual ("Remote Builds"): machines separated by
newlines or ';', fields separated by whitespace, '-' for a default:

    URI [systems,...] [ssh key] [max jobs] [speed factor] [features,...] [mandatory,...] [host key]

A spec of '@FILE' includes a machines file (the default `builders` setting is
'@/etc/nix/machines').
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import userfiles
from .errors import PreflightError

# A machines file lists builders, a line each (issue #21: a bound, not a hang on /dev/zero).
MACHINES_LIMIT = userfiles.MIB

REQUIRED_FEATURES = ("big-parallel",)


@dataclass(frozen=True)
class Builder:
    uri: str
    systems: tuple[str, ...]
    ssh_key: str | None = None
    max_jobs: int = 1
    speed_factor: float = 1.0
    supported_features: tuple[str, ...] = ()
    mandatory_features: tuple[str, ...] = ()
    public_host_key: str | None = None

    def can_build(self, system: str, features: Iterable[str] = REQUIRED_FEATURES) -> bool:
        wanted = set(features)
        offered = set(self.supported_features) | set(self.mandatory_features)
        return (
            self.max_jobs > 0
            and system in self.systems
            and wanted <= offered
            and set(self.mandatory_features) <= wanted
        )

    def to_json(self) -> dict:
        return {
            "uri": self.uri,
            "systems": list(self.systems),
            "max_jobs": self.max_jobs,
            "speed_factor": self.speed_factor,
            "supported_features": list(self.supported_features),
            "mandatory_features": list(self.mandatory_features),
        }


def _field(fields: Sequence[str], index: int) -> str | None:
    if index < len(fields) and fields[index] != "-":
        return fields[index]
    return None


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v for v in (value or "").split(",") if v)


def parse_builders(spec: str, *, local_system: str, _seen: frozenset[Path] = frozenset()) -> list[Builder]:
    """Builders from a `builders` value (or --builders): lines, ';', '@file'."""
    builders: list[Builder] = []
    for raw in spec.replace(";", "\n").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("@"):
            path = Path(line[1:]).expanduser()
            if path in _seen:
                continue
            if not path.exists() and not path.is_symlink():  # Nix treats a missing machines file as no builders
                continue
            try:
                text = userfiles.read_text(path, f"the machines file {path}", limit=MACHINES_LIMIT)
            except userfiles.UserFileError as exc:
                raise PreflightError(f"cannot read {exc}") from None
            builders += parse_builders(text, local_system=local_system, _seen=_seen | {path})
            continue
        fields = line.split()
        try:
            max_jobs = int(_field(fields, 3) or 1)
            speed = float(_field(fields, 4) or 1)
        except ValueError:
            raise PreflightError(
                f"bad builder line {line!r}: max jobs (4th field) and speed factor (5th) must be numbers"
            ) from None
        builders.append(
            Builder(
                uri=fields[0],
                systems=_csv(_field(fields, 1)) or (local_system,),
                ssh_key=_field(fields, 2),
                max_jobs=max_jobs,
                speed_factor=speed,
                supported_features=_csv(_field(fields, 5)),
                mandatory_features=_csv(_field(fields, 6)),
                public_host_key=_field(fields, 7),
            )
        )
    return builders


@dataclass(frozen=True)
class BuildCapabilities:
    """Where builds of each system can run, as this Nix is configured."""

    system: str
    extra_platforms: tuple[str, ...]
    features: tuple[str, ...]
    local_max_jobs: int
    builders: tuple[Builder, ...]

    @classmethod
    def from_settings(cls, settings: dict[str, str], *, extra_builders: str | None = None) -> BuildCapabilities:
        """From `nix config show` output (Nix.config()); --builders adds machines."""
        system = settings.get("system", "")
        max_jobs_text = settings.get("max-jobs", "1")
        local_max_jobs = 1 if max_jobs_text == "auto" else int(max_jobs_text or 1)
        spec = settings.get("builders", "")
        if extra_builders:
            spec = f"{spec}\n{extra_builders}"
        return cls(
            system=system,
            extra_platforms=tuple(settings.get("extra-platforms", "").split()),
            features=tuple(settings.get("system-features", "").split()),
            local_max_jobs=local_max_jobs,
            builders=tuple(parse_builders(spec, local_system=system)),
        )

    @property
    def local_systems(self) -> tuple[str, ...]:
        return (self.system, *self.extra_platforms)

    def local_can_build(self, system: str, features: Iterable[str] = REQUIRED_FEATURES) -> bool:
        return self.local_max_jobs > 0 and system in self.local_systems and set(features) <= set(self.features)

    def builders_for(self, system: str, features: Iterable[str] = REQUIRED_FEATURES) -> list[Builder]:
        return [b for b in self.builders if b.can_build(system, features)]

    def can_build(self, system: str, features: Iterable[str] = REQUIRED_FEATURES) -> bool:
        return self.local_can_build(system, features) or bool(self.builders_for(system, features))

    def buildable_systems(self) -> list[str]:
        systems = [s for s in self.local_systems if self.local_can_build(s)]
        for builder in self.builders:
            systems += [s for s in builder.systems if builder.can_build(s)]
        return list(dict.fromkeys(systems))

    def explain_missing(self, system: str) -> str:
        """One line: why `system` cannot be built here, and how to fix it."""
        return (
            f"no machine can build {system} variants: this is {self.system}, and CUDA is never "
            f"cross-compiled in nixpkgs, so a {system} builder is needed. Add one that advertises "
            f"big-parallel, e.g. --builders 'ssh-ng://user@host {system} - 8 1 big-parallel' "
            f"(or a line in /etc/nix/machines; see 'Remote Builds' in the Nix manual)"
        )
