"""The matrix: one TOML, validated and expanded by Python alone; the flake reads the expansion."""

from __future__ import annotations

import ast
import json
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import support

from vllm_variants.errors import MatrixError, SelectionError
from vllm_variants.matrix import Matrix, generated, tomllib

MATRIX = support.REPO / "nix" / "variants.toml"

# The default set: the ten variants issue #7 names (torch built
# for the SM), the torch-bin row of issue #14, and the SMs issue #15 adds where
# the pin supports them on python312 / CUDA 12.9: the spec, not a derivation.
EXPECTED = {
    "vllm-python312-cuda12_9-sm70": ("70", "7.0", "Volta", "x86_64-linux"),
    "vllm-python312-cuda12_9-sm75": ("75", "7.5", "Turing", "x86_64-linux"),
    "vllm-python312-cuda12_9-sm80": ("80", "8.0", "Ampere DC", "x86_64-linux"),
    "vllm-python312-cuda12_9-sm86": ("86", "8.6", "Ampere", "x86_64-linux"),
    "vllm-python312-cuda12_9-sm89": ("89", "8.9", "Ada Lovelace", "x86_64-linux"),
    "vllm-python312-cuda12_9-sm90": ("90", "9.0", "Hopper", "x86_64-linux"),
    "vllm-python312-cuda12_9-sm100": ("100", "10.0", "Blackwell DC", "x86_64-linux"),
    "vllm-python312-cuda12_9-sm120": ("120", "12.0", "Blackwell", "x86_64-linux"),
    "vllm-python312-cuda12_9-sm90-arm64": ("90", "9.0", "Grace Hopper", "aarch64-linux"),
    "vllm-python312-cuda12_9-sm100-arm64": ("100", "10.0", "Grace Blackwell", "aarch64-linux"),
    "vllm-python312-cuda12_8-sm90-torchbin": ("90", "9.0", "Hopper", "x86_64-linux"),
    "vllm-python312-cuda12_9-sm61": ("61", "6.1", "Pascal", "x86_64-linux"),
    "vllm-python312-cuda12_9-sm103": ("103", "10.3", "Blackwell Ultra", "x86_64-linux"),
    "vllm-python312-cuda12_9-sm103-arm64": ("103", "10.3", "Grace Blackwell Ultra", "aarch64-linux"),
    "vllm-python312-cuda12_9-sm121-arm64": ("121", "12.1", "Blackwell (DGX Spark)", "aarch64-linux"),
}
# Valid beyond the default set, and why the rest are not (the pin's facts).
DISABLED = {
    "vllm-python312-cuda12_9-sm110-arm64": "capability 11.0 needs CUDA 13.0 or newer",
    "vllm-python313-cuda12_8-sm121-arm64": "capability 12.1 needs CUDA 12.9 or newer",
    "vllm-python312-cuda12_8-sm103": "capability 10.3 needs CUDA 12.9 or newer",
}


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    return Matrix.load(MATRIX)


def test_the_default_set_is_the_ten_the_torch_wheel_row_and_the_new_sms(matrix):
    got = {v.name: (v.sm, v.capability, v.arch, v.system) for v in matrix.default_set}
    assert got == EXPECTED
    assert [v.name for v in matrix.variants if v.torch == "wheel"] == ["vllm-python312-cuda12_8-sm90-torchbin"]
    for name, reason in DISABLED.items():
        assert matrix.by_name(name).disabled.startswith(reason), name
    # every combination of [[sm]] x python x CUDA is listed; each invalid one says why
    assert len(matrix.variants) == 15 * 2 * 2 + 1 and all(v.disabled for v in matrix.variants if not v.enabled)
    assert {v.python for v in matrix.enabled} == {"python312", "python313"}
    assert {v.cuda for v in matrix.enabled} == {"12.8", "12.9"}
    for v in matrix.default_set:
        # the torch-bin row lives on its wheel's CUDA line ([pin] torch_bin_cuda, issue #23)
        line = ("12.8", "cudaPackages_12_8", 570) if v.torch_wheel else ("12.9", "cudaPackages_12_9", 575)
        assert (v.python, v.cuda, v.cuda_packages, v.min_driver) == ("python312", *line)
        assert v.gpus, v.name


