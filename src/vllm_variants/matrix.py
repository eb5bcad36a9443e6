"""The variant matrix, read from nix/variants.toml.

nix/matrix.nix derives the same records from the same file for the flake; the
two must agree field for field (tests/test_matrix.py compares this module's
`Matrix.to_json()` with `nix eval --json .#lib.variants`). Keep the derivation
rules here and in matrix.nix in step.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import compat, userfiles
from .errors import MatrixError, SelectionError
from .userfiles import tomllib  # noqa: F401 - tomli on Python 3.10; the tests read TOML through it

# The matrix file is small: a bound far above any real one (issue #21).
MATRIX_LIMIT = 4 * userfiles.MIB

DEFAULT_KEYS = ("python", "cuda", "min_driver", "torch")
# torch = "source": nixpkgs' torch built for the variant's SM (the default);
# "wheel": nixpkgs' torch-bin (the upstream wheel, every SM) in its place.
TORCH_KINDS = ("source", "wheel")
TORCH_SUFFIX = {"source": "", "wheel": "-torchbin"}
# nixpkgs' torch-bin fetches the CUDA wheel on x86_64-linux only; on
# aarch64-linux it is the CPU wheel (torch/bin/binary-hashes.nix).
TORCH_WHEEL_SYSTEMS = ("x86_64-linux",)
REQUIRED_VARIANT_KEYS = ("sm", "capability", "arch", "gpus", "system")
VARIANT_KEYS = frozenset(REQUIRED_VARIANT_KEYS + DEFAULT_KEYS + ("disabled", "default"))
# an [[sm]] may be disabled (every line of it, with the reason) or kept out of the default set
SM_KEYS = frozenset(REQUIRED_VARIANT_KEYS + ("disabled", "default"))
EXCLUDE_MATCH_KEYS = ("sm", "system", "python", "cuda")
TOP_LEVEL_KEYS = frozenset(("defaults", "build", "systems", "variant", "axes", "sm", "cuda", "exclude", "pin"))
PIN_KEYS = frozenset(
    (
        "torch_version",
        "vllm_version",
        "torch_bin_version",
        "torch_bin_cuda",
        "torch_capabilities",
        "vllm_capabilities",
        "cuda_capabilities",
    )
)
# [pin]'s version strings, in the order both sides check them, with an example each
PIN_VERSIONS = (
    ("torch_version", "2.9.1"),
    ("vllm_version", "0.15.1"),
    ("torch_bin_version", "2.9.0"),
    ("torch_bin_cuda", "12.8"),
)
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)+\Z")

# No leading zero: '09.0' is a typo, not SM 90 (nor an unknown SM '090').
# \Z, not $: $ also matches before a final newline, and "90\n" is no SM
# (nor is it to nix/matrix.nix, whose builtins.match matches the whole string).
_SM = re.compile(r"^[1-9][0-9]{1,2}[af]?\Z")
_CAPABILITY = re.compile(r"^[1-9][0-9]?\.[0-9][af]?\Z")
_CUDA = re.compile(r"^[0-9]+\.[0-9]+\Z")


@dataclass(frozen=True)
class Variant:
    """One row of the matrix with its derived fields."""

    name: str
    sm: str
    capability: str
    arch: str
    gpus: tuple[str, ...]
    system: str
    python: str
    cuda: str
    cuda_tag: str
    cuda_packages: str
    min_driver: int
    disabled: str | None = None
    torch: str = "source"
    # in the default set: what --all, `invoke matrix` and hydraJobs build unless told otherwise
    default: bool = True

    @property
    def torch_wheel(self) -> bool:
        """torch is nixpkgs' torch-bin (the upstream wheel, every SM), not built for this SM."""
        return self.torch == "wheel"

    @property
    def arm64(self) -> bool:
        return self.system.startswith("aarch64-")

    @property
    def enabled(self) -> bool:
        return self.disabled is None

    @property
    def sm_number(self) -> str:
        """The SM without its arch-specific suffix ('90a' -> '90'): what a GPU reports."""
        return sm_number(self.sm)

    @property
    def label(self) -> str:
        """Short human form: 'sm90' or 'sm90 (arm64)'."""
        return f"sm{self.sm}" + (" (arm64)" if self.arm64 else "")

    @property
    def selector(self) -> str:
        """The task options that select this variant: '--sm 90', '--sm 90 --arm64', or its name."""
        if self.torch_wheel:
            return f"--sm {self.name}"
        return f"--sm {self.sm}" + (" --arm64" if self.arm64 else "")

    @property
    def build_command(self) -> str:
        """The command that builds this variant: 'invoke build --sm 90 --arm64'."""
        return f"invoke build {self.selector}"

    def attr_path(self) -> str:
        """The flake attribute that builds this variant."""
        return f"packages.{self.system}.{self.name}"

    def to_json(self) -> dict[str, Any]:
        """The record as nix/matrix.nix exports it (same keys, same values)."""
        return {
            "name": self.name,
            "sm": self.sm,
            "capability": self.capability,
            "arch": self.arch,
            "gpus": list(self.gpus),
            "system": self.system,
            "python": self.python,
            "cuda": self.cuda,
            "cuda_tag": self.cuda_tag,
            "cuda_packages": self.cuda_packages,
            "min_driver": self.min_driver,
            "torch": self.torch,
            "default": self.default,
            "disabled": self.disabled,
        }


