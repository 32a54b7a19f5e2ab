"""One GRPO trainer for both action spaces: CoLA's latent actions and the token-level baseline.

The algorithm (cola-spec.md §3 stage 4; calibration.md §5), one :meth:`GRPOTrainer.step`:

1. draw ``prompts_per_step`` prompts (seeded) and roll out G samples of each with the policy (no gradient);
2. score every completion with the task's verifiable reward;
3. subtract a baseline (``baseline``: GRPO's group normalisation, RLOO's leave-one-out mean or ReMax's greedy
   response's reward); with ``advantage_mode="gae"`` (the authors' recipe) put the normalised reward
   on the last action, charge every action ``β·KL`` to the frozen reference (``kl_in="reward"``), run
   GAE(γ, λ) with V ≡ 0 and whiten; with ``advantage_mode="group"`` broadcast it (textbook GRPO);
4. PPO-clip update(s) on the re-scored log-probs (``kl_in="loss"`` adds β·KL to the loss instead).

It is a `cola.train.core.Trainer`: AdamW, the warmup + cosine schedule, clipping, logging and resumable
checkpoints are the training core's; GRPO supplies its rollout-and-loss step and the state it adds (the frozen
reference, the prompt and rollout streams, the reward history behind time-to-threshold).

Under ``accelerate launch`` each process rolls out its block of the step's prompts (whole groups) with its
rows of the step's random numbers; rewards, response masks and KL costs are gathered so the advantages
(group baselines, GAE whitening) are the global batch's, and the token-mean loss and statistics are each
process's share of the global mean, so N processes take the same step as one (`cola.train.distributed`).

The policy object (:mod:`cola.rl.policies`) hides the action space: for CoLA it re-scores the recorded latent
actions from the recorded base states (only the policy stack runs in the update), for the baseline it runs
the whole LM. The pure math lives in :mod:`cola.rl.advantages` and :mod:`cola.rl.losses`.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from cola.config import RLConfig
from cola.model.sampling import BatchRows
from cola.rl.advantages import compute_advantages, groups_with_signal
from cola.rl.losses import grpo_loss, kl_estimate, masked_mean
from cola.rl.policies import LatentActionPolicy, Policy, Rollout, TokenPolicy
from cola.rl.threshold import MA_WINDOW, ThresholdTracker
from cola.tasks.base import Example, Task
from cola.train.core import Trainer

__all__ = ["GRPOTrainer", "build_policy"]

#: A reward on one completion given its task example (a `Task.reward`): the trainer's only view of rewards.
ExampleReward = Any


def build_policy(model: Any, tokenizer: Any, method: str, cfg: RLConfig) -> Policy:
    """The policy of `method` with its sampling settings (a CoLA model for 'cola', any LM for 'token')."""
    if method == "cola":
        return LatentActionPolicy(model, tokenizer, top_k=cfg.action_top_k,
                                  temperature=cfg.action_temperature)
    if method == "token":
        return TokenPolicy(model, tokenizer, temperature=cfg.token_temperature, top_k=cfg.token_top_k or None)
    raise ValueError(f"unknown RL method {method!r}; expected 'cola' or 'token'")


class GRPOTrainer(Trainer):
    """GRPO on a :class:`~cola.rl.policies.Policy` with a verifiable example reward.

    Args:
        policy: a latent-action or token policy.
        cfg: the ``rl`` section, with the task's step budget (`RLConfig.for_task`).
        prompts: task examples; each needs ``prompt`` plus whatever ``reward_fn`` reads (``answer``, ...).
        reward_fn: ``reward_fn(completion, example) -> float``, the task's `Task.reward`.
        max_new_tokens: the longest response (tokens = actions).
        reward_threshold: time-to-threshold target (`RLTaskConfig.reward_threshold`); None disables it.
        seed: seeds prompt sampling and the rollouts.
        task: the task behind `reward_fn`, for the diagnostics: distinct answers per group (`Task.vote_key`)
            and, with `val_examples`, the greedy accuracy (`Task.score`) every ``cfg.val_every`` steps.
        val_examples: the fixed validation prompts of that accuracy (the first ``cfg.val_prompts`` are used).
        **kwargs: the training core's (checkpoint_dir, fingerprint, keep_final, description, on_log).
    """

    train_mode = False  # no dropout: the policy that sampled and the one being updated are the same function
    postfix_keys = ("reward_mean", "kl")

    def __init__(self, policy: Policy, cfg: RLConfig, prompts: list[dict], reward_fn: ExampleReward, *,
                 max_new_tokens: int, reward_threshold: float | None = None, seed: int = 0,
                 task: Task | None = None, val_examples: list[Example] | None = None, **kwargs: Any) -> None:
        if not prompts:
            raise ValueError("GRPO needs at least one prompt")
        self.policy, self.prompts, self.reward_fn = policy, prompts, reward_fn
        self.task, self.val_examples = task, list(val_examples or [])[: cfg.val_prompts]
        self.max_new_tokens = max_new_tokens
        # Freeze everything but the trainable part first, then copy the reference: it is the policy at step 0
        # and never moves (the KL anchors the run to where RL started).
        policy.trainable_parameters()
        self.ref = policy.reference()
        kwargs.setdefault("description", f"grpo-{policy.kind}")
        super().__init__(policy.model, cfg, seed=seed, **kwargs)
        # The core moved the model to this process's device; the copy made before must follow (a stage loads
        # its model on the CPU: on a GPU the reference would have stayed there).
        self.ref.to(self.accelerator.device)
        # Two independent streams, so changing the rollout length does not change which prompts are drawn.
        self.prompt_generator = torch.Generator().manual_seed(seed)
        self.rollout_generator = torch.Generator().manual_seed(seed + 1)
        self.elapsed = 0.0  # wall seconds spent in training steps, summed (resumes with the checkpoint)
        self.reward_history: list[float] = []
        self.threshold = ThresholdTracker(reward_threshold, cfg.threshold_kind, cfg.threshold_hold)

    # ------------------------------------------------------------------------------------------ one step

    def sample_prompts(self) -> list[dict]:
        """This process's block of the step's P prompts: P distinct ones when the pool allows it (with
        replacement only for a tiny pool), drawn alike by every process."""
        n, p = len(self.prompts), self.cfg.prompts_per_step
        if n >= p:
            index = torch.randperm(n, generator=self.prompt_generator)[:p]
        else:
            index = torch.randint(n, (p,), generator=self.prompt_generator)
        start, stop = self.processes.rows(p, "prompts_per_step")
        return [self.prompts[i] for i in index[start:stop].tolist()]

    def step_noise(self) -> BatchRows:
        """This process's rows of the step's random numbers. A fresh generator per step, seeded from the
        rollout stream, keeps the streams of all processes alike however long each one's decoding ran."""
        seed = int(torch.randint(2**62, (1,), generator=self.rollout_generator))
        p, g = self.cfg.prompts_per_step, self.cfg.group_size
        start, stop = self.processes.rows(p, "prompts_per_step")
        return BatchRows(torch.Generator().manual_seed(seed), start * g, stop * g, p * g)

    def rewards(self, rollout: Rollout, examples: list[Example]) -> Tensor:
        """(B,) rewards; row b is sample b % G of prompt b // G."""
        g = self.cfg.group_size
        return torch.tensor([self.reward_fn(c, examples[b // g]) for b, c in enumerate(rollout.completions)],
                            dtype=torch.float32, device=rollout.response_mask.device)

    def greedy_rewards(self, examples: list[Example]) -> Tensor | None:
        """ReMax's baseline: the reward of the policy's greedy response to each prompt (None otherwise)."""
        if self.cfg.baseline != "remax":
            return None
        greedy = self.policy.rollout([ex["prompt"] for ex in examples], 1, self.max_new_tokens, None,
                                     greedy=True)
        pairs = zip(greedy.completions, examples, strict=True)
        return torch.tensor([self.reward_fn(c, ex) for c, ex in pairs], dtype=torch.float32,
                            device=greedy.response_mask.device)

    def advantages(self, rewards: Tensor, rollout: Rollout, ref_logp: Tensor,
                   greedy_rewards: Tensor | None = None) -> Tensor:
        """(B, N) per-action advantages of this process's rows, computed on the gathered global batch;
        in the authors' recipe β·KL to the reference is a per-action cost."""
        cfg, mask = self.cfg, rollout.response_mask
        kl_penalty = None
        if cfg.kl_in == "reward" and cfg.kl_coef > 0:
            # The KL of the behaviour policy (the one that sampled), as the authors' experience maker computes
            # it.
            kl_penalty = cfg.kl_coef * kl_estimate(rollout.old_logprobs, ref_logp, cfg.kl_estimator) * mask
        def gather(t: Tensor | None) -> Tensor | None:
            return self.processes.gather(t) if t is not None else None

        adv = compute_advantages(gather(rewards), gather(mask.float()).bool(), cfg.group_size,
                                 mode=cfg.advantage_mode, gamma=cfg.gamma, lam=cfg.lam,
                                 kl_penalty=gather(kl_penalty), baseline=cfg.baseline,
                                 greedy_rewards=gather(greedy_rewards))
        start = self.processes.rank * mask.shape[0]
        return adv[start : start + mask.shape[0], : mask.shape[1]]

    def distinct_answers(self, rollout: Rollout) -> float | None:
        """Mean number of distinct answers (`Task.vote_key`; no answer counts as one) in a group: 1 means
        every sample of the prompt said the same thing, whatever actions or tokens produced it."""
        if self.task is None:
            return None
        keys = [self.task.vote_key(c) for c in rollout.completions]
        g = rollout.group_size
        groups = [keys[i : i + g] for i in range(0, len(keys), g)]
        return sum(len(set(group)) for group in groups) / len(groups)

    @torch.no_grad()
    def validation_accuracy(self) -> float | None:
        """Greedy accuracy on the fixed validation prompts every ``cfg.val_every`` steps (None between)."""
        every = self.cfg.val_every
        if self.task is None or not self.val_examples or not every or (self.global_step + 1) % every:
            return None
        batch = self.cfg.prompts_per_step * self.cfg.group_size
        correct = 0
        mine = self.val_examples[self.processes.rank :: self.processes.world]
        for i in range(0, len(mine), batch):
            examples = mine[i : i + batch]
            rollout = self.policy.rollout([ex["prompt"] for ex in examples], 1, self.max_new_tokens, None,
                                          greedy=True)
            pairs = zip(examples, rollout.completions, strict=True)
            correct += sum(self.task.score(ex, c) for ex, c in pairs)
        correct = self.processes.reduce({"correct": correct}, summed=("correct",))["correct"]
        return correct / len(self.val_examples)

    def training_step(self) -> dict[str, float]:
        """One GRPO step (rollout → rewards → advantages → PPO-clip update); returns its stats."""
        cfg = self.cfg
        start = time.perf_counter()

        # 1. Rollout: G samples per prompt, no gradient. Old log-probs are recorded while sampling.
        examples = self.sample_prompts()
        rollout = self.policy.rollout([ex["prompt"] for ex in examples], cfg.group_size, self.max_new_tokens,
                                      self.step_noise())
        generated = time.perf_counter()

        # 2. Verifiable rewards, then 3. advantages (the reference is scored on the same rollout).
        local_rewards = self.rewards(rollout, examples)
        greedy_rewards = self.greedy_rewards(examples)
        rewarded = time.perf_counter()
        mask = rollout.response_mask
        old_logp = rollout.old_logprobs
        ref_logp = self.ref.logprobs(rollout)
        referenced = time.perf_counter()
        adv = self.advantages(local_rewards, rollout, ref_logp, greedy_rewards)
        rewards = self.processes.gather(local_rewards)
        # Token means below are this process's share of the global batch's mean: their average over
        # processes (the gradient's, the logged metrics') is the global mean.
        share = self.processes.share(float(mask.sum()))

        # 4. PPO-clip update(s). With one epoch the ratio is 1 and this is a plain policy gradient whose clip
        # never fires; extra epochs reuse the same rollout, which is what the clip is for. The schedule counts
        # GRPO steps (the budget), not PPO epochs: the core moves it on once this step returns.
        epoch_stats: list[dict[str, float]] = []
        entropy = 0.0
        for epoch in range(cfg.ppo_epochs):
            logp, ent = self.policy.logprobs(rollout, with_entropy=True)
            if epoch == 0:
                entropy = masked_mean(ent, mask).item() * share  # of the behaviour policy, before any update
            loss, stats = grpo_loss(logp, old_logp, ref_logp, adv, mask, clip_eps=cfg.clip_eps,
                                    kl_coef=cfg.kl_coef, kl_estimator=cfg.kl_estimator,
                                    kl_in_loss=cfg.kl_in == "loss")
            stats = {k: v * share for k, v in stats.items()}
            stats["grad_norm"] = self.optimize(loss * share)
            epoch_stats.append(stats)
        end = time.perf_counter()

        self.elapsed += end - start
        reward_mean = rewards.mean().item()
        self.reward_history.append(reward_mean)
        self.threshold.update(self.reward_history, self.global_step + 1, self.elapsed)
        n_tokens = int(mask.sum())
        out = {k: sum(s[k] for s in epoch_stats) / len(epoch_stats) for k in epoch_stats[0]}
        out.update(
            reward_mean=reward_mean,
            reward_std=rewards.std().item(),
            reward_ma=sum(self.reward_history[-MA_WINDOW:]) / len(self.reward_history[-MA_WINDOW:]),
            groups_with_signal=groups_with_signal(rewards, cfg.group_size),
            advantage_abs=masked_mean(adv.abs(), mask).item() * share,
            entropy=entropy,
            response_length=n_tokens / mask.shape[0],
            n_tokens=n_tokens,
            seconds_generation=generated - start,
            # everything after the rollout: rewards, reference, loss, optimizer
            seconds_update=end - generated,
            seconds_reward=rewarded - generated,
            seconds_reference=referenced - rewarded,
            seconds_per_step=end - start,
        )
        out.setdefault("kl", 0.0)
        diagnostics = {"distinct_answers": self.distinct_answers(rollout)}
        validation_start = time.perf_counter()  # not training time: outside `elapsed` and seconds_per_step
        diagnostics["val_greedy_acc"] = self.validation_accuracy()
        if diagnostics["val_greedy_acc"] is not None:
            diagnostics["seconds_validation"] = time.perf_counter() - validation_start
        out.update({k: v for k, v in diagnostics.items() if v is not None})
        return out

    # ------------------------------------------------------------------------------------------ results

    def summary(self) -> dict[str, float]:
        """Whole-run figures: steps, seconds, reward at the start and end, time-to-threshold when reached, the
        last greedy validation accuracy."""
        history = self.reward_history
        fifth = max(1, len(history) // 5)
        out: dict[str, float] = {"steps": float(self.global_step), "train_seconds": self.elapsed}
        if history:
            out["reward_start"] = sum(history[:fifth]) / fifth
            out["reward_end"] = sum(history[-fifth:]) / fifth
        out.update(self.threshold.summary())
        measured = [stats["val_greedy_acc"] for _, stats in self.history if "val_greedy_acc" in stats]
        if measured:  # the last validation, even when it did not fall in the last logged window
            out["val_greedy_acc"] = measured[-1]
        return out

    # ------------------------------------------------------------------------------------------ resuming

    def extra_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The frozen reference (after RL the model no longer holds the step-0 policy), both random streams,
        the step time and the reward history behind time-to-threshold."""
        tensors = {f"ref.{k}": v.detach().clone() for k, v in self.ref.state_dict().items()}
        tensors["rng.prompts"] = self.prompt_generator.get_state()
        tensors["rng.rollout"] = self.rollout_generator.get_state()
        meta = {"elapsed": self.elapsed, "reward_history": self.reward_history,
                "threshold": self.threshold.state()}
        return tensors, meta

    def load_extra_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        with torch.no_grad():
            self.ref.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ref.")})
        self.prompt_generator.set_state(tensors["rng.prompts"])
        self.rollout_generator.set_state(tensors["rng.rollout"])
        self.elapsed = float(meta["elapsed"])
        self.reward_history = list(meta["reward_history"])
        self.threshold.load_state(meta["threshold"])