@pytest.mark.nix
def test_python_matrix_equals_nix_lib_variants(matrix, tmp_path):
    root = support.make_project(tmp_path / "p", git_init=False)
    nix_view = support.nix_eval(support.flake_ref(root), "lib.variants")
    assert nix_view == matrix.to_json()


@pytest.mark.nix
def test_lib_variants_never_imports_nixpkgs(matrix, tmp_path):
    """lib.variants evaluates even when nixpkgs is poison to touch."""
    poison = tmp_path / "poison"
    poison.mkdir()
    (poison / "flake.nix").write_text('{ outputs = { self }: throw "poisoned nixpkgs was evaluated"; }\n')
    (poison / "default.nix").write_text('abort "poisoned nixpkgs was imported"\n')
    root = support.make_project(tmp_path / "p", git_init=False)
    ref = support.flake_ref(root)
    assert support.nix_eval(ref, "lib.variants", standin=poison) == matrix.to_json()
    # ...while anything that needs nixpkgs does hit the poison (the guard works).
    proc = support.nix(
        "eval",
        "--json",
        f"{ref}#packages.x86_64-linux.vllm-python312-cuda12_9-sm90.name",
        *support.override(poison),
        check=False,
    )
    assert proc.returncode != 0 and "poisoned nixpkgs" in proc.stderr


def _with_extra_tables(root: Path, text: str) -> None:
    matrix_file = root / "nix" / "variants.toml"
    support.write_matrix(root, matrix_file.read_text() + textwrap.dedent(text))


@pytest.mark.nix
def test_adding_an_sm_is_one_table_and_an_explicit_row_still_works(tmp_path):
    """One [[sm]] gives that SM on every Python and CUDA line of [axes]; a [[variant]]
    table adds one row beside the product (here a Python 3.13 torch-bin twin)."""
    root = support.make_project(tmp_path / "p", git_init=False)
    _with_extra_tables(
        root,
        """
        [[sm]]
        sm = "89"
        capability = "8.9"
        arch = "Ada Lovelace"
        gpus = ["L40S"]
        system = "aarch64-linux"

        [[variant]]
        sm = "90"
        capability = "9.0"
        arch = "Hopper"
        gpus = ["H100"]
        system = "x86_64-linux"
        python = "python313"
        cuda = "12.8"
        torch = "wheel"
        default = false
        """,
    )
    python_view = Matrix.load(root / "nix" / "variants.toml")
    orin = {f"vllm-{py}-{cuda}-sm89-arm64" for py in ("python312", "python313") for cuda in ("cuda12_8", "cuda12_9")}
    twin = "vllm-python313-cuda12_8-sm90-torchbin"
    names = {v.name for v in python_view.variants}
    assert orin | {twin} <= names
    assert [v.name for v in python_view.default_set if "sm89-arm64" in v.name] == ["vllm-python312-cuda12_9-sm89-arm64"]
    assert not python_view.by_name(twin).default and python_view.by_name(twin).min_driver == 570
    ref = support.flake_ref(root)
    assert support.nix_eval(ref, "lib.variants") == python_view.to_json()
    packages = support.nix_eval(ref, "packages.x86_64-linux", apply="builtins.attrNames")
    assert twin in set(packages)
    versions = support.nix_eval(
        ref,
        "packages.x86_64-linux",
        apply=(
            f'p: {{ a = p."vllm-python313-cuda12_9-sm90".passthru.versions; b = p."{twin}".passthru.versions.cuda; }}'
        ),
    )
    assert versions["a"]["python"] == "3.13.9" and versions["a"]["cuda"] == "12.9" and versions["b"] == "12.8"