@dataclass(frozen=True)
class Matrix:
    variants: tuple[Variant, ...]
    systems: Mapping[str, str]  # system -> name suffix
    ram_per_job_gib: int
    source: Path | None = field(default=None, compare=False)
    default_python: str | None = None  # the default line: [defaults] python and cuda
    default_cuda: str | None = None

    # -- loading -----------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str) -> Matrix:
        path = Path(path)
        try:
            data = userfiles.parse_toml(userfiles.read_text(path, str(path), limit=MATRIX_LIMIT), str(path))
        except userfiles.UserFileError as exc:
            raise MatrixError(str(exc)) from None
        return cls.from_toml(data, source=path)

    @classmethod
    def from_toml(cls, data: Mapping[str, Any], source: Path | None = None) -> Matrix:
        where = str(source or "variants.toml")
        unknown = sorted(set(data) - TOP_LEVEL_KEYS)
        if unknown:
            raise MatrixError(
                f"{where}: unknown top-level key(s) {', '.join(unknown)}; valid: {', '.join(sorted(TOP_LEVEL_KEYS))}"
            )
        defaults = _table(data.get("defaults", {}), f"{where}: [defaults]", ", ".join(DEFAULT_KEYS))
        bad_defaults = sorted(set(defaults) - set(DEFAULT_KEYS))
        if bad_defaults:
            raise MatrixError(
                f"{where}: unknown key(s) in [defaults]: {', '.join(bad_defaults)}; valid: {', '.join(DEFAULT_KEYS)}"
            )
        systems_table = _table(data.get("systems", {}), f"{where}: [systems]", "[systems.<system>] tables")
        if not systems_table:
            raise MatrixError(f"{where}: no [systems.<system>] table")
        systems = {}
        for system, spec in systems_table.items():
            spec = _table(spec, f"{where}: [systems.{system}]", "exactly `suffix`")
            if set(spec) != {"suffix"}:
                raise MatrixError(f"{where}: [systems.{system}] must hold exactly `suffix`")
            systems[system] = _string(spec, "suffix", f"{where}: [systems.{system}]", '"-arm64" (or "")', empty=True)
        build = _table(data.get("build", {}), f"{where}: [build]", "ram_per_job_gib")
        if "ram_per_job_gib" not in build:
            raise MatrixError(f"{where}: [build] needs an integer ram_per_job_gib")
        ram_per_job = _integer(build, "ram_per_job_gib", f"{where}: [build]", "8 (GiB)")

        rows = data.get("variant", [])
        if not isinstance(rows, list):
            raise MatrixError(f"{where}: variant must be [[variant]] tables, not {_described(rows)}")
        lines = _cuda_lines(data.get("cuda", {}), where)
        pin = _pin(data.get("pin", {}), where)
        product = _product(data, defaults, where)
        if not rows and not product:
            raise MatrixError(f"{where}: no [[variant]] or [[sm]] tables")
        variants = []
        for label, row in product:  # the product first, then the explicit rows
            variants.append(
                _variant(_with_line(row, defaults, lines), defaults, systems, label, f"{where}: [defaults]")
            )
        for index, row in enumerate(rows, start=1):
            table = _table(row, f"{where}: variant #{index}", ", ".join(sorted(VARIANT_KEYS)))
            variants.append(
                _variant(
                    _with_line(table, defaults, lines),
                    defaults,
                    systems,
                    f"{where}: variant #{index}",
                    f"{where}: [defaults]",
                )
            )
        variants = [_checked(v, pin) for v in variants]
        names = [v.name for v in variants]
        duplicates = sorted(n for n, count in Counter(names).items() if count > 1)  # linear (issue #13)
        if duplicates:
            raise MatrixError(f"{where}: duplicate variant name(s): {', '.join(duplicates)}")
        return cls(tuple(variants), systems, ram_per_job, source, defaults.get("python"), defaults.get("cuda"))

    # -- queries -----------------------------------------------------------

    @property
    def enabled(self) -> tuple[Variant, ...]:
        """Every valid variant: each is buildable by name or by selectors."""
        return tuple(v for v in self.variants if v.enabled)

    @property
    def default_set(self) -> tuple[Variant, ...]:
        """What --all, `invoke matrix` and hydraJobs build unless told otherwise."""
        return tuple(v for v in self.variants if v.enabled and v.default)

    def by_name(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise SelectionError(
            f"unknown variant '{name}'; the default set: {', '.join(v.name for v in self.default_set)} "
            "(`invoke variants --all` lists every one)"
        )

    def to_json(self) -> dict[str, dict[str, Any]]:
        """{name: record}, exactly what `nix eval --json .#lib.variants` prints."""
        return {v.name: v.to_json() for v in self.variants}

    def valid_sms_text(self) -> str:
        """'70, 75, ... (x86_64-linux); 90, 100 (aarch64-linux, with --arm64)'."""
        parts = []
        for system in self.systems:
            sms = unique(v.sm for v in self.enabled if v.system == system)
            if sms:
                hint = ", with --arm64" if system.startswith("aarch64-") else ""
                parts.append(f"{', '.join(sms)} ({system}{hint})")
        return "; ".join(parts)

    # -- resolving requests -----------------------------------------------

    def lines(self, python: str | None = None, cuda: str | None = None) -> tuple[str | None, str | None]:
        """--python / --cuda as the matrix spells them ('313' -> 'python313', '12.8'), checked."""
        if python is not None:
            digits = re.sub(r"^(python|py)", "", python.strip().lower()).replace(".", "")
            python = f"python{digits}"
            valid = unique(v.python for v in self.variants)
            if python not in valid:
                raise SelectionError(
                    f"unknown Python line '{python}'; valid: "
                    f"{', '.join(p.removeprefix('python') for p in valid)} (e.g. --python 313)"
                )
        if cuda is not None:
            cuda = cuda.strip()
            valid = sorted(unique(v.cuda for v in self.variants), key=_version_key)
            if cuda not in valid:
                raise SelectionError(f"unknown CUDA line '{cuda}'; valid: {', '.join(valid)} (e.g. --cuda 12.8)")
        return python, cuda

    def on_line(self, variant: Variant, python: str | None, cuda: str | None) -> bool:
        """On the asked-for line: an axis not asked for takes the default line's value;
        nothing asked for is the default set."""
        if python is None and cuda is None:
            return variant.default
        return variant.python == (python or self.default_python) and variant.cuda == (cuda or self.default_cuda)

    def resolve(
        self, token: str, *, arm64: bool = False, python: str | None = None, cuda: str | None = None
    ) -> Variant:
        """One variant from '90', 'sm90', 'SM90', '9.0' or a full name (on the --python/--cuda line)."""
        python, cuda = self.lines(python, cuda)
        text = token.strip()
        if text.startswith("vllm-"):
            variant = self.by_name(text)
            if arm64 and not variant.arm64:
                raise SelectionError(f"--arm64 conflicts with '{text}', an {variant.system} variant")
            return self._usable(variant)
        sm = normalise_sm(text)
        if sm is None:
            raise SelectionError(
                f"'{token}' is not an SM; give a number like 90, sm90 or a full variant name; "
                f"valid SMs: {self.valid_sms_text()}"
            )
        same_sm = [v for v in self.variants if v.sm == sm]
        if not same_sm:
            raise SelectionError(f"unknown SM '{sm}'; valid SMs: {self.valid_sms_text()}")
        wanted = [v for v in same_sm if v.arm64 == arm64]
        if not wanted:
            if arm64:
                arm = unique(v.sm for v in self.enabled if v.arm64)
                raise SelectionError(f"SM {sm} has no arm64 variant; arm64 variants exist for SM {', '.join(arm)}")
            raise SelectionError(
                f"SM {sm} exists only for arm64; add --arm64 "
                f"(x86_64 SMs: {', '.join(unique(v.sm for v in self.enabled if not v.arm64))})"
            )
        on_line = [v for v in wanted if self.on_line(v, python, cuda)]
        if not on_line:
            asked = " ".join(x for x in (python, f"CUDA {cuda}" if cuda else None) if x)
            raise SelectionError(
                f"SM {sm} has no variant on {asked or 'the default line'}; it has: {', '.join(v.name for v in wanted)}"
            )
        wanted = on_line
        if len(wanted) > 1:  # an SM's own torch is the default line; a torch-bin row goes by name
            wanted = [v for v in wanted if not v.torch_wheel] or wanted
        if len(wanted) > 1:
            raise SelectionError(
                f"SM {sm} matches several variants ({', '.join(v.name for v in wanted)}); give the full name"
            )
        return self._usable(wanted[0])

    def select(
        self,
        sms: Iterable[str] = (),
        *,
        arm64: bool = False,
        systems: Iterable[str] = (),
        all: bool = False,
        none_means_all: bool = False,
        python: str | None = None,
        cuda: str | None = None,
    ) -> list[Variant]:
        """The variants a command line asks for, in matrix order, no duplicates.

        `sms` items may hold comma-separated lists ('80,89,90'); `systems`
        selects the variants of those systems and `all` every one, of the
        default set, or of the --python/--cuda line when one is given.
        `none_means_all`: asking for nothing selects every enabled variant
        instead of being refused (commands that only look: the CI matrix,
        `publish --check`).
        """
        tokens = sm_tokens(sms)
        systems = list(systems)
        refuse_conflicts(tokens, systems=systems, all=all, arm64=arm64)
        python, cuda = self.lines(python, cuda)
        pool = [v for v in self.enabled if self.on_line(v, python, cuda)]
        all = all or (none_means_all and not (tokens or systems))
        if not (tokens or systems or all):
            raise SelectionError(
                "no variant selected; use --sm SM (e.g. --sm 90, --sm 100 --arm64), --system SYSTEM or --all"
            )
        chosen: set[str] = set()
        if all:
            chosen.update(v.name for v in pool)
        for system in systems:
            if system not in self.systems:
                raise SelectionError(f"unknown system '{system}'; valid: {', '.join(self.systems)}")
            chosen.update(v.name for v in pool if v.system == system)
        for token in tokens:
            chosen.add(self.resolve(token, arm64=arm64, python=python, cuda=cuda).name)
        if not chosen:  # --all or --system over a line the matrix enables nothing on
            where = f" for {', '.join(systems)}" if systems else ""
            line = ", ".join(x for x in (python, cuda and f"CUDA {cuda}") if x) or "the default set"
            raise SelectionError(
                f"nothing to select: {self.source or 'the matrix'} enables no variant{where} in {line}"
                + "; `invoke variants --all` lists every combination with the reason it is disabled"
            )
        return [v for v in self.variants if v.name in chosen]

    def _usable(self, variant: Variant) -> Variant:
        if variant.disabled:
            raise SelectionError(f"{variant.name} is disabled in the matrix: {variant.disabled}")
        return variant


def _variant(
    row: Mapping[str, Any], defaults: Mapping[str, Any], systems: Mapping[str, Any], where: str, defaults_where: str
) -> Variant:
    unknown = sorted(set(row) - VARIANT_KEYS)
    if unknown:
        raise MatrixError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(VARIANT_KEYS))}")
    missing = [k for k in REQUIRED_VARIANT_KEYS if k not in row]
    if missing:
        raise MatrixError(f"{where}: missing key(s) {', '.join(missing)}")
    merged = {**defaults, **row}
    if "cuda" in merged:  # the CUDA line decides min_driver: its type first
        _string(merged, "cuda", where if "cuda" in row else defaults_where, '"12.9"')
    missing_defaults = [k for k in DEFAULT_KEYS if k not in merged]
    if missing_defaults:
        raise MatrixError(f"{where}: no value for {', '.join(missing_defaults)} (set it in [defaults])")

    def at(key: str) -> str:  # a wrong value is reported where it was written
        return where if key in row else defaults_where

    sm = _string(merged, "sm", at("sm"), '"90"')
    capability = _string(merged, "capability", at("capability"), '"9.0"')
    cuda = _string(merged, "cuda", at("cuda"), '"12.9"')
    system = _string(merged, "system", at("system"), '"x86_64-linux"')
    python = _string(merged, "python", at("python"), '"python312"')
    arch = _string(merged, "arch", at("arch"), '"Hopper"')
    min_driver = _integer(merged, "min_driver", at("min_driver"), "560 (the driver's major version)")
    torch = _string(merged, "torch", at("torch"), '"source" or "wheel"')
    if torch not in TORCH_KINDS:
        raise MatrixError(f"{at('torch')}: torch '{torch}' is not one of {', '.join(TORCH_KINDS)}")
    if not _SM.match(sm):
        raise MatrixError(f'{where}: sm \'{sm}\' is not like "90" or "100"')
    if not _CAPABILITY.match(capability) or capability.replace(".", "") != sm:
        raise MatrixError(f"{where}: capability '{capability}' does not match sm '{sm}'")
    if not _CUDA.match(cuda):
        raise MatrixError(f"{at('cuda')}: cuda '{cuda}' is not like \"12.9\"")
    if system not in systems:
        raise MatrixError(f"{where}: system '{system}' is not one of {', '.join(systems)}")
    if torch == "wheel" and system not in TORCH_WHEEL_SYSTEMS:
        raise MatrixError(
            f'{where}: torch = "wheel" needs {", ".join(TORCH_WHEEL_SYSTEMS)}: nixpkgs\' '
            f"torch-bin is the CPU wheel on {system}"
        )
    gpus = merged["gpus"]
    if not isinstance(gpus, list) or not gpus or not all(isinstance(g, str) for g in gpus):
        raise MatrixError(f"{where}: gpus must be a non-empty list of strings")
    default = merged.get("default", True)
    if not isinstance(default, bool):
        raise MatrixError(f"{where}: default must be true or false, not {_described(default)}")
    disabled = merged.get("disabled")
    if disabled is not None and (not isinstance(disabled, str) or not disabled.strip()):
        raise MatrixError(f"{where}: disabled must be a reason (a non-empty string)")

    cuda_tag = "cuda" + cuda.replace(".", "_")
    return Variant(
        name=f"vllm-{python}-{cuda_tag}-sm{sm}{TORCH_SUFFIX[torch]}{systems[system]}",
        sm=sm,
        capability=capability,
        arch=arch,
        gpus=tuple(gpus),
        system=system,
        python=python,
        cuda=cuda,
        cuda_tag=cuda_tag,
        cuda_packages="cudaPackages_" + cuda.replace(".", "_"),
        min_driver=min_driver,
        disabled=disabled,
        torch=torch,
        default=default,
    )


