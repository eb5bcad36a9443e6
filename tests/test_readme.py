"""README.md and docs/*.md: generated sections match their sources; CI runs the README's test command."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import support

from vllm_variants import sections, versions
from vllm_variants.errors import VariantsError
from vllm_variants.matrix import Matrix
from vllm_variants.project import Project

README = (support.REPO / "README.md").read_text()
PIN_PAGE = (support.REPO / "docs" / "pin.md").read_text()  # the versions at the pin


def test_variant_table_matches_the_matrix():
    body = sections.section_body(README, "variants")
    assert body == sections.variants_table(Matrix.load(support.REPO / "nix" / "variants.toml"))
    matrix = Matrix.load(support.REPO / "nix" / "variants.toml")
    # readable at this size: the default set, one row per SM and system, grouped by SM
    for variant in matrix.default_set:
        assert f"`{variant.name}`" in body
    assert "`vllm-python313-cuda12_8-sm90`" not in body  # the other lines: behind `invoke variants --all`
    rows = [line for line in body.splitlines() if line.startswith("| ") and "`vllm-" in line]
    sms = [int(line.split("|")[1]) for line in rows if "disabled" not in line]
    assert sms == sorted(sms)
    assert f"{len(matrix.enabled) - len(matrix.default_set)} more valid variants" in body


def test_check_fails_when_the_matrix_moves(tmp_path):
    root = support.make_project(tmp_path / "p", git_init=False)
    project = Project(root)
    assert sections.update(project, check=True) == []
    matrix_file = root / "nix" / "variants.toml"
    matrix_file.write_text(matrix_file.read_text().replace('"H100", "H200", "H20"', '"H100", "H200"'))
    try:
        sections.update(Project(root), check=True)
    except Exception as exc:  # noqa: BLE001 - the message is the point
        assert "README.md is out of date" in str(exc)
    else:
        raise AssertionError("a stale README passed the check")
    assert sections.update(Project(root)) == ["README.md"]
    assert sections.update(Project(root), check=True) == []


def _setup_commands() -> list[str]:
    block = re.search(r"## Set-up\n\n```sh\n(.*?)```", README, re.DOTALL)
    assert block, "README.md has no '## Set-up' sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_setup_is_two_commands_main_job_then_tests():
    main_job, tests = _setup_commands()
    assert "invoke build" in main_job
    assert "pytest -n auto" in tests


def test_ci_runs_exactly_the_readme_test_command():
    _, tests = _setup_commands()
    ci = (support.REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == tests
    assert "sh ../shared/tools/install-nix" in ci


def test_prerequisites_name_nix_and_flakes():
    section = README.split("## Prerequisites", 1)[1].split("\n## ", 1)[0]
    assert "Nix >= 2.18 with flakes" in section
    assert "experimental-features = nix-command flakes" in section


def test_versions_section_shows_the_recorded_evaluation():
    body = sections.section_body(PIN_PAGE, "versions")
    assert body == versions.readme_section(Project(support.REPO))
    recorded = versions.load(Project(support.REPO))
    for value in recorded.variants["vllm-python312-cuda12_9-sm90"].values():
        assert value in body


def test_check_fails_when_versions_move_or_describe_another_pin(tmp_path):
    root = support.make_project(tmp_path / "p", git_init=False)
    data_file = root / versions.PATH
    data = json.loads(data_file.read_text())
    for record in data["variants"].values():
        record["vllm"] = "0.15.2"
    data_file.write_text(json.dumps(data))
    with pytest.raises(
        VariantsError,
        match="^docs/distributing.md, docs/pin.md are out of date with nix/versions.json, flake.lock; run `invoke readme`$",
    ):
        sections.update(Project(root), check=True)
    assert sections.update(Project(root)) == ["docs/distributing.md", "docs/pin.md"]
    pin_page = (root / "docs" / "pin.md").read_text()
    assert "| the other 14 variants | 0.15.2 |" in sections.section_body(pin_page, "versions")

    data["nixpkgs"]["rev"] = "1" * 40
    data_file.write_text(json.dumps(data))
    with pytest.raises(VariantsError, match=f"describes nixpkgs {'1' * 40} but flake.lock locks 0182a36"):
        sections.update(Project(root), check=True)


@pytest.mark.parametrize(
    ("lock", "message"),
    [
        (
            None,
            "error: flake.lock is missing: it records the nixpkgs commit; restore it with `git checkout -- flake.lock`",
        ),
        (
            "{ not json",
            "error: flake.lock: not valid JSON (Expecting property name enclosed in double quotes: "
            "line 1 column 3 (char 2)); restore it from git",
        ),
        ("[]", "error: flake.lock is not a Nix lock file (no nodes/root); restore it from git"),
        (
            '{"nodes": {"root": {"inputs": {}}}, "root": "root"}',
            "error: flake.lock locks no nixpkgs commit; run `invoke bump-pin ",
        ),
    ],
)
def test_a_broken_flake_lock_is_one_line(tmp_path, lock, message):
    root = support.make_project(tmp_path / "p", git_init=False)
    if lock is None:
        (root / "flake.lock").unlink()
    else:
        (root / "flake.lock").write_text(lock)
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "readme", "--check"],
        cwd=root,
        capture_output=True,
        text=True,
        env=support.nix_env(),
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.splitlines()[0]]
    assert proc.stderr.startswith(message), proc.stderr


def test_check_fails_when_the_evaluated_nixpkgs_is_not_the_locked_one(tmp_path):
    """nix/versions.json names the narHash it was evaluated from; flake.lock must lock
    that one, unless the file says the versions are unverified (the committed one does)."""
    root = support.make_project(tmp_path / "p", git_init=False)
    data_file = root / versions.PATH
    data = json.loads(data_file.read_text())
    assert data["nixpkgs"]["unverified"] and data["nixpkgs"]["narHash"] is None  # the committed file says so
    assert "**Unverified:** these versions were evaluated against the test stand-in" in PIN_PAGE

    locked = json.loads((root / "flake.lock").read_text())["nodes"]["nixpkgs"]["locked"]["narHash"]
    del data["nixpkgs"]["unverified"]
    data["nixpkgs"]["narHash"] = "sha256-" + "A" * 43 + "="
    data_file.write_text(json.dumps(data))
    with pytest.raises(
        VariantsError, match=f"evaluated from nixpkgs narHash sha256-A+=, but flake.lock locks {locked}"
    ):
        sections.update(Project(root), check=True)

    data["nixpkgs"]["narHash"] = locked
    data_file.write_text(json.dumps(data))
    sections.update(Project(root))
    body = sections.section_body((root / "docs" / "pin.md").read_text(), "versions")
    assert f"Evaluated from that commit (narHash `{locked}`" in body and "Unverified" not in body


def test_a_checkout_from_before_docs_keeps_its_generated_sections_where_they_are(tmp_path):
    """A release branch made before docs/ (the versions in README.md, no image-tag
    section): `invoke bump-pin` regenerates it through sections.update, which renders
    the sections each file carries and asks for no other."""
    root = support.make_project(tmp_path / "p", git_init=False)
    shutil.rmtree(root / "docs")
    text = (root / "README.md").read_text()
    stale = f"{sections.begin_marker('versions', versions.PATH)}\nold versions\n{sections.end_marker('versions')}\n"
    (root / "README.md").write_text(text + "\n## The pin\n\n" + stale)
    with pytest.raises(VariantsError, match="^README.md is out of date with nix/versions.json; run `invoke readme`$"):
        sections.update(Project(root), check=True)
    assert sections.update(Project(root)) == ["README.md"]
    body = sections.section_body((root / "README.md").read_text(), "versions")
    assert body == versions.readme_section(Project(root))
    assert sections.update(Project(root), check=True) == []


def test_an_unknown_section_is_refused_in_one_line(tmp_path):
    root = support.make_project(tmp_path / "p", git_init=False)
    page = root / "docs" / "pin.md"
    page.write_text(
        page.read_text() + "\n<!-- BEGIN verisons: generated by `invoke readme` from x -->\n<!-- END verisons -->\n"
    )
    with pytest.raises(
        VariantsError, match="^docs/pin.md has a 'verisons' section, which `invoke readme` does not know"
    ):
        sections.update(Project(root), check=True)
