"""The body shared by the `fta` and `sft` stages (cola-spec.md §3 stage 3 and the token baseline's start).

Both fine-tune on the same SFT data (`cola.train.sft_data`, the train splits of the section's ``tasks``) with
the same budget, measure the response CE on the same val examples before and after, and write a model folder
with its tokenizer, a loss plot and their metrics. Only the model they start from and the trainer differ:

    fta: models/bc   -> run_fta (FTA-P or FTA-I: the base learns under the frozen policy's / IDM's actions)
    sft: models/base -> run_sft (plain next-token CE, every base parameter trainable)
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from cola import plots
from cola.config import FTAConfig, SFTConfig
from cola.errors import ColaError
from cola.io import file_digest
from cola.model.checkpoint import load_model_and_tokenizer, save_hf_folder
from cola.results import StageResult
from cola.train.core import LogFn
from cola.train.fta import evaluate_response_ce, run_fta, run_sft
from cola.train.sft_data import load_task_examples

__all__ = ["run_finetune_stage"]


def run_finetune_stage(cfg: SFTConfig, tasks_dir: Path, source: Path, out_dir: Path, *,
                       checkpoint_dir: Path | None = None, on_log: LogFn | None = None) -> StageResult:
    """FTA (an `FTAConfig`: `source` is a CoLA folder) or SFT (an `SFTConfig`: a plain LM) of `source`.

    Reads ``tasks_dir/{train,val}/<task>.jsonl``; writes `out_dir` (model + the source's tokenizer).
    """
    fta = isinstance(cfg, FTAConfig)
    name, wanted = ("fta", "cola") if fta else ("sft", "base")
    model, tokenizer, kind = load_model_and_tokenizer(source)
    if kind != wanted:
        raise ColaError(f"{source}: the {name} stage needs a {wanted} model folder, found a {kind} one")
    train_examples = load_task_examples(tasks_dir, "train", cfg.tasks)
    val_examples = load_task_examples(tasks_dir, "val", cfg.tasks)
    before = evaluate_response_ce(model, tokenizer, val_examples, max_len=cfg.seq_len)

    trainer = run_fta if fta else run_sft
    metrics, history = trainer(model, tokenizer, train_examples, cfg, checkpoint_dir=checkpoint_dir,
                               on_log=on_log, inputs_fingerprint=file_digest(source))
    after = evaluate_response_ce(model, tokenizer, val_examples, max_len=cfg.seq_len)

    # Save the source's tokenizer as it was written (the loaded one was switched to left padding).
    save_hf_folder(model, tokenizer=AutoTokenizer.from_pretrained(source), out_dir=out_dir)
    title = f"FTA ({cfg.variant})" if fta else "SFT baseline"
    keys = ["response_ce", "rebc_bc_loss"] if fta else ["response_ce"]
    figure = plots.curves(history, keys, f"{title}: response CE")
    summary = {**metrics, "val_response_ce_before": before, "val_response_ce_after": after,
               "n_train_examples": len(train_examples)}
    return StageResult(summary, {"loss": figure}, records={"loss": plots.curve_records(history, keys)},
                       models=[out_dir])
