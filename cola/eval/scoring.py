"""Scoring generated answers with each task's own check (`cola.tasks`): greedy accuracy ± standard error, and
n sampled answers per problem (pass@k, best-of-n with an oracle verifier, majority vote).

    task_accuracy           one greedy (or action-mode) answer per problem, with per-sample records
    sampled_task_accuracy   n sampled answers per problem
    score_samples           the same metrics for completions produced elsewhere (lm-eval models)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from cola.eval.context import EvalError
from cola.eval.generate import generate_texts
from cola.eval.sampling_metrics import sampling_summary
from cola.tasks import scorer


def binomial_stderr(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent problems: sqrt(p (1 - p) / n)."""
    return math.sqrt(p * (1.0 - p) / n) if n else float("nan")

def task_accuracy(
    model,
    tokenizer,
    kind: str,
    examples: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    limit: int | None = None,
    progress: bool = True,
    **gen: Any,
) -> dict[str, Any]:
    """Generate an answer to each example's `prompt` and score it against its `answer`.

    Returns `accuracy`, `stderr`, `n`, `format_rate`, `seconds` and per-sample `records`
    (`index`, `id` when the example has one, `prompt`, `answer`, `completion`, `correct`, `format_ok`,
    `actions`). `gen` goes to `generate_texts` (action_mode, forced_action, token_sampling, seed, ...).
    """
    examples = list(examples)[:limit] if limit else list(examples)
    if not examples:
        raise EvalError("task_accuracy needs at least one example")
    task = examples[0].get("task", "")
    start = time.perf_counter()
    desc = f"{task or 'eval'} ({kind})" if progress else False
    outputs = generate_texts(
        model,
        tokenizer,
        [ex["prompt"] for ex in examples],
        kind=kind,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=desc,
        **gen,
    )
    records = []
    for i, (ex, out) in enumerate(zip(examples, outputs, strict=True)):
        judge = scorer(ex.get("task", task))
        record = {
            "index": i,
            **({"id": ex["id"]} if "id" in ex else {}),
            "prompt": ex["prompt"],
            "answer": ex["answer"],
            "completion": out["completion"],
            "correct": judge.score(ex, out["completion"]),
            "format_ok": judge.format_ok(out["completion"]),
            "actions": out["actions"],
        }
        records.append(record)
    n = len(records)
    accuracy = sum(r["correct"] for r in records) / n
    return {
        "accuracy": accuracy,
        "stderr": binomial_stderr(accuracy, n),
        "n": n,
        "format_rate": sum(r["format_ok"] for r in records) / n,
        "seconds": time.perf_counter() - start,
        "records": records,
    }

def score_samples(
    task: str,
    examples: Sequence[dict[str, Any]],
    completions: Sequence[Sequence[str]],
    actions: Sequence[Sequence[list[int] | None]] | None = None,
) -> dict[str, Any]:
    """Score n completions per example: `sampling_summary`'s metrics plus per-problem `records`.

    Metrics: `accuracy` (= pass@1, mean single-sample accuracy), `stderr`, `n` (problems), `n_samples`,
    `pass_at_k` ({k: value} for k = 1, 2, 4, ... <= n), `best_of_n_oracle` (= pass@n: best-of-n with the
    reference answer as verifier), `majority_vote` (self-consistency; not for Countdown), `format_rate`.
    Records: `index`, `id`, `prompt`, (`problem`), `answer`, `n_correct`, `majority_answer`,
    `majority_correct`, and `samples`: [{`completion`, `correct`, `format_ok`, `vote`, (`actions`)}].
    """
    records, correct, votes = [], [], []
    judges = [scorer(ex.get("task", task)) for ex in examples]
    for i, (ex, texts, judge) in enumerate(zip(examples, completions, judges, strict=True)):
        samples = []
        for j, text in enumerate(texts):
            sample = {
                "completion": text,
                "correct": judge.score(ex, text),
                "format_ok": judge.format_ok(text),
                "vote": judge.vote_key(text),
            }
            if actions is not None:
                sample["actions"] = actions[i][j]
            samples.append(sample)
        correct.append([s["correct"] for s in samples])
        votes.append([s["vote"] for s in samples])
        record = {"index": i, **({"id": ex["id"]} if "id" in ex else {}), "prompt": ex["prompt"]}
        if ex.get("problem") is not None:
            record["problem"] = ex["problem"]
        record.update(answer=ex["answer"], n_correct=sum(correct[-1]))
        records.append((record, samples))
    voting = any(judge.majority_vote for judge in judges)
    summary = sampling_summary(correct, votes if voting else None)
    winners = summary.pop("majority_index", [None] * len(records))
    for (record, samples), winner in zip(records, winners, strict=True):
        if voting:
            record["majority_answer"] = samples[winner]["vote"] if winner is not None else None
            record["majority_correct"] = winner is not None and samples[winner]["correct"]
        record["samples"] = samples
    n_texts = sum(len(samples) for _, samples in records)
    out = {
        "accuracy": summary.pop("accuracy"),
        "stderr": summary.pop("stderr"),
        "n": summary.pop("n_problems"),
        **summary,
        "format_rate": sum(s["format_ok"] for _, samples in records for s in samples) / n_texts,
    }
    out["records"] = [record for record, _ in records]
    return out

