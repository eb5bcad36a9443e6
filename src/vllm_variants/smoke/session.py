"""`nox -s smoke` / `invoke smoke`: prove each built result works, in its own Python.

Each result is checked by ONE process of its own interpreter,
`<result>/bin/python` running check.py (torch and vllm imported once), several
results at once. Then a table per result, smoke-report.json and
smoke-junit.xml (one testcase per check per result), and SmokeFailed (exit 1)
when any check failed. Bad selections fail before anything runs, writing
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from .. import lifecycle, userfiles
from ..errors import SelectionError, SmokeFailed, ToolMissing, UsageError, tail
from ..options import comma_list, refuse_control_characters, whole_number
from ..outputs import check_dir, make_dir
from ..project import Project
from ..runner import CannotRun, spawn, text_of
from .check import CHECKS, FAIL, STATUSES
from .report import DEFAULT_TIMEOUT_S, Options, ResultReport, SmokeReport

CHECK_SCRIPT = Path(__file__).with_name("check.py")
# Written by the flake (nix/overlays/vllm.nix) into every variant's vllm output.
VARIANT_JSON = Path("share") / "vllm-variants" / "variant.json"
REPORT_JSON = "smoke-report.json"
JUNIT_XML = "smoke-junit.xml"
DEFAULT_OPTIONS = Options()


# -- which results ------------------------------------------------------------


def _exists(path: Path) -> bool:
    return path.is_symlink() or path.exists()


def resolve_target(project: Project, token: str, cwd: Path) -> Path:
    """A result path from a path, a result-* link name, a variant name or an SM."""
    for base in (cwd, project.root):
        candidate = base / token
        if _exists(candidate):
            return Path(os.path.abspath(candidate))
    if os.sep in token or token.startswith("."):
        raise SelectionError(f"no result at {token}: give a result path, a variant name or an SM (e.g. 90, sm90)")
    name = token[len("result-") :] if token.startswith("result-") else token
    variant = project.matrix.resolve(name)
    link = project.result_link(variant)
    if not _exists(link):
        raise SelectionError(
            f"{variant.name} is not built here (no {link.name} in {project.root}); "
            f"build it with `{variant.build_command}` or give a result path"
        )
    return link


def dangling(path: Path) -> str | None:
    """Why a result link leads nowhere (its store path was collected), or None."""
    if path.is_symlink() and not path.exists():
        return f"{path} points to {os.readlink(path)}, which no longer exists (garbage-collected?); rebuild it"
    return None


def validate_result(path: Path) -> None:
    """A path that is no result at all is a bad selection; a dangling link is a
    result that failed (check_result says so) and the others are still checked."""
    if dangling(path):
        return
    if not os.access(path / "bin" / "python", os.X_OK):
        raise SelectionError(f"{path} is not a built result: it has no bin/python")


def select_results(project: Project, tokens: Iterable[str] = (), cwd: Path | None = None) -> list[Path]:
    """The results to check, in order: the given ones, or every result-* link."""
    words = [word for item in tokens for word in comma_list(item)]
    blank = next((str(item) for item in tokens if str(item).strip(" ,") == "" and str(item)), None)
    if blank is not None:  # ',' is a mistake (an unset list), never "every result"
        raise SelectionError(f"--results '{blank}' names no result; give a variant name, an SM or a result path")
    if words:
        paths = [resolve_target(project, word, Path(cwd or Path.cwd())) for word in words]
    else:
        paths = project.result_links()
        if not paths:
            raise SelectionError(
                f"no result-* links in {project.root}: build a variant first (invoke build --sm 90) "
                "or name a result path"
            )
    unique = list(dict.fromkeys(paths))
    for path in unique:
        validate_result(path)
    return unique


# -- checking one result ------------------------------------------------------


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


# What a result or its check process hands us is bounded before it is kept
# (issue #21): a 30 MB variant name, a non-numeric `seconds` or a missing
# field must not cost minutes, write hundreds of MB or raise a TypeError.
METADATA_LIMIT = userfiles.MIB  # variant.json
REPORT_LIMIT = 16 * userfiles.MIB  # check.py's report on stdout, and its progress file
NAME_LIMIT = 200
REASON_LIMIT = 4000
DETAILS_LIMIT = 64 * 1024


def bounded(value: Any, limit: int) -> str:
    """`value` as text of at most `limit` characters (the cut said)."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def _seconds(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf"):
        return float(value)
    return 0.0