# -- axes: the product of SMs, Python lines and CUDA lines (issue #15) ----------------


def _cuda_lines(table: Any, where: str) -> dict[str, dict[str, Any]]:
    """[cuda."12.9"] tables: what each CUDA line brings to its rows (min_driver)."""
    lines = _table(table, f"{where}: [cuda]", '[cuda."12.9"] tables')
    out = {}
    for cuda, spec in lines.items():
        spec = _table(spec, f'{where}: [cuda."{cuda}"]', "min_driver")
        if set(spec) != {"min_driver"}:
            raise MatrixError(f'{where}: [cuda."{cuda}"] must hold exactly min_driver')
        out[cuda] = {"min_driver": _integer(spec, "min_driver", f'{where}: [cuda."{cuda}"]', "575")}
    return out


def _with_line(row: Mapping[str, Any], defaults: Mapping[str, Any], lines: Mapping[str, Any]) -> dict[str, Any]:
    """A row with its CUDA line's min_driver, unless the row or [defaults] sets one."""
    cuda = row.get("cuda", defaults.get("cuda"))
    if "min_driver" in row or "min_driver" in defaults or not isinstance(cuda, str) or cuda not in lines:
        return dict(row)
    return {**row, "min_driver": lines[cuda]["min_driver"]}


@dataclass(frozen=True)
class Pin:
    """What the pinned nixpkgs can build, as data read from its files ([pin])."""

    torch_version: str | None = None
    vllm_version: str | None = None
    torch_capabilities: tuple[str, ...] | None = None
    vllm_capabilities: tuple[str, ...] | None = None
    cuda_capabilities: Mapping[str, tuple[str, str | None]] | None = None  # cap -> (min, max), inclusive
    # nixpkgs' torch-bin: its version and the CUDA line its x86_64 wheels are built
    # for (+cu128: torch/bin/binary-hashes.nix); it links the instance's cudaPackages
    torch_bin_version: str | None = None
    torch_bin_cuda: str | None = None

    def why_not(self, variant: Variant) -> str | None:
        """Why the pin cannot build this combination, or None: the facts, never hope."""
        cap = variant.capability
        if self.cuda_capabilities is not None:
            bounds = self.cuda_capabilities.get(cap)
            if bounds is None:
                return f"nixpkgs at the pin knows no CUDA capability {cap}"
            low, high = bounds
            if _version_key(variant.cuda) < _version_key(low):
                return f"capability {cap} needs CUDA {low} or newer (nixpkgs' CUDA capability table)"
            if high is not None and _version_key(variant.cuda) > _version_key(high):
                return f"CUDA {variant.cuda} no longer supports capability {cap} (last: CUDA {high})"
        if variant.torch_wheel and self.torch_bin_cuda is not None and variant.cuda != self.torch_bin_cuda:
            return (
                f"{_named('torch-bin', self.torch_bin_version)} at the pin is a CUDA {self.torch_bin_cuda} wheel: "
                f'a torch = "wheel" row must be on CUDA {self.torch_bin_cuda}'
            )
        if not variant.torch_wheel and self.torch_capabilities is not None and cap not in self.torch_capabilities:
            return f"{_named('torch', self.torch_version)} at the pin cannot target {cap} (not on its list)"
        if self.vllm_capabilities is not None and cap not in self.vllm_capabilities:
            return f"{_named('vllm', self.vllm_version)} at the pin cannot target {cap} (not on its list)"
        return None