def describe_sampling(
    kind: str, action_mode: str | None, top_k: int, temperature: float, max_new_tokens: int
) -> str:
    """How the samples were drawn, as one string (a string, so the summary table and MLflow skip it)."""
    if kind == "cola":
        how = (
            "uniformly random latent actions"
            if action_mode == "random"
            else f"latent actions sampled from the policy's top-{top_k} at temperature {temperature:g}"
        )
        return f"{how}, greedy tokens, up to {max_new_tokens} new tokens"
    return f"tokens sampled at temperature 1 over the whole vocabulary, up to {max_new_tokens} new tokens"

def sampled_task_accuracy(
    model,
    tokenizer,
    kind: str,
    examples: Sequence[dict[str, Any]],
    *,
    samples: int,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    seed: int = 0,
    action_mode: str = "sample",
    action_top_k: int = 40,
    action_temperature: float = 1.0,
    progress: bool = True,
) -> dict[str, Any]:
    """`samples` sampled completions per example, scored by `score_samples` (pass@k, best-of-n, majority).

    CoLA samples latent actions (`action_mode` sample: top-`action_top_k` of the policy at
    `action_temperature`, the paper's rollout setting) and keeps tokens greedy; a plain base samples tokens at
    temperature 1 over the whole vocabulary. One seeded generator drives the whole call (reproducible).
    """
    examples = list(examples)
    if not examples:
        raise EvalError("sampled_task_accuracy needs at least one example")
    if samples < 1:
        raise EvalError(f"samples must be >= 1, got {samples}")
    task = examples[0].get("task", "")
    start = time.perf_counter()
    # Consecutive copies of each prompt: generate_texts sorts by length, so the copies share batches.
    prompts = [ex["prompt"] for ex in examples for _ in range(samples)]
    sampling = (
        dict(action_mode=action_mode, action_top_k=action_top_k, action_temperature=action_temperature)
        if kind == "cola"
        else dict(token_sampling=True)
    )
    outputs = generate_texts(
        model,
        tokenizer,
        prompts,
        kind=kind,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        progress=f"{task or 'eval'} ({kind}, {samples} samples)" if progress else False,
        **sampling,
    )
    groups = [outputs[i * samples : (i + 1) * samples] for i in range(len(examples))]
    result = score_samples(
        task,
        examples,
        [[o["completion"] for o in group] for group in groups],
        actions=[[o["actions"] for o in group] for group in groups],
    )
    records = result.pop("records")
    result["sampling"] = describe_sampling(
        kind, action_mode, action_top_k, action_temperature, max_new_tokens
    )
    result["seconds"] = time.perf_counter() - start
    result["records"] = records
    return result