@pytest.mark.nix
def test_disabled_variant_stays_listed_without_a_package(tmp_path):
    root = support.make_project(tmp_path / "p", git_init=False)
    matrix_file = root / "nix" / "variants.toml"
    text = matrix_file.read_text().replace(
        'gpus = ["V100", "Titan V"]\n', 'gpus = ["V100", "Titan V"]\ndisabled = "CUDA 13 drops Volta"\n'
    )
    support.write_matrix(root, text)
    python_view = Matrix.load(matrix_file)
    sm70 = python_view.by_name("vllm-python312-cuda12_9-sm70")
    assert sm70.disabled == "CUDA 13 drops Volta"
    ref = support.flake_ref(root)
    assert support.nix_eval(ref, "lib.variants")[sm70.name]["disabled"] == "CUDA 13 drops Volta"
    assert sm70.name not in support.nix_eval(ref, "packages.x86_64-linux", apply="builtins.attrNames")
    with pytest.raises(SelectionError, match="disabled in the matrix: CUDA 13 drops Volta"):
        python_view.resolve("70")


def _first(data):
    return data["variant"][0]


def _sm(data):
    return data["sm"][0]


def _set(table, **values):
    return lambda d: table(d).update(values)


def _top(**values):
    return lambda d: d.update(values)


def _drop(table, key):
    return lambda d: table(d).pop(key)


_defaults = lambda d: d["defaults"]  # noqa: E731
_build = lambda d: d["build"]  # noqa: E731
_pin = lambda d: d["pin"]  # noqa: E731
_axes = lambda d: d["axes"]  # noqa: E731
_x86 = lambda d: d["systems"]["x86_64-linux"]  # noqa: E731
_line = lambda d: d["cuda"]["12.8"]  # noqa: E731
_bounds = lambda d: d["pin"]["cuda_capabilities"]  # noqa: E731
_MIN_DRIVER = "min_driver must be a positive whole number like 560 (the driver's major version)"
_VARIANT_KEYS = "arch, capability, cuda, default, disabled, gpus, min_driver, python, sm, system, torch"
_SM_KEYS = "arch, capability, default, disabled, gpus, sm, system"


@dataclass(frozen=True)
class Shape:
    """A malformed matrix: an edit of the parsed nix/variants.toml and the error after '<file>: '."""

    id: str
    edit: Callable[[dict[str, Any]], object]
    message: str


