"""The matrix: one TOML, read the same way by Python and by Nix."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import support

from vllm_variants.errors import MatrixError, SelectionError
from vllm_variants.matrix import Matrix, tomllib

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
    "vllm-python312-cuda12_9-sm90-torchbin": ("90", "9.0", "Hopper", "x86_64-linux"),
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
    assert [v.name for v in matrix.variants if v.torch == "wheel"] == ["vllm-python312-cuda12_9-sm90-torchbin"]
    for name, reason in DISABLED.items():
        assert matrix.by_name(name).disabled.startswith(reason), name
    # every combination of [[sm]] x python x CUDA is listed; each invalid one says why
    assert len(matrix.variants) == 15 * 2 * 2 + 1 and all(v.disabled for v in matrix.variants if not v.enabled)
    assert {v.python for v in matrix.enabled} == {"python312", "python313"}
    assert {v.cuda for v in matrix.enabled} == {"12.8", "12.9"}
    for v in matrix.default_set:
        assert (v.python, v.cuda, v.cuda_packages, v.min_driver) == ("python312", "12.9", "cudaPackages_12_9", 575)
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
    matrix_file.write_text(matrix_file.read_text() + textwrap.dedent(text))


@pytest.mark.nix
def test_adding_an_sm_is_one_table_and_an_explicit_row_still_works(tmp_path):
    """One [[sm]] gives that SM on every Python and CUDA line of [axes]; a [[variant]]
    table adds one row beside the product (here a CUDA 12.8 torch-bin twin)."""
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
        cuda = "12.8"
        torch = "wheel"
        default = false
        """,
    )
    python_view = Matrix.load(root / "nix" / "variants.toml")
    orin = {f"vllm-{py}-{cuda}-sm89-arm64" for py in ("python312", "python313") for cuda in ("cuda12_8", "cuda12_9")}
    twin = "vllm-python312-cuda12_8-sm90-torchbin"
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
    matrix_file.write_text(text)
    python_view = Matrix.load(matrix_file)
    sm70 = python_view.by_name("vllm-python312-cuda12_9-sm70")
    assert sm70.disabled == "CUDA 13 drops Volta"
    ref = support.flake_ref(root)
    assert support.nix_eval(ref, "lib.variants")[sm70.name]["disabled"] == "CUDA 13 drops Volta"
    assert sm70.name not in support.nix_eval(ref, "packages.x86_64-linux", apply="builtins.attrNames")
    with pytest.raises(SelectionError, match="disabled in the matrix: CUDA 13 drops Volta"):
        python_view.resolve("70")


BAD_TABLES = [
    ('gpu = ["X"]\n', "unknown key"),
    ('capability = "9.1"\n', "does not match sm"),
    ('system = "riscv64-linux"\n', "is not one of"),
    ('torch = "conda"\n', "torch 'conda' is not one of source, wheel"),
    # nixpkgs' torch-bin is the CPU wheel on aarch64-linux (torch/bin/binary-hashes.nix)
    (
        'system = "aarch64-linux"\n',  # the first [[variant]] is the torch-bin row
        "needs x86_64-linux: nixpkgs' torch-bin is the CPU wheel on aarch64-linux",
    ),
]


