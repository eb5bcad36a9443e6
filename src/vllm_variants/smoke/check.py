"""The smoke checks for one result, run by that result's own Python.

    <result>/bin/python check.py --variant-json <result>/share/vllm-variants/variant.json \\
        [--generate] [--allow-no-gpu] [--progress FILE]

Standalone on purpose: this file imports only the standard library, plus
torch, vllm and pynvml as it checks them (each once, in this one process). So
it runs under any interpreter: a built result (what `nox -s smoke` does), or a
plain python3 with a CUDA torch and no vllm (the GPU-machine capture,
tests/fixtures/gpu/h100/smoke-check.json). The runner imports it instead
(vllm_variants.smoke.session.check_argv), so it comes from cached bytecode.

Every check runs whatever failed before it, and reports pass, fail or skip
with a one-line reason. Without a GPU, the GPU checks (3, 4, 6, 7) say
"no GPU: ..." and fail, or are skipped with --allow-no-gpu (build hosts).

Output: one JSON document on stdout. Whatever the checked packages print goes
to stderr (vllm logs to stdout), so stdout stays parseable. With --progress,
each check is also appended to FILE as one JSON line the moment it is done,
so a crash (a segfault in a CUDA library) leaves the checks done so far.
Exit status: 0 when no check failed, 1 when one did, 2 on bad arguments.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from types import ModuleType
from typing import Any, cast

SCHEMA = 1
PASS, FAIL, SKIP = "pass", "fail", "skip"
STATUSES = (PASS, FAIL, SKIP)

# (id, name): the checks of issue #3, in the order they run. The runner
# (vllm_variants.smoke.session) reads this list; JUnit test names come from it.
CHECKS = (
    (1, "import vllm"),
    (2, "from vllm import LLM"),
    (3, "torch and CUDA"),
    (4, "variant vs GPU"),
    (5, "quantization methods"),
    (6, "driver"),
    (7, "generate"),
)

# The ModelOpt plan needs both (vllm.model_executor.layers.quantization).
REQUIRED_QUANTIZATION = ("modelopt", "modelopt_fp4")

# --generate: a tiny Llama built from this config alone (no download, random
# weights via load_format="dummy"). float16 runs on every SM from 7.0 on
# (bfloat16 needs 8.0); head_dim 64 suits every attention backend.
TINY_MODEL = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 512,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float16",
}
PROMPT_TOKEN_IDS = [1, 15, 27, 42]
GENERATE_TOKENS = 4

USAGE = (
    "usage: check.py [--variant-json FILE] [--generate] [--allow-no-gpu] [--progress FILE]\n"
    "  --variant-json FILE  the result's metadata (<result>/share/vllm-variants/variant.json)\n"
    "  --generate           also run a tiny dummy model on the GPU (check 7)\n"
    "  --allow-no-gpu       without a GPU, skip the GPU checks instead of failing them\n"
    "  --progress FILE      append each check to FILE as one JSON line when it is done\n"
)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """'ImportError: first line of the message', at most `limit` characters."""
    text = str(exc).strip().splitlines()
    line = type(exc).__name__ + (": " + text[0] if text else "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def public_version(version: object) -> str:
    """'0.15.1+cu129' -> '0.15.1' (a local version tag does not change the release)."""
    return str(version).split("+", 1)[0]


def _load_compat() -> ModuleType:
    """vllm_variants/compat.py: the one rule of which GPU runs which code (audit and `invoke which` use it too).

    Imported through the package where this file is vllm_variants.smoke.check;
    loaded by its path where the launcher imported this file as a top-level
    module inside a result's Python (vllm_variants is not installed there, and
    putting vllm_variants/ on sys.path would shadow modules such as `git`).
    """
    if __package__:
        from .. import compat

        return compat
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "compat.py")
    spec = importlib.util.spec_from_file_location("vllm_variants_compat", path)
    assert spec is not None and spec.loader is not None  # a .py path always has a loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_compat = _load_compat()
base_capability = _compat.base_capability
sm_of = _compat.sm_of
sass_runs_on = _compat.sass_runs_on
version_tuple = _compat.version_tuple


class CheckOutcome:
    def __init__(self, status: str, reason: str, details: dict[str, Any] | None = None, no_gpu: bool = False) -> None:
        self.status = status
        self.reason = reason
        self.details = details or {}
        self.no_gpu = no_gpu


def passed(reason: str, **details: Any) -> CheckOutcome:
    return CheckOutcome(PASS, reason, details)


def failed(reason: str, **details: Any) -> CheckOutcome:
    return CheckOutcome(FAIL, reason, details)


def skipped(reason: str, **details: Any) -> CheckOutcome:
    return CheckOutcome(SKIP, reason, details)


class Context:
    """What one check learns that a later one needs (each module imported once)."""

    def __init__(
        self, variant: dict[str, Any] | None, variant_error: str | None, generate: bool, allow_no_gpu: bool
    ) -> None:
        self.variant = variant
        self.variant_error = variant_error
        self.generate = generate
        self.allow_no_gpu = allow_no_gpu
        self.vllm: Any = None
        self.vllm_error = "not imported"
        self.torch: Any = None
        self.torch_error = "not imported"
        self.gpus: list[dict[str, Any]] | None = None  # [{"index", "name", "capability"}] when torch sees GPUs
        self.gpu_mismatch: str | None = None  # check 4's reason when the GPU cannot run this build

    def no_gpu(self, reason: str, **details: Any) -> CheckOutcome:
        """No GPU: a failure, or a skip with --allow-no-gpu; reported as such either way."""
        status = SKIP if self.allow_no_gpu else FAIL
        return CheckOutcome(status, "no GPU: " + reason, details, no_gpu=True)

    def claimed(self, key: str) -> Any:
        """What the result's metadata says of `key` ('vllm', 'torch', 'cuda'), or None."""
        versions = (self.variant or {}).get("versions") or {}
        return versions.get(key)


