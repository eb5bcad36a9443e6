"""The request of `invoke build`: its options parsed, the variants selected, the pre-flight (nothing evaluated)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import userfiles
from ..errors import PreflightError, SelectionError
from ..evalmem import eval_options
from ..machines import BuildCapabilities
from ..matrix import Variant
from ..nix import Nix, input_ref
from ..options import whole_number
from ..outputs import check_file
from ..project import Project
from ..selection import Selection

# -- the request ------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What the command line asked for, validated (one line per mistake)."""

    selection: Selection = Selection()  # the variants: parsed once, at the task boundary
    dry_run: bool = False
    cores: int | None = None
    max_jobs: int | None = None
    builders: str | None = None
    keep_going: bool = False
    options: tuple[tuple[str, str], ...] = ()
    nixpkgs: str | None = None
    json_path: Path | None = None
    eval_jobs: int | None = None
    eval_max_memory: int | None = None

    @classmethod
    def from_cli(
        cls,
        *,
        selection: Selection | None = None,
        dry_run: bool = False,
        cores: str | int | None = None,
        max_jobs: str | int | None = None,
        builders: str | None = None,
        keep_going: bool = False,
        option: Iterable[str] = (),
        nixpkgs: str | None = None,
        json_path: str | None = None,
        eval_jobs: str | int | None = None,
        eval_max_memory: str | int | None = None,
        cwd: Path | None = None,
    ) -> Request:
        cwd = Path(cwd or Path.cwd())
        jobs, memory = eval_options(eval_jobs, eval_max_memory)
        return cls(
            selection=selection or Selection(),
            dry_run=dry_run,
            cores=whole_number("--cores", cores, "0 means all cores"),
            max_jobs=whole_number("--max-jobs", max_jobs, "0 means remote builders only"),
            builders=_builders_spec(builders, cwd),
            keep_going=keep_going,
            options=tuple(_option(o) for o in option or ()),
            nixpkgs=input_ref(nixpkgs, cwd) if nixpkgs is not None else None,
            json_path=check_file("--json", json_path, cwd),
            eval_jobs=jobs,
            eval_max_memory=memory,
        )


def _option(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise SelectionError(f"--option takes NAME=VALUE (e.g. --option sandbox true), not '{text}'")
    return name.strip(), value


def _builders_spec(spec: str | None, cwd: Path) -> str | None:
    """A relative '@machines' file is relative to where the user ran invoke."""
    if spec is None:
        return None
    parts = []
    for part in spec.replace(";", "\n").splitlines():
        part = part.strip()
        if part.startswith("@"):
            path = cwd / Path(part[1:]).expanduser()
            if not path.exists() and not path.is_symlink():
                raise SelectionError(f"--builders {part}: no such machines file {userfiles.real(path)}")
            try:
                userfiles.file(path, f"--builders {part}")
            except userfiles.UserFileError as exc:
                raise SelectionError(str(exc)) from None
            part = f"@{userfiles.real(path)}"
        if part:
            parts.append(part)
    return "; ".join(parts)


# -- step 1: pre-flight -----------------------------------------------------


@dataclass(frozen=True)
class Target:
    variant: Variant
    where: str  # "this machine" or "remote builder(s) ..."
    link: Path
    # The flake attribute to build: the variant's package unless a caller
    # builds another output of the variant (`invoke image`: images.<system>.<name>,
    # linked as image-<name>).
    attr: str | None = None

    @property
    def installable_attr(self) -> str:
        return self.attr or self.variant.attr_path()


@dataclass
class Prepared:
    project: Project
    request: Request
    nix: Nix
    targets: list[Target]


def prepare(project: Project, request: Request, *, nix: Nix | None = None) -> Prepared:
    """Selection, Nix and builders checked; nothing evaluated, nothing written."""
    return prepare_variants(project, request, request.selection.variants(project.matrix), nix=nix)


def prepare_variants(
    project: Project, request: Request, variants: Sequence[Variant], *, nix: Nix | None = None
) -> Prepared:
    """Nix and builders checked for variants already resolved (`invoke image` builds
    its one variant's image through this); nothing evaluated, nothing written."""
    options = list(request.options)
    if request.builders is not None:
        options.append(("builders", request.builders))
    nix = nix or Nix(options=options)
    nix.preflight()
    settings = dict(nix.config())
    if request.max_jobs is not None:
        settings["max-jobs"] = str(request.max_jobs)
    capabilities = BuildCapabilities.from_settings(settings)
    targets = []
    for variant in variants:
        targets.append(Target(variant, _where(capabilities, variant.system), project.result_link(variant)))
    return Prepared(project, request, nix, targets)


def _where(caps: BuildCapabilities, system: str) -> str:
    if caps.local_can_build(system):
        return "this machine"
    remote = caps.builders_for(system)
    if remote:
        return "remote builder " + ", ".join(b.uri for b in remote)
    if system in caps.local_systems and caps.local_max_jobs > 0:
        raise PreflightError(
            f"this machine's Nix lacks the big-parallel system feature the CUDA builds need: add "
            f"'system-features = {' '.join((*caps.features, 'big-parallel'))}' to nix.conf, or a builder that has it"
        )
    if system in caps.local_systems:
        raise PreflightError(
            f"max-jobs is 0 (nothing builds on this machine) and no remote builder can build {system} with "
            f"big-parallel: add one, e.g. --builders 'ssh-ng://user@host {system} - 8 1 big-parallel'"
        )
    raise PreflightError(caps.explain_missing(system))
