"""The nix CLI, across versions 2.18 through current.

Nix changed interfaces at (see ../shared/NIXPKGS-FACTS.md and Nix's release notes):
- 2.19: updating one input is `nix flake update <input>`, before that
  `nix flake lock --update-input <input>` (a deprecated alias later);
  `nix path-info --json` prints an object keyed by path, before that a list;
- 2.20: `nix show-config` became `nix config show` (NixOS/nix#9477; the old
  name stays as a deprecated alias);
- 2.33: `nix path-info --json` wants `--json-format 1` (the keyed-by-path
  shape) and warns without it; older Nix rejects the flag (NixOS/nix#14704).
Callers use this module and never branch on the version themselves.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import BuildError, CommandError, PreflightError, SelectionError, ToolMissing, VariantsError, tail
from .nixlog import DryRun, parse_dry_run
from .runner import format_argv, run, run_together, spawn

MIN_VERSION = (2, 18)
# The `nix` CLI is itself the experimental feature nix-command: this tool's own
# need, so every call it makes turns it on (added to whatever nix.conf enables).
# Flakes are what the user builds, so they must enable those; pre-flight says how.
NIX_COMMAND = ("--extra-experimental-features", "nix-command")
ENABLE_FLAKES_HINT = (
    "add 'experimental-features = nix-command flakes' to ~/.config/nix/nix.conf "
    "(or /etc/nix/nix.conf, then restart nix-daemon)"
)
NOT_INSTALLED = "nix is not installed (not on PATH): install Nix >= 2.18 (https://nixos.org/download) and enable flakes"
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int]:
    """'nix (Nix) 2.26.3' -> (2, 26, 3).

    The last version on the line is Nix's: a distribution names itself and its
    own version first, as in 'nix (Determinate Nix 3.18.1) 2.33.4'.
    """
    matches = _VERSION.findall(text)
    if not matches:
        raise PreflightError(f"cannot read the Nix version from {text.strip()!r}")
    major, minor, patch = matches[-1]
    return int(major), int(minor), int(patch or 0)


@dataclass
class Nix:
    """A nix executable plus the options every call gets (--option pairs)."""

    executable: str = "nix"
    options: Sequence[tuple[str, str]] = ()
    env: Mapping[str, str] | None = None

    # -- identity and pre-flight ------------------------------------------

    @cached_property
    def _probes(self) -> list[subprocess.CompletedProcess[str]]:
        """`nix --version` and `nix config show`, run at once (every command asks
        both first: half the wait). Before Nix 2.20 the second is an error and
        _config asks `nix show-config` once the version says so."""
        return run_together([[self.executable, "--version"], self.argv("config", "show")], env=self.env)

    @cached_property
    def version(self) -> tuple[int, int, int]:
        proc = self._probes[0]
        if proc.returncode != 0:
            raise CommandError(proc.args, proc.returncode, proc.stderr)
        return parse_version(proc.stdout)

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def new_cli(self) -> bool:
        """True from Nix 2.19 on (flake update <input>, path-info object)."""
        return self.version >= (2, 19)

    def config_argv(self) -> list[str]:
        """`nix config show` from Nix 2.20 on, `nix show-config` before."""
        return self.argv(*(["config", "show"] if self.version >= (2, 20) else ["show-config"]))

    @cached_property
    def _config(self) -> dict[str, str]:
        parsed: dict[str, str] = {}
        probed = self._probes[1]
        if self.version >= (2, 20) and probed.returncode == 0:
            proc = probed
        else:
            proc = run(self.config_argv(), env=self.env)
        for line in proc.stdout.splitlines():
            key, sep, value = line.partition(" = ")
            if sep:
                parsed[key.strip()] = value.strip()
        self._rejected = rejected_options(proc.stderr, self.options)
        return parsed

    def rejected(self) -> list[str]:
        """Our --option pairs Nix refuses, one line each. Nix only warns
        (`warning: error: setting 'cores' has invalid value 'abc'`, `warning:
        unknown setting ...`) and goes on without them: a build the user did
        not ask for (issue #11)."""
        self.config()
        return self._rejected

    def config(self) -> dict[str, str]:
        """Effective settings (`nix config show`), as every call of ours sees them."""
        return self._config

    def setting(self, name: str) -> str:
        return self.config().get(name, "")

    def flakes_enabled(self) -> bool:
        return "flakes" in self.setting("experimental-features").split()

    def problems(self) -> list[str]:
        """What keeps this Nix from building the flake, one line each with its fix.

        Empty when nothing does. preflight() raises the first; `invoke doctor`
        lists them all. Stops early where Nix cannot be asked any further.
        """
        try:
            version = self.version
        except ToolMissing:
            return [NOT_INSTALLED]
        except CommandError as exc:
            return [f"'nix --version' failed: {exc}"]
        except PreflightError as exc:  # a version it cannot read
            return [str(exc)]
        found = []
        if version < MIN_VERSION:
            found.append(
                f"Nix {self.version_text} is too old: nixpkgs needs Nix >= "
                f"{'.'.join(map(str, MIN_VERSION))}; upgrade Nix"
            )
        try:
            flakes = self.flakes_enabled()
            system = self.setting("system")
        except VariantsError as exc:
            return [*found, f"cannot read the Nix configuration: {exc}"]
        if not system:  # every Nix names its system: this one is broken (or not Nix)
            return [
                *found,
                f"'{format_argv(self.config_argv())}' printed no 'system' setting: this Nix "
                "installation is broken; reinstall Nix >= 2.18 (https://nixos.org/download)",
            ]
        if not flakes:
            found.append(f"Nix's experimental feature 'flakes' is not enabled: {ENABLE_FLAKES_HINT}")
        return [*found, *self.rejected()]

    def preflight(self) -> None:
        """Nix present, >= 2.18, flakes on; else one PreflightError line."""
        found = self.problems()
        if found:
            raise PreflightError(found[0])

    # -- argv building --------------------------------------------------

    def _option_args(self) -> list[str]:
        args: list[str] = []
        for name, value in self.options:
            args += ["--option", name, value]
        return args

    def argv(self, *args: str | os.PathLike[str]) -> list[str]:
        """[nix, *args, nix-command on, --option ...]: every nix call but `nix --version`.

        Flags last: Nix reads them wherever they are and checks features only
        after parsing, and error lines show `nix <command> ...` first.
        """
        return [self.executable, *(os.fspath(a) for a in args), *NIX_COMMAND, *self._option_args()]

    @staticmethod
    def override_args(overrides: Mapping[str, str]) -> list[str]:
        args: list[str] = []
        for name, ref in overrides.items():
            args += ["--override-input", name, ref]
        return args

    def flake_update(
        self, flake: str | os.PathLike[str], input_name: str, *, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Relock one input of `flake` (flake.lock is rewritten; the command differs at 2.19)."""
        if self.new_cli:
            return self.run("flake", "update", input_name, "--flake", flake, cwd=cwd)
        return self.run("flake", "lock", flake, "--update-input", input_name, cwd=cwd)

    # -- common calls -----------------------------------------------------

    def run(
        self, *args: str | os.PathLike[str], cwd: Path | None = None, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """runner.run of `nix *args` with this Nix's options and environment."""
        return run(self.argv(*args), cwd=cwd, env=self.env, **kwargs)

    def eval_json(
        self,
        installable: str,
        *,
        apply: str | None = None,
        overrides: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Any:
        args = ["eval", "--json", installable, *self.override_args(overrides or {})]
        if apply:
            args += ["--apply", apply]
        proc = self.run(*args, cwd=cwd)
        return json.loads(proc.stdout)

    def flake_prefetch(self, ref: str) -> dict[str, Any]:
        """Fetch a flake reference into the store; {hash, locked, original, storePath}."""
        data: dict[str, Any] = json.loads(self.run("flake", "prefetch", "--json", ref).stdout)
        return data

    def path_info_json(self) -> list[str]:
        """`--json`, plus `--json-format 1` where Nix has it (2.33+): without it Nix
        warns that the default will go; before 2.33 the flag is an error."""
        return ["--json", "--json-format", "1"] if self.version >= (2, 33) else ["--json"]

    def path_info(
        self,
        paths: Sequence[str],
        *,
        closure: bool = True,
        recursive: bool = False,
        store: str | None = None,
    ) -> dict[str, dict[str, Any]]:
        """{store path: info} whichever shape this Nix prints.

        recursive: every path of the closures too. store: ask that store (a
        binary cache URI, ssh-ng://...) instead of the local one; a path it
        does not hold comes back as an entry that is_valid_info() rejects.
        """
        if not paths:
            return {}
        args = [
            "path-info",
            *self.path_info_json(),
            *(["--closure-size"] if closure else []),
            *(["--recursive"] if recursive else []),
            *(["--store", store] if store else []),
            *paths,
        ]
        data = json.loads(self.run(*args).stdout)
        return normalise_path_info(data)

    def realised(self, paths: Sequence[str]) -> dict[str, dict[str, Any]]:
        """path_info() of those `paths` that are valid in the store.

        Nix 2.19+ reports an invalid path as null, older ones as
        {"valid": false} or with an error; a failing batch is asked path by path.
        """
        try:
            infos = self.path_info(paths)
        except CommandError:
            if len(paths) <= 1:
                return {}
            return {p: i for path in paths for p, i in self.realised([path]).items()}
        return {p: i for p, i in infos.items() if is_valid_info(i)}

    def dry_run(self, installables: Sequence[str], *args: str, cwd: Path | None = None) -> tuple[list[Planned], DryRun]:
        """What building `installables` would do, building nothing.

        Returns `nix build --dry-run --json`'s records (one per installable,
        in order: checked) and the plan Nix printed on stderr.
        """
        proc = self.run("build", "--dry-run", "--json", *args, *installables, cwd=cwd)
        planned = [Planned.from_json(item) for item in json.loads(proc.stdout or "[]")]
        if len(planned) != len(installables):
            raise BuildError(
                f"nix build --dry-run --json listed {len(planned)} derivations for {len(installables)} variants"
            )
        return planned, parse_dry_run(proc.stderr)

    def out_path(self, planned: Planned) -> str:
        """The out path of a dry-run record: printed by this Nix, or read from its derivation."""
        if planned.out is not None:
            return planned.out
        return self.derivation_outputs(planned.drv)["out"]

    def derivation_outputs(self, drv: str) -> dict[str, str]:
        """{output name: store path} of a derivation, from `nix derivation show`.

        Newer formats key derivations and paths by base name; both are made
        absolute in the derivation's store directory.
        """
        data = json.loads(self.run("derivation", "show", drv).stdout)
        (record,) = data.values() if "derivations" not in data else data["derivations"].values()
        absolute = in_store_of(drv)
        outputs = {}
        for name, output in record.get("outputs", {}).items():
            path = (output or {}).get("path")
            if path:
                outputs[name] = absolute(path)
        return outputs

    def derivation_inputs(self, drvs: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """{drv path: the derivations it needs} for every derivation in the closures
        of `drvs`, from ONE `nix path-info --recursive`, all absolute.

        A derivation's references are its input derivations and its sources, so
        its `.drv` references are the graph's edges. It is a small part of what
        `nix derivation show -r` prints (every environment in full: at real
        scale tens of MB of JSON); it has no output paths (derivation_graph).
        """
        if not drvs:
            return {}
        infos = self.path_info(drvs, closure=False, recursive=True)
        absolute = in_store_of(drvs[0])

        return {
            absolute(drv): tuple(absolute(r) for r in info.get("references") or () if r.endswith(".drv"))
            for drv, info in infos.items()
            if drv.endswith(".drv")
        }

    def derivation_graph(self, drvs: Sequence[str], *, cwd: Path | None = None) -> dict[str, Derivation]:
        """Every derivation in the closures of `drvs`, from ONE `nix derivation show -r`:
        {drv path: Derivation(input derivations, output paths)}, all absolute.

        Newer formats key derivations, inputs and outputs by base name (and
        put the inputs under "inputs"); both shapes are read.
        """
        if not drvs:
            return {}
        data = json.loads(self.run("derivation", "show", "-r", *drvs, cwd=cwd).stdout)
        records = data["derivations"] if "derivations" in data else data
        absolute = in_store_of(drvs[0])

        graph = {}
        for drv, record in records.items():
            inputs = record.get("inputDrvs")
            if inputs is None:
                inputs = (record.get("inputs") or {}).get("drvs") or {}
            outputs = [(o or {}).get("path") for o in (record.get("outputs") or {}).values()]
            graph[absolute(drv)] = Derivation(
                tuple(absolute(i) for i in inputs), tuple(absolute(o) for o in outputs if o)
            )
        return graph

    def substituters(self) -> list[str]:
        """The binary caches Nix substitutes from, in its order (`substituters`, then `extra-substituters`)."""
        found = self.setting("substituters").split() + self.setting("extra-substituters").split()
        return list(dict.fromkeys(found))

    def fetch_sizes(self, paths: Sequence[str]) -> dict[str, dict[str, Any]]:
        """{path: its narinfo (downloadSize, narSize)} for those of `paths` a substituter
        holds: one `nix path-info --store` per substituter, each asked only for what
        the ones before it lack (Nix's own order). The dry run that found these
        paths left their narinfos in Nix's cache, so this asks no cache twice."""
        found: dict[str, dict[str, Any]] = {}
        for store in self.substituters():
            missing = [p for p in paths if p not in found]
            if not missing:
                break
            try:
                infos = self.path_info(missing, closure=False, store=store)
            except CommandError:
                continue  # a cache that answers nothing now: its paths' sizes stay unknown
            found.update({p: i for p, i in infos.items() if i and "narSize" in i})
        return found

    def add_roots(self, roots: Sequence[tuple[str, Path]]) -> list[str | None]:
        """Point each link at its store path as a GC root (what `nix build`
        leaves): None for each link made, else Nix's one-line reason.

        One `nix build --out-link` per link, all at once: Nix has no command
        that makes several GC-root links of chosen names (several installables
        get LINK, LINK-1, ...). Nix swaps each link atomically and refuses to
        replace anything but a link into the store, so a user's own file of that
        name is safe. They run in their own session: a Ctrl-C the caller holds
        does not stop them.
        """
        argvs = [self.argv("build", "--out-link", link, store_path) for store_path, link in roots]
        done = run_together(argvs, env=self.env, new_session=True)
        return [None if p.returncode == 0 else error_message(p.stderr) or f"exit code {p.returncode}" for p in done]

    def copy(self, paths: Sequence[str], *, to: str, echo: bool = False) -> None:
        """`nix copy --to URI paths` (their closures).

        Nix's own progress (a line per path copied) goes to our stderr: a
        closure can take long to upload. On failure its error is there too.
        """
        argv = self.argv("copy", "--to", to, *paths)
        if echo:
            print(f"$ {format_argv(argv)}", file=sys.stderr, flush=True)
        proc = spawn(argv, env=self.env, stdout=None, stderr=None)  # not run(): it would hold the progress back
        if proc.wait() != 0:
            raise CommandError(argv, proc.returncode, "see nix's error above")

    def sign(
        self,
        paths: Sequence[str],
        *,
        key_file: str | os.PathLike[str],
        store: str | None = None,
        recursive: bool = False,
        echo: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """`nix store sign --key-file K` in the local store, or in `store` (a binary cache)."""
        args = [
            "store",
            "sign",
            "--key-file",
            os.fspath(key_file),
            *(["--recursive"] if recursive else []),
            *(["--store", store] if store else []),
            *paths,
        ]
        return self.run(*args, echo=echo)


@dataclass(frozen=True)
class Planned:
    """One installable of `nix build --dry-run --json`: its .drv, and its out path where this Nix prints it."""

    drv: str
    out: str | None

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> Planned:
        """{drvPath, outputs}; drvPath is {path} in some Nix versions, outputs absent in some."""
        drv = item["drvPath"]
        outputs = item.get("outputs")
        out = (outputs or {}).get("out") if isinstance(outputs, dict) else None
        return cls(drv["path"] if isinstance(drv, dict) else drv, out if isinstance(out, str) else None)


@dataclass(frozen=True)
class Derivation:
    """One node of the derivation graph: what it needs built first, what it makes."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


_REJECTED = re.compile(r"^warning: (?:error: )?(setting '([^']+)' has invalid value .*|unknown setting '([^']+)')$")


def rejected_options(stderr: str, options: Sequence[tuple[str, str]]) -> list[str]:
    """'Nix rejects --option NAME=VALUE: why' for each of `options` Nix warned about."""
    given = {name: value for name, value in options}
    found = []
    for line in stderr.splitlines():
        match = _REJECTED.match(line.strip())
        name = match and (match.group(2) or match.group(3))
        if match and name and name in given:
            found.append(f"Nix rejects --option {name}={given[name]}: {match.group(1)}")
    return list(dict.fromkeys(found))


def in_store_of(path: str) -> Callable[[str], str]:
    """A path Nix printed, made absolute in `path`'s store directory (newer
    formats print base names)."""
    store_dir = os.path.dirname(path)
    return lambda p: p if p.startswith("/") else f"{store_dir}/{p}"


EXPRESSIONS = Path(__file__).with_name("expressions")


def nix_expression(name: str) -> str:
    """The text of one of this package's Nix files (expressions/NAME), for
    `--apply`: Nix code lives in .nix files, fed data, never in Python strings."""
    return (EXPRESSIONS / name).read_text(encoding="utf-8")


def normalise_path_info(data: Any) -> dict[str, dict[str, Any]]:
    """Nix < 2.19 prints [{"path": p, ...}]; 2.19+ prints {p: {...}}."""
    if isinstance(data, list):
        return {item["path"]: {k: v for k, v in item.items() if k != "path"} for item in data}
    if isinstance(data, dict):
        return {path: dict(info or {}) for path, info in data.items()}
    raise ValueError(f"unexpected nix path-info output: {type(data).__name__}")


_SOURCE_LINE = re.compile(r"^\s*(\d+\||\|)")  # a source excerpt under a Nix error


def error_message(stderr: str) -> str:
    """Nix's own message from an error report, on one line.

    Nix prints `error:` then a trace (`… while evaluating ...`, source
    excerpts) and the innermost `error: <message>` last; that message is what
    a user needs.
    """
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip().startswith("error:") and line.strip() != "error:"]
    if not starts:
        return tail(stderr, 1)
    message = [lines[starts[-1]].strip().removeprefix("error:").strip()]
    for line in lines[starts[-1] + 1 :]:
        if not line.strip() or _SOURCE_LINE.match(line):
            break
        message.append(line.strip())
    return " ".join(message)


def locked_value(lock: Mapping[str, Any], input_name: str, key: str) -> str | None:
    """A field ('rev', 'narHash') flake.lock (parsed) locks for one of the root's inputs."""
    nodes = lock.get("nodes", {})
    node = nodes.get(lock.get("root", "root"), {}).get("inputs", {}).get(input_name)
    if not isinstance(node, str):  # a `follows` path, or no such input
        return None
    value = nodes.get(node, {}).get("locked", {}).get(key)
    return value if isinstance(value, str) else None


def locked_rev(lock: Mapping[str, Any], input_name: str) -> str | None:
    """The commit flake.lock (parsed) locks for one of the root's inputs."""
    return locked_value(lock, input_name, "rev")


def is_valid_info(info: Mapping[str, Any] | None) -> bool:
    """Whether a path-info entry is a path the store holds.

    Nix >= 2.19 prints null for a path the store lacks (normalised to {}),
    2.18 prints {"valid": false}.
    """
    return info is not None and bool(info) and info.get("valid", True) is not False and "narHash" in info


def input_ref(value: str, cwd: Path | None = None) -> str:
    """--nixpkgs (a path or a flake reference) as a flake reference for --override-input.

    A directory becomes `git+file:///abs` when it is a git checkout (a
    `path:` reference would copy its .git, gigabytes for nixpkgs, into the
    store) and `path:/abs` otherwise; anything else is taken as a flake
    reference (github:NixOS/nixpkgs/<rev>, git+https://mirror/nixpkgs, ...).
    """
    if not value.strip():
        raise SelectionError(
            f"--nixpkgs '{value}' is empty; give a nixpkgs checkout or a flake reference such as "
            "github:NixOS/nixpkgs/<rev> (leave --nixpkgs out to build against the pin)"
        )
    candidate = ((cwd or Path.cwd()) / Path(value).expanduser()).resolve()
    if candidate.is_file():
        raise SelectionError(
            f"--nixpkgs {value}: is a file, not a nixpkgs checkout; give the checkout's "
            "directory or a flake reference such as github:NixOS/nixpkgs/<rev>"
        )
    if candidate.is_dir():
        if not (candidate / "flake.nix").is_file():
            raise SelectionError(f"--nixpkgs {value}: {candidate} has no flake.nix; give a nixpkgs checkout")
        return f"git+file://{candidate}" if (candidate / ".git").exists() else f"path:{candidate}"
    if value.startswith(("/", "./", "../", "~")) or ":" not in value:
        raise SelectionError(
            f"--nixpkgs {value}: no such directory; give a nixpkgs checkout or a flake "
            "reference such as github:NixOS/nixpkgs/<rev> or path:/srv/nixpkgs"
        )
    return value


def flake_ref(root: Path) -> str:
    """The flake reference for a checkout: its absolute path (git-aware in Nix)."""
    return str(Path(root).resolve())