# -- the checks -------------------------------------------------------------


def import_once(ctx: Context, name: str) -> Any:
    """Import top-level module `name` for every check; None (and ctx.<name>_error) when it fails."""
    try:
        module = __import__(name)
    except (Exception, SystemExit) as exc:
        setattr(ctx, name + "_error", one_line(exc))
        return None
    setattr(ctx, name, module)
    return module


def mismatch(ctx: Context, key: str, found: object) -> str | None:
    """'vllm 0.16.0 where the result claims 0.15.1', or None when it agrees (or claims nothing)."""
    claimed = ctx.claimed(key)
    if claimed and found and public_version(found) != public_version(claimed):
        return "%s %s where the result claims %s" % (key, found, claimed)
    return None


def check_import_vllm(ctx: Context) -> CheckOutcome:
    vllm = import_once(ctx, "vllm")
    if vllm is None:
        return failed("import vllm failed: " + ctx.vllm_error)
    version = str(getattr(vllm, "__version__", "unknown"))
    where = os.path.dirname(getattr(vllm, "__file__", None) or "") or "?"
    problem = mismatch(ctx, "vllm", version)
    if problem:  # e.g. a pip-installed vllm on PYTHONPATH shadowing the result's own
        return failed("imported %s (from %s)" % (problem, where), version=version, path=where)
    return passed("vllm " + version, version=version, path=where)


def check_import_llm(ctx: Context) -> CheckOutcome:
    if ctx.vllm is None:
        return failed("cannot import vllm (check 1): " + ctx.vllm_error)
    try:
        from vllm import LLM
    except (Exception, SystemExit) as exc:
        return failed("from vllm import LLM failed: " + one_line(exc))
    where = "%s.%s" % (getattr(LLM, "__module__", "?"), getattr(LLM, "__qualname__", "LLM"))
    return passed(where, object=where)


def check_torch(ctx: Context) -> CheckOutcome:
    torch = import_once(ctx, "torch")
    if torch is None:
        return failed("import torch failed: " + ctx.torch_error)
    version = str(torch.__version__)
    cuda = getattr(getattr(torch, "version", None), "cuda", None)
    details = {"torch": version, "cuda": cuda}
    # a torch = "wheel" row too: it lives on its wheel's CUDA line (issue #23)
    problems = [p for p in (mismatch(ctx, "torch", version), mismatch(ctx, "cuda", cuda)) if p]
    if cuda is None:
        return failed("torch %s is a CPU build (torch.version.cuda is None)" % version, **details)
    if problems:
        return failed("; ".join(problems), **details)
    available = bool(torch.cuda.is_available())
    details["available"] = available
    if not available:
        return ctx.no_gpu("torch.cuda.is_available() is False (torch %s, CUDA %s)" % (version, cuda), **details)
    gpus = []
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        gpus.append(
            {
                "index": index,
                "name": str(torch.cuda.get_device_name(index)),
                "capability": "%d.%d" % (major, minor),
            }
        )
    if not gpus:
        return ctx.no_gpu("torch.cuda.device_count() is 0 (torch %s, CUDA %s)" % (version, cuda), **details)
    ctx.gpus = gpus
    details["gpus"] = gpus
    names = ", ".join("%s (%s)" % (g["name"], g["capability"]) for g in gpus)
    return passed(
        "torch %s, CUDA %s, %d GPU%s: %s" % (version, cuda, len(gpus), "" if len(gpus) == 1 else "s", names),
        **details,
    )


