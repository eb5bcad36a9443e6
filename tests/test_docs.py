"""The documentation stays true (issue #22): README.md, CONTRIBUTING.md and docs/*.md.

- Every `invoke ...` and `nox ...` command line (in a code block or an inline
  code span) names a task or session that exists and only options its help
  lists, read from the Invoke collection of tasks.py and from the noxfile's
  sessions and nox's own parser, without running any of them.
- Every relative link resolves, its #anchor too (GitHub's heading slugs), and
  every repository path in a code span exists (a `tests/x.py::name` names a
  function of that file).
- Every variant name is one the matrix has; no driver minimum, pinned
  version or nvcc RAM figure is typed outside a generated section unless it
  is the matrix's (generated sections: vllm_variants.sections, test_readme.py).
- The README is a landing page: at most 200 lines, every task one line with a
  link; every task says what it does without a real build (docs/checking.md);
  every benchmark names its command, date and machine.

The checkers are tested on bad text first (test_checkers_*), then run on the
real files.
"""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import support

from vllm_variants import sections, versions
from vllm_variants.matrix import Matrix
from vllm_variants.project import Project

REPO = support.REPO
FILES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
MATRIX = Matrix.load(REPO / "nix" / "variants.toml")
README_MAX_LINES = 200


def _name(path: Path) -> str:
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name


# -- reading markdown ------------------------------------------------------------


FENCE = re.compile(r"^(```|~~~)")


