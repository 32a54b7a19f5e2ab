"""The RL comparison's evaluation protocol: one function that scores any pipeline model the same way.

The `rl_eval` stage runs it on every row of the report — base, SFT, CoLA-BC, CoLA-FTA and each RL run — so the
rows are measured on the same problems with the same decoding (design.md §5):

- **task accuracy** (greedy, as `evaluate`): the first `limit` test problems of each task, with the binomial
  standard error; the RL tasks (arith, countdown) measure the RL gain, the others (wordprob, and the retention
  tasks spell, wrev) what RL costs;
- **held-out perplexity**: CE of `data/corpus/val.txt` — the base LM's own loss for a plain LM, the
  policy-marginal loss −log Σₐ π(a|s) p(x|s,a) for a CoLA model (its likelihood with the actions summed out);
- **semantic diversity of sampled solutions**: M sampled answers to each of N test prompts of the RL tasks,
  sampled the way each model explores in RL (CoLA: top-k latent actions at temperature 1 with greedy tokens;
  a plain LM: tokens at temperature 1 over the whole vocabulary), scored as QD = 1 / mean pairwise cosine
  similarity (cola.eval.diversity), with the mean number of distinct answers and the accuracy of the samples.

An RL folder may hold several seeds' models (`cola.comparison.model_variants`): each is evaluated and
:func:`evaluate_folder` aggregates them (mean ± sd, `cola.comparison.aggregate`).

Reuse. One stage evaluates every model, so an experiment that changes only RL (``-S rl.lr=...``) must not pay
for re-evaluating the base, SFT, BC and FTA models: each model's result is also kept under ``cache_dir`` (the
stage's persistent ``checkpoints/rl_eval/<model>``) with a fingerprint of the ``rl_eval`` params, the model's
files, the test data and the evaluation code, and is copied instead of recomputed when the fingerprint
matches.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cola.comparison import aggregate, model_variants, rows
from cola.config import RLEvalConfig
from cola.eval.context import default_max_new_tokens
from cola.eval.generate import generate_texts
from cola.eval.perplexity import perplexity
from cola.eval.sampling_metrics import stderr_of_mean
from cola.eval.scoring import task_accuracy
from cola.io import atomic_dir, file_digest, fingerprint, read_jsonl, read_text_lines
from cola.model.checkpoint import load_model_and_tokenizer
from cola.results import StageResult
from cola.tasks import scorer

__all__ = ["evaluate_folder", "evaluate_model", "flat_metrics", "headline", "run_rl_eval"]

# The code whose behaviour decides an evaluation's numbers (part of the reuse fingerprint).
EVAL_MODULES = ("cola.rl.evaluation", "cola.comparison", "cola.eval", "cola.tasks", "cola.model")


@torch.inference_mode()
def evaluate_model(folder: str | Path, cfg: RLEvalConfig, test_dir: Path, heldout: Path) -> dict[str, Any]:
    """Score one model folder; returns ``{kind, tasks, perplexity, diversity, records, seconds}``.

    ``tasks[t]`` has accuracy, stderr, n, format_rate; ``diversity[t]`` has qd, mean_similarity, distinct
    (mean distinct answers of M), sampled_accuracy and a few example groups; ``records[t]`` are the greedy
    per-problem records of `cola.eval.scoring.task_accuracy`. `test_dir` holds the test split's
    ``<task>.jsonl``; `heldout` is the held-out text file for perplexity.
    """
    from cola.eval.diversity import semantic_diversity  # loads the sentence embedder on first use

    start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    model, tokenizer, kind = load_model_and_tokenizer(folder)
    examples = {task: read_jsonl(test_dir / f"{task}.jsonl")
                for task in dict.fromkeys([*cfg.tasks, *cfg.diversity_tasks])}

    def budget(task: str) -> int:
        return cfg.max_new_tokens or default_max_new_tokens(tokenizer, examples[task])

    result: dict[str, Any] = {"kind": kind, "tasks": {}, "diversity": {}, "records": {}}
    for task in cfg.tasks:
        scored = task_accuracy(model, tokenizer, kind, examples[task][: cfg.limit or None],
                               max_new_tokens=budget(task), batch_size=cfg.batch_size, progress=False)
        result["records"][task] = scored.pop("records")
        result["tasks"][task] = scored

    ppl = perplexity(model, tokenizer, kind, read_text_lines(heldout),
                     max_tokens=cfg.perplexity_tokens)
    ppl.pop("usage_histogram", None)
    result["perplexity"] = ppl

    # Sampled solutions: M consecutive rows per prompt form one group.
    sampling = (dict(action_mode="sample", action_top_k=cfg.action_top_k, action_temperature=1.0)
                if kind == "cola" else dict(token_sampling=True))
    m = cfg.diversity_samples
    for task in cfg.diversity_tasks:
        problems = examples[task][: cfg.diversity_prompts]
        repeated = [ex["prompt"] for ex in problems for _ in range(m)]
        outputs = generate_texts(model, tokenizer, repeated, kind=kind, max_new_tokens=budget(task),
                                 batch_size=cfg.batch_size, seed=cfg.seed, **sampling)
        groups = [[o["completion"] for o in outputs[i * m : (i + 1) * m]] for i in range(len(problems))]
        correct = [[scorer(task).score(ex, c) for c in group]
                   for ex, group in zip(problems, groups, strict=True)]
        per_prompt = [sum(c) / len(c) for c in correct]
        result["diversity"][task] = {
            **semantic_diversity(groups, embedder=cfg.diversity_embedder),
            "distinct": sum(len(set(g)) for g in groups) / len(groups),
            "sampled_accuracy": sum(per_prompt) / len(per_prompt),
            # samples of one prompt are correlated: the SE is over prompts, not over all samples
            "sampled_accuracy_stderr": stderr_of_mean(per_prompt),
            "examples": [{"prompt": ex["prompt"], "samples": g}
                         for ex, g in zip(problems[:3], groups, strict=False)],
        }
    result["seconds"] = time.perf_counter() - start
    return result


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of :func:`evaluate_model`'s result as flat DVC/MLflow metrics."""
    out: dict[str, float] = {}
    for task, scored in result["tasks"].items():
        out[f"{task}_acc"] = scored["accuracy"]
        out[f"{task}_stderr"] = scored["stderr"]
        out[f"{task}_format"] = scored["format_rate"]
    ppl = result["perplexity"]
    out["val_loss"], out["val_ppl"] = ppl["loss"], ppl["perplexity"]
    out["val_base_loss"] = ppl["base_loss"]  # the frozen base's own loss (moves only when the base trains)
    for task, div in result["diversity"].items():
        out[f"{task}_qd"] = div["qd"]
        out[f"{task}_qd_stderr"] = div["qd_stderr"]
        out[f"{task}_similarity"] = div["mean_similarity"]
        out[f"{task}_distinct"] = div["distinct"]
        out[f"{task}_sampled_acc"] = div["sampled_accuracy"]
        out[f"{task}_sampled_stderr"] = div["sampled_accuracy_stderr"]
    out["eval_seconds"] = result["seconds"]
    return out


