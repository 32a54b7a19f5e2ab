"""The `bc` stage (cola-spec.md stage 2): behaviour cloning of the policy on the IDM's argmax labels."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoTokenizer

from cola import plots
from cola.config import BCConfig
from cola.data.corpus import TokenStream, token_stream
from cola.eval.perplexity import perplexity
from cola.io import file_digest, fingerprint, read_text_lines
from cola.model.checkpoint import load_cola, save_hf_folder
from cola.results import StageResult
from cola.train.core import BatchTrainer, LogFn
from cola.train.losses import behaviour_cloning_loss


def run_bc(cfg: BCConfig, corpus: Path, latent_dir: Path, out_dir: Path, *,
           checkpoint_dir: Path | None = None, on_log: LogFn | None = None) -> StageResult:
    """Clone the IDM's argmax actions into the policy; save the CoLA folder (with tokenizer) to `out_dir`.

    Metrics: BC top-1 and the policy-marginal loss against the base's on held-out text (spec §10 (iii)-(iv)).
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(latent_dir)
    model = load_cola(latent_dir)
    model.set_stage("bc")
    train_file = corpus / "train.txt"
    batches = TokenStream(token_stream(train_file, tokenizer), cfg.batch_size, cfg.seq_len, seed=cfg.seed)
    trainer = BatchTrainer(model, lambda batch, _g: behaviour_cloning_loss(model, batch), batches, cfg,
                           checkpoint_dir=checkpoint_dir, on_log=on_log, description="bc",
                           fingerprint=fingerprint(asdict(cfg), file_digest(train_file),
                                                   file_digest(latent_dir)))
    trainer.train()
    model.set_stage("frozen")
    save_hf_folder(model, tokenizer, out_dir)

    diag = perplexity(model, tokenizer, "cola", read_text_lines(corpus / "val.txt"), seq_len=cfg.seq_len,
                      max_tokens=cfg.val_tokens)
    diag.pop("usage_histogram", None)
    diag["bc_top1"] = diag.pop("policy_idm_agreement")
    diag["marginal_over_base"] = diag["wm_loss_policy_marginal"] / diag["base_loss"]
    diag["train_tokens_per_second"] = trainer.history[-1][1]["tokens_per_second"]
    keys = ["bc_loss", "train_top1"]
    figures = {"loss": plots.curves(trainer.history, keys, "behaviour cloning")}
    return StageResult(diag, figures, records={"loss": plots.curve_records(trainer.history, keys)},
                       models=[out_dir])