def check_record(raw: Any, check_id: int, name: str) -> dict[str, Any] | None:
    """A reported check as the report keeps it (our id and name, its fields typed
    and bounded), or None when it is no check record at all."""
    if not isinstance(raw, dict) or raw.get("status") not in STATUSES:
        return None
    return {
        "id": check_id,
        "name": name,
        "status": raw["status"],
        "reason": bounded(raw.get("reason", ""), REASON_LIMIT),
        "no_gpu": raw.get("no_gpu") is True,
        "details": small_record(raw.get("details"), "details") or {},
        "seconds": _seconds(raw.get("seconds")),
    }


def small_record(value: Any, what: str) -> dict[str, Any] | None:
    """A mapping kept as it is when small, replaced by a note when it is not (None: no mapping)."""
    if not isinstance(value, dict):
        return None
    if len(json.dumps(value, default=str)) > DETAILS_LIMIT:
        return {"omitted": f"more than {DETAILS_LIMIT} bytes of {what}"}
    return value


def _metadata(path: Path) -> dict[str, Any] | None:
    """A result's variant.json (None when it has none or it is unreadable: check 1 says why)."""
    try:
        data = userfiles.read_json(path, str(path), limit=METADATA_LIMIT)
    except userfiles.UserFileError:
        return None
    return data if isinstance(data, dict) else None


def _parse_report(text: str) -> dict[str, Any]:
    if len(text) > REPORT_LIMIT:
        return {}
    try:
        data = userfiles.parse_json(text, "the check report")
    except userfiles.UserFileError:
        return {}
    return data if isinstance(data, dict) else {}


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """check.py's --progress file: one JSON object per finished check."""
    try:
        lines = userfiles.read_text(path, str(path), limit=REPORT_LIMIT).splitlines()
    except userfiles.UserFileError:
        return []
    return [record for record in map(_parse_report, lines) if record]


# check.py is imported rather than run as a script: a script is compiled on
# every run (5 ms for this one; as long as the stand-in's whole `import vllm`),
# an imported module comes from its cached bytecode. Its folder leaves
# sys.path before anything is checked.
_LAUNCH = (
    "import sys; sys.path.insert(0, sys.argv[1]); import check; del sys.path[0]; sys.exit(check.main(sys.argv[2:]))"
)


def check_argv(result: Path, progress: Path, options: Options = DEFAULT_OPTIONS) -> list[str | Path]:
    """The one process that checks `result`: its own Python running check.py."""
    return [
        result / "bin" / "python",
        "-c",
        _LAUNCH,
        CHECK_SCRIPT.parent,
        "--variant-json",
        result / VARIANT_JSON,
        "--progress",
        progress,
        *options.check_args(),
    ]