# Every shape the schema refuses (vllm_variants.matrix.schema: the one validator).
MALFORMED = [
    Shape(
        "unknown top-level key",
        _top(variants=[]),
        "unknown top-level key(s) variants; valid: axes, build, cuda, defaults, exclude, pin, sm, systems, variant",
    ),
    Shape(
        "defaults not a table",
        _top(defaults="python312"),
        '[defaults] must be a table (holding python, cuda, min_driver, torch), not "python312"',
    ),
    Shape(
        "unknown key in defaults",
        _set(_defaults, gpus=["H100"]),
        "unknown key(s) in [defaults]: gpus; valid: python, cuda, min_driver, torch",
    ),
    Shape(
        "systems not a table",
        _top(systems=["x86_64-linux"]),
        "[systems] must be a table (holding [systems.<system>] tables), not an array",
    ),
    Shape("no systems", _top(systems={}), "no [systems.<system>] table"),
    Shape(
        "systems entry not a table",
        lambda d: d["systems"].update({"x86_64-linux": ""}),
        '[systems.x86_64-linux] must be a table (holding exactly `suffix`), not ""',
    ),
    Shape(
        "systems entry beyond suffix",
        _set(_x86, arch="x86-64"),
        "[systems.x86_64-linux] must hold exactly `suffix`",
    ),
    Shape(
        "suffix a number",
        lambda d: d["systems"]["aarch64-linux"].update(suffix=64),
        '[systems.aarch64-linux]: suffix must be a string like "-arm64" (or ""), not the number 64',
    ),
    Shape("build not a table", _top(build=8), "[build] must be a table (holding ram_per_job_gib), not the number 8"),
    Shape("build empty", _drop(_build, "ram_per_job_gib"), "[build] needs an integer ram_per_job_gib"),
    Shape(
        "ram_per_job_gib a float",
        _set(_build, ram_per_job_gib=7.5),
        "[build]: ram_per_job_gib must be a positive whole number like 8 (GiB), not the number 7.5",
    ),
    Shape(
        "ram_per_job_gib zero",
        _set(_build, ram_per_job_gib=0),
        "[build]: ram_per_job_gib must be a positive whole number like 8 (GiB), not the number 0",
    ),
    Shape("variant a string", _top(variant="sm90"), 'variant must be [[variant]] tables, not "sm90"'),
    Shape(
        "cuda not a table",
        _top(cuda=["12.9"]),
        '[cuda] must be a table (holding [cuda."12.9"] tables), not an array',
    ),
    Shape(
        "cuda line not a table",
        lambda d: d["cuda"].update({"12.8": 570}),
        '[cuda."12.8"] must be a table (holding min_driver), not the number 570',
    ),
    Shape("cuda line beyond min_driver", _set(_line, toolkit="12.8.1"), '[cuda."12.8"] must hold exactly min_driver'),
    Shape(
        "cuda line min_driver a version",
        _set(_line, min_driver="570.26"),
        '[cuda."12.8"]: min_driver must be a positive whole number like 575, not "570.26"',
    ),
    Shape(
        "pin not a table",
        _top(pin=True),
        "[pin] must be a table (holding cuda_capabilities, torch_bin_cuda, torch_bin_version, torch_capabilities, "
        "torch_version, vllm_capabilities, vllm_version), not true",
    ),
    Shape(
        "unknown key in pin",
        _set(_pin, torch_capability=["9.0"]),
        "unknown key(s) in [pin]: torch_capability; valid: cuda_capabilities, torch_bin_cuda, torch_bin_version, "
        "torch_capabilities, torch_version, vllm_capabilities, vllm_version",
    ),
    Shape(
        "pin cuda_capabilities not a table",
        _set(_pin, cuda_capabilities=["9.0"]),
        '[pin.cuda_capabilities] must be a table (holding capability = ["min CUDA", "max CUDA" or ""]), not an array',
    ),
    Shape(
        "pin bounds one version",
        lambda d: _bounds(d).update({"9.0": ["11.8"]}),
        '[pin.cuda_capabilities] "9.0" must be ["min", "max" or ""]',
    ),
    Shape(
        "pin bounds no minimum",
        lambda d: _bounds(d).update({"9.0": ["", ""]}),
        '[pin.cuda_capabilities] "9.0" must be ["min", "max" or ""]',
    ),
    Shape(
        "pin torch-bin CUDA line a number",
        _set(_pin, torch_bin_cuda=12.8),
        '[pin] torch_bin_cuda must be a version like "12.8", not the number 12.8',
    ),
    Shape(
        "pin torch-bin version a word",
        _set(_pin, torch_bin_version="latest"),
        '[pin] torch_bin_version must be a version like "2.9.0", not "latest"',
    ),
    Shape(
        "pin capabilities a string",
        _set(_pin, torch_capabilities="9.0"),
        '[pin] torch_capabilities must be a list of capabilities like "9.0"',
    ),
    Shape(
        "pin capabilities numbers",
        _set(_pin, vllm_capabilities=[9.0]),
        '[pin] vllm_capabilities must be a list of capabilities like "9.0"',
    ),
    Shape("sm a table", _top(sm={"sm": "90"}), "sm must be [[sm]] tables, not a table"),
    Shape("axes not a table", _top(axes=[]), "[axes] must be a table (holding python, cuda), not an array"),
    Shape(
        "unknown key in axes",
        _set(_axes, torch=["source"]),
        "unknown key(s) in [axes]: torch; valid: cuda, python",
    ),
    Shape("axes python empty", _set(_axes, python=[]), "[axes] python must be a non-empty list of strings"),
    Shape("axes cuda numbers", _set(_axes, cuda=[12.9]), "[axes] cuda must be a non-empty list of strings"),
    Shape(
        "no python line at all",
        lambda d: (d["axes"].pop("python"), d["defaults"].pop("python")),
        "[axes] python must be a non-empty list of strings",
    ),
    Shape(
        "exclude a table",
        _top(exclude={"sm": "90", "reason": "r"}),
        "exclude must be [[exclude]] tables, not a table",
    ),
    Shape(
        "exclude not a table",
        _top(exclude=["sm90"]),
        'exclude #1 must be a table (holding sm, system, python, cuda and reason), not "sm90"',
    ),
    Shape(
        "exclude without a reason",
        _top(exclude=[{"sm": "90"}]),
        "exclude #1 needs a reason and only sm, system, python, cuda",
    ),
    Shape(
        "exclude with a blank reason",
        _top(exclude=[{"sm": "90", "reason": " "}]),
        "exclude #1 needs a reason and only sm, system, python, cuda",
    ),
    Shape(
        "exclude by an unknown key",
        _top(exclude=[{"sm": "90", "reason": "r"}, {"arch": "Volta", "reason": "r"}]),
        "exclude #2 needs a reason and only sm, system, python, cuda",
    ),
    Shape(
        "sm not a table",
        lambda d: d["sm"].insert(1, "90"),
        f'sm #2 must be a table (holding {_SM_KEYS}), not "90"',
    ),
    Shape("sm typo", _set(_sm, gpu=["X"]), f"sm #1: unknown key(s) gpu; valid: {_SM_KEYS}"),
    Shape("sm default a string", _set(_sm, default="no"), 'sm #1: default must be true or false, not "no"'),
    Shape("no rows", lambda d: (d.pop("sm"), d.pop("variant")), "no [[variant]] or [[sm]] tables"),
    Shape(
        "variant not a table",
        lambda d: d["variant"].insert(0, "sm90"),
        f'variant #1 must be a table (holding {_VARIANT_KEYS}), not "sm90"',
    ),
    Shape("variant typo", _set(_first, gpu=["X"]), f"variant #1: unknown key(s) gpu; valid: {_VARIANT_KEYS}"),
    Shape("variant missing keys", _drop(_first, "arch"), "variant #1: missing key(s) arch"),
    Shape(
        "cuda a number",
        # the torch-bin row names its own line: it takes [defaults]' here
        lambda d: (d["defaults"].update(cuda=12.9), _first(d).pop("cuda")),
        '[defaults]: cuda must be a string like "12.9", not the number 12.9',
    ),
    Shape(
        "no torch",
        _drop(_defaults, "torch"),
        "sm #1 (python312, CUDA 12.8): no value for torch (set it in [defaults])",
    ),
    Shape("sm a number", _set(_first, sm=70), 'variant #1: sm must be a string like "90", not the number 70'),
    Shape(
        "capability a number",
        _set(_first, capability=7.0),
        'variant #1: capability must be a string like "9.0", not the number 7.0',
    ),
    Shape(
        "system an array",
        _set(_first, system=["x86_64-linux"]),
        'variant #1: system must be a string like "x86_64-linux", not an array',
    ),
    Shape(
        "python a table",
        _set(_first, python={"version": "3.12"}),
        'variant #1: python must be a string like "python312", not a table',
    ),
    Shape("arch blank", _set(_first, arch=" "), 'variant #1: arch must be a string like "Hopper", not " "'),
    Shape(
        "min_driver a full version",
        _set(_defaults, min_driver="525.60.13"),
        f'[defaults]: {_MIN_DRIVER}, not "525.60.13"',
    ),
    Shape("min_driver a float", _set(_first, min_driver=525.6), f"variant #1: {_MIN_DRIVER}, not the number 525.6"),
    Shape("min_driver true", _set(_defaults, min_driver=True), f"[defaults]: {_MIN_DRIVER}, not true"),
    Shape(
        "torch a bool",
        _set(_first, torch=True),
        'variant #1: torch must be a string like "source" or "wheel", not true',
    ),
    Shape("torch kind", _set(_first, torch="conda"), "variant #1: torch 'conda' is not one of source, wheel"),
    Shape(
        "torch kind in defaults",
        _set(_defaults, torch="conda"),
        "[defaults]: torch 'conda' is not one of source, wheel",
    ),
    Shape("sm with a leading zero", _set(_first, sm="090"), 'variant #1: sm \'090\' is not like "90" or "100"'),
    Shape(
        "sm with a final newline",  # Python's `$` matched before it (fixed: \Z)
        _set(_first, sm="90\n"),
        'variant #1: sm \'90\n\' is not like "90" or "100"',
    ),
    Shape("capability", _set(_first, capability="9.1"), "variant #1: capability '9.1' does not match sm '90'"),
    Shape(
        "capability with a leading zero",
        _set(_first, sm="90", capability="09.0"),
        "variant #1: capability '09.0' does not match sm '90'",
    ),
    Shape(
        "cuda not a version",
        _set(_first, cuda="12", min_driver=575),
        "variant #1: cuda '12' is not like \"12.9\"",
    ),
    Shape(
        "system",
        _set(_first, system="riscv64-linux"),
        "variant #1: system 'riscv64-linux' is not one of x86_64-linux, aarch64-linux",
    ),
    # nixpkgs' torch-bin is the CPU wheel on aarch64-linux (torch/bin/binary-hashes.nix)
    Shape(
        "torch wheel on arm64",
        _set(_first, system="aarch64-linux"),  # the first [[variant]] is the torch-bin row
        'variant #1: torch = "wheel" needs x86_64-linux: nixpkgs\' torch-bin is the CPU wheel on aarch64-linux',
    ),
    Shape("gpus empty", _set(_first, gpus=[]), "variant #1: gpus must be a non-empty list of strings"),
    Shape("gpus numbers", _set(_first, gpus=[100]), "variant #1: gpus must be a non-empty list of strings"),
    Shape("default a string", _set(_first, default="yes"), 'variant #1: default must be true or false, not "yes"'),
    Shape(
        "disabled blank",
        _set(_sm, disabled=" "),
        "sm #1 (python312, CUDA 12.8): disabled must be a reason (a non-empty string)",
    ),
    Shape("disabled true", _set(_first, disabled=True), "variant #1: disabled must be a reason (a non-empty string)"),
    Shape(
        "duplicate names",  # an explicit row the product already holds; each named once (linear: issue #13)
        lambda d: d["variant"].append(
            {"sm": "70", "capability": "7.0", "arch": "Volta", "gpus": ["V100"], "system": "x86_64-linux"}
        ),
        "duplicate variant name(s): vllm-python312-cuda12_9-sm70",
    ),
]


