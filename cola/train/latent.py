"""The `latent` stage (cola-spec.md stage 1): IDM + codebook + merge blocks on a frozen base.

Loss: next-token CE under straight-through Gumbel-max IDM actions plus the entropy bonus. Diagnostics on held-out
text: world-model loss with IDM actions vs the frozen base's loss, and action usage (codes alive, largest share).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cola.base.tiny import save_hf_folder
from cola.data.corpus import token_stream
from cola.model import CoLAForCausalLM
from cola.train.loop import LogFn, OptimConfig, TokenStream, file_digest, fingerprint, optim_default, train
from cola.train.losses import latent_pretraining_loss


@dataclass
class CoLAModuleConfig:
    """Sizes of the latent-action modules (paper values for an 8B base in brackets)."""

    num_actions: int = field(default=64, metadata={"help": "K, latent actions [64].", "min": 2})
    n_idm_layers: int = field(default=2, metadata={"help": "IDM decoder blocks [4].", "min": 1})
    n_policy_layers: int = field(default=1, metadata={
        "help": "Policy decoder blocks [8: a quarter of the base's 32].", "min": 1})
    n_merge_blocks: int = field(default=2, metadata={"help": "Residual SwiGLU merge blocks [2].", "min": 1})
    merge_intermediate_size: int = field(default=0, metadata={
        "help": "Merge SwiGLU width; 0 = the base's FFN width [14336].", "min": 0})
    output_head: Literal["paper", "residual"] = field(default="residual", metadata={
        "help": "paper = W_lm(N_f(s²) − h) as released; residual = W_lm(N_f(s²)), a documented deviation that "
                "trains at tiny width (calibration §3)."})
    gumbel_temperature: float = field(default=2.0, metadata={
        "help": "τ of the straight-through relaxed softmax [2.0].", "min": 0, "exclusive_min": True})
    entropy_coef: float = field(default=1e-3, metadata={"help": "Entropy bonus weight [1e-3].", "min": 0})
    policy_temperature: float = field(default=1.0, metadata={
        "help": "τ dividing policy logits when scoring action log-probs [1.0].", "min": 0, "exclusive_min": True})


@dataclass
class LatentConfig(OptimConfig):
    """Latent-action pretraining: module sizes, optimisation and diagnostics."""

    cola: CoLAModuleConfig = field(default_factory=CoLAModuleConfig, metadata={"help": "Module sizes."})
    # Calibration §3: lr 2e-3, wd 0.01 (0 for the codebook), 30 warmup steps, batch 32×128, ~540 steps ≈ 3 min.
    steps: int = optim_default("steps", 540)
    log_every: int = optim_default("log_every", 20)
    checkpoint_every: int = optim_default("checkpoint_every", 100)
    val_tokens: int = field(default=16384, metadata={"help": "Held-out tokens for the diagnostics.",
                                                     "min": 128})
    threads: int = field(default=2, metadata={"help": "torch CPU threads.", "min": 1})


def cola_from_base(base, module_cfg: CoLAModuleConfig) -> CoLAForCausalLM:
    """Wrap a base LM in fresh latent-action modules of the configured sizes (the benchmarks use it too)."""
    values = asdict(module_cfg)
    values["merge_intermediate_size"] = values["merge_intermediate_size"] or None
    return CoLAForCausalLM.from_base(base, **values)


def build_cola(base_dir: Path, module_cfg: CoLAModuleConfig, seed: int) -> CoLAForCausalLM:
    torch.manual_seed(seed)
    return cola_from_base(AutoModelForCausalLM.from_pretrained(base_dir), module_cfg)


def run_latent(cfg: LatentConfig, data_dir: Path, base_dir: Path, out_dir: Path, *,
               checkpoint_dir: Path | None = None, on_log: LogFn | None = None) -> CoLAForCausalLM:
    """Train the latent-action modules on the frozen base; save the CoLA folder (with tokenizer) to `out_dir`."""
    torch.set_num_threads(cfg.threads)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = build_cola(base_dir, cfg.cola, cfg.seed)
    model.set_stage("latent")
    corpus = data_dir / "corpus" / "train.txt"
    batches = TokenStream(token_stream(corpus, tokenizer), cfg.batch_size, cfg.seq_len,
                          seed=cfg.seed)
    stamp = fingerprint(asdict(cfg), file_digest(corpus), file_digest(base_dir))
    train(model, lambda batch, g: latent_pretraining_loss(model, batch, generator=g), batches, cfg,
          checkpoint_dir=checkpoint_dir, on_log=on_log, description="latent", fingerprint=stamp)
    model.set_stage("frozen")
    save_hf_folder(model, tokenizer, out_dir)
    return model
