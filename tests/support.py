"""Test helpers: real nix and real git, isolated by environment.

Every test that runs Nix goes through `nix_env()`: substituters off (the test
bed is offline), the build hook pointed at the `nix` on PATH, flakes on. Tests
that run git use `git_env()` (no user or system config, fixed identity).
Nothing here fakes nix or git; the nixpkgs under test is the stand-in in
tests/fixtures/nixpkgs (see its README.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "tests" / "fixtures" / "nixpkgs"
# What a user's checkout holds that the flake and the tasks need.
# vllm's supported list at a nixpkgs revision with Blackwell commented out (vllm 0.11.0)
NO_BLACKWELL = [
    "3.5",
    "3.7",
    "5.0",
    "5.2",
    "5.3",
    "6.0",
    "6.1",
    "6.2",
    "7.0",
    "7.2",
    "7.5",
    "8.0",
    "8.6",
    "8.7",
    "8.9",
    "9.0",
    "9.0a",
]

PROJECT_FILES = ("flake.nix", "flake.lock", "nix", "tasks.py", "noxfile.py", "README.md", "docs", ".gitignore")

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "vllm-variants tests",
    "GIT_AUTHOR_EMAIL": "tests@vllm-variants.invalid",
    "GIT_COMMITTER_NAME": "vllm-variants tests",
    "GIT_COMMITTER_EMAIL": "tests@vllm-variants.invalid",
}


class NixMissing(AssertionError):
    """Raised (a failure, not a skip) when a test needs nix and it is absent."""


def nix_executable() -> str:
    found = shutil.which("nix")
    if not found:
        raise NixMissing(
            "these tests need the real nix CLI (>= 2.18) and it is not on PATH; "
            "install it with ../shared/tools/install-nix (CI does)"
        )
    return found


class NvccMissing(AssertionError):
    """Raised (a failure, not a skip) when a test needs the host nvcc and it is absent."""


def nvcc_executable() -> str:
    """The host nvcc the stand-in's cuda_nvcc wraps: the first of knobs.json hostNvcc that exists."""
    candidates = json.loads((STANDIN / "knobs.json").read_text())["hostNvcc"]
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    raise NvccMissing(
        f"these tests need the host nvcc (the stand-in compiles a real kernel per CUDA package with it) "
        f"and there is none at {', '.join(candidates)} (tests/fixtures/nixpkgs/knobs.json hostNvcc); "
        "CUDA 13.0, compile-only, is enough (CI has it)"
    )


def host_nvcc_sms() -> set[str]:
    """The SMs the host nvcc compiles SASS for: `nvcc --list-gpu-code` (sm_75 -> '75')."""
    listed = subprocess.run([nvcc_executable(), "--list-gpu-code"], capture_output=True, text=True, check=True)
    return {code.removeprefix("sm_") for code in listed.stdout.split() if code.startswith("sm_")}


def mutated_project(dest: Path, edits: dict[str, list[tuple[str, str]]]) -> Path:
    """A checkout with the flake broken on purpose: each (old, new) replaced in its file, and the
    flake's read-back guard (`assert checked;` in nix/variant.nix) taken out, so that only what
    nixpkgs (the stand-in) and the build produce can catch the mistake."""
    root = make_project(dest, git_init=False)
    edits = {**edits, "nix/variant.nix": [("assert checked;\n", ""), *edits.get("nix/variant.nix", [])]}
    for rel, replacements in edits.items():
        path = root / rel
        text = path.read_text()
        for old, new in replacements:
            assert old in text, f"mutation target not found in {rel}: {old!r}"
            text = text.replace(old, new)
        path.write_text(text)
    return root


def load_file(path: Path):
    """A Python file that is not on sys.path (tasks.py, the stand-in's scripts), as a
    module, read from its text: an import would write __pycache__ beside it, which under
    the stand-in moves its `path:` hash (see standin_listing)."""
    import types

    module = types.ModuleType(path.stem.replace("-", "_"))
    module.__file__ = str(path)
    module.__cached__ = None  # as a module with no bytecode cache (tasks.py reads it)
    exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
    return module


def tasks_module():
    """tasks.py, freshly loaded: Invoke's Task.get_arguments() pops each option's help
    from the task as it reads it, so a collection must not be shared between tests
    that each read the help."""
    return load_file(REPO / "tasks.py")


def standin_listing(root: Path = STANDIN) -> dict[str, tuple[int, int]]:
    """Every file under the stand-in with its size and mtime: the tests pass it to Nix
    as `path:`, whose hash covers every file, so one written mid-run (a __pycache__, a
    build product) moves every store path between a test's build and its next eval."""
    listing = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() or path.is_symlink():
            st = path.lstat()
            listing[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return listing


def standin_changes(before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]]) -> list[str]:
    """The files the run added, removed or rewrote under the stand-in, sorted."""
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


def nix_config(extra: str = "") -> str:
    """NIX_CONFIG for tests.

    - substituters empty: no cache is reachable; Nix would retry for seconds.
    - build-hook: Nix defaults it to its own executable, which under
      ../shared/tools/install-nix is the dynamic loader the `nix` wrapper runs
      through, so `nix __build-remote` fails; point it at the wrapper.
      With a regular Nix install this is the default anyway.
    """
    lines = [
        "substituters =",
        f"build-hook = {nix_executable()} __build-remote",
        "experimental-features = nix-command flakes",
        "warn-dirty = false",
        "flake-registry =",
    ]
    return "\n".join(lines) + ("\n" + extra if extra else "") + "\n"


