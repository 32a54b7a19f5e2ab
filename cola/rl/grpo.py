"""One GRPO trainer for both action spaces: CoLA's latent actions and the token-level baseline.

The algorithm (cola-spec.md §3 stage 4; calibration.md §5), one :meth:`GRPOTrainer.step`:

1. draw ``prompts_per_step`` prompts (seeded) and roll out G samples of each with the policy (no gradient);
2. score every completion with the task's verifiable reward;
3. group-normalise the rewards; with ``advantage_mode="gae"`` (the authors' recipe) put the normalised reward
   on the last action, charge every action ``β·KL`` to the frozen reference (``kl_in="reward"``), run
   GAE(γ, λ) with V ≡ 0 and whiten; with ``advantage_mode="group"`` broadcast it (textbook GRPO);
4. PPO-clip update(s) on the re-scored log-probs (``kl_in="loss"`` adds β·KL to the loss instead);
5. AdamW with linear warmup and cosine decay to a floor, gradient clipping.

The policy object (:mod:`cola.rl.policies`) hides the action space: for CoLA it re-scores the recorded latent
actions from the recorded base states (only the 2-block policy runs in the update), for the baseline it runs
the whole LM. The pure math lives in :mod:`cola.rl.advantages` and :mod:`cola.rl.losses`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from cola.rl.advantages import compute_advantages, groups_with_signal
from cola.rl.losses import grpo_loss, kl_estimate, masked_mean
from cola.rl.policies import LatentActionPolicy, Policy, Rollout, TokenPolicy
from cola.rl.rewards import ExampleReward
from cola.rl.threshold import MA_WINDOW, ThresholdTracker
from cola.train.loop import OptimConfig, cosine_with_warmup

__all__ = ["GRPOConfig", "GRPOTrainer", "build_policy"]



@dataclass
class GRPOConfig:
    """GRPO settings (params.yaml section ``rl``); defaults are the calibrated CPU run (calibration.md §5)."""

    method: Literal["cola", "token"] = field(default="cola", metadata={
        "help": "Action space: 'cola' trains only the latent-action policy (greedy world-model tokens); "
                "'token' samples tokens and trains the whole LM."})
    steps: int = field(default=600, metadata={"help": "GRPO steps (rollout + update each): the budget and the "
                                                      "cosine schedule's length.", "min": 1})
    prompts_per_step: int = field(default=16, metadata={"help": "Distinct prompts per step (P).", "min": 1})
    group_size: int = field(default=8, metadata={"help": "Samples per prompt (G); rewards are normalised within "
                                                         "each group.", "min": 2})
    max_new_tokens: int = field(default=12, metadata={"help": "Longest response (tokens = actions).", "min": 1})
    lr: float = field(default=1e-4, metadata={"help": "Peak learning rate (latent: 1e-4 calibrated; 3e-4 "
                                                      "diverged).", "min": 0, "exclusive_min": True})
    warmup_steps: int = field(default=20, metadata={"help": "Linear warmup steps (the authors: 3 % of the run).",
                                                    "min": 0})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "Cosine floor as a fraction of lr.", "min": 0,
                                                       "max": 1})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1.", "min": 0, "max": 1})
    beta2: float = field(default=0.95, metadata={"help": "AdamW beta2.", "min": 0, "max": 1})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on matrices (authors: 0).",
                                                       "min": 0})
    grad_clip: float = field(default=1.0, metadata={"help": "Max global gradient norm (0 disables).", "min": 0})
    clip_eps: float = field(default=0.2, metadata={"help": "PPO clip range ε of the ratio.", "min": 0,
                                                   "exclusive_min": True})
    kl_coef: float = field(default=1e-3, metadata={"help": "β, weight of the KL to the frozen reference.",
                                                   "min": 0})
    kl_estimator: Literal["k1", "k2", "k3"] = field(default="k1", metadata={
        "help": "Per-action KL estimator: k1 = log π − log π_ref (authors, as a reward), k3 (TRL, in the loss)."})
    kl_in: Literal["reward", "loss"] = field(default="reward", metadata={
        "help": "Where β·KL goes: 'reward' = a per-action penalty inside the advantages (authors; needs "
                "advantage_mode=gae), 'loss' = added to the PPO loss (TRL)."})
    advantage_mode: Literal["group", "gae"] = field(default="gae", metadata={
        "help": "'gae' = terminal group-normalised reward + GAE(γ, λ), V ≡ 0, global whitening (authors); "
                "'group' = the normalised reward on every action (textbook GRPO)."})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount γ.", "min": 0, "max": 1})
    lam: float = field(default=0.95, metadata={"help": "GAE λ (0.95 decays the terminal reward per action).",
                                               "min": 0, "max": 1})
    ppo_epochs: int = field(default=1, metadata={"help": "Optimizer steps per rollout batch (1 = on-policy, "
                                                         "ratio ≡ 1).", "min": 1})
    action_top_k: int = field(default=40, metadata={"help": "CoLA: sample actions from the top k of K logits "
                                                            "(paper 40 of 64).", "min": 1})
    action_temperature: float = field(default=1.0, metadata={"help": "CoLA: action sampling temperature.",
                                                             "min": 0, "exclusive_min": True})
    token_temperature: float = field(default=1.0, metadata={"help": "Token baseline: sampling temperature.",
                                                             "min": 0, "exclusive_min": True})
    token_top_k: int = field(default=0, metadata={"help": "Token baseline: sample from the top k tokens "
                                                          "(0 = full vocabulary, the spec's baseline).", "min": 0})
    reward_threshold: float | None = field(default=None, metadata={
        "help": f"Record the first step (and wall seconds) at which the {MA_WINDOW}-step moving average of the "
                "sampled reward reaches this value and holds it (time-to-threshold); null disables. See threshold_kind "
                "and threshold_hold."})
    threshold_kind: Literal["gain", "absolute"] = field(default="gain", metadata={
        "help": f"gain: reward_threshold is a rise over the run's own start (its first {MA_WINDOW}-step "
                "window), for runs that start from different models; absolute: a reward value."})
    threshold_hold: int = field(default=MA_WINDOW, metadata={
        "help": "A crossing counts once the moving average has stayed at or above the target this many further "
                "steps (one noisy window does not); the crossing's own step is recorded. 0 = first crossing.",
        "min": 0})
    log_every: int = field(default=10, metadata={"help": "Report averaged stats every N steps.", "min": 1})
    seed: int = field(default=0, metadata={"help": "Seed of prompt sampling and rollout sampling."})

    def __post_init__(self) -> None:
        # GAE is where a per-action reward can live; textbook GRPO has only one reward per sequence.
        if self.kl_in == "reward" and self.advantage_mode != "gae":
            raise ValueError("kl_in='reward' needs advantage_mode='gae' (use kl_in='loss' with 'group')")
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed steps ({self.steps})")

    def optim(self) -> OptimConfig:
        """The schedule/optimizer subset as the shared training loop's config (same cosine-with-warmup)."""
        return OptimConfig(steps=self.steps, lr=self.lr, min_lr_ratio=self.min_lr_ratio,
                           warmup_steps=self.warmup_steps, weight_decay=self.weight_decay, beta1=self.beta1,
                           beta2=self.beta2, grad_clip=self.grad_clip, seed=self.seed)