class Running:
    """The check processes running now, so that a signal stops them all.

    Each runs in its own session (a vllm engine starts processes of its own):
    a Ctrl-C at the terminal or a SIGTERM sent to us alone reaches the main
    thread, which stops every group here at once and exits 130 or 143
    (issue #11), instead of waiting for checks that may take 900 s.
    """

    def __init__(self) -> None:
        self.procs: set[subprocess.Popen[bytes]] = set()
        self.lock = threading.Lock()
        self.stopped = False

    def run(self, argv: Sequence[str | Path], cwd: str, timeout: float) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of argv; TimeoutExpired after `timeout` s (it is killed)."""
        with self.lock:
            if self.stopped:
                raise CannotRun(str(argv[0]), "the smoke run was interrupted")
            proc = spawn(argv, cwd=cwd, new_session=True)
            self.procs.add(proc)
        try:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                left, said = lifecycle.stop(proc, own_group=True)
                raise subprocess.TimeoutExpired(proc.args, timeout, left, said) from None
        finally:
            with self.lock:
                self.procs.discard(proc)
        return proc.returncode, text_of(out), text_of(err)

    def stop(self) -> None:
        """Kill every check process group; start no more."""
        with self.lock:
            self.stopped = True
            procs = list(self.procs)
        for proc in procs:  # their threads wait for them
            lifecycle.signal_child(proc, signal.SIGKILL, own_group=True)


def _run_checks(
    path: Path, progress: Path, tmp: str, options: Options, running: Running
) -> tuple[int | None, str, dict[str, Any], str | None]:
    """check.py's exit status, stderr, report and why it gave none (timeout, cannot start)."""
    try:
        code, stdout, stderr = running.run(check_argv(path, progress, options), cwd=tmp, timeout=options.timeout)
    except subprocess.TimeoutExpired as exc:
        return None, text_of(exc.stderr), {}, f"timed out after {options.timeout:g} s"
    except ToolMissing as exc:
        return None, "", {}, str(exc)
    if code in (0, 1) and len(stdout) > REPORT_LIMIT:
        return (
            code,
            stderr,
            {},
            f"its report was more than {REPORT_LIMIT // userfiles.MIB} MiB, more than a report may be",
        )
    return code, stderr, _parse_report(stdout) if code in (0, 1) else {}, None


def check_result(path: Path, options: Options, running: Running | None = None) -> ResultReport:
    """Run check.py in the result's own Python; every check accounted for."""
    metadata = _metadata(path / VARIANT_JSON)
    name = bounded((metadata or {}).get("name") or path.name, NAME_LIMIT)
    error = None
    exit_code: int | None = None
    stderr = ""
    start = time.perf_counter()
    data: dict[str, Any] = {}
    gone = dangling(path)
    with lifecycle.temporary_directory(prefix="vllm-variants-smoke-") as tmp:
        progress = tmp / "progress.jsonl"
        if gone:  # nothing to run: this result fails, the others are still checked
            error = gone
        else:
            exit_code, stderr, data, error = _run_checks(path, progress, str(tmp), options, running or Running())
        if not data:  # it died, or hung: keep what it finished
            data = {"checks": _read_lines(progress)}
    seconds = time.perf_counter() - start
    if error is None and "schema" not in data:
        last = tail(stderr, 1)
        error = f"the check process {_describe_exit(exit_code or 0)}" + (f": {last}" if last else "")
    raw_checks = data.get("checks")
    raw = {c.get("id"): c for c in raw_checks if isinstance(c, dict)} if isinstance(raw_checks, list) else {}
    checks = []
    for check_id, check_name in CHECKS:
        checks.append(
            check_record(raw.get(check_id), check_id, check_name)
            or {
                "id": check_id,
                "name": check_name,
                "status": FAIL,
                "reason": f"not reported: {error or 'missing from the check output'}",
                "no_gpu": False,
                "details": {},
                "seconds": 0.0,
            }
        )
    report = ResultReport(
        name=name,
        result=path,
        store_path=os.path.realpath(path),
        variant=small_record(data.get("variant"), "variant record") or small_record(metadata, "variant.json"),
        checks=checks,
        exit_code=exit_code,
        seconds=seconds,
        error=error,
    )
    if not report.ok or error:
        report.stderr_tail = tail(stderr)
    return report


# -- the session --------------------------------------------------------------


