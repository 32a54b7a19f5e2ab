"""The `qlearn` section: MCTS-Q's Q-network, by double DQN on the RL policy's rollouts (spec §3, 5a)."""

from __future__ import annotations

from dataclasses import dataclass

from cola.config.fields import override, param
from cola.config.training import OptimConfig


@dataclass
class QLearnConfig(OptimConfig):
    """Double DQN on best-of-n CoLA rollouts of the training problems, rewarded by the task's verifier.

    Overrides of the training core's defaults: lr 1e-4 (the paper: 5e-6 on an 8B base), weight_decay 0,
    warmup 10, log_every 10.
    """

    samples_per_prompt: int = param(16, "Rollouts per training problem (the paper: best-of-16).", min=1)
    n_prompts: int = param(256, "Training problems rolled out (the first N of the task's train split).",
                           min=1)
    heldout_prompts: int = param(32, "Validation problems whose rollouts measure the Q-values' calibration.",
                                 min=1)
    batch_size: int = param(32, "Rollouts per optimizer step.", min=1)
    gamma: float = param(0.99, "Discount γ of the TD target (the paper's).", min=0, max=1)
    target_sync: int = param(50, "Copy the online network into the target network every N steps (the "
                                 "paper: every 50 micro-steps).", min=1)
    action_top_k: int = param(40, "Top-k of the policy's action sampling in the rollouts.", min=1)
    max_new_tokens: int = param(12, "Longest rollout (tokens = actions; the math RL budget).", min=1)
    seed: int = param(0, "Seed of the rollouts and the minibatches.")
    steps: int = override(OptimConfig, "steps", 200)
    lr: float = override(OptimConfig, "lr", 1e-4)
    weight_decay: float = override(OptimConfig, "weight_decay", 0.0)
    warmup_steps: int = override(OptimConfig, "warmup_steps", 10)
    log_every: int = override(OptimConfig, "log_every", 10)
