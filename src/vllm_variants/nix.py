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

from . import userfiles
from .errors import (
    BuildError,
    CommandError,
    PinError,
    PreflightError,
    SelectionError,
    ToolMissing,
    VariantsError,
    tail,
)
from .nixlog import DryRun, parse_dry_run
from .runner import format_argv, run, run_together, spawn


class NixError(CommandError):
    """A nix command failed: the message is Nix's own (its innermost `error:`), not its last line."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str = "") -> None:
        super().__init__(argv, returncode, stderr)
        words = [self.argv[0]]
        for arg in self.argv[1:3]:
            if arg.startswith("-"):
                break
            words.append(arg)
        shown = " ".join(words)  # `nix path-info`: the command, not its flags
        detail = error_message(stderr)
        VariantsError.__init__(
            self, f"{shown} failed (exit code {returncode})" + (f": {detail}" if detail else "") + config_hint(stderr)
        )


class InputsUnreachable(PinError):
    """The flake's inputs (the pinned nixpkgs, or --nixpkgs) cannot be fetched:
    no network, a proxy, a rate limit, a commit that is not there."""


USE_A_MIRROR = (
    "build against a local checkout or mirror instead: --nixpkgs /path/to/nixpkgs or "
    "--nixpkgs git+https://your-mirror/nixpkgs?rev=<rev>"
)
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
    # What the user can do instead when the flake's inputs cannot be fetched.
    fetch_instead: str = USE_A_MIRROR

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
            raise NixError(proc.args, proc.returncode, proc.stderr)
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
            proc = run(self.config_argv(), env=self.env, check=False)
            if proc.returncode != 0:
                raise NixError(proc.args, proc.returncode, proc.stderr)
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
            return [f"'nix --version' failed: {error_message(exc.stderr) or exc}{config_hint(exc.stderr)}"]
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
        self,
        *args: str | os.PathLike[str],
        cwd: Path | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        source: str | None = None,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[str]:
        """runner.run of `nix *args` with this Nix's options and environment
        (`env`: more variables). The one place Nix's failures are read: a
        command that evaluates or fetches a flake and fails because an input
        cannot be fetched raises InputsUnreachable, whatever `check` says (no
        caller can do anything per variant without its inputs); any other
        failure, with check, is a NixError carrying Nix's own message.
        `source`: the flake reference the command fetches, named in that line."""
        full_env = self.env if env is None else {**(self.env if self.env is not None else os.environ), **env}
        proc = run(self.argv(*args), cwd=cwd, env=full_env, check=False, **kwargs)
        if proc.returncode != 0:
            if args and os.fspath(args[0]) in FETCHING_COMMANDS:
                reason = unreachable(proc.stderr, self.fetch_instead, source)
                if reason:
                    raise InputsUnreachable(reason)
            if check:
                raise NixError(proc.args, proc.returncode, proc.stderr)
        return proc

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
        data: dict[str, Any] = json.loads(self.run("flake", "prefetch", "--json", ref, source=ref).stdout)
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
        if not installables:  # `nix build` would build the flake's `default`, which it has none of
            raise SelectionError("nothing to evaluate: no variant selected")
        proc = self.run("build", "--dry-run", "--json", *args, *installables, cwd=cwd)
        planned = [Planned.from_json(item) for item in json.loads(proc.stdout or "[]")]
        if len(planned) != len(installables):
            raise BuildError(
                f"nix build --dry-run --json listed {len(planned)} derivations for {len(installables)} variants"
            )
        return planned, parse_dry_run(proc.stderr)

    def out_paths(
        self, flake: str, attrs: Sequence[str], overrides: Mapping[str, str] | None = None, *, cwd: Path | None = None
    ) -> list[str]:
        """The out paths of `attrs` of `flake`, in order, from one evaluation of exactly those.

        `nix build --dry-run` takes several installables in one process, where
        `nix eval` takes one: one evaluation, nothing built, and no other attribute
        evaluated (a variant this nixpkgs cannot build must not fail another's
        check). With substitutes off it asks no binary cache what it would fetch,
        and --no-write-lock-file keeps flake.lock as it is, with overrides or without.
        """
        args = ["--no-write-lock-file", "--option", "substitute", "false", *self.override_args(overrides or {})]
        built, _ = self.dry_run([f"{flake}#{attr}" for attr in attrs], *args, cwd=cwd)
        return [self.out_path(planned) for planned in built]

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


_WARNING = re.compile(r"^warning:\s*(?:error:\s*)?(?P<text>.*)$")


def rejected_options(stderr: str, options: Sequence[tuple[str, str]]) -> list[str]:
    """'Nix rejects --option NAME=VALUE: why' for each of `options` Nix warned about.

    Nix only warns about a setting it rejects, in words that differ by the
    setting's type ("setting 'cores' has invalid value", "Boolean setting
    'keep-going' has invalid value", "option 'sandbox' has invalid value",
    "unknown setting"): any warning that quotes the option's name is one.
    """
    given = {name: value for name, value in options}
    found = []
    for line in stderr.splitlines():
        match = _WARNING.match(line.strip())
        if not match:
            continue
        for name, value in given.items():
            if f"'{name}'" in match["text"]:
                found.append(f"Nix rejects --option {name}={value}: {match['text']}")
    return list(dict.fromkeys(found))


def config_hint(stderr: str) -> str:
    """What to do when Nix refuses its configuration (a bad NIX_CONFIG line or nix.conf)."""
    if "NIX_CONFIG" in stderr:
        return "; fix or unset the NIX_CONFIG environment variable"
    if "configuration" in stderr or "nix.conf" in stderr:
        return "; fix the Nix configuration file it names (nix.conf)"
    return ""


# -- an input that cannot be fetched ----------------------------------------------

# Subcommands that evaluate a flake and so may fetch its inputs.
FETCHING_COMMANDS = frozenset({"eval", "build", "flake", "derivation", "develop", "run", "shell"})
# How Nix and git word a failed fetch, checked in this order: git reports an
# unreachable host and then Nix says the revision is missing, so the network
# comes first; a GitHub 404/422 ("unable to download ...: HTTP error 404") is a
# missing commit, not the network; 403/429 from GitHub is its rate limit.
_NETWORK = re.compile(
    r"Could not resolve host|Couldn't connect to server|Failed to connect|Connection (timed out|refused|reset)"
    r"|Network is unreachable|Timeout was reached|Operation timed out|Could not resolve proxy",
    re.IGNORECASE,
)
_RATE_LIMIT = re.compile(r"HTTP error 403|HTTP error 429|rate limit", re.IGNORECASE)
_NO_REPOSITORY = re.compile(r"does not appear to be a git repository|Repository not found", re.IGNORECASE)
_MISSING_COMMIT = re.compile(
    r"object not found|Cannot find Git revision|not our ref|couldn't find remote ref|unknown revision"
    r"|bad object|No commit found|HTTP error 40[49]|HTTP error 422|is not a commit",
    re.IGNORECASE,
)
_DOWNLOAD = re.compile(r"unable to download|failed to fetch|cannot fetch|unable to fetch", re.IGNORECASE)
_FETCHED = re.compile(r"(?:while fetching the input|unpacking) '([^']+)'")
_INPUT = re.compile(r"while updating the flake input '([^']+)'")
_URL = re.compile(r"'((?:[a-z][a-z0-9+.-]*:)[^'\s]*)'")
_RETRY = re.compile(r";? retrying in \d+ ms$")
_ARCHIVE = re.compile(r"Failed to open archive \(Source threw exception: (?:error: )?(.*)\)")


def _matched_line(stderr: str, pattern: re.Pattern[str]) -> str:
    """The last line matching `pattern` (Nix's final word, not a retry's warning), bare."""
    found = [text for text in stderr.splitlines() if pattern.search(text)][-1]
    bare = _RETRY.sub("", re.sub(r"^(\s*(fatal|warning|error):)+\s*", "", found).strip())
    wrapped = _ARCHIVE.fullmatch(bare)  # libarchive's wrapper around the download's own error
    return wrapped[1] if wrapped else bare


def _source(stderr: str, line: str) -> str:
    """What Nix was fetching: `nixpkgs (github:NixOS/nixpkgs/<rev>)`, else the URL it names."""
    fetched = _FETCHED.search(stderr)
    if fetched:
        ref = fetched[1].split("?narHash=", 1)[0]
        name = _INPUT.search(stderr)
        return f"{name[1]} ({ref})" if name else ref
    url = _URL.search(line) or _URL.search(stderr)
    return url[1] if url else "the flake's inputs"


def fetch_failure(stderr: str) -> tuple[str, str] | None:
    """(kind, Nix's line) when `stderr` says a fetch failed: kind is 'network',
    'rate-limit', 'repository' or 'commit'; None for any other failure."""
    for kind, pattern in (
        ("network", _NETWORK),
        ("rate-limit", _RATE_LIMIT),
        ("repository", _NO_REPOSITORY),
        ("commit", _MISSING_COMMIT),
    ):
        if pattern.search(stderr) and (kind != "commit" or _DOWNLOAD.search(stderr) or "Git" in stderr):
            return kind, _matched_line(stderr, pattern)
    if _DOWNLOAD.search(stderr):
        return "network", _matched_line(stderr, _DOWNLOAD)
    return None


def unreachable(stderr: str, instead: str = USE_A_MIRROR, source: str | None = None) -> str | None:
    """One line: which source could not be fetched (`source`, or the one Nix
    names), why, and what to do next; None when `stderr` is no fetch failure."""
    failure = fetch_failure(stderr)
    if failure is None:
        return None
    kind, line = failure
    if source is None:
        source = _source(stderr, line)
    why = {
        "network": f"the network failed ({line}); check the connection and proxy (https_proxy, ALL_PROXY), or {instead}",
        "rate-limit": f"the host refused ({line}), a rate limit?: give Nix a token "
        f"(access-tokens = github.com=<token> in nix.conf) or a substituter that has it, or {instead}",
        "repository": f"no repository there ({line}); {instead}",
        "commit": f"the commit is not there ({line}); pin a commit that exists, or {instead}",
    }[kind]
    return f"cannot fetch {source}: {why}"


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
_USAGE_HINT = re.compile(r"^\s*Try '[^']+ --help' for more information\.\s*$")


def error_message(stderr: str) -> str:
    """Nix's own message from an error report, on one line.

    Nix prints `error:` then a trace (`… while evaluating ...`, source
    excerpts) and the innermost `error: <message>` last; that message is what
    a user needs.
    """
    lines = [line for line in stderr.splitlines() if not _USAGE_HINT.match(line)]
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
    label = f"--nixpkgs {value}"
    candidate = (cwd or Path.cwd()) / Path(value).expanduser()
    looks_like_a_path = value.startswith(("/", "./", "../", "~")) or ":" not in value
    if candidate.exists() or candidate.is_symlink() or looks_like_a_path:
        if not candidate.exists() and not candidate.is_symlink():
            raise SelectionError(
                f"{label}: no such directory; give a nixpkgs checkout or a flake "
                "reference such as github:NixOS/nixpkgs/<rev> or path:/srv/nixpkgs"
            )
        try:
            found, is_dir = userfiles.file_or_directory(candidate, label)
        except userfiles.UserFileError as exc:
            raise SelectionError(f"{exc}; give a nixpkgs checkout's directory") from None
        if not is_dir:
            raise SelectionError(
                f"{label}: is a file, not a nixpkgs checkout; give the checkout's "
                "directory or a flake reference such as github:NixOS/nixpkgs/<rev>"
            )
        found = userfiles.real(found)
        if not (found / "flake.nix").is_file():
            raise SelectionError(f"{label}: {found} has no flake.nix; give a nixpkgs checkout")
        return directory_ref(found, in_a_clone=False)
    return value


def directory_ref(root: Path, *, in_a_clone: bool = True) -> str:
    """A local flake directory as a flake reference, its path URL-encoded (a space,
    '#' or '?' in it would otherwise break the reference): `git+file://` for a
    git checkout (a `path:` reference would copy its .git, gigabytes for
    nixpkgs, into the store), `path:` otherwise. in_a_clone: a folder inside a
    clone is `git+file://<clone>?dir=<folder>`, as Nix reads a bare path;
    otherwise only a checkout's own top counts (--nixpkgs: a copy of nixpkgs
    kept in some other repository is taken as the files it holds)."""
    for top in (root, *(root.parents if in_a_clone else ())):
        if (top / ".git").exists():
            ref = f"git+file://{userfiles.url_path(top)}"
            return ref if top == root else f"{ref}?dir={userfiles.url_path(root.relative_to(top))}"
    return f"path:{userfiles.url_path(root)}"


def flake_ref(root: Path) -> str:
    """The flake reference for a checkout (directory_ref: encoded, git-aware)."""
    return directory_ref(userfiles.real(root))
