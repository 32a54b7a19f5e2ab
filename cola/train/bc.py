"""The `bc` stage (cola-spec.md stage 2): behaviour cloning of the policy on the IDM's argmax labels."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer

from cola.base.tiny import save_hf_folder
from cola.data.corpus import token_stream
from cola.model import CoLAForCausalLM
from cola.model.checkpoint import load_cola
from cola.train.loop import LogFn, OptimConfig, TokenStream, file_digest, fingerprint, optim_default, train
from cola.train.losses import behaviour_cloning_loss


@dataclass
class BCConfig(OptimConfig):
    """Behaviour cloning of the latent-action policy."""

    # Calibration §4: lr 2e-3, batch 32×128, ~490 steps ≈ 2 minutes for a 2-block policy (top-1 still rising
    # slowly at the end); the default 1-block policy reaches the top-1 gate in 300.
    steps: int = optim_default("steps", 300)
    log_every: int = optim_default("log_every", 20)
    checkpoint_every: int = optim_default("checkpoint_every", 100)
    val_tokens: int = field(default=16384, metadata={"help": "Held-out tokens for the diagnostics (the "
                                                    "policy-marginal loss costs K world-model passes).",
                                                     "min": 128})
    threads: int = field(default=2, metadata={"help": "torch CPU threads.", "min": 1})


def run_bc(cfg: BCConfig, data_dir: Path, latent_dir: Path, out_dir: Path, *,
           checkpoint_dir: Path | None = None, on_log: LogFn | None = None) -> CoLAForCausalLM:
    """Clone the IDM's argmax actions into the policy; save the CoLA folder (with tokenizer) to `out_dir`."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(latent_dir)
    model = load_cola(latent_dir)
    model.set_stage("bc")
    corpus = data_dir / "corpus" / "train.txt"
    batches = TokenStream(token_stream(corpus, tokenizer), cfg.batch_size, cfg.seq_len,
                          seed=cfg.seed)
    stamp = fingerprint(asdict(cfg), file_digest(corpus), file_digest(latent_dir))
    train(model, lambda batch, _g: behaviour_cloning_loss(model, batch), batches, cfg,
          checkpoint_dir=checkpoint_dir, on_log=on_log, description="bc", fingerprint=stamp)
    model.set_stage("frozen")
    save_hf_folder(model, tokenizer, out_dir)
    return model
