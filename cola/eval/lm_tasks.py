"""lm-eval-shaped tasks in `cola eval`: MATH-500 and every `cola_*` task of `evals/`, run through lm-eval.

Listed by :func:`task_names` for `cola.eval.runner`'s registry (the dispatch point of `cola eval`), so

    cola eval models/rl --task math500                        # hub HuggingFaceH4/MATH-500 (cola_math500)
    cola eval models/rl --task math500_local --math500-path /abs/test.jsonl --limit 50
    cola eval models/base --task cola_procedural --data-dir data
    cola eval models/rl --task math500_local --math500-path test.jsonl --samples 16    # pass@k, best-of-n

run the YAML tasks of `evals/` (README there) with `lm_eval.simple_evaluate`:

* **CoLA folders** through `cola.eval.lm_eval_model.ColaLM` (latent-action decoding, ``--action-mode``);
* **plain HF folders** (baselines) through lm-eval's own `HFLM`, subclassed only so that the baseline sees
  what `ColaLM` sees (`PipelineHFLM`: the EOS start-of-example marker, the same cap on over-long budgets).

Both reuse the model `cola eval` already loaded (no second copy of an 8B checkpoint in memory). The task
manager indexes `evals/` only (``include_defaults=False``: lm-eval's ~14.7k built-in YAMLs cost ~10 s).
``--limit`` becomes lm-eval's ``limit``, ``--max-new-tokens`` the tasks' ``max_gen_toks``, ``--seed`` every
lm-eval seed; procedural tasks read ``<data-dir>/tasks/<split>/`` (lm-eval metadata ``tasks_dir``).

**Sampling** (``--samples N`` > 1, MATH-500 only; the procedural task files have the same option in the
harness's own loop, ``--task arith``): N generations per problem with sampled latent actions (CoLA: top-40
of the policy at temperature 1, greedy tokens, as in the paper's rollouts) or sampled tokens (base:
temperature 1, full vocabulary). Prompts, stop strings, budget and grader are the task's own (the lm-eval
task object builds the prompts, the lm-eval model decodes them); the metrics are those of
`cola.eval.sampling_metrics`: pass@k, best-of-n with an oracle verifier (= pass@n) and majority vote.

Results have the shape of the harness's own loops: ``accuracy``, ``stderr``, ``n``, ``seconds``,
per-sample ``records`` (``prompt``, ``problem`` for MATH, ``answer``, ``completion``, ``correct``), plus
``lm_eval_task``, ``data`` and, for a group, per-``subtasks`` numbers.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from cola.config.evaluation import MATH500_HUB
from cola.eval.context import EvalContext, EvalError
from cola.eval.lm_models import build_lm, quiet
from cola.eval.scoring import describe_sampling, score_samples

logger = logging.getLogger(__name__)

#: The task YAMLs of a source checkout (the same folder as `cola.eval.lm_eval_model.EVALS_DIR`, computed here
#: without importing torch and lm-eval, which `cola eval --help` and task-name checks must not pay for).
EVALS_DIR = Path(__file__).resolve().parents[2] / "evals"
HUB_DATASET = MATH500_HUB
#: `cola eval` names of the MATH-500 tasks → lm-eval task names.
MATH500_TASKS = {"math500": "cola_math500", "math500_local": "cola_math500_local"}
_MATH500_LM_TASKS = frozenset(MATH500_TASKS.values())
#: Action sampler of the sampled (pass@k) evaluation: the paper's rollout setting (cola-spec.md §3 stage 4).
SAMPLE_ACTION_TOP_K, SAMPLE_TEMPERATURE = 40, 1.0


# --------------------------------------------------------------------------------------------- task index


class _TolerantLoader(yaml.SafeLoader):
    """Reads lm-eval YAMLs without resolving ``!function`` tags (only names and data kwargs are needed)."""


_TolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_TolerantLoader)  # a SafeLoader subclass
    return data if isinstance(data, dict) else {}


@functools.cache
def lm_eval_tasks(evals_dir: Path = EVALS_DIR) -> dict[str, dict[str, Any]]:
    """Every task and group of ``evals_dir``: name → its YAML (``task``/``group``, ``dataset_kwargs``...)."""
    found: dict[str, dict[str, Any]] = {}
    if evals_dir.is_dir():
        for path in sorted(evals_dir.glob("*.yaml")):  # `_*_yaml` templates are not tasks (lm-eval's rule)
            config = _read_yaml(path)
            name = config.get("group") or config.get("task")
            if isinstance(name, str):
                found[name] = config
    return found


def _leaf_tasks(name: str) -> list[str]:
    """The tasks a name runs: itself, or a group's members (recursively)."""
    config = lm_eval_tasks().get(name, {})
    if "group" in config:
        members = config.get("task") or []
        return [leaf for member in members if isinstance(member, str) for leaf in _leaf_tasks(member)]
    return [name]


