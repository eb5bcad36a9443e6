"""What a valid nix/variants.toml is, and the variants it expands into.

The one validator of the matrix: every rule and its one-line message is here.
The flake does not read the TOML: it reads nix/variants.json, this module's
output written by `invoke variants --write` (vllm_variants.matrix.generated),
and refuses a stale one. tests/test_matrix.py holds a malformed file for every
message (MALFORMED).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from .. import userfiles
from ..errors import MatrixError
from .pin import Pin
from .variant import Variant

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
# [pin]'s version strings, in the order they are checked, with an example each
PIN_VERSIONS = (
    ("torch_version", "2.9.1"),
    ("vllm_version", "0.15.1"),
    ("torch_bin_version", "2.9.0"),
    ("torch_bin_cuda", "12.8"),
)
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)+\Z")

# No leading zero: '09.0' is a typo, not SM 90 (nor an unknown SM '090').
# \Z, not $: $ also matches before a final newline, and "90\n" is no SM.
# The model reads what a user types for an SM (--sm sm_90) with the same two.
SM_PATTERN = re.compile(r"^[1-9][0-9]{1,2}[af]?\Z")
CAPABILITY_PATTERN = re.compile(r"^[1-9][0-9]?\.[0-9][af]?\Z")
_CUDA = re.compile(r"^[0-9]+\.[0-9]+\Z")


def parse(path: Path, label: str) -> tuple[dict[str, Any], bytes]:
    """The matrix file parsed, and the bytes it was parsed from (nix/variants.json
    records their sha256); MatrixError, one line, for a file that cannot be read."""
    try:
        raw = userfiles.read_bytes(path, label, limit=MATRIX_LIMIT)
        return userfiles.parse_toml(userfiles.decode(raw, label), label), raw
    except userfiles.UserFileError as exc:
        raise MatrixError(str(exc)) from None


class Layout(NamedTuple):
    """What the file says, validated: the variants (every combination, the disabled with
    the reason), the systems with their name suffixes, the build setting, the default line."""

    variants: tuple[Variant, ...]
    systems: dict[str, str]  # system -> name suffix, in the file's order
    ram_per_job_gib: int
    default_python: str | None
    default_cuda: str | None


def read(data: Mapping[str, Any], where: str) -> Layout:
    """Validate the parsed file and expand it into its variants: the one authority on what a
    valid matrix is (nix/variants.json, which the flake reads, is this function's output).
    `where` names the file in every message: '<where>: <what is wrong>; <what is valid>'."""
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
        variants.append(_variant(_with_line(row, defaults, lines), defaults, systems, label, f"{where}: [defaults]"))
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
    return Layout(tuple(variants), systems, ram_per_job, defaults.get("python"), defaults.get("cuda"))


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
    if not SM_PATTERN.match(sm):
        raise MatrixError(f'{where}: sm \'{sm}\' is not like "90" or "100"')
    if not CAPABILITY_PATTERN.match(capability) or capability.replace(".", "") != sm:
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
