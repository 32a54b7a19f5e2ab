"""The body shared by the `fta` and `sft` stages (cola-spec.md §3 stage 3 and the token baseline's start).

Both fine-tune on the same SFT data (`cola.train.sft_data`, the train splits of the section's ``tasks``) with
the same budget, measure the response CE on the same val examples before and after, and write a model folder
with its tokenizer, a loss plot and their metrics. Only the model they start from and the trainer differ:

    fta: models/bc   -> run_fta (FTA-P or FTA-I: the base learns under the frozen policy's / IDM's actions)
    sft: models/base -> run_sft (plain next-token CE, every base parameter trainable)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from cola import plots
from cola.base.tiny import save_hf_folder
from cola.errors import ColaError
from cola.model.checkpoint import load_model_and_tokenizer
from cola.train.fta import FTAConfig, SFTConfig, evaluate_response_ce, run_fta, run_sft
from cola.train.loop import file_digest
from cola.train.sft_data import load_task_examples

__all__ = ["FINETUNE_STAGES", "run_finetune_stage"]

#: stage -> (the model folder it starts from, the kind that folder must hold)
FINETUNE_STAGES = {"fta": ("bc", "cola"), "sft": ("base", "base")}


def run_finetune_stage(name: str, cfg: SFTConfig, run: Any, *, root: str | Path = ".") -> dict[str, float]:
    """Run stage `name` (``fta`` or ``sft``) under `run`, a `cola.pipeline.stage` context; return its summary.

    Reads ``data/tasks/{train,val}`` and ``models/<source>``; writes ``models/<name>``,
    ``plots/<name>_loss.png`` and resumable checkpoints under ``checkpoints/<name>``.
    """
    if name not in FINETUNE_STAGES:
        raise ValueError(f"unknown fine-tuning stage {name!r}")
    if (name == "fta") != isinstance(cfg, FTAConfig):
        raise TypeError(f"stage {name} needs {'an FTAConfig' if name == 'fta' else 'an SFTConfig'}")
    root = Path(root)
    source_name, wanted = FINETUNE_STAGES[name]
    source, out = root / "models" / source_name, root / "models" / name
    model, tokenizer, kind = load_model_and_tokenizer(source)
    if kind != wanted:
        raise ColaError(f"{source}: the {name} stage needs a {wanted} model folder, found a {kind} one")
    train_examples = load_task_examples(root / "data", "train", cfg.tasks)
    val_examples = load_task_examples(root / "data", "val", cfg.tasks)
    before = evaluate_response_ce(model, tokenizer, val_examples, max_len=cfg.seq_len)

    trainer = run_fta if name == "fta" else run_sft
    metrics = trainer(model, tokenizer, train_examples, cfg, checkpoint_dir=root / "checkpoints" / name,
                      on_log=run.on_log, inputs_fingerprint=file_digest(source))
    after = evaluate_response_ce(model, tokenizer, val_examples, max_len=cfg.seq_len)

    # Save the source's tokenizer as it was written (the loaded one was switched to left padding).
    save_hf_folder(model, tokenizer=AutoTokenizer.from_pretrained(source), out_dir=out)
    keys = ["loss", "rebc_loss"] if name == "fta" else ["loss"]
    title = f"{name.upper()} ({cfg.variant})" if name == "fta" else "SFT baseline"
    plot = root / "plots" / f"{name}_loss.png"
    run.log_figure(plots.curves(run.history, keys, f"{title}: response CE"), f"plots/{name}_loss.png",
                   save_to=plot)
    run.log_output(out)
    summary = {**metrics, "val_response_ce_before": before, "val_response_ce_after": after,
               "n_train_examples": len(train_examples)}
    run.summary(summary)
    return summary