def _math500_path(ctx: EvalContext) -> str | None:
    """``--math500-path`` (``ctx.options["math500_path"]``), else ``COLA_MATH500_PATH`` (evals/README.md)."""
    path = ctx.options.get("math500_path") or os.environ.get("COLA_MATH500_PATH")
    return str(path) if path else None


def resolve(name: str, ctx: EvalContext) -> str:
    """The lm-eval task a `cola eval` name runs. ``math500`` with ``--math500-path`` runs the local task:
    the same prompt, budget and grader on the given file (what the offline error message suggests)."""
    # Only the explicit option: COLA_MATH500_PATH (the local task's fallback) must not silently replace the
    # hub.
    if name == "math500" and ctx.options.get("math500_path"):
        return "cola_math500_local"
    return MATH500_TASKS.get(name, name)


def _metadata(ctx: EvalContext) -> dict[str, Any]:
    """lm-eval metadata for the loaders of `evals/utils.py`: the data dir's task folder, MATH-500's file."""
    metadata: dict[str, Any] = {"tasks_dir": str(Path(ctx.task_dir).resolve())}
    path = _math500_path(ctx)
    if path:
        metadata["math500_path"] = str(Path(path).expanduser().resolve())
    return metadata


# --------------------------------------------------------------------------------------------- checks


def _offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


@functools.cache
def hub_math500_error() -> str | None:
    """None when `HUB_DATASET` loads (from the HF cache when offline), else the one-line reason why not."""
    import datasets

    hint = "pass --math500-path FILE to use a local JSONL"
    try:
        with quiet("datasets", "huggingface_hub", "fsspec"):
            datasets.load_dataset(HUB_DATASET, "default", split="test")
    except Exception as exc:  # noqa: BLE001 - ConnectionError, FileNotFoundError, ValueError, ...
        if _offline():
            return f"{HUB_DATASET} is not in the HF cache (offline); {hint}"
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return f"cannot load {HUB_DATASET} from the hub ({first}); {hint}"
    return None


def check(name: str, ctx: EvalContext) -> None:
    """Raise a one-line EvalError for a task that cannot run as given; runs before the model loads."""
    if not lm_eval_tasks():
        raise EvalError(f"task {name!r} needs the lm-eval task YAMLs in {EVALS_DIR} (a source checkout)")
    lm_name = resolve(name, ctx)
    if ctx.samples > 1 and lm_name not in _MATH500_LM_TASKS:
        plain = lm_name.removeprefix("cola_")
        raise EvalError(
            f"--samples works with math500, math500_local and the task files, not {name!r}"
            + (f" (use --task {plain}: the same data in cola's own loop)" if plain != lm_name else "")
        )
    if lm_name == "cola_math500_local":
        path = _math500_path(ctx)
        if not path:
            raise EvalError(
                f"{name} needs --math500-path FILE "
                "(a JSONL with HuggingFaceH4/MATH-500's fields: problem, answer)"
            )
        if not Path(path).expanduser().is_file():
            raise EvalError(f"{path}: no such MATH-500 JSONL file (--math500-path)")
    elif lm_name == "cola_math500":
        error = hub_math500_error()
        if error:
            raise EvalError(error)
    for leaf in _leaf_tasks(lm_name):
        cola_task = (lm_eval_tasks().get(leaf, {}).get("dataset_kwargs") or {}).get("cola_task")
        if cola_task and not (Path(ctx.task_dir) / f"{cola_task}.jsonl").is_file():
            raise EvalError(
                f"{name}: no {Path(ctx.task_dir) / (cola_task + '.jsonl')} "
                "(run the prepare stage or pass --data-dir)"
            )


