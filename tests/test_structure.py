"""The package's shape: its modules import each other without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import support

PACKAGE = support.REPO / "src" / "vllm_variants"


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str], root: Path) -> set[str]:
    """The package's modules `path` imports, `if TYPE_CHECKING:` ones included."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found |= {target} | {f"{target}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m for m in found if m in modules and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def graph_of(package: Path) -> dict[str, set[str]]:
    paths, root = sorted(package.rglob("*.py")), package.parent
    modules = {module_name(p, root) for p in paths}
    # `from . import x` names module x; the package's own __init__ is not what it imports
    return {
        module_name(p, root): imports_of(p, modules, root) - {module_name(p, root).rpartition(".")[0]} for p in paths
    }


def test_no_two_modules_import_each_other_not_even_for_types():
    """Issue #17: records live next to what renders them (display.BuildOutcome,
    smoke.report.SmokeReport), so no module needs another that needs it back."""
    assert cycles(graph_of(PACKAGE)) == []


def test_the_cycle_check_finds_a_type_only_cycle(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from . import c\n")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.b import B\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from ..a import A\n")
    (package / "c.py").write_text("from . import a\nimport pkg.sub.b\n")
    graph = graph_of(package)
    assert graph["pkg.c"] == {"pkg.a", "pkg.sub.b"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_every_file_the_package_reads_is_shipped_in_its_wheel():
    """Files that are not Python (py.typed, the Nix expressions it applies) reach
    a wheel only through [tool.setuptools.package-data]: each must match a glob."""
    import fnmatch

    from vllm_variants.matrix import tomllib

    globs = tomllib.loads((support.REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    data = [
        p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
    ]
    assert "expressions/versions.nix" in data and "expressions/resolve.nix" in data
    assert [f for f in data if not any(fnmatch.fnmatch(f, g) for g in globs["vllm_variants"])] == []


def test_the_expressions_read_what_the_python_side_feeds_them():
    from vllm_variants import evaluate

    assert f'builtins.getEnv "{evaluate.NAMES_ENV}"' in evaluate.APPLY