def _malformed(shape: Shape) -> dict[str, Any]:
    data = tomllib.loads(MATRIX.read_text())
    shape.edit(data)
    return data


def _nix_error(stderr: str) -> str:
    """The message of Nix's last `error:`, its continuation lines unindented."""
    message = stderr.rsplit("error: ", 1)[-1].rstrip("\n")
    return re.sub(r"\n +", "\n", message)


@pytest.mark.parametrize("shape", MALFORMED, ids=[s.id for s in MALFORMED])
def test_a_malformed_matrix_is_refused_in_one_line(shape):
    data = _malformed(shape)
    with pytest.raises(MatrixError) as excinfo:
        Matrix.from_toml(data, source=MATRIX)
    assert str(excinfo.value) == f"{MATRIX}: {shape.message}"


def _raise_sites() -> dict[str, tuple[re.Pattern[str], int]]:
    """Each `raise MatrixError(...)` of the one validator (matrix/schema.py) that judges
    the parsed file, as a pattern of its message. `parse`'s own (a file that
    cannot be read) come before any data: tests/test_every_task.py walks those."""
    from vllm_variants.matrix import schema

    sites = {}
    functions = [f for f in ast.walk(ast.parse(Path(schema.__file__).read_text())) if isinstance(f, ast.FunctionDef)]
    for node in (n for f in functions if f.name != "parse" for n in ast.walk(f)):
        if (
            isinstance(node, ast.Raise)
            and isinstance(node.exc, ast.Call)
            and ast.unparse(node.exc.func) == "MatrixError"
        ):
            (text,) = node.exc.args
            parts = text.values if isinstance(text, ast.JoinedStr) else [text]
            fixed = [p.value for p in parts if isinstance(p, ast.Constant)]
            pattern = "".join(re.escape(p.value) if isinstance(p, ast.Constant) else ".*" for p in parts)
            sites[ast.unparse(text)] = (re.compile(pattern, re.DOTALL), len("".join(fixed)))
    return sites