# --------------------------------------------------------------------------------------------- greedy runs


def _number(value: Any) -> float:
    """lm-eval reports a missing stderr as the string ``"N/A"``."""
    return float(value) if isinstance(value, int | float) else float("nan")


def _record(task: str, sample: dict[str, Any]) -> dict[str, Any]:
    """One logged lm-eval sample as a harness-style record."""
    doc = sample.get("doc") or {}
    context = sample["arguments"][0][0] if sample.get("arguments") else None
    response = sample.get("filtered_resps") or [""]
    record: dict[str, Any] = {"task": task, "index": sample.get("doc_id"), "prompt": context}
    if "problem" in doc:
        record["problem"] = doc["problem"]
    record.update(
        answer=sample.get("target"),
        completion=response[0] if isinstance(response, list) else response,
        correct=bool(sample.get("exact_match", 0)),
    )
    if "format" in sample:
        record["format_ok"] = bool(sample["format"])
    return record


def summarize_lm_eval(results: dict[str, Any], lm_name: str) -> dict[str, Any]:
    """`simple_evaluate`'s output → ``accuracy``, ``stderr``, ``n``, (``format_rate``, ``subtasks``), records.

    Per-sample records come from ``log_samples``: the context lm-eval sent, the filtered response, the target
    and the task's own ``exact_match`` verdict."""
    table = results["results"]
    head = table.get(lm_name, {})
    records = [_record(task, s) for task, samples in results.get("samples", {}).items() for s in samples]
    records.sort(key=lambda r: (r["task"], r["index"] if r["index"] is not None else -1))
    out: dict[str, Any] = {
        "accuracy": _number(head.get("exact_match,none")),
        "stderr": _number(head.get("exact_match_stderr,none")),
        "n": len(records),
    }
    if "format,none" in head:
        out["format_rate"] = _number(head["format,none"])
    subtasks = {
        task: {
            "accuracy": _number(row.get("exact_match,none")),
            "stderr": _number(row.get("exact_match_stderr,none")),
            "n": int(row.get("sample_len", sum(r["task"] == task for r in records))),
            **({"format_rate": _number(row["format,none"])} if "format,none" in row else {}),
        }
        for task, row in table.items()
        if task != lm_name
    }
    if subtasks:
        out["subtasks"] = subtasks
    out["records"] = records
    return out


def _describe_data(lm_name: str, ctx: EvalContext) -> str:
    if lm_name == "cola_math500_local":
        return str(Path(_math500_path(ctx) or "").expanduser().resolve())
    if lm_name == "cola_math500":
        return f"{HUB_DATASET} (test)"
    return str(Path(ctx.task_dir).resolve())


@contextlib.contextmanager
def _without_environment_report() -> Iterator[None]:
    """Skip what `simple_evaluate` adds about the machine after scoring: `add_env_info` runs torch's
    collect_env (about 3 s a call on CPU) and `get_git_commit_hash` runs ``git describe``, which prints
    "fatal: not a git repository" outside one. `summarize_lm_eval` reads neither; the tracked run records
    the code version (`mlflow.source.git.commit`)."""
    import lm_eval.evaluator as evaluator

    saved = evaluator.add_env_info, evaluator.get_git_commit_hash
    evaluator.add_env_info, evaluator.get_git_commit_hash = (lambda results: None), (lambda: None)
    try:
        yield
    finally:
        evaluator.add_env_info, evaluator.get_git_commit_hash = saved


