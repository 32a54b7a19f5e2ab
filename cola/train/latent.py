"""The `latent` stage (cola-spec.md stage 1): IDM + codebook + merge blocks on a frozen base.

Loss: next-token CE under straight-through Gumbel-max IDM actions plus the entropy bonus. Diagnostics on
held-out text: world-model loss with IDM actions vs the frozen base's loss, and action usage (codes alive,
largest share).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoTokenizer

from cola import plots
from cola.config import CoLAArchitecture, LatentConfig
from cola.data.corpus import TokenStream, token_stream
from cola.eval.perplexity import perplexity
from cola.io import file_digest, fingerprint, read_text_lines
from cola.model import CoLAForCausalLM
from cola.model.checkpoint import load_causal_lm, save_hf_folder
from cola.model.sampling import NoiseSource
from cola.results import StageResult
from cola.train.core import BatchTrainer, LogFn
from cola.train.losses import latent_pretraining_loss


def cola_from_base(base, architecture: CoLAArchitecture) -> CoLAForCausalLM:
    """Wrap a base LM in fresh latent-action modules of the configured sizes (the benchmarks use it too)."""
    return CoLAForCausalLM.from_base(base, **asdict(architecture))


def run_latent(cfg: LatentConfig, corpus: Path, base_dir: Path, out_dir: Path, *,
               checkpoint_dir: Path | None = None, on_log: LogFn | None = None) -> StageResult:
    """Train the latent-action modules on the frozen base; save the CoLA folder (with tokenizer) to `out_dir`.

    Metrics: the held-out diagnostics of spec §10 (i)-(ii); figures: the loss curves and the IDM's action
    usage.
    """
    torch.set_num_threads(cfg.threads)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(cfg.seed)
    model = cola_from_base(load_causal_lm(base_dir), cfg.cola)
    model.set_stage("latent")
    train_file = corpus / "train.txt"
    batches = TokenStream(token_stream(train_file, tokenizer), cfg.batch_size, cfg.seq_len, seed=cfg.seed)

    def loss_fn(batch: torch.Tensor, generator: NoiseSource):
        return latent_pretraining_loss(model, batch, generator=generator,
                                       gumbel_temperature=cfg.gumbel_temperature,
                                       entropy_coef=cfg.entropy_coef)

    trainer = BatchTrainer(model, loss_fn, batches, cfg, checkpoint_dir=checkpoint_dir, on_log=on_log,
                           description="latent",
                           fingerprint=fingerprint(asdict(cfg), file_digest(train_file),
                                                   file_digest(base_dir)))
    trainer.train()
    model.set_stage("frozen")
    save_hf_folder(model, tokenizer, out_dir)

    diag = perplexity(model, tokenizer, "cola", read_text_lines(corpus / "val.txt"), seq_len=cfg.seq_len,
                      max_tokens=cfg.val_tokens, marginal=False)
    usage = diag.pop("usage_histogram")
    diag["wm_idm_over_base"] = diag["wm_loss_idm"] / diag["base_loss"]
    diag["train_tokens_per_second"] = trainer.history[-1][1]["tokens_per_second"]
    keys = ["latent_loss", "wm_ce"]
    figures = {"loss": plots.curves(trainer.history, keys, "latent-action pretraining"),
               "usage": plots.histogram(usage, "IDM argmax action usage (held-out)")}
    records = {"loss": plots.curve_records(trainer.history, keys)}
    return StageResult(diag, figures, records=records, models=[out_dir])
