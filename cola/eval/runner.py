"""The dispatch point of `cola eval`: one registry of named evaluations, built here from both sides.

    task files     ``<data_dir>/tasks/<split>/<task>.jsonl``: accuracy (greedy, or sampled with ``samples``)
    perplexity, diversity, probe    the held-out diagnostics (:mod:`cola.eval.perplexity`,
                                    :mod:`cola.eval.probes`)
    math500, math500_local, cola_*  lm-eval-shaped tasks (:mod:`cola.eval.lm_tasks`)

This module imports the runners; none of them imports it back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cola.eval import lm_tasks
from cola.eval.context import (
    EvalContext,
    EvalError,
    default_max_new_tokens,
    heldout_lines,
    heldout_prefixes,
    task_files,
)
from cola.eval.perplexity import perplexity
from cola.eval.probes import action_following_probe, semantic_diversity_eval
from cola.eval.scoring import sampled_task_accuracy, task_accuracy
from cola.io import read_jsonl


def _run_file_task(name: str, ctx: EvalContext) -> dict[str, Any]:
    examples = read_jsonl(task_files(ctx.data_dir, ctx.split)[name])[: ctx.limit or None]
    if not examples:
        raise EvalError(f"{ctx.task_dir / (name + '.jsonl')}: no examples")
    budget = ctx.max_new_tokens or default_max_new_tokens(ctx.tokenizer, examples)
    if ctx.samples > 1:
        return sampled_task_accuracy(
            ctx.model,
            ctx.tokenizer,
            ctx.kind,
            examples,
            samples=ctx.samples,
            max_new_tokens=budget,
            batch_size=ctx.batch_size,
            seed=ctx.seed,
            # Greedy actions would give n identical answers; random actions are a deliberate choice, so kept.
            action_mode="random" if ctx.action_mode == "random" else "sample",
            progress=ctx.progress,
        )
    return task_accuracy(
        ctx.model,
        ctx.tokenizer,
        ctx.kind,
        examples,
        max_new_tokens=budget,
        batch_size=ctx.batch_size,
        progress=ctx.progress,
        action_mode=ctx.action_mode,
        seed=ctx.seed,
    )

def _run_perplexity(ctx: EvalContext) -> dict[str, Any]:
    return perplexity(
        ctx.model,
        ctx.tokenizer,
        ctx.kind,
        heldout_lines(ctx),
        **{k: ctx.options[k] for k in ("seq_len", "max_tokens") if k in ctx.options},
    )

def _run_diversity(ctx: EvalContext) -> dict[str, Any]:
    prefixes = heldout_prefixes(ctx, ctx.limit or 16)
    return semantic_diversity_eval(
        ctx.model,
        ctx.tokenizer,
        ctx.kind,
        prefixes,
        seed=ctx.seed,
        **{k: ctx.options[k] for k in ("m", "length", "embedder") if k in ctx.options},
    )

def _run_probe(ctx: EvalContext) -> dict[str, Any]:
    return action_following_probe(
        ctx.model, ctx.tokenizer, heldout_prefixes(ctx, ctx.limit or 32), batch_size=ctx.batch_size
    )


#: The lm-eval tasks (math500, math500_local and every cola_* task of evals/), listed apart from the harness's
#: own evaluations in `all_tasks` and in the unknown-task message.
LM_EVAL_TASKS: list[str] = lm_tasks.task_names()

#: Named evaluations beyond the task files: a runner `fn(ctx) -> dict` under the task's name.
RUNNERS: dict[str, Callable[[EvalContext], dict[str, Any]]] = {
    "perplexity": _run_perplexity,
    "diversity": _run_diversity,
    "probe": _run_probe,
    **{name: functools.partial(lm_tasks.run_lm_task, name) for name in LM_EVAL_TASKS},
}

#: Runners that need latent actions: refused up front for a plain base, before any other task runs.
COLA_ONLY = frozenset({"probe"})

#: Data checks of named runners (raising a one-line EvalError: a missing file, a dataset not in the cache),
#: run by `check_tasks` before the model loads and before any other task runs.
PRECHECKS: dict[str, Callable[[EvalContext], None]] = {
    name: functools.partial(lm_tasks.check, name) for name in LM_EVAL_TASKS
}


def check_tasks(names: Sequence[str], ctx: EvalContext) -> None:
    """Raise one EvalError for the first name `run_task` would refuse, so a run fails before any work."""
    known = known_tasks(ctx.data_dir, ctx.split)
    for name in names:
        if name not in known and name not in LM_EVAL_TASKS:
            missing = ctx.task_dir / f"{name}.jsonl"
            via = f"; through lm-eval: {', '.join(LM_EVAL_TASKS)}" if LM_EVAL_TASKS else ""
            raise EvalError(f"unknown task {name!r} (no {missing}); known: {', '.join(known)}{via}")
        if name in COLA_ONLY and ctx.kind != "cola":
            raise EvalError(f"{ctx.model_path}: task {name!r} needs a CoLA model (this is a plain base)")
        if name in PRECHECKS:
            PRECHECKS[name](ctx)

def known_tasks(data_dir: Path | str, split: str) -> list[str]:
    """The harness's own task names: the task files of the split, then the named evaluations (perplexity,
    diversity, probe). `run_task` also accepts the lm-eval tasks, `LM_EVAL_TASKS` (see `all_tasks`)."""
    return [*task_files(data_dir, split), *(name for name in RUNNERS if name not in LM_EVAL_TASKS)]

def all_tasks(data_dir: Path | str, split: str) -> list[str]:
    """Every name `run_task` accepts: `known_tasks`, then the lm-eval tasks."""
    return [*known_tasks(data_dir, split), *LM_EVAL_TASKS]

def run_task(name: str, ctx: EvalContext) -> dict[str, Any]:
    """Run one evaluation by name: a named runner in `RUNNERS`, or a task file of `ctx.split`."""
    check_tasks([name], ctx)
    if name in RUNNERS:
        return RUNNERS[name](ctx)
    return _run_file_task(name, ctx)