def run_lm_task(name: str, ctx: EvalContext) -> dict[str, Any]:
    """Run one `evals/` task (or MATH-500 alias) on ``ctx``'s model; see the module docstring."""
    import lm_eval

    from cola.eval.lm_eval_model import make_task_manager

    check(name, ctx)
    lm_name = resolve(name, ctx)
    start = time.perf_counter()
    # lm-eval warns about every override we make on purpose (gen_kwargs, metadata); errors still show.
    with quiet("lm_eval", level=logging.ERROR), _without_environment_report():
        task_manager = make_task_manager(metadata=_metadata(ctx))
        if ctx.samples > 1:
            result = _run_sampled(lm_name, task_manager, ctx)
        else:
            lm = build_lm(ctx)
            seeds = dict(random_seed=ctx.seed, numpy_random_seed=ctx.seed, torch_random_seed=ctx.seed,
                         fewshot_random_seed=ctx.seed)  # fmt: skip
            raw = lm_eval.simple_evaluate(
                model=lm,
                tasks=[lm_name],
                task_manager=task_manager,
                limit=ctx.limit,
                log_samples=True,
                gen_kwargs={"max_gen_toks": ctx.max_new_tokens} if ctx.max_new_tokens else None,
                bootstrap_iters=1000,  # exact_match is a mean: its stderr is closed-form, bootstrap unused
                **seeds,
            )
            result = summarize_lm_eval(raw, lm_name)
    records = result.pop("records")
    result.update(
        seconds=time.perf_counter() - start, lm_eval_task=lm_name, data=_describe_data(lm_name, ctx)
    )
    result["records"] = records  # last, so the JSON reads numbers first
    return result


# --------------------------------------------------------------------------------------------- sampling


def _run_sampled(lm_name: str, task_manager: Any, ctx: EvalContext) -> dict[str, Any]:
    """N sampled generations per MATH-500 problem → `score_samples` (pass@k, best-of-n, majority)."""
    import torch
    from lm_eval.api.instance import Instance

    task = task_manager.load_task_or_group([lm_name])[lm_name]
    docs = list(task.eval_docs)[: ctx.limit or None]
    if not docs:
        raise EvalError(f"{lm_name}: no problems")
    task_kwargs = dict(task.config.generation_kwargs or {})
    gen_kwargs = {
        "until": task_kwargs.get("until", []),
        "do_sample": True,
        "temperature": SAMPLE_TEMPERATURE,
        # CoLA: top-k of the *action* sampler (ColaLM maps do_sample onto actions, tokens stay greedy);
        # base: 0 = no top-k, plain temperature-1 sampling over the whole vocabulary, as the own loop does.
        "top_k": SAMPLE_ACTION_TOP_K if ctx.kind == "cola" else 0,
        "max_gen_toks": ctx.max_new_tokens or int(task_kwargs.get("max_gen_toks", 256)),
    }
    lm = build_lm(ctx, action_mode="random" if ctx.action_mode == "random" else "sample")
    prompts = [task.doc_to_text(doc) for doc in docs]
    requests = [
        Instance("generate_until", doc, (prompt, dict(gen_kwargs)), idx=j, metadata=(lm_name, i, ctx.samples))
        for i, (doc, prompt) in enumerate(zip(docs, prompts, strict=True))
        for j in range(ctx.samples)
    ]
    # HF sampling draws from the global RNG (ColaLM has its own seeded generator): seed it, restore it after.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        texts = lm.generate_until(requests, disable_tqdm=not ctx.progress)
    completions = [texts[i * ctx.samples : (i + 1) * ctx.samples] for i in range(len(docs))]
    examples = [
        {"prompt": prompt, "problem": doc.get("problem"), "answer": str(task.doc_to_target(doc))}
        for doc, prompt in zip(docs, prompts, strict=True)
    ]
    out = score_samples("math500", examples, completions)
    out["sampling"] = describe_sampling(
        ctx.kind, lm.action_mode if ctx.kind == "cola" else None, SAMPLE_ACTION_TOP_K, SAMPLE_TEMPERATURE,
        gen_kwargs["max_gen_toks"],
    )  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------- names


def task_names() -> list[str]:
    """Every `cola eval` name this module runs: math500, math500_local and each task or group of `evals/`."""
    return list(dict.fromkeys([*MATH500_TASKS, *lm_eval_tasks()]))


__all__ = ["EVALS_DIR", "MATH500_TASKS", "build_lm", "check", "lm_eval_tasks", "run_lm_task",
           "summarize_lm_eval", "task_names"]  # fmt: skip