def _site_of(message: str, sites: dict[str, tuple[re.Pattern[str], int]]) -> str:
    """The raise a message comes from: of those whose pattern it fits, the one with the most fixed text."""
    fits = sorted((fixed, site) for site, (pattern, fixed) in sites.items() if pattern.fullmatch(message))
    assert fits, f"no raise in matrix/schema.py gives {message!r}"
    assert len(fits) == 1 or fits[-1][0] > fits[-2][0], f"{message!r} fits {fits[-1][1]} and {fits[-2][1]} alike"
    return fits[-1][1]


def test_every_rule_of_the_validator_has_a_malformed_row():
    """Not a twin check (there is one validator now, issue #24): every refusal
    schema.py can give is exercised by a row of MALFORMED."""
    sites = _raise_sites()
    assert len(sites) > 30  # the walk found schema.py's raises
    covered = {_site_of(f"{MATRIX}: {shape.message}", sites) for shape in MALFORMED}
    assert sorted(set(sites) - covered) == [], "a raise of matrix/schema.py with no row in MALFORMED"


# -- nix/variants.json: the expansion the flake reads (issue #24) ---------------------

STALE = "nix/variants.json is stale: nix/variants.toml changed since it was generated; run `invoke variants --write`"


def test_the_committed_json_is_what_the_toml_expands_to():
    """The drift check (kernel-builder's way): the flake's copy is exactly what
    `invoke variants --write` makes of the committed TOML, its sha256 included."""
    assert generated.update(support.REPO, check=True) is False
    document = json.loads((support.REPO / generated.PATH).read_text())
    matrix, sha256 = generated.expand(MATRIX)
    assert document == generated.document(matrix, sha256)
    assert document["variants"] == Matrix.load(MATRIX).to_json() and document["source"]["path"] == generated.SOURCE