def smoke(
    project: Project,
    results: Iterable[str] = (),
    *,
    generate: bool = False,
    allow_no_gpu: bool = False,
    jobs: int | str | None = 0,
    report_dir: Path | str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    out: TextIO | None = None,
    cwd: Path | None = None,
) -> SmokeReport:
    """Check results (every result-* link by default); raise SmokeFailed on any failure.

    jobs: results checked at once; 0 means all of them (up to the cores), or
    one at a time with --generate (engines on one GPU disturb each other's
    memory profiling).
    """
    from . import report as reporting

    jobs = whole_number("--jobs", jobs, "0: automatic") or 0
    here = Path(cwd or Path.cwd())
    if report_dir:  # checked before any check runs: a typo must not cost the run (issue #11)
        folder = check_dir(f"--report-dir {report_dir}", here / Path(report_dir).expanduser(), here)
    else:
        folder = check_dir(f"the checkout {project.root} (for the smoke reports)", project.root, here)
    paths = select_results(project, results, cwd)
    options = Options(generate=generate, allow_no_gpu=allow_no_gpu, timeout=timeout)
    workers = jobs or (1 if generate else min(len(paths), os.cpu_count() or 1))
    print(f"smoke: checking {len(paths)} result(s), {min(workers, len(paths))} at a time", file=sys.stderr)
    start = time.perf_counter()
    running = Running()
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        with lifecycle.interruptible():
            futures = [pool.submit(check_result, p, options, running) for p in paths]
            results_done = [future.result() for future in futures]
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: stop the checks now, write no report
        running.stop()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    seen: set[str] = set()
    for r in results_done:  # two results of one variant: tell them apart
        if r.name in seen:
            r.name = f"{r.name} [{r.result}]"
        seen.add(r.name)
    session = SmokeReport(results_done, options, seconds=time.perf_counter() - start)
    make_dir(folder)
    session.files = [folder / REPORT_JSON, folder / JUNIT_XML]
    reporting.write_json(session, session.files[0])
    reporting.write_junit(session, session.files[1])
    reporting.print_tables(session, out or sys.stdout)
    if not session.ok:
        raise SmokeFailed(session.failure_line())
    return session


class _Parser(argparse.ArgumentParser):
    """argparse that raises (one line) instead of exiting the nox process."""

    def error(self, message: str) -> Any:
        usage = " ".join(self.format_usage().split()[1:])
        raise UsageError(f"{message}; usage: {usage}")


def parse_args(argv: Sequence[str]) -> dict[str, Any] | None:
    """nox posargs -> smoke() keyword arguments (None after --help)."""
    parser = _Parser(
        prog="nox -s smoke --",
        add_help=False,
        description="Check built results in their own Python (every result-* link by default).",
    )
    parser.add_argument("results", nargs="*", metavar="NAME|PATH", help="variant names, SMs (90, sm90) or result paths")
    parser.add_argument(
        "--generate", action="store_true", help="also run a tiny dummy model on the GPU and generate a few tokens"
    )
    parser.add_argument(
        "--allow-no-gpu",
        action="store_true",
        help="without a GPU, skip the GPU checks instead of failing (build hosts)",
    )
    parser.add_argument("--jobs", default=0, help="results checked at once (0: automatic)")
    parser.add_argument("--report-dir", help="where smoke-report.json and smoke-junit.xml go (default: the checkout)")
    parser.add_argument("-h", "--help", action="store_true", help="show this help")
    args = parser.parse_args(list(argv))
    if args.help:
        parser.print_help()
        return None
    return {
        "results": args.results,
        "generate": args.generate,
        "allow_no_gpu": args.allow_no_gpu,
        "jobs": args.jobs,
        "report_dir": args.report_dir,
    }


def main(project: Project, argv: Sequence[str]) -> SmokeReport | None:
    """`nox -s smoke -- ...`: parse the posargs, then smoke()."""
    kwargs = parse_args(argv)
    if kwargs is None:
        return None
    refuse_control_characters(
        {"NAME|PATH": kwargs["results"], "--jobs": kwargs["jobs"], "--report-dir": kwargs["report_dir"]}
    )
    return smoke(project, **kwargs)
