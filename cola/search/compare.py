"""The `mcts` stage: MCTS-Q for CoLA and for the token baseline, each against best-of-n sampling at the same
budget, on one RL task's test problems (issue: MCTS-Q).

For each action space (CoLA's latent actions, the token RL model's tokens), with its own Q-network:

- the RL model's greedy answer (one decode: the reference point);
- MCTS-Q at every budget of ``mcts.all_budgets`` (search rounds), scored ``oracle`` (rollouts checked against
  the gold answer: search with a verifier, an upper bound like pass@k) and ``q_only`` (no gold answer);
- best-of-n sampling sized to the larger of the two searches' mean passes at that budget, its answer chosen
  by the oracle (pass@n) and, without one, by majority vote (none for tasks without a votable answer).

Metrics are named ``<space>_<method>_<selection>_<what>`` (e.g. ``cola_mcts_oracle_acc``) at the report's
budget (``mcts.rounds``); every budget's points go to the accuracy-vs-budget records (forward passes per
problem on the x axis).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from cola import plots
from cola.comparison import RL_TASKS
from cola.config.search import MctsConfig
from cola.errors import ColaError
from cola.eval.generate import generate_texts
from cola.eval.sampling_metrics import stderr_of_mean
from cola.eval.scoring import binomial_stderr
from cola.model.checkpoint import load_model_and_tokenizer
from cola.results import StageResult
from cola.search.evaluate import best_of_n_at_budget, search_accuracy
from cola.search.qnetwork import load_qnetwork
from cola.tasks import TASKS
from cola.tasks.base import Example, Task
from cola.train.sft_data import load_task_examples

SPACES = ("cola", "token")


def greedy_accuracy(model, tokenizer, kind: str, task: Task, examples: list[Example],
                    max_new_tokens: int) -> dict[str, float]:
    start = time.perf_counter()
    records = generate_texts(model, tokenizer, [ex["prompt"] for ex in examples], kind=kind,
                             max_new_tokens=max_new_tokens, batch_size=64)
    seconds = (time.perf_counter() - start) / len(examples)
    correct = [float(task.score(ex, r["completion"])) for ex, r in zip(examples, records, strict=True)]
    return {"acc": sum(correct) / len(correct), "se": stderr_of_mean(correct),
            "passes": sum(len(r["token_ids"]) for r in records) / len(records), "seconds": seconds}


def compare_space(space: str, model_dir: Path, qnet_dir: Path, task: Task, examples: list[Example],
                  cfg: MctsConfig, max_new_tokens: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """One action space's metrics at the report's budget and its accuracy-vs-budget points."""
    if not (Path(qnet_dir) / "config.json").is_file():
        raise ColaError(f"{qnet_dir}: no Q-network folder (config.json missing); run `dvc repro qlearn`")
    model, tokenizer, kind = load_model_and_tokenizer(model_dir)
    if (kind == "cola") != (space == "cola"):
        raise ColaError(f"{model_dir}: the {space} model of the comparison, found a {kind} model")
    qnet = load_qnetwork(qnet_dir)
    search_cfg = dataclasses.replace(cfg, rollout_tokens=min(cfg.rollout_tokens, max_new_tokens),
                                     max_depth=min(cfg.max_depth, max_new_tokens))
    greedy = greedy_accuracy(model, tokenizer, kind, task, examples, max_new_tokens)
    metrics = {f"{space}_greedy_{k}": v for k, v in greedy.items()}
    points: list[dict[str, Any]] = []
    n = len(examples)
    for rounds in cfg.all_budgets:
        at_budget: dict[str, float] = {}
        for mode in ("oracle", "q_only"):
            result = search_accuracy(model, tokenizer, kind, qnet, task, examples, search_cfg, mode, rounds)
            at_budget |= {f"{space}_mcts_{mode}_{k}": result[k2] for k, k2 in (
                ("acc", "accuracy"), ("se", "stderr"), ("passes", "model_passes"), ("q_passes", "q_passes"),
                ("nodes", "nodes"), ("seconds", "seconds"))}
            points.append({"space": space, "method": f"mcts_{mode}", "rounds": rounds,
                           "passes": result["model_passes"], "accuracy": result["accuracy"]})
        budget = max(at_budget[f"{space}_mcts_oracle_passes"], at_budget[f"{space}_mcts_q_only_passes"])
        sampled = best_of_n_at_budget(model, tokenizer, kind, task, examples, budget, max_new_tokens,
                                      seed=cfg.seed)
        at_budget |= {f"{space}_bon_n": sampled["n"], f"{space}_bon_passes": sampled["model_passes"],
                      f"{space}_bon_seconds": sampled["seconds"],
                      f"{space}_bon_oracle_acc": sampled["oracle"],
                      f"{space}_bon_oracle_se": binomial_stderr(sampled["oracle"], n)}
        points.append({"space": space, "method": "bon_oracle", "rounds": rounds,
                       "passes": sampled["model_passes"], "accuracy": sampled["oracle"]})
        if sampled["majority_vote"] is not None:
            at_budget |= {f"{space}_bon_majority_acc": sampled["majority_vote"],
                          f"{space}_bon_majority_se": binomial_stderr(sampled["majority_vote"], n)}
            points.append({"space": space, "method": "bon_majority", "rounds": rounds,
                           "passes": sampled["model_passes"], "accuracy": sampled["majority_vote"]})
        if rounds == cfg.rounds:
            metrics |= at_budget
    return metrics, points


def run_mcts(cfg: MctsConfig, *, tasks_dir: Path, rl_task: str, max_new_tokens: int,
             models: dict[str, Path], qnets: dict[str, Path]) -> StageResult:
    """The `mcts` stage for one RL task: `models` and `qnets` map each space (cola, token) to its RL model
    and Q-network folders."""
    if rl_task not in RL_TASKS:
        raise ColaError(f"unknown RL task {rl_task!r}; expected one of {sorted(RL_TASKS)}")
    torch.set_num_threads(cfg.threads)
    task = TASKS[RL_TASKS[rl_task]]
    examples = load_task_examples(tasks_dir, "test", [RL_TASKS[rl_task]])[: cfg.problems]
    metrics: dict[str, Any] = {"problems": len(examples), "rounds": cfg.rounds}
    points: list[dict[str, Any]] = []
    for space in SPACES:
        space_metrics, space_points = compare_space(space, models[space], qnets[space], task, examples, cfg,
                                                    max_new_tokens)
        metrics |= space_metrics
        points += space_points
    figure = plots.accuracy_vs_budget(points, f"{rl_task}: accuracy against forward passes per problem")
    return StageResult(metrics, {"budget": figure}, records={"budget": budget_rows(points)})


def budget_rows(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points as one row per budget (a DVC plot file: x ``rounds``, one column per space and method,
    with ``<column>_passes`` beside each)."""
    rows: dict[int, dict[str, Any]] = {}
    for p in points:
        row = rows.setdefault(p["rounds"], {"rounds": p["rounds"]})
        row[f"{p['space']}_{p['method']}"] = p["accuracy"]
        row[f"{p['space']}_{p['method']}_passes"] = p["passes"]
    return [rows[r] for r in sorted(rows)]