@pytest.mark.nix
def test_a_malformed_matrix_fails_lib_variants_through_the_flake(tmp_path):
    """A broken TOML is one line on both routes: the flake refuses the JSON it no longer
    matches, naming the command, and the command names what is wrong; nothing is written."""
    root = support.make_project(tmp_path / "p", git_init=False)
    matrix_file = root / "nix" / "variants.toml"
    matrix_file.write_text(matrix_file.read_text().replace('torch = "wheel"', 'torch = "conda"'))
    proc = support.nix("eval", "--json", f"{support.flake_ref(root)}#lib.variants", check=False)
    assert proc.returncode == 1
    assert _nix_error(proc.stderr) == STALE
    before = (root / generated.PATH).read_text()
    with pytest.raises(MatrixError) as excinfo:
        generated.update(root, label="nix/variants.toml")
    assert str(excinfo.value) == "nix/variants.toml: variant #1: torch 'conda' is not one of source, wheel"
    assert (root / generated.PATH).read_text() == before


@pytest.mark.nix
@pytest.mark.parametrize("output", ["lib.variants", "lib.systems", "packages.x86_64-linux", "hydraJobs"])
def test_a_stale_or_missing_json_is_refused_by_every_output_in_one_line(output, tmp_path):
    root = support.make_project(tmp_path / "p", git_init=False)
    matrix_file = root / "nix" / "variants.toml"
    matrix_file.write_text(
        matrix_file.read_text() + "\n# a comment is a change: the JSON names the bytes it came from\n"
    )
    ref = support.flake_ref(root)
    argv = ["eval", "--json", f"{ref}#{output}", "--apply", "builtins.typeOf", *support.override()]
    proc = support.nix(*argv, check=False)
    assert proc.returncode == 1 and _nix_error(proc.stderr) == STALE, proc.stderr
    (root / generated.PATH).unlink()
    proc = support.nix(*argv, check=False)
    assert proc.returncode == 1
    assert _nix_error(proc.stderr) == "nix/variants.json is missing; run `invoke variants --write`", proc.stderr
    assert generated.update(root) is True  # the command named: the flake reads it again
    assert support.nix_eval(ref, "lib.variants") == Matrix.load(matrix_file).to_json()