@pytest.mark.nix
@pytest.mark.parametrize(
    "replacement, message", BAD_TABLES, ids=["typo", "capability", "system", "torch-kind", "torch-wheel-arm64"]
)
def test_malformed_matrix_fails_on_both_sides(tmp_path, replacement, message):
    root = support.make_project(tmp_path / "p", git_init=False)
    matrix_file = root / "nix" / "variants.toml"
    key = replacement.split(" ")[0]
    lines = matrix_file.read_text().splitlines(keepends=True)
    # change the first variant table's line for `key` (or add the typo'd key)
    first = next(i for i, line in enumerate(lines) if line.startswith("[[variant]]"))
    target = next((i for i in range(first, len(lines)) if lines[i].startswith(key + " ")), None)
    if target is None:
        lines.insert(first + 1, replacement)
    else:
        lines[target] = replacement
    matrix_file.write_text("".join(lines))

    with pytest.raises(MatrixError, match=message) as excinfo:
        Matrix.load(matrix_file)
    assert "\n" not in str(excinfo.value)
    proc = support.nix("eval", "--json", f"{support.flake_ref(root)}#lib.variants", check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


def _first(data):
    return data["variant"][0]


# (change to the parsed matrix, the whole message); `where` is the file's path
WRONG_TYPES = {
    "min_driver a full version": (
        lambda d: d["defaults"].update(min_driver="525.60.13"),
        "{where}: [defaults]: min_driver must be a positive whole number like 560 (the driver's major version), "
        'not "525.60.13"',
    ),
    "min_driver a float in a variant": (
        lambda d: _first(d).update(min_driver=525.6),
        "{where}: variant #1: min_driver must be a positive whole number like 560 (the driver's major version), "
        "not the number 525.6",
    ),
    "min_driver true": (
        lambda d: d["defaults"].update(min_driver=True),
        "{where}: [defaults]: min_driver must be a positive whole number like 560 (the driver's major version), "
        "not true",
    ),
    "defaults not a table": (
        lambda d: d.update(defaults="python312"),
        '{where}: [defaults] must be a table (holding python, cuda, min_driver, torch), not "python312"',
    ),
    "sm a number": (
        lambda d: _first(d).update(sm=70),
        '{where}: variant #1: sm must be a string like "90", not the number 70',
    ),
    "cuda a number": (
        lambda d: d["defaults"].update(cuda=12.9),
        '{where}: [defaults]: cuda must be a string like "12.9", not the number 12.9',
    ),
    "capability a number": (
        lambda d: _first(d).update(capability=7.0),
        '{where}: variant #1: capability must be a string like "9.0", not the number 7.0',
    ),
    "arch empty": (
        lambda d: _first(d).update(arch=" "),
        '{where}: variant #1: arch must be a string like "Hopper", not " "',
    ),
    "python a table": (
        lambda d: _first(d).update(python={"version": "3.12"}),
        '{where}: variant #1: python must be a string like "python312", not a table',
    ),
    "system an array": (
        lambda d: _first(d).update(system=["x86_64-linux"]),
        '{where}: variant #1: system must be a string like "x86_64-linux", not an array',
    ),
    "variant not a table": (
        lambda d: d["variant"].insert(0, "sm90"),
        "{where}: variant #1 must be a table (holding arch, capability, cuda, default, disabled, gpus, min_driver, "
        'python, sm, system, torch), not "sm90"',
    ),
    "variant a string": (lambda d: d.update(variant="sm90"), '{where}: variant must be [[variant]] tables, not "sm90"'),
    "systems entry not a table": (
        lambda d: d["systems"].update({"x86_64-linux": ""}),
        '{where}: [systems.x86_64-linux] must be a table (holding exactly `suffix`), not ""',
    ),
    "suffix a number": (
        lambda d: d["systems"]["aarch64-linux"].update(suffix=64),
        '{where}: [systems.aarch64-linux]: suffix must be a string like "-arm64" (or ""), not the number 64',
    ),
    "build not a table": (
        lambda d: d.update(build=8),
        "{where}: [build] must be a table (holding ram_per_job_gib), not the number 8",
    ),
    "ram_per_job_gib a float": (
        lambda d: d["build"].update(ram_per_job_gib=7.5),
        "{where}: [build]: ram_per_job_gib must be a positive whole number like 8 (GiB), not the number 7.5",
    ),
    "ram_per_job_gib zero": (
        lambda d: d["build"].update(ram_per_job_gib=0),
        "{where}: [build]: ram_per_job_gib must be a positive whole number like 8 (GiB), not the number 0",
    ),
}


@pytest.mark.parametrize("change", WRONG_TYPES, ids=list(WRONG_TYPES))
def test_a_value_of_the_wrong_type_is_one_line_naming_key_and_valid_form(change):
    edit, message = WRONG_TYPES[change]
    data = tomllib.loads(MATRIX.read_text())
    edit(data)
    with pytest.raises(MatrixError) as excinfo:
        Matrix.from_toml(data, source=MATRIX)
    assert str(excinfo.value) == message.format(where=MATRIX)


def test_duplicate_names_are_refused(tmp_path):
    text = MATRIX.read_text()
    path = tmp_path / "variants.toml"  # an explicit row that the product already holds
    path.write_text(
        text + '\n[[variant]]\nsm = "70"\ncapability = "7.0"\narch = "Volta"\ngpus = ["V100"]\n'
        'system = "x86_64-linux"\n'
    )
    with pytest.raises(MatrixError, match="duplicate variant name.*sm70"):
        Matrix.load(path)
    # nix/matrix.nix refuses the same, naming each duplicate once (a linear check: issue #13)
    proc = support.nix(
        "eval",
        "--impure",
        "--json",
        "--expr",
        f"(import {support.REPO}/nix/matrix.nix {{ toml = builtins.fromTOML (builtins.readFile {path}); }}).variants",
        check=False,
    )
    assert proc.returncode != 0
    assert "nix/variants.toml: duplicate variant name(s): vllm-python312-cuda12_9-sm70\n" in proc.stderr, proc.stderr


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


def test_select_combines_lists_systems_and_all(matrix):
    names = lambda vs: [v.name.removeprefix("vllm-python312-cuda12_9-") for v in vs]  # noqa: E731
    assert names(matrix.select(["80,89", "90", "89"])) == ["sm80", "sm89", "sm90"]
    arm = ["sm90-arm64", "sm100-arm64", "sm103-arm64", "sm121-arm64"]
    assert names(matrix.select(systems=["aarch64-linux"])) == arm
    assert len(matrix.select(all=True)) == 15
    # --sm 90 is the SM's own torch; the torch-bin row goes by name
    assert names(matrix.select(["9.0"])) == ["sm90"]
    assert names(matrix.select(["vllm-python312-cuda12_9-sm90-torchbin"])) == ["sm90-torchbin"]
    with pytest.raises(SelectionError, match="no variant selected"):
        matrix.select()
    # commands that only look (CI matrix, publish --check): asking for nothing means every enabled variant
    assert matrix.select(none_means_all=True) == list(matrix.default_set)
    # an empty --sm is a mistake (an unset CI variable), never widened to every variant (issue #11)
    for given in ([""], [","], ["90", " "]):
        with pytest.raises(SelectionError, match=r"^--sm '.*' names no SM; give one like --sm 90"):
            matrix.select(given, none_means_all=True)
    assert names(matrix.select(["90"], none_means_all=True)) == ["sm90"]
    assert names(matrix.select(systems=["aarch64-linux"], none_means_all=True)) == arm
    # the --python / --cuda lines (issue #15): an axis not given keeps the default line's value
    full = lambda vs: [v.name for v in vs]  # noqa: E731
    assert full(matrix.select(["90"], python="313")) == ["vllm-python313-cuda12_9-sm90"]
    assert full(matrix.select(["90"], python="3.13", cuda="12.8")) == ["vllm-python313-cuda12_8-sm90"]
    assert len(matrix.select(all=True, cuda="12.8")) == len(
        [v for v in matrix.enabled if v.cuda == "12.8" and v.python == "python312"]
    )
    with pytest.raises(SelectionError, match="unknown Python line 'python311'; valid: 312, 313"):
        matrix.select(["90"], python="311")
    with pytest.raises(SelectionError, match="unknown CUDA line '13.0'; valid: 12.8, 12.9"):
        matrix.select(["90"], cuda="13.0")
    with pytest.raises(SelectionError, match="sm121-arm64 is disabled in the matrix: capability 12.1 needs CUDA 12.9"):
        matrix.select(["121"], arm64=True, cuda="12.8")
    with pytest.raises(SelectionError, match="unknown system 'x86_64-darwin'; valid: x86_64-linux, aarch64-linux"):
        matrix.select(systems=["x86_64-darwin"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sms": ["90"], "all": True}, "--sm and --all conflict"),
        ({"sms": ["90"], "systems": ["x86_64-linux"]}, "--sm and --system conflict"),
        ({"all": True, "systems": ["aarch64-linux"]}, "--all and --system conflict"),
        ({"arm64": True, "systems": ["aarch64-linux"]}, "--arm64 applies to --sm only"),
        ({"arm64": True}, "--arm64 applies to --sm only"),
    ],
)
@pytest.mark.parametrize("none_means_all", [False, True])
def test_conflicting_selections_are_refused_not_joined(matrix, kwargs, message, none_means_all):
    with pytest.raises(SelectionError, match=rf"^{re.escape(message)}"):
        matrix.select(**kwargs, none_means_all=none_means_all)


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
def test_the_flox_product_fits_in_thirty_lines_and_both_sides_read_it(tmp_path):
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
    nix_view = support.nix(
        "eval",
        "--json",
        "--impure",
        "--expr",
        f"(import {support.REPO}/nix/matrix.nix {{ toml = builtins.fromTOML (builtins.readFile {FLOX}); }}).variants",
    ).stdout
    assert json.loads(nix_view) == product.to_json()
