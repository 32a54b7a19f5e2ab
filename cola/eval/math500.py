"""The `math500` stage: MATH-500 accuracy of every model of the comparison, as `cola eval --task math500`.

Each row of the report (base, SFT, CoLA-BC, CoLA-FTA, every RL run and each of its seeds) is scored greedily
on the same problems through the same lm-eval task, prompt and grader as ``cola eval`` (`cola.eval.lm_tasks`,
`evals/cola_math500*.yaml`, `cola.tasks.math_grader`), with the binomial standard error. ``math500.source``
is the hub dataset or a local JSONL; data that cannot be read stops the stage with one line before any model
loads. With ``math500.enabled: false`` (the tiny profile) the stage records that it did not run, and why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cola.comparison import aggregate, model_variants, rows
from cola.config import Math500Config
from cola.config.evaluation import MATH500_HUB
from cola.errors import ColaError
from cola.eval import lm_tasks
from cola.eval.context import EvalContext
from cola.io import atomic_dir
from cola.model.checkpoint import load_model_and_tokenizer
from cola.results import StageResult

__all__ = ["check_source", "run_math500"]


def task_and_options(cfg: Math500Config) -> tuple[str, dict[str, Any]]:
    """The `cola eval` task that reads ``cfg.source`` and its options."""
    if cfg.source == MATH500_HUB:
        return "math500", {}
    return "math500_local", {"math500_path": str(Path(cfg.source).expanduser().resolve())}


def check_source(cfg: Math500Config) -> None:
    """One line naming the fix when MATH-500 cannot be read as ``cfg.source`` says."""
    hint = "point math500.source at a local JSONL (problem, answer): dvc exp run -S math500.source=PATH"
    if cfg.source == MATH500_HUB:
        error = lm_tasks.hub_math500_error()
        if error:
            raise ColaError(f"math500.source: {error.split(';')[0]}; {hint}")
    elif not Path(cfg.source).expanduser().is_file():
        raise ColaError(f"math500.source: no such file {cfg.source!r}; {hint}")


def run_math500(cfg: Math500Config, models_dir: Path, out_dir: Path, *,
                cola_start: str = "fta") -> StageResult:
    """Score every model of the comparison; per-problem records go to ``out_dir/<row>[/seeds/<s>].json``."""
    if not cfg.enabled:
        with atomic_dir(out_dir):
            pass  # an empty output folder: DVC's declared output
        return StageResult({"enabled": 0})
    table = rows(cola_start)
    unknown = sorted(set(cfg.models) - {row.name for row in table})
    if unknown:
        raise ColaError(f"math500.models: unknown {unknown}; known: {', '.join(row.name for row in table)}")
    check_source(cfg)
    torch.set_num_threads(cfg.threads)
    name, options = task_and_options(cfg)
    metrics: dict[str, float] = {"enabled": 1}
    with atomic_dir(out_dir) as tmp:
        for row in (row for row in table if not cfg.models or row.name in cfg.models):
            per_seed: dict[int, dict[str, float]] = {}
            for seed, folder in model_variants(models_dir / row.folder):
                model, tokenizer, kind = load_model_and_tokenizer(folder)
                ctx = EvalContext(str(folder), model, tokenizer, kind, limit=cfg.limit or None,
                                  batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                                  options=options)
                result = lm_tasks.run_lm_task(name, ctx)
                target = tmp / row.name / "seeds" / f"{seed}.json" if seed else tmp / f"{row.name}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(result, indent=1, default=str))
                per_seed[seed or 0] = {"math500_acc": result["accuracy"], "math500_se": result["stderr"],
                                       "math500_n": result["n"], "math500_seconds": result["seconds"]}
            metrics.update({f"{row.name}/{k}": v for k, v in aggregate(per_seed).items()})
    return StageResult(metrics)