@pytest.mark.parametrize(
    "token, arm64, expected",
    [
        ("90", False, "vllm-python312-cuda12_9-sm90"),
        ("sm90", False, "vllm-python312-cuda12_9-sm90"),
        ("SM_90", False, "vllm-python312-cuda12_9-sm90"),
        ("9.0", False, "vllm-python312-cuda12_9-sm90"),
        ("100", True, "vllm-python312-cuda12_9-sm100-arm64"),
        ("vllm-python312-cuda12_9-sm100-arm64", False, "vllm-python312-cuda12_9-sm100-arm64"),
    ],
)
def test_resolve_accepts_the_usual_spellings(matrix, token, arm64, expected):
    assert matrix.resolve(token, arm64=arm64).name == expected


@pytest.mark.parametrize(
    "token, arm64, message",
    [
        (
            "91",
            False,
            "unknown SM '91'; valid SMs: 61, 70, 75, 80, 86, 89, 90, 100, 103, 120 (x86_64-linux); "
            "90, 100, 103, 121 (aarch64-linux, with --arm64)",
        ),
        ("80", True, "SM 80 has no arm64 variant; arm64 variants exist for SM 90, 100"),
        ("hopper", False, "'hopper' is not an SM"),
        ("vllm-python312-cuda12_9-sm90", True, "--arm64 conflicts"),
        ("vllm-nope", False, "unknown variant 'vllm-nope'; the default set: vllm-python312-cuda12_9-sm61"),
    ],
)
def test_resolve_refuses_with_one_line_listing_valid_choices(matrix, token, arm64, message):
    with pytest.raises(SelectionError) as excinfo:
        matrix.resolve(token, arm64=arm64)
    assert message in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_an_sm_with_a_leading_zero_is_not_an_sm(matrix):
    for token in ("09.0", "090", "sm09"):
        with pytest.raises(SelectionError, match=rf"^'{token}' is not an SM"):
            matrix.resolve(token)


def test_to_json_is_the_nix_shape(matrix):
    record = matrix.to_json()["vllm-python312-cuda12_9-sm90-arm64"]
    assert json.loads(json.dumps(record)) == {
        "name": "vllm-python312-cuda12_9-sm90-arm64",
        "sm": "90",
        "capability": "9.0",
        "arch": "Grace Hopper",
        "gpus": ["GH200"],
        "system": "aarch64-linux",
        "python": "python312",
        "cuda": "12.9",
        "cuda_tag": "cuda12_9",
        "cuda_packages": "cudaPackages_12_9",
        "min_driver": 575,
        "torch": "source",
        "default": True,
        "disabled": None,
    }


FLOX = support.REPO / "tests" / "fixtures" / "matrix" / "flox-product.toml"


@pytest.mark.nix
def test_the_flox_product_fits_in_thirty_lines_and_the_flake_reads_its_expansion(tmp_path):
    """Issue #15: Python 3.11-3.13 x CUDA 12.8/12.9 x SM 61-121, hundreds of hand-copied
    files in the Flox repository, is at most 30 lines of TOML here."""
    assert len(FLOX.read_text().splitlines()) <= 30
    product = Matrix.load(FLOX)
    assert len(product.variants) == 14 * 3 * 2  # every [[sm]] on every Python and CUDA line
    assert {v.python for v in product.enabled} == {"python311", "python312", "python313"}
    # the CUDA 12.8 line cannot target 10.3 and 12.1 (nixpkgs' table): listed, disabled, with the reason
    refused = [v for v in product.variants if not v.enabled]
    assert {(v.sm, v.cuda) for v in refused} == {("103", "12.8"), ("121", "12.8")}
    assert all("needs CUDA 12.9 or newer" in v.disabled for v in refused)
    assert len(product.default_set) == 14
    # the flake's side reads what Python expanded (nix/matrix.nix, as flake.nix calls it)
    expanded = tmp_path / "flox.json"
    expanded.write_text(generated.render(*generated.expand(FLOX)))
    nix_view = support.nix(
        "eval",
        "--json",
        "--impure",
        "--expr",
        f"(import {support.REPO}/nix/matrix.nix {{ generated = {expanded}; source = {FLOX}; }}).variants",
    ).stdout
    assert json.loads(nix_view) == product.to_json()
