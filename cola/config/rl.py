"""The ``rl`` section: GRPO for both action spaces (cola-spec.md §3 stage 4; calibration.md §5).

Every ``rl@<method>-<task>`` entry of dvc.yaml reads this one section, so both action spaces get the same
algorithm, prompts and budget, and ``dvc exp run -S rl.lr=1e-6`` changes every RL run. What differs per task
is under ``rl.tasks``; the method and task come from the entry, the seed from ``rl.seeds``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from cola.config.fields import override, param
from cola.config.training import OptimConfig

MA_WINDOW = 10  # steps in the sampled-reward moving average behind time-to-threshold (cola.rl.threshold)


@dataclass
class RLTaskConfig:
    """Settings of one RL task that the other task does not share."""

    steps: int | None = param(None, "GRPO steps for this task (both methods alike); null = rl.steps.", min=1)
    max_new_tokens: int = param(12, "Longest response in tokens (= actions): room for the task's answer "
                                    "format.", min=1)
    reward_threshold: float | None = param(
        None, f"Time-to-threshold: the first step (and seconds) at which the {MA_WINDOW}-step moving average "
              "of the sampled reward rises this much above the run's start (rl.threshold_kind: gain) or "
              "reaches this value (absolute), and stays there rl.threshold_hold steps; null disables.")


@dataclass
class RLTasks:
    """Per-task settings, keyed by the task names of the `rl@<method>-<task>` entries.

    Math answers are `\\boxed{-79}`-short (at most 7 tokens + EOS with the tiny tokenizer; calibration.md §5
    uses 12); countdown's think + answer trace is about 6x longer (up to 41 tokens), so its steps cost ~4x
    more and it gets fewer of them to keep every RL run near two minutes on 2 cores. Thresholds are rises over
    each run's start: the two methods start from different models (FTA, SFT) and sample differently (actions
    vs tokens), so no absolute reward sits above both starts and within both reaches (README). The token
    baseline rose by about +0.04 in these budgets on 2026-11-30; a window's mean has an SE near 0.014.
    """

    math: RLTaskConfig = param(RLTaskConfig(max_new_tokens=12, reward_threshold=0.04),
                               "math: prompts of the arith split, boxed-answer reward.")
    countdown: RLTaskConfig = param(RLTaskConfig(steps=100, max_new_tokens=44, reward_threshold=0.03),
                                    "countdown: prompts of the countdown split, format (0.1) + "
                                    "correctness reward.")


@dataclass
class RLConfig(OptimConfig):
    """The ``rl`` section: GRPO settings shared by every ``rl@<method>-<task>`` entry.

    Overrides of the training core's defaults: steps 300, lr 1e-4 (calibrated for the latent policy; 3e-4
    diverged), warmup_steps 10, weight_decay 0 (the authors'), log_every 10, checkpoint_every 100. Threads 2:
    rollouts are batches of P·G = 128 sequences, big enough for two threads to pay off on the 1.25M base.
    """

    prompts_per_step: int = param(16, "Distinct prompts per step (P).", min=1)
    group_size: int = param(8, "Samples per prompt (G); rewards are normalised within each group.", min=2)
    clip_eps: float = param(0.2, "PPO clip range ε of the ratio.", min=0, exclusive_min=True)
    kl_coef: float = param(1e-3, "β, weight of the KL to the frozen reference.", min=0)
    kl_estimator: Literal["k1", "k2", "k3"] = param(
        "k1", "Per-action KL estimator: k1 = log π − log π_ref (authors, as a reward), "
              "k3 (TRL, in the loss).")
    kl_in: Literal["reward", "loss"] = param(
        "reward", "Where β·KL goes: 'reward' = a per-action penalty inside the advantages (authors; needs "
                  "advantage_mode=gae), 'loss' = added to the PPO loss (TRL).")
    advantage_mode: Literal["group", "gae"] = param(
        "gae", "'gae' = terminal group-normalised reward + GAE(γ, λ), V ≡ 0, global whitening (authors); "
               "'group' = the normalised reward on every action (textbook GRPO).")
    baseline: Literal["group", "rloo", "remax"] = param(
        "group", "What a sample's reward is compared with: 'group' = its group's mean, divided by the "
                 "std (GRPO, the paper's), 'rloo' = the mean of the other G-1 samples, 'remax' = the reward "
                 "of the policy's greedy response to the prompt (one extra greedy rollout per step).")
    gamma: float = param(1.0, "GAE discount γ.", min=0, max=1)
    lam: float = param(0.95, "GAE λ (0.95 decays the terminal reward per action).", min=0, max=1)
    ppo_epochs: int = param(1, "Optimizer steps per rollout batch (1 = on-policy, ratio ≡ 1).", min=1)
    action_top_k: int = param(40, "CoLA: sample actions from the top k of K logits (paper 40 of 64).", min=1)
    action_temperature: float = param(1.0, "CoLA: action sampling temperature.", min=0, exclusive_min=True)
    token_temperature: float = param(1.0, "Token baseline: sampling temperature.", min=0, exclusive_min=True)
    token_top_k: int = param(0, "Token baseline: sample from the top k tokens (0 = full vocabulary, "
                                "the spec's baseline).", min=0)
    threshold_kind: Literal["gain", "absolute"] = param(
        "gain", "gain: a task's reward_threshold is a rise over the run's own start (its first "
                f"{MA_WINDOW}-step window), for runs that start from different models; absolute: a reward "
                "value.")
    threshold_hold: int = param(
        MA_WINDOW, "A crossing counts once the moving average has stayed at or above the target this many "
                   "further steps (one noisy window does not); the crossing's own step is recorded. "
                   "0 = first crossing.",
        min=0)
    tasks: RLTasks = param(RLTasks(), "Per-task settings (math, countdown).")
    seeds: list[int] = param([0], "RL seeds: one model per seed from the same start model; the report shows "
                                  "mean ± spread when there are several "
                                  "(`dvc exp run -S 'rl.seeds=[0,1,2]'`).")
    cola_start: Literal["fta", "bc"] = param(
        "fta", "Start model of the CoLA RL runs: fta (fine-tuned under action guidance, the paper's) or bc "
               "(the behaviour-cloned policy, as the calibration prototype). dvc.yaml reads it for the "
               "rl@cola-* entries' --start and dependency.")
    n_prompts: int = param(0, "Use the first N train prompts of the task (0 = all of them).", min=0)
    val_every: int = param(50, "Every N steps, the greedy accuracy on the first `val_prompts` validation "
                               "prompts of the task (`val_greedy_acc`, a curve; 0 = never).", min=0)
    val_prompts: int = param(64, "How many validation prompts (always the same ones) that accuracy uses.",
                             min=1)
    steps: int = override(OptimConfig, "steps", 300)
    lr: float = override(OptimConfig, "lr", 1e-4)
    warmup_steps: int = override(OptimConfig, "warmup_steps", 10)
    weight_decay: float = override(OptimConfig, "weight_decay", 0.0)
    log_every: int = override(OptimConfig, "log_every", 10)
    checkpoint_every: int = override(OptimConfig, "checkpoint_every", 100)

    def __post_init__(self) -> None:
        # GAE is where a per-action reward can live; textbook GRPO has only one reward per sequence.
        if self.kl_in == "reward" and self.advantage_mode != "gae":
            raise ValueError("kl_in='reward' needs advantage_mode='gae' (use kl_in='loss' with 'group')")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        for task in (f.name for f in dataclasses.fields(RLTasks)):
            steps = self.task(task).steps or self.steps
            if self.warmup_steps > steps:
                raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed the {task} steps "
                                 f"({steps})")

    def task(self, name: str) -> RLTaskConfig:
        """The settings of RL task `name` (math, countdown)."""
        if not hasattr(self.tasks, name):
            known = ", ".join(f.name for f in dataclasses.fields(RLTasks))
            raise ValueError(f"unknown RL task {name!r}; expected one of {known}")
        return getattr(self.tasks, name)

    def for_task(self, name: str) -> RLConfig:
        """This config with the task's own step budget (the schedule's length), if it sets one."""
        steps = self.task(name).steps
        return self if steps is None else dataclasses.replace(self, steps=steps)