def _named(package: str, version: str | None) -> str:
    return f"{package} {version}" if version else package


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _pin(table: Any, where: str) -> Pin:
    pin = _table(table, f"{where}: [pin]", ", ".join(sorted(PIN_KEYS)))
    unknown = sorted(set(pin) - PIN_KEYS)
    if unknown:
        raise MatrixError(
            f"{where}: unknown key(s) in [pin]: {', '.join(unknown)}; valid: {', '.join(sorted(PIN_KEYS))}"
        )

    for key, example in PIN_VERSIONS:
        value = pin.get(key)
        if value is not None and not (isinstance(value, str) and _VERSION.match(value)):
            raise MatrixError(f'{where}: [pin] {key} must be a version like "{example}", not {_described(value)}')

    def caps(key: str) -> tuple[str, ...] | None:
        value = pin.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise MatrixError(f'{where}: [pin] {key} must be a list of capabilities like "9.0"')
        return tuple(value)

    bounds = None
    if "cuda_capabilities" in pin:
        bounds = {}
        for cap, pair in _table(
            pin["cuda_capabilities"], f"{where}: [pin.cuda_capabilities]", 'capability = ["min CUDA", "max CUDA" or ""]'
        ).items():
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair) and pair[0]):
                raise MatrixError(f'{where}: [pin.cuda_capabilities] "{cap}" must be ["min", "max" or ""]')
            bounds[cap] = (pair[0], pair[1] or None)
    return Pin(
        pin.get("torch_version"),
        pin.get("vllm_version"),
        caps("torch_capabilities"),
        caps("vllm_capabilities"),
        bounds,
        pin.get("torch_bin_version"),
        pin.get("torch_bin_cuda"),
    )