def torch_is_wheel(ctx: Context) -> bool:
    """The variant's torch is nixpkgs' torch-bin, the upstream wheel (every SM): the one exception."""
    return ctx.variant is not None and ctx.variant.get("torch") == "wheel"


def torch_arch_problem(ctx: Context, sm: str) -> tuple[Any, str | None]:
    """Why torch's compiled arch list is not exactly this variant's SM (a torch-bin wheel:
    does not hold SASS that runs on it), or None."""
    if ctx.torch is None:
        return None, "torch did not import (check 3): " + ctx.torch_error
    try:
        flags = ctx.torch._C._cuda_getArchFlags()
    except (Exception, SystemExit) as exc:
        return None, "cannot read torch's CUDA arch flags: " + one_line(exc)
    found = str(flags or "").split()
    wanted = "sm_" + sm
    if torch_is_wheel(ctx):
        if not any(sass_runs_on(arch[len("sm_") :], sm) for arch in found if arch.startswith("sm_")):
            return found, "the torch wheel carries no SASS that runs on %s (it has %s)" % (
                wanted,
                " ".join(found) or "no CUDA arch",
            )
        return found, None
    if found != [wanted]:
        return found, "torch was compiled for %s, not %s alone: not this variant's torch" % (
            " ".join(found) or "no CUDA arch",
            wanted,
        )
    return found, None


def check_variant_vs_gpu(ctx: Context) -> CheckOutcome:
    variant = ctx.variant
    if not variant:
        # load_variant gives a reason with no metadata (an empty {} has none: None, as before)
        return failed(cast(str, ctx.variant_error))
    name = variant.get("name", "?")
    capability = str(variant.get("capability", ""))
    sm = str(variant.get("sm") or sm_of(capability))
    arch_flags, arch_problem = torch_arch_problem(ctx, sm)
    details = {"variant": name, "claimed_capability": capability, "torch_arch_flags": arch_flags}
    if ctx.gpus is None:
        if arch_problem:
            return failed(arch_problem, **details)
        return ctx.no_gpu(
            "nothing to compare capability %s with (torch is built for sm_%s, as claimed)" % (capability, sm),
            **details,
        )
    details["gpus"] = ctx.gpus
    wrong = [g for g in ctx.gpus if g["capability"] != base_capability(capability)]
    if wrong:
        gpu = wrong[0]
        if sass_runs_on(capability, gpu["capability"]):
            verdict = "is not built for GPU %d, %s (capability %s)" % (gpu["index"], gpu["name"], gpu["capability"])
            why = "its capability %s SASS runs there, but no kernel is compiled for that GPU" % capability
        else:
            verdict = "will not run on GPU %d, %s (capability %s)" % (gpu["index"], gpu["name"], gpu["capability"])
            why = "%s carries kernels for capability %s only" % (name, capability)
        ctx.gpu_mismatch = "the sm%s build %s: %s; use the sm%s variant (invoke build --sm %s)" % (
            sm,
            verdict,
            why,
            sm_of(gpu["capability"]),
            sm_of(gpu["capability"]),
        )
        return failed(ctx.gpu_mismatch, **details)
    if arch_problem:
        return failed(arch_problem, **details)
    return passed(
        "%s is capability %s, as %s claims; torch is built for sm_%s"
        % (", ".join(g["name"] for g in ctx.gpus), capability, name, sm),
        **details,
    )


def check_quantization(ctx: Context) -> CheckOutcome:
    if ctx.vllm is None:
        return failed("cannot import vllm (check 1): " + ctx.vllm_error)
    try:
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    except (Exception, SystemExit) as exc:
        return failed("cannot read vllm's quantization methods: " + one_line(exc))
    methods = [str(m) for m in QUANTIZATION_METHODS]
    missing = [m for m in REQUIRED_QUANTIZATION if m not in methods]
    details = {"required": list(REQUIRED_QUANTIZATION), "registered": len(methods)}
    if missing:
        return failed(
            "not registered: %s (vllm registers %d methods)" % (", ".join(missing), len(methods)),
            missing=missing,
            **details,
        )
    return passed("%s registered (of %d methods)" % (", ".join(REQUIRED_QUANTIZATION), len(methods)), **details)