def init_store() -> None:
    """Open the Nix store once, under a lock shared by the pytest-xdist workers.

    On a brand-new Nix (a fresh CI machine) the first process to open the
    store creates /nix/var/nix; two doing it at once fail with "creating
    symlink '/nix/var/nix/gcroots/profiles' ...: File exists".
    """
    import fcntl
    import tempfile

    with open(Path(tempfile.gettempdir()) / "vllm-variants-nix-store.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for args in (("store", "info"), ("store", "ping")):  # `store info` is 2.19+
            if nix(*args, check=False).returncode == 0:
                return
        nix("store", "ping")  # neither worked: fail with Nix's own message


def git_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(base if base is not None else os.environ)
    env.update(GIT_IDENTITY)
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    return env


def nix_env(extra_config: str = "", **overrides: str) -> dict[str, str]:
    env = git_env()
    env["NIX_CONFIG"] = nix_config(extra_config)
    env.pop("NIX_PATH", None)
    env.update(overrides)
    return env


def run(argv: Sequence[str | os.PathLike[str]], *, cwd=None, env=None, check=True, input=None):
    proc = subprocess.run(
        [os.fspath(a) for a in argv],
        cwd=cwd,
        env=env if env is not None else nix_env(),
        capture_output=True,
        text=True,
        input=input,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["git", *args], cwd=cwd, env=git_env(), check=check)


def nix(*args: str | os.PathLike[str], cwd=None, env=None, check=True) -> subprocess.CompletedProcess[str]:
    return run([nix_executable(), *args], cwd=cwd, env=env or nix_env(), check=check)


def standin_ref(path: Path = STANDIN) -> str:
    return f"path:{path}"


def override(path: Path = STANDIN) -> list[str]:
    return ["--override-input", "nixpkgs", standin_ref(path)]


def recording_nix(**kwargs: Any):
    """The real nix (vllm_variants.nix.Nix), with every command it is asked to run
    recorded in `.commands` (argv without the executable): for tests that count
    Nix processes."""
    from vllm_variants.nix import Nix

    class Recording(Nix):
        def argv(self, *args):
            argv = super().argv(*args)
            self.commands.append(argv[1:])
            return argv

    nix = Recording(**kwargs)
    object.__setattr__(nix, "commands", [])
    return nix


def nix_eval(flake: str, attr: str, *, apply: str | None = None, standin: Path = STANDIN, env=None) -> Any:
    args = ["eval", "--json", f"{flake}#{attr}", *override(standin)]
    if apply:
        args += ["--apply", apply]
    return json.loads(nix(*args, env=env).stdout)


def copy_standin(dest: Path, **knobs: Any) -> Path:
    """A copy of the stand-in with knobs.json changed (see its knobs.nix)."""
    shutil.copytree(STANDIN, dest)
    knobs_file = dest / "knobs.json"
    data = json.loads(knobs_file.read_text())
    unknown = set(knobs) - set(data)
    assert not unknown, f"unknown stand-in knob(s): {unknown}"
    data.update(knobs)
    knobs_file.write_text(json.dumps(data, indent=2) + "\n")
    return dest


def make_project(dest: Path, *, git_init: bool = True) -> Path:
    """A checkout of this project (flake, matrix, tasks) as a user has it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        else:
            shutil.copy2(src, dest / name)
    if git_init:
        git(dest, "init", "-q", "-b", "main")
        commit_all(dest, "seed")
    return dest


def write_matrix(root: Path, text: str) -> None:
    """nix/variants.toml of a project made `text`, and nix/variants.json (what the flake
    reads) regenerated from it, as a contributor does with `invoke variants --write`."""
    from vllm_variants.matrix import generated

    (root / "nix" / "variants.toml").write_text(text)
    generated.update(root)


def build_results(project: Path, standin: Path, variants) -> dict[str, str]:
    """`nix build` each variant against `standin`, linked as result-<variant> in
    `project` as `invoke build` leaves it; {variant name: store path}."""
    paths = {}
    for variant in variants:
        link = project / f"result-{variant.name}"
        nix("build", "--out-link", link, f"{flake_ref(project)}#{variant.attr_path()}", *override(standin))
        paths[variant.name] = os.readlink(link)
    return paths


def commit_all(root: Path, message: str) -> None:
    git(root, "add", "-A")
    git(root, "commit", "-q", "--allow-empty", "-m", message)


def flake_ref(root: Path) -> str:
    """git+file for a git checkout (as a user's clone), path: otherwise."""
    return f"git+file://{root}" if (root / ".git").exists() else f"path:{root}"


def sm90a_matrix():
    """The repository's matrix with its x86_64 SM 90 row made arch-specific (sm = "90a"), as a user could."""
    from vllm_variants.matrix import Matrix, tomllib  # tomli on Python 3.10

    data = tomllib.loads((REPO / "nix" / "variants.toml").read_text())
    for row in data["sm"]:
        if row["sm"] == "90" and row["system"] == "x86_64-linux":
            row.update(sm="90a", capability="9.0a")
    return Matrix.from_toml(data)


# -- processes (for tests that signal a command and look for what it left) --------


def descendants(pid: int) -> set[int]:
    """Every live descendant of pid, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