def _product(data: Mapping[str, Any], defaults: Mapping[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    """Rows of every [[sm]] x [axes] python x [axes] cuda, less [[exclude]] (kept, disabled with its reason).

    The default line ([defaults] python and cuda) is the default set."""
    sms = data.get("sm", [])
    if not isinstance(sms, list):
        raise MatrixError(f"{where}: sm must be [[sm]] tables, not {_described(sms)}")
    axes = _table(data.get("axes", {}), f"{where}: [axes]", "python, cuda")
    unknown = sorted(set(axes) - {"python", "cuda"})
    if unknown:
        raise MatrixError(f"{where}: unknown key(s) in [axes]: {', '.join(unknown)}; valid: cuda, python")
    line = {key: axes.get(key, [defaults[key]] if key in defaults else []) for key in ("python", "cuda")}
    for key, values in line.items():
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise MatrixError(f"{where}: [axes] {key} must be a non-empty list of strings")
    excludes = data.get("exclude", [])
    if not isinstance(excludes, list):
        raise MatrixError(f"{where}: exclude must be [[exclude]] tables, not {_described(excludes)}")
    rules = []
    for index, rule in enumerate(excludes, start=1):
        rule = _table(rule, f"{where}: exclude #{index}", "sm, system, python, cuda and reason")
        bad = sorted(set(rule) - set(EXCLUDE_MATCH_KEYS) - {"reason"})
        if bad or not isinstance(rule.get("reason"), str) or not rule["reason"].strip():
            raise MatrixError(f"{where}: exclude #{index} needs a reason and only {', '.join(EXCLUDE_MATCH_KEYS)}")
        rules.append(rule)
    rows = []
    for index, table in enumerate(sms, start=1):
        table = _table(table, f"{where}: sm #{index}", ", ".join(sorted(SM_KEYS)))
        bad = sorted(set(table) - SM_KEYS)
        if bad:
            raise MatrixError(
                f"{where}: sm #{index}: unknown key(s) {', '.join(bad)}; valid: {', '.join(sorted(SM_KEYS))}"
            )
        if not isinstance(table.get("default", True), bool):  # else silently out of the default set
            raise MatrixError(
                f"{where}: sm #{index}: default must be true or false, not {_described(table['default'])}"
            )
        for python in line["python"]:
            for cuda in line["cuda"]:
                on_line = python == defaults.get("python") and cuda == defaults.get("cuda")
                row = {
                    **table,
                    "python": python,
                    "cuda": cuda,
                    "default": on_line and table.get("default", True) is True,
                }
                for rule in [] if "disabled" in table else rules:
                    if all(rule[k] == row.get(k) for k in EXCLUDE_MATCH_KEYS if k in rule):
                        row["disabled"] = rule["reason"]
                        break
                rows.append((f"{where}: sm #{index} ({python}, CUDA {cuda})", row))
    return rows


def _checked(variant: Variant, pin: Pin) -> Variant:
    if variant.disabled:
        return variant
    reason = pin.why_not(variant)
    return replace(variant, disabled=reason) if reason else variant


# -- value types: TOML gives int, float, bool, str, list, dict, dates ----------


def _described(value: Any) -> str:
    """A TOML value as a user wrote it: '"525.60.13"', 'the number 12.9', 'a table'."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def _table(value: Any, where: str, holding: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise MatrixError(f"{where} must be a table (holding {holding}), not {_described(value)}")
    return value


def _string(table: Mapping[str, Any], key: str, where: str, example: str, *, empty: bool = False) -> str:
    value = table[key]
    if not isinstance(value, str) or not (empty or value.strip()):
        raise MatrixError(f"{where}: {key} must be a string like {example}, not {_described(value)}")
    return value


def _integer(table: Mapping[str, Any], key: str, where: str, example: str) -> int:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MatrixError(f"{where}: {key} must be a positive whole number like {example}, not {_described(value)}")
    return value


def comma_list(value: object) -> list[str]:
    """'80, 89,,90' -> ['80', '89', '90']: the words of one comma-separated option value."""
    return [t.strip() for t in str(value).split(",") if t.strip()]


def sm_tokens(sms: Iterable[str]) -> list[str]:
    """The SMs of --sm values ('80,89' counts two); a value naming none is refused, not ignored."""
    tokens = []
    for item in sms:
        words = comma_list(item)
        if not words:
            raise SelectionError(f"--sm '{item}' names no SM; give one like --sm 90 (or 80,89,90)")
        tokens += words
    return tokens


def split_auto(tokens: Sequence[str]) -> tuple[list[str], bool]:
    """(the named SMs, whether `auto` was among them): `--sm auto` means the local GPUs' variants."""
    named = [t for t in tokens if t.lower() != "auto"]
    return named, len(named) < len(tokens)


def refuse_conflicts(tokens: Sequence[str], *, systems: Sequence[str], all: bool, arm64: bool) -> None:
    """--sm, --system and --all each select on their own: together they would
    silently build (or list) their union, hours nobody asked for (issue #11)."""
    given = [flag for flag, used in (("--sm", tokens), ("--all", all), ("--system", systems)) if used]
    if len(given) > 1:
        raise SelectionError(
            f"{given[0]} and {given[1]} conflict: each selects variants on its own; give one of "
            "--sm SM, --system SYSTEM or --all"
        )
    if arm64 and not tokens:
        raise SelectionError(
            "--arm64 applies to --sm only (--sm 90 --arm64 is the GH200 variant); "
            "for every arm64 variant use --system aarch64-linux"
        )


def sm_number(sm: str) -> str:
    """'90a' -> '90', '100f' -> '100': the SM a GPU and a cubin report, without the arch-specific suffix.

    compat's rule (as the smoke check's): the a/f suffix names a code target, not another GPU."""
    return compat.sm_of(sm)


def normalise_sm(text: str) -> str | None:
    """'90', 'sm90', 'SM_90a', '9.0' -> '90' / '90a'; None when it is not an SM."""
    lowered = text.lower()
    if lowered.startswith("sm_"):
        lowered = lowered[3:]
    elif lowered.startswith("sm"):
        lowered = lowered[2:]
    if _CAPABILITY.match(lowered):
        lowered = lowered.replace(".", "")
    return lowered if _SM.match(lowered) else None


def unique(items: Iterable[str]) -> list[str]:
    """`items` without repeats, in their first order."""
    return list(dict.fromkeys(items))
