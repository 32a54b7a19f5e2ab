"""DVC stage `evaluate`: the base vs the CoLA-BC model on held-out tasks, perplexity, diversity, probe."""

import json
from pathlib import Path

import torch

from cola import plots
from cola.data.corpus import read_lines
from cola.eval.harness import (
    action_following_probe,
    cut_prefixes,
    perplexity,
    semantic_diversity_eval,
    task_accuracy,
)
from cola.model.checkpoint import load_model_and_tokenizer
from cola.params import cli_main
from cola.pipeline import stage

MODELS = {"base": Path("models/base"), "cola": Path("models/bc")}


def read_jsonl(path: Path, limit: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return rows[:limit] if limit else rows


def main() -> None:
    with stage("evaluate") as (cfg, run):
        torch.set_num_threads(cfg.threads)
        out = Path("eval")
        out.mkdir(exist_ok=True)
        val_lines = read_lines(Path("data/corpus/val.txt"))
        summary: dict[str, float] = {}
        loaded = {}
        for name, folder in MODELS.items():
            model, tokenizer, kind = loaded[name] = load_model_and_tokenizer(folder)
            for task in cfg.tasks:
                examples = read_jsonl(Path(f"data/tasks/test/{task}.jsonl"), cfg.limit)
                result = task_accuracy(model, tokenizer, kind, examples, max_new_tokens=cfg.max_new_tokens,
                                       batch_size=cfg.batch_size)
                (out / f"{name}_{task}.jsonl").write_text(
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
            m=cfg.diversity_samples, length=cfg.diversity_length, seed=cfg.seed)
        for method, values in diversity.items():
            summary[f"qd_{method}"] = values["qd"]
            summary[f"similarity_{method}"] = values["mean_similarity"]
        probe = action_following_probe(cola_model, tokenizer, prefixes[cfg.diversity_prefixes :])
        summary.update({f"probe_{key}": value for key, value in probe.items() if isinstance(value, int | float)})
        (out / "summary.json").write_text(json.dumps({"summary": summary, "diversity": diversity,
                                                      "probe": probe}, indent=2, default=str))

        bars = {f"{name}/{task}": summary[f"{name}_{task}_acc"] for task in cfg.tasks for name in MODELS}
        errors = {f"{name}/{task}": summary[f"{name}_{task}_stderr"] for task in cfg.tasks for name in MODELS}
        run.log_figure(plots.bars(bars, "held-out greedy accuracy (±1 s.e.)", ylabel="accuracy", errors=errors),
                       "plots/evaluate_accuracy.png", save_to="plots/evaluate_accuracy.png")
        run.log_artifact(out)
        run.summary(summary)


if __name__ == "__main__":
    cli_main(main)
