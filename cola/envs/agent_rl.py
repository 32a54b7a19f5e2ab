"""Multi-turn GRPO on text games, for both action spaces: the single-turn trainer with episodes for samples.

One step (`AgentGRPOTrainer.training_step`):

1. draw ``prompts_per_step`` games (the trainer's prompt stream draws them) and start ``group_size`` episodes
   of each ("group environments": G episodes from the same initial state, as GRPO needs);
2. play them all together (`cola.envs.episodes.play_episodes`: one batched generation per turn, sampled
   latent actions with greedy world-model tokens, or sampled tokens);
3. each episode's return is the score it gained plus ``win_bonus`` when won; the advantage of every generated
   action (or token) of every turn of an episode is the episode's return under the group baseline
   (``rl.baseline``: GRPO's normalisation or RLOO; ReMax would need greedy episodes and is refused);
4. PPO-clip on the re-scored log-probs of every turn, token-mean over all turns of all episodes, with the
   KL to the frozen reference as in single-turn RL: in the loss (``kl_in: loss``), or (``kl_in: reward``) as a
   per-action cost β·KL subtracted from each action's advantage (the episode reward is spread over the turns,
   so there is no GAE here: ``advantage_mode`` does not apply).

Everything else (the frozen reference, the schedule, clipping of the gradient, logging, resumable checkpoints)
is `cola.rl.grpo.GRPOTrainer`'s. Under several processes each plays its block of the step's games (all G
episodes of a game on one process, so group baselines stay local), each episode on its own random streams
(`EpisodeNoise`), and weighs its turns' token means by their share of the step's tokens over all processes;
returns and episode statistics are gathered, so N processes train and log what one does
(tests/test_distributed.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cola.config import RLConfig
from cola.envs.base import TextEnv
from cola.envs.episodes import Episode, EpisodeNoise, play_episodes
from cola.envs.protocol import PromptStyle
from cola.errors import ColaError
from cola.rl.advantages import baseline_advantages, groups_with_signal
from cola.rl.grpo import GRPOTrainer
from cola.rl.losses import grpo_loss, kl_estimate, masked_mean
from cola.rl.policies import Policy

__all__ = ["AgentGRPOTrainer", "episode_returns"]


def episode_returns(episodes: list[Episode], win_bonus: float) -> Tensor:
    """(E,) the score each episode gained, plus `win_bonus` when it was won."""
    return torch.tensor([e.score + (win_bonus if e.won else 0.0) for e in episodes], dtype=torch.float32)


class AgentGRPOTrainer(GRPOTrainer):
    """GRPO over whole episodes of text games.

    Args:
        policy: a latent-action or token policy (`cola.rl.grpo.build_policy`).
        cfg: the ``rl`` section with the agent task's budget.
        games: the training games (paths the `make_env` factory opens).
        make_env: ``make_env(game) -> TextEnv``, one fresh environment per episode.
        style: the prompt protocol (history length, admissible commands).
        max_new_tokens: the longest reply per turn.
        win_bonus: added to a won episode's return.
        **kwargs: `GRPOTrainer`'s (seed, reward_threshold, checkpoint_dir, fingerprint, on_log, ...).
    """

    def __init__(self, policy: Policy, cfg: RLConfig, games: list[Path],
                 make_env: Callable[[Path], TextEnv], *, style: PromptStyle, max_new_tokens: int,
                 win_bonus: float = 1.0, **kwargs: Any) -> None:
        if cfg.baseline == "remax":
            raise ColaError("rl.baseline: remax needs a greedy episode per game; agent RL takes group or "
                            "rloo")
        super().__init__(policy, cfg, [{"game": game} for game in games], lambda _c, _e: 0.0,
                         max_new_tokens=max_new_tokens, **kwargs)
        self.make_env, self.style, self.win_bonus = make_env, style, win_bonus

    def training_step(self) -> dict[str, float]:
        cfg = self.cfg
        start = time.perf_counter()
        games = [example["game"] for example in self.sample_prompts()]  # this process's block
        envs = [self.make_env(game) for game in games for _ in range(cfg.group_size)]
        seed = int(torch.randint(2**62, (1,), generator=self.rollout_generator))
        first = self.processes.rank * len(envs)  # the global index of this process's first episode
        try:
            episodes, batches = play_episodes(self.policy, envs, self.style, self.max_new_tokens,
                                              EpisodeNoise(seed, first))
        finally:
            for env in envs:
                env.close()
        played = time.perf_counter()

        returns = episode_returns(episodes, self.win_bonus)
        advantage = baseline_advantages(returns, cfg.group_size, cfg.baseline)  # (E,) one per episode
        total = sum(int(b.rollout.response_mask.sum()) for b in batches)
        # All processes' tokens (a collective: every process calls it, with tokens or not). A turn's token
        # mean weighs by its tokens over the mean per process: the average over processes is the global mean.
        tokens_all = self.processes.reduce({"n": float(total)}, summed=("n",))["n"]
        per_process = tokens_all / self.processes.world
        self.zero_grad()
        sums: dict[str, float] = {}
        entropy = 0.0
        for batch in batches:  # one backward per turn: gradients accumulate, one optimizer step after
            rollout, mask = batch.rollout, batch.rollout.response_mask
            share = float(mask.sum()) / max(per_process, 1.0)  # this turn's part of the global token mean
            ref_logp = self.ref.logprobs(rollout)
            adv = advantage[batch.episodes].to(mask.device)[:, None].expand(mask.shape).clone()
            if cfg.kl_in == "reward" and cfg.kl_coef > 0:
                adv -= cfg.kl_coef * kl_estimate(rollout.old_logprobs, ref_logp, cfg.kl_estimator)
            adv = adv * mask
            logp, ent = self.policy.logprobs(rollout, with_entropy=True)
            loss, stats = grpo_loss(logp, rollout.old_logprobs, ref_logp, adv, mask, clip_eps=cfg.clip_eps,
                                    kl_coef=cfg.kl_coef, kl_estimator=cfg.kl_estimator,
                                    kl_in_loss=cfg.kl_in == "loss")
            self.backward(loss * share)
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value * share
            entropy += masked_mean(ent, mask).item() * share
        grad_norm = self.step_optimizer()
        end = time.perf_counter()

        self.elapsed += end - start
        # Every episode of the step, from all processes: (return, won, score, turns, invalid, |advantage|).
        stats = self.processes.gather(torch.tensor(
            [[r, e.won, e.score, len(e.turns), e.invalid, a] for r, e, a in
             zip(returns.tolist(), episodes, advantage.abs().tolist(), strict=True)], dtype=torch.float64))
        every, turns = stats[:, 0].float(), stats[:, 3].sum().item()
        reward_mean = every.mean().item()
        self.reward_history.append(reward_mean)
        self.threshold.update(self.reward_history, self.global_step + 1, self.elapsed)
        return {
            **sums, "grad_norm": grad_norm, "entropy": entropy,
            "reward_mean": reward_mean, "reward_std": every.std().item(),
            "win_rate": stats[:, 1].mean().item(),
            "score_mean": stats[:, 2].mean().item(),
            "steps_mean": stats[:, 3].mean().item(),
            "invalid_rate": stats[:, 4].sum().item() / max(turns, 1),
            "groups_with_signal": groups_with_signal(every, cfg.group_size),
            "advantage_abs": stats[:, 5].mean().item(),
            "response_length": tokens_all / max(turns, 1), "n_tokens": total,
            "seconds_generation": played - start, "seconds_update": end - played,
            "seconds_per_step": end - start,
        }
