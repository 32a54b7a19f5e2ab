"""MCTS-Q against best-of-n sampling at the same budget, on a task's problems (issue: MCTS-Q).

A search win means little without best-of-n at equal budget: more samples alone raise pass@k. The budget
unit is model forward passes (one per decoded token, one per state scored: `cola.search.mcts`), counted per
problem. The search runs first; best-of-n then draws n sampled completions per problem with n the most whose
expected passes (n × the mean sampled length, measured on one probe sample per problem, which is not
counted) stay within the search's mean passes. Answers are selected as the search's are: by the oracle (any
sample the task's verifier accepts: pass@n, like the search's oracle rollouts) and, with no gold answer, by
the majority vote over the samples' answers.
"""

from __future__ import annotations

import time
from typing import Any

from cola.config.search import SearchConfig
from cola.eval.generate import generate_texts
from cola.eval.sampling_metrics import sampling_summary, stderr_of_mean
from cola.search.mcts import Search, action_space
from cola.search.qnetwork import QNetwork
from cola.tasks.base import Example, Task


def search_accuracy(model, tokenizer, kind: str, qnet: QNetwork, task: Task, examples: list[Example],
                    cfg: SearchConfig, mode: str, rounds: int | None = None) -> dict[str, Any]:
    """MCTS-Q on every example, over latent actions (``kind`` ``cola``) or tokens (``base``): accuracy ± SE of
    the chosen answers, mean passes, nodes and seconds per problem. ``mode``: ``oracle`` (rollouts scored
    against the gold answer) or ``q_only`` (by Q alone)."""
    if mode not in ("oracle", "q_only"):
        raise ValueError(f"unknown search mode {mode!r}; expected 'oracle' or 'q_only'")
    space = action_space(model, tokenizer, kind)
    correct, passes, q_passes, nodes, seconds = [], [], [], [], []
    for ex in examples:
        reward = (lambda completion, ex=ex: float(task.score(ex, completion))) if mode == "oracle" else None
        result = Search(space, tokenizer, qnet, cfg, reward).run(ex["prompt"], rounds)
        correct.append(float(task.score(ex, result.answer)))
        passes.append(result.model_passes)
        q_passes.append(result.q_passes)
        nodes.append(result.nodes)
        seconds.append(result.seconds)
    n = len(examples)
    return {"accuracy": sum(correct) / n, "stderr": stderr_of_mean(correct), "model_passes": sum(passes) / n,
            "q_passes": sum(q_passes) / n, "nodes": sum(nodes) / n, "seconds": sum(seconds) / n}


def best_of_n_at_budget(model, tokenizer, kind: str, task: Task, examples: list[Example], budget: float,
                        max_new_tokens: int, seed: int = 0, batch_size: int = 64,
                        action_top_k: int = 40) -> dict[str, Any]:
    """Best-of-n sampling whose passes per problem stay within `budget`: CoLA samples actions (greedy tokens),
    a plain LM samples tokens. Returns n, the passes spent, the oracle's and the majority vote's accuracy
    (None for a task without votable answers)."""
    sampling = (dict(action_mode="sample", action_top_k=action_top_k) if kind == "cola"
                else dict(token_sampling=True))
    start = time.perf_counter()
    probe = generate_texts(model, tokenizer, [ex["prompt"] for ex in examples], kind=kind,
                           max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, **sampling)
    mean_length = max(sum(len(r["token_ids"]) for r in probe) / len(probe), 1.0)
    n = max(1, int(budget // mean_length))
    repeated = [ex["prompt"] for ex in examples for _ in range(n)]
    records = generate_texts(model, tokenizer, repeated, kind=kind, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, seed=seed + 1, **sampling)
    groups = [records[i * n : (i + 1) * n] for i in range(len(examples))]
    correct = [[task.score(ex, r["completion"]) for r in group] for ex, group in zip(examples, groups,
                                                                                     strict=True)]
    votes = [[task.vote_key(r["completion"]) for r in group] for group in groups]
    # A task without votable answers (Countdown's expressions: `Task.vote_key` not overridden) has no vote.
    summary = sampling_summary(correct, votes if type(task).vote_key is not Task.vote_key else None)
    spent = sum(len(r["token_ids"]) for r in records) / len(examples)
    return {"n": n, "model_passes": spent, "oracle": summary["best_of_n_oracle"],
            "majority_vote": summary.get("majority_vote"), "sample_accuracy": summary["accuracy"],
            "seconds": (time.perf_counter() - start) / len(examples)}
