"""`invoke variants`: readable on an 80-column terminal and in a pipe (issue #22).

The disabled reason never goes inside the Variant column: piped, each variant is
one line and the reasons are listed once each below the table; on a terminal the
table fits its width, names whole, reasons below it.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys

import pytest
import support

from vllm_variants.matrix import Matrix

MATRIX = Matrix.load(support.REPO / "nix" / "variants.toml")
NAME = re.compile(r"\bvllm-python\d+-[a-z0-9_-]+")


def _piped(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "variants", *args],
        cwd=support.REPO,
        capture_output=True,
        text=True,
        env=support.nix_env(),
        check=True,
    )
    return proc.stdout


def _on_a_terminal(columns: int, *args: str) -> str:
    """`invoke variants` on a pseudo-terminal `columns` wide; what it drew, colours removed."""
    main, child = pty.openpty()
    env = {**support.nix_env(), "COLUMNS": str(columns), "LINES": "50", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "variants", *args],
        cwd=support.REPO,
        stdin=child,
        stdout=child,
        stderr=child,
        env=env,
    )
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], 30)
        if not ready:
            proc.kill()
            raise AssertionError("invoke variants did not finish")
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert proc.wait(timeout=30) == 0
    text = b"".join(chunks).decode()
    return re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]", "", text).replace("\r\n", "\n")


def _squeezed(text: str) -> str:
    return " ".join(text.split())


def test_piped_every_variant_is_one_line_and_reasons_come_once_below():
    out = _piped("--all")
    lines = out.splitlines()
    assert "…" not in out
    rows = [line for line in lines if NAME.search(line)]
    for variant in MATRIX.variants:
        mine = [line for line in rows if re.search(rf"(?<![\w-]){re.escape(variant.name)}(?![\w-])", line)]
        assert len(mine) == 1, (variant.name, mine)
        assert mine[0].split()[0] == variant.name  # the name first, whole
        assert ("disabled" in mine[0]) is False  # no reason inside a row
    assert len(rows) == len(MATRIX.variants)
    reasons = sorted({v.disabled for v in MATRIX.variants if v.disabled})
    last_row = max(i for i, line in enumerate(lines) if NAME.match(line))
    below = "\n".join(lines[last_row + 1 :])
    for reason in reasons:
        assert out.count(reason) == 1, reason
        assert reason in below
    # one line per variant, the header and title, a blank line and one line per reason
    assert len(lines) <= len(MATRIX.variants) + len(reasons) + 6, len(lines)


def test_piped_marks_each_disabled_variant_with_its_reason_number():
    lines = _piped("--all").splitlines()
    numbers = {}
    for line in lines:
        found = re.match(r"^\[(\d+)\] (.*)$", line)
        if found:
            numbers[found[2].rsplit(" (", 1)[0] if found[2].endswith("variants)") else found[2]] = found[1]
    for variant in MATRIX.variants:
        (row,) = [line for line in lines if line.split()[:1] == [variant.name]]
        if variant.disabled:
            marker = re.search(r"\[(\d+)\]", row)
            assert marker, row
            reason_line = next(line for line in lines if line.startswith(f"[{marker[1]}] "))
            assert variant.disabled in reason_line
        else:
            assert not re.search(r"\[\d+\]", row), row


@pytest.mark.parametrize("columns", [80, 120])
def test_on_an_80_column_terminal_names_and_reasons_are_whole(columns):
    out = _on_a_terminal(columns, "--all")
    lines = out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= columns, max(lines, key=len)
    for variant in MATRIX.variants:
        assert re.search(rf"(?<![\w-]){re.escape(variant.name)}(?![\w-])", out), variant.name
    assert not any("…" in line and NAME.search(line) for line in lines)
    # the reasons: whole (perhaps wrapped) below the table, never on a variant's row
    squeezed = _squeezed(out)
    for reason in {v.disabled for v in MATRIX.variants if v.disabled}:
        assert reason in squeezed, reason
    for line in lines:
        if NAME.search(line):
            assert "needs CUDA" not in line and "disabled:" not in line, line


def test_default_set_on_a_terminal_fits_80_columns():
    out = _on_a_terminal(80)
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    for variant in MATRIX.default_set:
        assert variant.name in out


# -- --write and --check: nix/variants.json, what the flake reads (issue #24) -----------


def _invoke(root, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "variants", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=support.nix_env(),
    )


def test_write_regenerates_the_flakes_copy_and_check_says_when_it_is_stale(tmp_path):
    root = support.make_project(tmp_path / "p", git_init=False)
    json_file = root / "nix" / "variants.json"
    committed = json_file.read_text()
    assert _invoke(root, "--check").stdout == "nix/variants.json is up to date\n"
    toml = root / "nix" / "variants.toml"
    toml.write_text(toml.read_text().replace('gpus = ["V100", "Titan V"]', 'gpus = ["V100"]'))
    stale = _invoke(root, "--check")
    assert stale.returncode == 1 and json_file.read_text() == committed  # checked, not written
    assert stale.stderr == (
        "error: nix/variants.json is out of date with nix/variants.toml; run `invoke variants --write`\n"
    )
    wrote = _invoke(root, "--write")
    assert wrote.returncode == 0 and wrote.stdout == "wrote nix/variants.json\n", wrote.stderr
    assert Matrix.load(toml).to_json()["vllm-python312-cuda12_9-sm70"]["gpus"] == ["V100"]
    assert json.loads(json_file.read_text())["variants"] == Matrix.load(toml).to_json()
    assert _invoke(root, "--write").stdout == "nix/variants.json is up to date\n"
    json_file.unlink()
    missing = _invoke(root, "--check")
    assert missing.returncode == 1 and "nix/variants.json is missing; run `invoke variants --write`" in missing.stderr