def fenced_and_prose(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(lines inside code fences, lines outside), each with its 1-based number."""
    code, prose, inside = [], [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line.strip()):
            inside = not inside
            continue
        (code if inside else prose).append((number, line))
    return code, prose


def inline_spans(line: str) -> list[str]:
    """`code` spans of one line of prose (single or double backticks)."""
    return [m[2] for m in re.finditer(r"(`+)(.+?)\1", line)]


def prose_paragraph_spans(prose: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Inline code spans, which may wrap across the lines of a paragraph."""
    paragraph: list[tuple[int, str]] = []
    for number, line in [*prose, (0, "")]:
        if line.strip():
            paragraph.append((number, line))
            continue
        if paragraph:
            joined = " ".join(part.strip() for _, part in paragraph)
            for span in inline_spans(joined):
                yield paragraph[0][0], span
        paragraph = []


def shell_lines(code: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Lines of code blocks, backslash continuations joined."""
    pending, first = "", 0
    for number, line in code:
        if not pending:
            first = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield first, pending + line
        pending = ""


def without_generated(text: str) -> str:
    return re.sub(r"<!-- BEGIN [\w-]+:.*?<!-- END [\w-]+ -->", "", text, flags=re.DOTALL)


# -- command lines ----------------------------------------------------------------


OPERATORS = {"&&", "||", ";", "|"}


def placeholder(token: str) -> bool:
    return token.startswith("<") or token in ("...", "TASK", "NAME", "SESSION") or token.isupper()


def commands(source: str) -> Iterator[list[str]]:
    """Each `invoke ...` / `nox ...` in one shell line or code span, as tokens."""
    try:
        tokens = shlex.split(source, comments=True)
    except ValueError:  # unbalanced quotes in a span that is no command
        if re.search(r"(^|\s)(invoke|nox)\s", source):
            yield ["<unparsable>", source]
        return
    segment: list[str] = []
    for token in [*tokens, ";"]:
        if token not in OPERATORS:
            segment.append(token)
            continue
        for index, word in enumerate(segment):
            if word in ("invoke", "nox"):
                before = segment[:index]
                if not before or before[-1] == "-c" or all("=" in w for w in before):
                    yield segment[index:]
                break
        segment = []


def command_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    text = path.read_text()
    code, prose = fenced_and_prose(text)
    for number, line in shell_lines(code):
        for command in commands(line):
            yield number, command
    for number, span in prose_paragraph_spans(prose):
        for command in commands(span):
            yield number, command


@cache
def invoke_collection():
    return support.tasks_module().ns


def _flags(arguments) -> dict[str, bool]:
    """'--dry-run' / '-d' -> whether it takes a value."""
    found = {}
    for argument in arguments:
        for name in argument.names:
            found[("--" if len(name) > 1 else "-") + name] = bool(argument.takes_value)
    return found


@cache
def core_flags() -> dict[str, bool]:
    from invoke import Program

    return _flags(Program().core_args())


def check_invoke(tokens: list[str], ns=None) -> str | None:
    """What is wrong with an `invoke ...` command line, or None."""
    ns = ns or invoke_collection()
    rest = tokens[1:]
    while rest and rest[0].startswith("-"):
        flag, _, value = rest.pop(0).partition("=")
        if flag not in core_flags():
            return f"invoke has no option {flag}"
        if core_flags()[flag] and not value and rest:
            rest.pop(0)
    if not rest or placeholder(rest[0]):
        return None
    name = rest.pop(0)
    if name not in ns.task_names:
        return f"no task '{name}'; tasks: {', '.join(sorted(ns.task_names))}"
    flags = {**_flags(ns[name].get_arguments()), "--help": False, "-h": False}
    while rest:
        token = rest.pop(0)
        if token == "--":
            break
        if token.startswith("-") and len(token) > 1:
            flag, _, value = token.partition("=")
            if flag not in flags:
                return f"`invoke {name}` has no option {flag}; its options: {', '.join(sorted(flags))}"
            if flags[flag] and not value and rest:
                rest.pop(0)
    return None


@cache
def nox_sessions() -> frozenset[str]:
    import nox.registry

    runpy.run_path(str(REPO / "noxfile.py"))
    return frozenset(nox.registry.get())


def check_nox(tokens: list[str]) -> str | None:
    """What is wrong with a `nox ...` command line, or None."""
    from nox._options import options

    from vllm_variants.errors import VariantsError
    from vllm_variants.smoke.session import parse_args

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parsed = options.parser().parse_args(tokens[1:])
    except SystemExit:
        return f"nox refuses it: {errors.getvalue().strip().splitlines()[-1]}"
    sessions = [s for s in getattr(parsed, "sessions", None) or [] if not placeholder(s)]
    unknown = [s for s in sessions if s not in nox_sessions()]
    if unknown:
        return f"no nox session {', '.join(unknown)}; sessions: {', '.join(sorted(nox_sessions()))}"
    posargs = [a for a in getattr(parsed, "posargs", None) or [] if not placeholder(a)]
    if posargs and posargs[0] == "--":
        posargs = posargs[1:]
    if sessions == ["smoke"] and posargs:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                parse_args(posargs)
        except VariantsError as exc:
            return f"nox -s smoke -- {' '.join(posargs)}: {exc}"
    return None


def check_command(tokens: list[str]) -> str | None:
    if tokens[0] == "<unparsable>":
        return f"not a command line the shell can read: {tokens[1]}"
    return check_invoke(tokens) if tokens[0] == "invoke" else check_nox(tokens)


# -- links and paths ----------------------------------------------------------------


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lowercased, punctuation dropped, spaces to '-'."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, prose = fenced_and_prose(path.read_text())
    found: set[str] = set()
    for _, line in prose:
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
        if heading:
            base = slug(heading[1])
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def link_problems(path: Path, text: str | None = None) -> list[str]:
    text = path.read_text() if text is None else text
    _, prose = fenced_and_prose(text)
    problems = []
    for number, line in prose:
        line = re.sub(r"(`+).+?\1", "", line)  # a link inside a code span is no link
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            where = f"{_name(path)}:{number}: ({target})"
            if not resolved.exists():
                problems.append(f"{where}: {file} does not exist")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where}: no heading '#{anchor}' in {resolved.name}")
    return problems


REPO_PATH = re.compile(r"^(?:src|tests|nix|benchmarks|docs|\.github|\.ci)/[\w./-]*?(?:::(\w+))?$")


def path_problems(path: Path, text: str | None = None) -> list[str]:
    text = path.read_text() if text is None else text
    _, prose = fenced_and_prose(text)
    problems = []
    for number, span in prose_paragraph_spans(prose):
        found = REPO_PATH.match(span)
        if not found:
            continue
        file = span.split("::")[0]
        where = f"{_name(path)}:{number}: `{span}`"
        if not (REPO / file).exists():
            problems.append(f"{where}: {file} does not exist")
        elif found[1] and not re.search(rf"^\s*def {found[1]}\(", (REPO / file).read_text(), re.M):
            problems.append(f"{where}: {file} has no function {found[1]}")
    return problems


# -- facts ---------------------------------------------------------------------------


# a variant name, with whatever suffix words the matrix gives it (-torchbin, -arm64, ...)
VARIANT = re.compile(r"\bvllm-python\d+-cuda\d+_\d+-sm\d+[a-z]?(?:-[a-z][a-z0-9]*)*(?![\w])")
DRIVER = (
    re.compile(r">=\s*\d{3}\b"),
    re.compile(r"\b\d{3}(?:\.\d+)* for CUDA"),
    re.compile(r"\b[Dd]river (?:>= ?)?\d{3}\b(?![.\d])"),
)
RAM_PER_JOB = (
    re.compile(r"\b(\d+) Gi?B (?:of RAM )?(?:per|each) nvcc job"),
    re.compile(r"nvcc job per (\d+) GiB"),
    re.compile(r"RAM / (\d+) GiB"),
    re.compile(r"`ram_per_job_gib`[^)\n]{0,60}?, (\d+)\)"),
    re.compile(r"the (\d+) is `ram_per_job_gib`"),
)


def pinned_values(project: Project) -> set[str]:
    """What nix/versions.json and flake.lock say about the pin: versions and revs."""
    pin = versions.load(project)
    found = {pin.rev, pin.rev[:7], pin.rev[:12]}
    for record in pin.variants.values():
        found.update(record[key] for key in ("vllm", "torch", "python"))
    return found


def fact_problems(path: Path, text: str | None = None, *, matrix: Matrix = MATRIX) -> list[str]:
    text = path.read_text() if text is None else text
    names = {v.name for v in matrix.variants}
    problems = [f"{_name(path)}: unknown variant {name}" for name in sorted(set(VARIANT.findall(text)) - names)]
    typed = without_generated(text)
    for pattern in DRIVER:
        for found in pattern.finditer(typed):
            problems.append(
                f"{_name(path)}: a driver minimum typed by hand ('{found[0]}'): refer to the generated variant "
                "table (nix/variants.toml [cuda.X.Y] min_driver) instead"
            )
    for pattern in RAM_PER_JOB:
        for found in pattern.finditer(typed):
            if int(found[1]) != matrix.ram_per_job_gib:
                problems.append(
                    f"{_name(path)}: '{found[0]}', but nix/variants.toml's ram_per_job_gib is {matrix.ram_per_job_gib}"
                )
    for value in sorted(pinned_values(Project(REPO))):
        if re.search(rf"(?<![\w.]){re.escape(value)}(?![\w]|\.\d)", typed):
            problems.append(
                f"{_name(path)}: '{value}' (a version or rev of the pin, nix/versions.json) typed outside a "
                "generated section: it goes stale at the next bump-pin"
            )
    return problems


# -- the checkers find what they are for ------------------------------------------


def test_checkers_find_a_wrong_option_an_unknown_task_and_session():
    bad = {
        "invoke build --sm 90 --bogus": "`invoke build` has no option --bogus",
        "invoke biuld --sm 90": "no task 'biuld'",
        "invoke --lsit": "invoke has no option --lsit",
        "invoke audit result-x --reader=fatbin --no-such": "has no option --no-such",
        "nox -s smok": "no nox session smok",
        "nox -s smoke -- --generate --bogus": "unrecognized arguments: --bogus",
        "nox --no-such-flag": "nox refuses it",
    }
    for line, says in bad.items():
        (command,) = list(commands(line))
        problem = check_command(command)
        assert problem and says in problem, (line, problem)
    good = [
        "invoke build --sm 90 --dry-run --json -",
        "invoke --help build",
        "invoke --list",
        "invoke build --help",
        "invoke image --sm 90 --to=docker://r.example.com/x",
        "invoke bump-pin <rev> --release-branch --dry-run",
        "nox -s smoke -- sm90 ./other/result --generate",
        "nox -s lint",
        "nox -l",
    ]
    for line in good:
        (command,) = list(commands(line))
        assert check_command(command) is None, (line, check_command(command))


def test_checkers_read_commands_from_blocks_spans_and_pipelines(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Run `invoke doctor --jsn` first.\n\n"
        "```sh\n"
        "python3 -m venv .venv && . .venv/bin/activate && invoke build --sm 90 \\\n"
        "  --max-job 2   # a comment --not-an-option\n"
        "nix develop -c invoke varaints\n"
        "echo invoke is a word here\n"
        "```\n"
    )
    found = {check_command(c) for _, c in command_lines(page)}
    assert {p for p in found if p} == {
        f"`invoke doctor` has no option --jsn; its options: {', '.join(sorted(['--json', '-j', '--help', '-h']))}",
        "`invoke build` has no option --max-job; its options: "
        + ", ".join(sorted([*_flags(invoke_collection()["build"].get_arguments()), "--help", "-h"])),
        f"no task 'varaints'; tasks: {', '.join(sorted(invoke_collection().task_names))}",
    }


def test_checkers_find_broken_links_anchors_and_paths(tmp_path):
    (tmp_path / "docs").mkdir()
    other = tmp_path / "docs" / "other.md"
    other.write_text("# Other\n\n## Building: `invoke build`\n\n```sh\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    text = (
        "[ok](docs/other.md#building-invoke-build) [top](docs/other.md#other) [web](https://example.com/x)\n"
        "[gone](docs/missing.md) [bad anchor](docs/other.md#not-a-heading) [self](#nowhere)\n"
        "`[not a link](nowhere.md)`\n"
    )
    page.write_text(text)
    problems = link_problems(page)
    assert [p.split(": ", 2)[-1] for p in problems] == [
        "docs/missing.md does not exist",
        "no heading '#not-a-heading' in other.md",
        "no heading '#nowhere' in page.md",
    ]
    assert slug("Axes, a default set, validity from facts") == "axes-a-default-set-validity-from-facts"
    paths = path_problems(
        REPO / "x.md",
        "See `tests/test_docs.py::test_checkers_find_broken_links_anchors_and_paths`, "
        "`tests/test_docs.py::no_such_test`, `src/vllm_variants/nope.py` and `nix/variants.toml`.\n",
    )
    assert [p.split(": ", 2)[-1] for p in paths] == [
        "tests/test_docs.py has no function no_such_test",
        "src/vllm_variants/nope.py does not exist",
    ]


def test_checkers_find_typed_facts_and_unknown_variants():
    pin = versions.load(Project(REPO))
    vllm = next(iter(pin.variants.values()))["vllm"]
    text = (
        "An NVIDIA driver new enough for CUDA 12.9 (>= 560).\n"
        "6. the NVIDIA driver is at least the variant's minimum (560 for CUDA 12.9);\n"
        f"It ships vLLM {vllm}; about 6 GB of RAM per nvcc job; RAM / 6 GiB.\n"
        "- `ram_per_job_gib` (`[build]` in `nix/variants.toml`, 6): the GiB of RAM one nvcc job is given.\n"
        "Build `vllm-python312-cuda12_9-sm91`.\n"
        "The GPU container platform ran driver 580.159.04 (a machine, not the matrix).\n"
        "<!-- BEGIN versions: generated by `invoke readme` from nix/versions.json; do not edit -->\n"
        f"vLLM {vllm}, driver >= 575\n"
        "<!-- END versions -->\n"
    )
    problems = fact_problems(REPO / "x.md", text)
    assert len([p for p in problems if "driver minimum" in p]) == 2, problems
    assert any(f"'{vllm}'" in p for p in problems)
    assert any("'6 GB of RAM per nvcc job'" in p for p in problems)
    assert any("'RAM / 6 GiB'" in p for p in problems)
    assert any("`nix/variants.toml`, 6)'" in p for p in problems)
    assert "x.md: unknown variant vllm-python312-cuda12_9-sm91" in problems
    assert not any("580" in p for p in problems)
    assert len(problems) == 7, problems


# -- the real documentation ---------------------------------------------------------


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_every_command_line_names_a_real_task_and_its_options(path):
    problems = []
    seen = 0
    for number, command in command_lines(path):
        seen += 1
        problem = check_command(command)
        if problem:
            problems.append(f"{_name(path)}:{number}: {' '.join(command)}: {problem}")
    assert not problems, "\n".join(problems)
    assert seen or path.name == "design.md"  # every page but the design shows commands


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_every_link_anchor_and_repository_path_resolves(path):
    problems = link_problems(path) + path_problems(path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_no_matrix_or_pin_fact_is_typed_by_hand(path):
    problems = fact_problems(path)
    assert not problems, "\n".join(problems)


def test_generated_sections_are_in_the_docs_and_current():
    texts = {_name(p): p.read_text() for p in FILES}
    for section in sections.SECTIONS:
        assert any(sections.section_body(text, section) is not None for text in texts.values()), section
    assert sections.update(Project(REPO), check=True) == []


def test_readme_is_a_landing_page_with_every_task_one_link_away():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, len(text.splitlines())
    table = text.split("## Tasks", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    for task in invoke_collection().task_names:
        (row,) = [r for r in rows if f"`invoke {task}`" in r]
        assert re.search(r"\]\((docs/[\w-]+\.md|CONTRIBUTING\.md)(#[\w-]+)?\)", row), row
    for session in nox_sessions():
        assert any(f"`nox -s {session}`" in r for r in rows), session
    for heading in (
        "The pin cannot be fetched",
        "The build runs out of memory",
        "No GPU on the build host",
        "The registry wants a login",
    ):
        assert f"### {heading}\n" in text
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in text, f"README.md does not link docs/{page.name}"


def test_every_task_says_what_it_does_without_a_real_build():
    text = (REPO / "docs" / "checking.md").read_text()
    section = text.split("## Without a real build", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    for task in invoke_collection().task_names:
        assert any(f"`invoke {task}`" in cell for cell in first_cells), task


def test_every_benchmark_names_its_command_date_and_machine():
    text = (REPO / "docs" / "benchmarks.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert len(sections) >= 8
    for section in sections:
        title = section.splitlines()[0]
        assert re.search(r"^- \*\*Command\*\*: .*`[^`]+`", section, re.M), title
        assert re.search(r"^- \*\*Date\*\*: \d{4}-\d{2}-\d{2}", section, re.M), title
        assert re.search(r"^- \*\*Machine\*\*: \S", section, re.M), title


def test_task_summaries_say_what_the_tasks_do():
    """`invoke --list` said eval uses "one Nix process"; it uses as many as the
    evaluation budget needs (building.md#evaluation-memory)."""
    summary = (invoke_collection()["eval"].__doc__ or "").splitlines()[0]
    assert "one Nix process" not in summary
    assert "batch" in summary, summary
