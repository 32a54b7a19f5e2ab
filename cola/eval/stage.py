"""The `evaluate` stage: the base vs the CoLA-BC model on held-out tasks, perplexity, diversity and the probe.

Spec §5 and the §10 sanity checks: greedy accuracy ± standard error on every task's test split, held-out
perplexity (and CoLA's world-model readouts), semantic diversity of random latent actions vs token sampling vs
random tokens, and whether forced actions change the continuation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cola import plots
from cola.config import EvaluateConfig
from cola.eval.context import cut_prefixes, default_max_new_tokens
from cola.eval.perplexity import perplexity
from cola.eval.probes import action_following_probe, semantic_diversity_eval
from cola.eval.scoring import task_accuracy
from cola.io import atomic_dir, read_jsonl, read_text_lines
from cola.model.checkpoint import load_model_and_tokenizer
from cola.results import StageResult


def run_evaluate(cfg: EvaluateConfig, test_dir: Path, heldout: Path, base_dir: Path, cola_dir: Path,
                 out_dir: Path) -> StageResult:
    """Score the base (`base_dir`) and the CoLA model (`cola_dir`); per-sample records and a summary to
    `out_dir`."""
    torch.set_num_threads(cfg.threads)
    models = {"base": base_dir, "cola": cola_dir}
    val_lines = read_text_lines(heldout)
    summary: dict[str, float] = {}
    loaded = {}
    with atomic_dir(out_dir) as tmp:
        for name, folder in models.items():
            model, tokenizer, kind = loaded[name] = load_model_and_tokenizer(folder)
            for task in cfg.tasks:
                examples = read_jsonl(test_dir / f"{task}.jsonl")[: cfg.limit or None]
                budget = cfg.max_new_tokens or default_max_new_tokens(tokenizer, examples)
                result = task_accuracy(model, tokenizer, kind, examples, max_new_tokens=budget,
                                       batch_size=cfg.batch_size)
                (tmp / f"{name}_{task}.jsonl").write_text(
                    "".join(json.dumps(r) + "\n" for r in result.pop("records")))
                summary[f"{name}_{task}_acc"] = result["accuracy"]
                summary[f"{name}_{task}_stderr"] = result["stderr"]
            ppl = perplexity(model, tokenizer, kind, val_lines, max_tokens=cfg.perplexity_tokens)
            ppl.pop("usage_histogram", None)
            summary.update({f"{name}_{key}": value for key, value in ppl.items()})
        for task in cfg.tasks:
            summary[f"cola_minus_base_{task}"] = summary[f"cola_{task}_acc"] - summary[f"base_{task}_acc"]

        cola_model, tokenizer, _ = loaded["cola"]
        prefixes = cut_prefixes(val_lines, cfg.diversity_prefixes + cfg.probe_prefixes, cfg.seed)
        diversity = semantic_diversity_eval(
            cola_model, tokenizer, "cola", prefixes[: cfg.diversity_prefixes],
            m=cfg.diversity_samples, length=cfg.diversity_length, seed=cfg.seed,
            embedder=cfg.diversity_embedder)
        for method, values in diversity.items():
            summary[f"qd_{method}"] = values["qd"]
            summary[f"similarity_{method}"] = values["mean_similarity"]
        probe = action_following_probe(cola_model, tokenizer, prefixes[cfg.diversity_prefixes :])
        summary.update({f"probe_{key}": value for key, value in probe.items()
                        if isinstance(value, int | float)})
        (tmp / "summary.json").write_text(json.dumps({"summary": summary, "diversity": diversity,
                                                      "probe": probe},
                                                     indent=2, default=str))

    bars = {f"{name}/{task}": summary[f"{name}_{task}_acc"] for task in cfg.tasks for name in models}
    errors = {f"{name}/{task}": summary[f"{name}_{task}_stderr"] for task in cfg.tasks for name in models}
    figure = plots.bars(bars, "held-out greedy accuracy (±1 s.e.)", ylabel="accuracy", errors=errors)
    rows = [{"model_task": f"{name}/{task}", "accuracy": summary[f"{name}_{task}_acc"],
             "stderr": summary[f"{name}_{task}_stderr"]} for task in cfg.tasks for name in models]
    return StageResult(summary, {"accuracy": figure}, records={"accuracy": rows}, artifacts=[out_dir])