def headline(metrics: dict[str, float]) -> dict[str, float]:
    """The columns worth a `dvc exp show` column: accuracies, perplexity, diversity (and their seed sd)."""
    keep = ("_acc", "_acc_sd", "val_ppl", "val_ppl_sd", "_qd", "_qd_sd")
    return {k: v for k, v in metrics.items() if "/" not in k and k.endswith(keep)}


def _code_digest() -> str:
    parts = []
    for name in EVAL_MODULES:
        module = sys.modules.get(name) or __import__(name, fromlist=["_"])
        path = Path(module.__file__)
        parts.append(file_digest(path.parent if path.name == "__init__.py" else path))
    return fingerprint(parts)


def evaluate_folder(
    folder: str | Path, cfg: RLEvalConfig, *, out_dir: str | Path, test_dir: Path, heldout: Path,
    cache_dir: str | Path | None = None,
) -> tuple[dict[str, Any], bool]:
    """Evaluate every model in `folder` (each seed of an RL run); write ``out_dir``; return (summary, reused).

    ``out_dir`` gets ``summary.json`` — ``metrics`` (aggregated over seeds), ``seeds`` (each seed's flat
    metrics), ``details`` (full results) — and the greedy records, ``<task>.jsonl`` for one model or
    ``seed<s>/<task>.jsonl`` for several. With `cache_dir`, a result with the same fingerprint is copied from
    there instead of recomputed, and a new one is stored there first.
    """
    folder, out_dir = Path(folder), Path(out_dir)
    stamp = fingerprint(asdict(cfg), file_digest(folder), file_digest(test_dir), file_digest(heldout),
                        _code_digest())
    target = Path(cache_dir) if cache_dir is not None else out_dir
    stored = target / "summary.json"
    reused = stored.is_file() and json.loads(stored.read_text()).get("fingerprint") == stamp
    if not reused:
        variants = model_variants(folder)
        per_seed, details = {}, {}
        with atomic_dir(target) as tmp:
            for seed, path in variants:
                result = evaluate_model(path, cfg, test_dir, heldout)
                records_dir = tmp if len(variants) == 1 else tmp / f"seed{seed}"
                records_dir.mkdir(parents=True, exist_ok=True)
                for task, records in result.pop("records").items():
                    (records_dir / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
                label = seed if seed is not None else 0
                per_seed[label], details[str(label)] = flat_metrics(result), result
            kind = next(iter(details.values()))["kind"]
            summary = {"model": str(folder), "kind": kind, "fingerprint": stamp,
                       "metrics": aggregate(per_seed), "seeds": {str(s): m for s, m in per_seed.items()},
                       "details": details}
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if target != out_dir:
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.copytree(target, out_dir)
    return json.loads((out_dir / "summary.json").read_text()), reused


def run_rl_eval(cfg: RLEvalConfig, models_dir: Path, test_dir: Path, heldout: Path, out_dir: Path,
                cache_dir: Path) -> StageResult:
    """Evaluate every model of the comparison (`cola.comparison.rows`, under `models_dir`) into
    `out_dir/<row>`.

    A model whose files, the params and the evaluation code are unchanged is not evaluated again: its result
    is kept under `cache_dir/<row>` (a persistent DVC output), so ``-S rl.lr=...`` re-scores only the RL
    models.
    """
    metrics: dict[str, float] = {}
    artifacts = []
    for row in rows():
        summary, reused = evaluate_folder(models_dir / row.folder, cfg, out_dir=out_dir / row.name,
                                          test_dir=test_dir, heldout=heldout, cache_dir=cache_dir / row.name)
        print(f"rl_eval {row.name}: {'unchanged, result reused' if reused else 'evaluated'}")
        artifacts.append(out_dir / row.name / "summary.json")
        metrics.update({f"{row.name}/{k}": v for k, v in headline(summary["metrics"]).items()})
        metrics[f"{row.name}/reused"] = reused
    return StageResult(metrics, artifacts=artifacts)
