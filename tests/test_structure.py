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


# -- commands do not call commands (issue #24) -------------------------------------------

# The modules that are commands: what a task of tasks.py, a nox session or a
# `python -m` entry point runs, one per command. A command imports what lies
# below the commands (the matrix, the selection, matching, sections, nix, the
# build machinery...), never another command: what two commands share moves
# below both. A new task's module joins this set (the next test says so). Each
# is named after its task; `<task>_task` where the plain name is taken (the
# matrix package, Python's eval).
COMMANDS = {
    "vllm_variants.variants": "invoke variants",
    "vllm_variants.readme": "invoke readme",
    "vllm_variants.build": "invoke build",
    "vllm_variants.eval_task": "invoke eval",
    "vllm_variants.bump": "invoke bump-pin",
    "vllm_variants.smoke.session": "invoke smoke, nox -s smoke",
    "vllm_variants.doctor": "invoke doctor",
    "vllm_variants.which": "invoke which",
    "vllm_variants.audit": "invoke audit",
    "vllm_variants.publish": "invoke publish",
    "vllm_variants.image": "invoke image",
    "vllm_variants.matrix_task": "invoke matrix",
}
# What the task layer imports besides the commands: the boundary and its inputs.
TASK_LAYER = {"vllm_variants.boundary", "vllm_variants.project", "vllm_variants.options", "vllm_variants.selection"}


def _imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules a file outside it (tasks.py, noxfile.py) imports, at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found & modules


def command_imports(graph: dict[str, set[str]], commands: set[str]) -> list[str]:
    """Each import of a command by another module of the package (its own submodules aside)."""
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if target in commands and not (module == target or module.startswith(target + "."))
    )


def test_the_commands_are_what_the_tasks_run():
    modules = set(graph_of(PACKAGE))
    ran = _imported_modules(support.REPO / "tasks.py", modules) | _imported_modules(
        support.REPO / "noxfile.py", modules
    )
    assert ran - TASK_LAYER == set(COMMANDS)


def test_no_command_imports_another_command():
    """image imported publish (for out paths) and called build.main (re-parsing the
    variant it had resolved); audit and build imported which, doctor too; bump
    imported readme."""
    assert command_imports(graph_of(PACKAGE), set(COMMANDS)) == []


def test_the_command_check_finds_a_command_importing_another(tmp_path):
    package = tmp_path / "pkg"
    (package / "build").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "build" / "__init__.py").write_text("from .plan import Plan\n")
    (package / "build" / "plan.py").write_text("from ..shared import x\n")
    (package / "shared.py").write_text("")
    (package / "image.py").write_text("def main():\n    from .build.plan import Plan\n    from . import build\n")
    graph = graph_of(package)
    assert command_imports(graph, {"pkg.build", "pkg.image"}) == ["pkg.image imports pkg.build"]


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
    from vllm_variants import eval_task

    assert f'builtins.getEnv "{eval_task.NAMES_ENV}"' in eval_task.APPLY


# -- one mechanism per concern (issue #21) ----------------------------------------------

# Modules allowed each concern. smoke/check.py runs alone in a built result's
# Python, importing nothing of the package: it keeps its own.
STANDALONE = {"vllm_variants.smoke.check"}
ONE_PLACE = {
    # temporary files and folders: registered, removed whatever ends the task
    "tempfile": {"vllm_variants.lifecycle"},
    # child processes: argv lists, registered, tied to us by PR_SET_PDEATHSIG
    "subprocess.Popen": {"vllm_variants.runner"},
    "subprocess.run": set(),
    "subprocess.call": set(),
    "subprocess.check_call": set(),
    "subprocess.check_output": set(),
    "os.system": set(),
    "os.popen": set(),
    # signal handlers: one policy
    "signal.signal": {"vllm_variants.lifecycle"},
    # reading a user's file: one reader that refuses what it cannot read in one line
    "read_text": {"vllm_variants.userfiles", "vllm_variants.resources", "vllm_variants.git", "vllm_variants.nix"},
    "read_bytes": {"vllm_variants.userfiles"},
    "json.load": set(),
    "tomllib.loads": {"vllm_variants.userfiles"},
    # Path.resolve() raises RuntimeError('Symlink loop') before Python 3.13: userfiles.real
    "resolve": set(),
}
# Why the read_text allowances are not users' files: resources reads /proc and
# cgroup files, git its own worktree entry, nix the package's own expressions.


def _uses(path: Path) -> set[str]:
    """What a module imports (`tempfile`) and calls (`subprocess.Popen`, `X.read_text`,
    a bare `X.resolve()`); the package's own userfiles.read_text is no Path read."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver, attr = node.func.value, node.func.attr
            if isinstance(receiver, ast.Name):
                found.add(f"{receiver.id}.{attr}")
                if receiver.id == "userfiles":
                    continue
            if attr != "resolve" or not (node.args or node.keywords):  # Path.resolve() takes none
                found.add(attr)
    return found


def test_each_concern_is_handled_in_one_place():
    root = PACKAGE.parent
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path, root)
        if name in STANDALONE:
            continue
        uses = _uses(path)
        for what, allowed in ONE_PLACE.items():
            if what in uses and name not in allowed:
                offenders.append(f"{name} uses {what}")
    assert offenders == []


def test_the_one_place_check_finds_an_offender(tmp_path):
    (tmp_path / "mod.py").write_text("import tempfile\nfrom pathlib import Path\nPath('x').resolve()\n")
    assert {"tempfile", "resolve"} <= _uses(tmp_path / "mod.py")