def build_policy(model: Any, tokenizer: Any, config: GRPOConfig) -> Policy:
    """The policy for ``config.method`` with its sampling settings (a CoLA model for 'cola', any LM for 'token')."""
    if config.method == "cola":
        return LatentActionPolicy(model, tokenizer, top_k=config.action_top_k,
                                  temperature=config.action_temperature)
    return TokenPolicy(model, tokenizer, temperature=config.token_temperature, top_k=config.token_top_k or None)


LogFn = Callable[[int, dict[str, float]], None]


class GRPOTrainer:
    """GRPO on a :class:`~cola.rl.policies.Policy` with a verifiable example reward.

    Args:
        policy: a latent-action or token policy (its ``kind`` must match ``config.method``).
        config: the settings.
        prompts: task examples; each needs ``prompt`` plus whatever ``reward_fn`` reads (``answer``, ...).
        reward_fn: ``reward_fn(completion, example) -> float`` (see :func:`cola.rl.rewards.reward_for`).
    """

    def __init__(self, policy: Policy, config: GRPOConfig, prompts: list[dict], reward_fn: ExampleReward) -> None:
        if not prompts:
            raise ValueError("GRPO needs at least one prompt")
        if policy.kind != config.method:
            raise ValueError(f"config.method is {config.method!r} but the policy is a {policy.kind!r} policy")
        self.policy, self.config, self.prompts, self.reward_fn = policy, config, prompts, reward_fn
        # Freeze everything but the trainable part first, then copy the reference: it is the policy at step 0
        # and never moves (the KL anchors the run to where RL started).
        self.params = policy.trainable_parameters()
        self.ref = policy.reference()
        # No weight decay on vectors (norm gains, biases), as in the other stages.
        matrices = [p for p in self.params if p.ndim >= 2]
        vectors = [p for p in self.params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": matrices, "weight_decay": config.weight_decay}, {"params": vectors, "weight_decay": 0.0}],
            lr=config.lr, betas=(config.beta1, config.beta2),
        )
        optim_cfg = config.optim()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda s: cosine_with_warmup(s, optim_cfg))
        # Two independent streams, so changing the rollout length does not change which prompts are drawn.
        self.prompt_generator = torch.Generator().manual_seed(config.seed)
        self.rollout_generator = torch.Generator().manual_seed(config.seed + 1)
        self.step_count = 0
        self.elapsed = 0.0  # wall seconds spent in step(), summed (resumes with the checkpoint)
        self.reward_history: list[float] = []
        self.threshold = ThresholdTracker(config.reward_threshold, config.threshold_kind, config.threshold_hold)

    # ------------------------------------------------------------------------------------------ one step

    def sample_prompts(self) -> list[dict]:
        """P distinct prompts when the pool allows it (with replacement only for a tiny pool)."""
        n, p = len(self.prompts), self.config.prompts_per_step
        if n >= p:
            index = torch.randperm(n, generator=self.prompt_generator)[:p]
        else:
            index = torch.randint(n, (p,), generator=self.prompt_generator)
        return [self.prompts[i] for i in index.tolist()]

    def rewards(self, rollout: Rollout, examples: list[dict]) -> Tensor:
        """(B,) rewards; row b is sample b % G of prompt b // G."""
        g = self.config.group_size
        return torch.tensor([self.reward_fn(c, examples[b // g]) for b, c in enumerate(rollout.completions)],
                            dtype=torch.float32)

    def advantages(self, rewards: Tensor, rollout: Rollout, ref_logp: Tensor) -> Tensor:
        """(B, N) per-action advantages; in the authors' recipe β·KL to the reference is a per-action cost."""
        cfg, mask = self.config, rollout.response_mask
        kl_penalty = None
        if cfg.kl_in == "reward" and cfg.kl_coef > 0:
            # The KL of the behaviour policy (the one that sampled), as the authors' experience maker computes it.
            kl_penalty = cfg.kl_coef * kl_estimate(rollout.old_logprobs, ref_logp, cfg.kl_estimator) * mask
        return compute_advantages(rewards, mask, cfg.group_size, mode=cfg.advantage_mode, gamma=cfg.gamma,
                                  lam=cfg.lam, kl_penalty=kl_penalty)

    def step(self) -> dict[str, float]:
        """One GRPO step (rollout → rewards → advantages → PPO-clip update); returns its stats."""
        cfg = self.config
        start = time.perf_counter()

        # 1. Rollout: G samples per prompt, no gradient. Old log-probs are recorded while sampling.
        examples = self.sample_prompts()
        rollout = self.policy.rollout([ex["prompt"] for ex in examples], cfg.group_size, cfg.max_new_tokens,
                                      self.rollout_generator)
        generated = time.perf_counter()

        # 2. Verifiable rewards, then 3. advantages (the reference is scored on the same rollout).
        rewards = self.rewards(rollout, examples)
        rewarded = time.perf_counter()
        mask = rollout.response_mask
        old_logp = rollout.old_logprobs
        ref_logp = self.ref.logprobs(rollout)
        referenced = time.perf_counter()
        adv = self.advantages(rewards, rollout, ref_logp)

        # 4. PPO-clip update(s). With one epoch the ratio is 1 and this is a plain policy gradient whose clip
        # never fires; extra epochs reuse the same rollout, which is what the clip is for.
        lr = self.scheduler.get_last_lr()[0]
        epoch_stats: list[dict[str, float]] = []
        entropy = 0.0
        for epoch in range(cfg.ppo_epochs):
            logp, ent = self.policy.logprobs(rollout, with_entropy=True)
            if epoch == 0:
                entropy = masked_mean(ent, mask).item()  # of the behaviour policy, before any update
            loss, stats = grpo_loss(logp, old_logp, ref_logp, adv, mask, clip_eps=cfg.clip_eps,
                                    kl_coef=cfg.kl_coef, kl_estimator=cfg.kl_estimator,
                                    kl_in_loss=cfg.kl_in == "loss")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
            self.optimizer.step()
            epoch_stats.append(stats)
        # 5. The schedule counts GRPO steps (the budget), not PPO epochs.
        self.scheduler.step()
        end = time.perf_counter()

        self.step_count += 1
        self.elapsed += end - start
        reward_mean = rewards.mean().item()
        self.reward_history.append(reward_mean)
        self.threshold.update(self.reward_history, self.step_count, self.elapsed)
        n_tokens = int(mask.sum())
        out = {k: sum(s[k] for s in epoch_stats) / len(epoch_stats) for k in epoch_stats[0]}
        out.update(
            reward_mean=reward_mean,
            reward_std=rewards.std().item(),
            reward_ma=sum(self.reward_history[-MA_WINDOW:]) / len(self.reward_history[-MA_WINDOW:]),
            groups_with_signal=groups_with_signal(rewards, cfg.group_size),
            entropy=entropy,
            response_length=n_tokens / mask.shape[0],
            lr=lr,
            tokens_per_second=n_tokens / max(end - start, 1e-9),
            seconds_generation=generated - start,
            seconds_update=end - generated,  # everything after the rollout: rewards, reference, loss, optimizer
            seconds_reward=rewarded - generated,
            seconds_reference=referenced - rewarded,
            seconds_per_step=end - start,
        )
        out.setdefault("kl", 0.0)
        return out

    # ------------------------------------------------------------------------------------------ the loop

    def train(
        self, steps: int | None = None, on_log: LogFn | None = None, max_seconds: float | None = None,
        description: str | None = None,
    ) -> dict[str, float]:
        """Run until ``config.steps`` (or ``steps`` more), or until ``max_seconds`` of step time; return a summary.

        Every ``log_every`` steps (and at the end) ``on_log(step, stats)`` gets the stats averaged over the
        interval. The summary has the final interval's stats plus reward start/end (mean over the first and
        last 20 % of steps), total seconds, and ``threshold_step`` / ``threshold_seconds`` when reached.
        """
        cfg = self.config
        total = cfg.steps if steps is None else self.step_count + steps
        window: dict[str, list[float]] = {}
        logged: dict[str, float] = {}
        bar = tqdm(range(self.step_count, total), desc=description or f"grpo-{cfg.method}",
                   initial=self.step_count, total=total, mininterval=2.0)
        for _ in bar:
            stats = self.step()
            for key, value in stats.items():
                window.setdefault(key, []).append(value)
            out_of_time = max_seconds is not None and self.elapsed >= max_seconds
            if self.step_count % cfg.log_every == 0 or self.step_count == total or out_of_time:
                logged = {k: sum(v) / len(v) for k, v in window.items()}
                window = {}
                bar.set_postfix(reward=f"{logged['reward_mean']:.3f}", kl=f"{logged['kl']:.3f}")
                if on_log is not None:
                    on_log(self.step_count, logged)
            if out_of_time:
                break
        bar.close()
        return {**logged, **self.summary()}

    def summary(self) -> dict[str, float]:
        """Whole-run figures: steps, seconds, reward at the start and end, time-to-threshold when reached."""
        history = self.reward_history
        fifth = max(1, len(history) // 5)
        out: dict[str, float] = {"steps": float(self.step_count), "train_seconds": self.elapsed}
        if history:
            out["reward_start"] = sum(history[:fifth]) / fifth
            out["reward_end"] = sum(history[-fifth:]) / fifth
        out.update(self.threshold.summary())
        return out

    # ------------------------------------------------------------------------------------------ resuming

    def checkpoint_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Everything needed to resume bit-exactly, as (tensors for safetensors, JSON-able metadata).

        Includes the trainable parameters and the frozen reference (after RL the model no longer holds the
        step-0 policy), the optimizer and both random streams.
        """
        tensors = {f"param.{i}": p.detach().clone().contiguous() for i, p in enumerate(self.params)}
        tensors.update({f"ref.{k}": v.detach().clone().contiguous() for k, v in self.ref.state_dict().items()})
        opt = self.optimizer.state_dict()
        tensors.update({f"opt.{i}.{k}": v.clone().contiguous() for i, st in opt["state"].items()
                        for k, v in st.items()})
        tensors["rng.prompts"] = self.prompt_generator.get_state()
        tensors["rng.rollout"] = self.rollout_generator.get_state()
        meta = {
            "step": self.step_count, "elapsed": self.elapsed, "reward_history": self.reward_history,
            "threshold": self.threshold.state(),
            "param_groups": opt["param_groups"], "scheduler": self.scheduler.state_dict(),
            "config": asdict(self.config),
        }
        json.dumps(meta)  # fail here, not at write time, if something is not JSON-able
        return tensors, meta

    def load_checkpoint_state(self, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
        """Restore :meth:`checkpoint_state` into a trainer built with the same policy shape and config."""
        with torch.no_grad():
            for i, p in enumerate(self.params):
                p.copy_(tensors[f"param.{i}"])
            self.ref.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ref.")})
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                index, name = key[4:].split(".", 1)
                state.setdefault(int(index), {})[name] = value.clone()
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.scheduler.load_state_dict(meta["scheduler"])
        self.prompt_generator.set_state(tensors["rng.prompts"])
        self.rollout_generator.set_state(tensors["rng.rollout"])
        self.step_count, self.elapsed = int(meta["step"]), float(meta["elapsed"])
        self.reward_history = list(meta["reward_history"])
        self.threshold.load_state(meta["threshold"])