def read_driver_version() -> tuple[str | None, str | None, str | None]:
    """(version, source, why not): NVML first, then the kernel module's /proc file."""
    why = []
    try:
        import pynvml
    except (Exception, SystemExit) as exc:
        why.append("pynvml: " + one_line(exc))
    else:
        try:
            pynvml.nvmlInit()
            try:
                version = pynvml.nvmlSystemGetDriverVersion()
            finally:
                pynvml.nvmlShutdown()
            if isinstance(version, bytes):  # nvidia-ml-py < 11.515 returns bytes
                version = version.decode()
            return str(version), "pynvml", None
        except (Exception, SystemExit) as exc:
            why.append("pynvml: " + one_line(exc))
    proc = "/proc/driver/nvidia/version"
    try:
        with open(proc, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        why.append("%s: %s" % (proc, exc.strerror or exc))
    else:
        import re

        # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  ..." (also the Open Kernel Module)
        match = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s", text)
        if match:
            return match.group(1), proc, None
        why.append("%s: no driver version in it" % proc)
    return None, None, "; ".join(why)


def check_driver(ctx: Context) -> CheckOutcome:
    version, source, why = read_driver_version()
    details = {"driver": version, "source": source}
    if version is None:
        if ctx.gpus is None:
            return ctx.no_gpu("no NVIDIA driver found (%s)" % why, **details)
        return failed("a GPU is visible but the driver version cannot be read (%s)" % why, **details)
    # A driver without a visible GPU is still checked: a driver too old for
    # the CUDA runtime is the usual reason torch sees no GPU.
    minimum = (ctx.variant or {}).get("min_driver")
    if minimum is None:
        return failed(
            "driver %s found, but no minimum to compare with: %s"
            % (version, ctx.variant_error if not ctx.variant else "the variant metadata has no min_driver"),
            **details,
        )
    details["min_driver"] = minimum
    cuda = (ctx.variant or {}).get("cuda", "?")
    if version_tuple(version) < version_tuple(minimum):
        return failed(
            "driver %s is older than %s, the minimum for CUDA %s: upgrade the NVIDIA driver" % (version, minimum, cuda),
            **details,
        )
    return passed("driver %s >= %s (CUDA %s), from %s" % (version, minimum, cuda, source), **details)


def check_generate(ctx: Context) -> CheckOutcome:
    if not ctx.generate:
        return skipped("not requested (--generate runs a tiny dummy model on the GPU)")
    if ctx.gpus is None:
        return ctx.no_gpu("--generate needs a GPU")
    if ctx.vllm is None:
        return failed("cannot import vllm (check 1): " + ctx.vllm_error)
    if ctx.gpu_mismatch:
        return failed("not run: " + ctx.gpu_mismatch)
    import shutil
    import tempfile

    # One process: run the engine core in this one (vllm's V1 default spawns it).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    model_dir = tempfile.mkdtemp(prefix="vllm-variants-smoke-")
    details = {"model": dict(TINY_MODEL), "prompt_token_ids": PROMPT_TOKEN_IDS}
    try:
        with open(os.path.join(model_dir, "config.json"), "w", encoding="utf-8") as handle:
            json.dump(TINY_MODEL, handle)
        try:
            from vllm import LLM, SamplingParams

            llm = LLM(
                model=model_dir,
                load_format="dummy",
                skip_tokenizer_init=True,
                enforce_eager=True,
                dtype="float16",
                max_model_len=128,
                max_num_seqs=1,
                gpu_memory_utilization=0.2,
                seed=0,
            )
        except (Exception, SystemExit) as exc:
            return failed("the engine did not start: " + one_line(exc), **details)
        try:
            params = SamplingParams(max_tokens=GENERATE_TOKENS, temperature=0.0, ignore_eos=True, detokenize=False)
            outputs = llm.generate([{"prompt_token_ids": PROMPT_TOKEN_IDS}], params, use_tqdm=False)
            tokens = [int(t) for t in outputs[0].outputs[0].token_ids]
        except (Exception, SystemExit) as exc:
            return failed("the engine started but did not generate: " + one_line(exc), **details)
        finally:
            del llm
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    details["token_ids"] = tokens
    if len(tokens) != GENERATE_TOKENS:
        return failed("generated %d tokens, expected %d" % (len(tokens), GENERATE_TOKENS), **details)
    return passed(
        "generated %d tokens on %s from %d prompt tokens (dummy weights)"
        % (len(tokens), ctx.gpus[0]["name"], len(PROMPT_TOKEN_IDS)),
        **details,
    )


FUNCTIONS = {
    1: check_import_vllm,
    2: check_import_llm,
    3: check_torch,
    4: check_variant_vs_gpu,
    5: check_quantization,
    6: check_driver,
    7: check_generate,
}


# -- running ----------------------------------------------------------------


def load_variant(path: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """(metadata dict, None) or (None, why not)."""
    if not path:
        return None, "no variant metadata: no --variant-json given"
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None, "no variant metadata at %s (not a vllm-variants result?)" % path
    except (OSError, ValueError) as exc:
        return None, "cannot read %s: %s" % (path, one_line(exc))
    if not isinstance(data, dict):
        return None, "%s does not hold a JSON object" % path
    return data, None


def run_check(check_id: int, name: str, ctx: Context) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        outcome = FUNCTIONS[check_id](ctx)
    except (Exception, SystemExit) as exc:  # a bug or a surprise: this check fails, the rest run
        outcome = failed("the check raised " + one_line(exc))
    return {
        "id": check_id,
        "name": name,
        "status": outcome.status,
        "reason": outcome.reason,
        "no_gpu": outcome.no_gpu,
        "details": outcome.details,
        "seconds": round(time.perf_counter() - start, 4),
    }


def parse_args(argv: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {"variant_json": None, "generate": False, "allow_no_gpu": False, "progress": None}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            sys.stdout.write(str(__doc__).split("\n\n")[0] + "\n\n" + USAGE)
            raise SystemExit(0)
        if arg in ("--generate", "--allow-no-gpu"):
            options[arg[2:].replace("-", "_")] = True
            continue
        key, sep, value = arg.partition("=")
        if key in ("--variant-json", "--progress"):
            if not sep:
                if not args:
                    raise UsageError("%s needs a value" % key)
                value = args.pop(0)
            options[key[2:].replace("-", "_")] = value
            continue
        raise UsageError("unknown argument %r" % arg)
    return options


class UsageError(Exception):
    pass


def _stop_the_group(signum: int, frame: Any) -> None:
    """SIGTERM: the smoke run stopped us, or died (its PR_SET_PDEATHSIG sends
    it). What the checks started (a vllm engine's processes) is in our
    process group, not the smoke run's: stop it with us (issue #21). The
    KeyboardInterrupt unwinds our own clean-up (the model folder) first."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _leads_our_group():
        try:
            os.killpg(0, signal.SIGTERM)
        except OSError:
            pass
    raise KeyboardInterrupt


def _leads_our_group() -> bool:
    """Started by the smoke run in a session of our own: the group is ours to stop."""
    return os.getpgrp() == os.getpid()


def main(argv: list[str] | None = None) -> int:
    """Run the checks; a SIGTERM ends them and every process they started."""
    signal.signal(signal.SIGTERM, _stop_the_group)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        sys.stderr.flush()
        if _leads_our_group():
            os.killpg(0, signal.SIGKILL)  # what ignored SIGTERM, and us: the last act
        return 128 + signal.SIGTERM


def _main(argv: list[str] | None = None) -> int:
    # Run as a script, this file's folder comes first on sys.path: its
    # siblings (the runner's modules) must not shadow what is being checked.
    here = os.path.dirname(os.path.realpath(__file__))
    if sys.path and os.path.realpath(sys.path[0] or os.curdir) == here:
        sys.path.pop(0)
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        sys.stderr.write("check.py: %s\n%s" % (exc, USAGE))
        return 2

    # Keep stdout for the report: whatever the checks print goes to stderr.
    sys.stdout.flush()
    report_fd = os.dup(1)
    os.dup2(2, 1)

    started = time.perf_counter()
    variant, variant_error = load_variant(options["variant_json"])
    ctx = Context(variant, variant_error, options["generate"], options["allow_no_gpu"])
    report = {
        "schema": SCHEMA,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "variant_json": options["variant_json"],
        "variant": variant,
        "variant_error": variant_error,
        "generate": options["generate"],
        "allow_no_gpu": options["allow_no_gpu"],
        "checks": [],
    }

    progress = None
    if options["progress"]:
        progress = os.open(options["progress"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for check_id, name in CHECKS:
        record = run_check(check_id, name, ctx)
        report["checks"].append(record)
        if progress is not None:
            os.write(progress, (json.dumps(record, default=str) + "\n").encode("utf-8"))
    if progress is not None:
        os.close(progress)
    report["ok"] = all(c["status"] != FAIL for c in report["checks"])
    report["seconds"] = round(time.perf_counter() - started, 4)
    text = json.dumps(report, indent=1, sort_keys=True, default=str) + "\n"

    sys.stdout.flush()
    sys.stderr.flush()
    with os.fdopen(report_fd, "w", encoding="utf-8") as out:
        out.write(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
