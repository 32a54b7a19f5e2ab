"""Advantage estimation for GRPO-style RL on latent actions or tokens (pure tensor math).

Everything is batch-first. ``mask`` is a (B, T) bool/float tensor marking the valid action (or token)
positions of each response; responses are right-padded, so the positions after EOS are 0.

The sequence-level advantage r̂ has three estimators (``baseline``), each the sample's reward minus a baseline:

* ``"group"`` -- GRPO: the group mean, divided by the group std (:func:`group_normalize`);
* ``"rloo"`` -- REINFORCE leave-one-out: the mean of the *other* G - 1 samples of the prompt (unbiased;
  equals G/(G-1) times the centred reward, no std scaling);
* ``"remax"`` -- ReMax: the reward of the policy's greedy response to the same prompt (one extra rollout).

Two advantage modes then spread r̂ over the response (spec §3 Stage 4, §9 item 8):

* ``"group"`` -- textbook GRPO: the group-normalised sequence reward is broadcast to every valid position;
  the KL to the reference policy then goes into the loss (see :func:`cola.rl.losses.grpo_loss`).
* ``"gae"`` -- the CoLA authors' recipe: the group-normalised reward sits on the last valid position, every
  position also gets a ``-beta * KL`` reward, the advantages are GAE(gamma, lambda) with V = 0, and the result
  is whitened over all valid positions of the batch. With lambda = 0.95 the terminal reward decays by 0.95 per
  step going backwards, so early actions of long responses receive little credit.

Conventions (chosen to match the authors' OpenRLHF fork):

* group std is the **unbiased** (Bessel-corrected, ``torch.std`` default) sample std, floored at ``eps``;
* whitening uses the **biased** (population) variance over valid positions, floored at ``eps``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Baseline = Literal["group", "rloo", "remax"]  # rl.baseline

__all__ = [
    "baseline_advantages",
    "compute_advantages",
    "gae",
    "group_normalize",
    "groups_with_signal",
    "leave_one_out",
    "masked_whiten",
    "sequence_advantages",
    "terminal_token_rewards",
]


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """View a flat (N,) reward vector as (N // G, G); groups are consecutive blocks of G samples."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards cannot be split into groups of {group_size}")
    return rewards.float().view(-1, group_size)


def group_normalize(
    rewards: Tensor,
    group_size: int,
    eps: float = 1e-8,
    clamp: float = 10.0,
    scale: Literal["group", "none"] = "group",
) -> Tensor:
    """Group-relative reward r̂ = clamp((r - mean_G) / max(std_G, eps), -clamp, clamp).

    ``rewards`` is (N,) with N = n_prompts × G, the G samples of each prompt stored consecutively.
    ``std_G`` is the unbiased sample std (divide by G - 1), as ``r.std(dim=-1)`` in the authors' code.
    A group whose rewards are all equal has no signal: its centred rewards are exactly 0, so r̂ = 0 there.
    ``scale="none"`` only subtracts the group mean (Dr. GRPO: no division by the std, which would otherwise
    up-weight prompts that are nearly always solved or nearly always failed). With G = 1 the centred reward
    is 0 and so is r̂ (the unbiased std is undefined, so it is not computed).
    """
    grouped = _grouped(rewards, group_size)
    centred = grouped - grouped.mean(dim=-1, keepdim=True)
    if scale == "group":
        if group_size > 1:
            std = grouped.std(dim=-1, keepdim=True, correction=1)
            centred = centred / std.clamp(min=eps)
    elif scale != "none":
        raise ValueError(f"unknown scale {scale!r}; expected 'group' or 'none'")
    return centred.clamp(-clamp, clamp).view(-1)


def leave_one_out(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO: r_i minus the mean of the other G - 1 rewards of its group, (N,) -> (N,)."""
    if group_size < 2:
        raise ValueError("a leave-one-out baseline needs group_size >= 2")
    grouped = _grouped(rewards, group_size)
    others = (grouped.sum(dim=-1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).view(-1)


def baseline_advantages(
    rewards: Tensor,
    group_size: int,
    baseline: Baseline = "group",
    greedy_rewards: Tensor | None = None,
    *,
    eps: float = 1e-8,
    clamp: float = 10.0,
    scale: Literal["group", "none"] = "group",
) -> Tensor:
    """The sequence advantage r̂ (N,) of each sample under `baseline` (module docstring). ``greedy_rewards``
    (N // G,): the reward of each prompt's greedy response, needed by ``"remax"`` only."""
    if baseline == "group":
        return group_normalize(rewards, group_size, eps=eps, clamp=clamp, scale=scale)
    if baseline == "rloo":
        return leave_one_out(rewards, group_size)
    if baseline == "remax":
        grouped = _grouped(rewards, group_size)
        if greedy_rewards is None or greedy_rewards.numel() != grouped.shape[0]:
            raise ValueError(f"remax needs one greedy reward per prompt ({grouped.shape[0]})")
        return (grouped - greedy_rewards.float().view(-1, 1)).view(-1)
    raise ValueError(f"unknown baseline {baseline!r}; expected 'group', 'rloo' or 'remax'")


def groups_with_signal(rewards: Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards are not all equal (non-zero std), i.e. that carry any gradient."""
    grouped = _grouped(rewards, group_size)
    spread = grouped.amax(dim=-1) - grouped.amin(dim=-1)  # exact zero test, no floating-point std
    return (spread > 0).float().mean().item()


def terminal_token_rewards(seq_rewards: Tensor, mask: Tensor) -> Tensor:
    """Place each sequence's scalar reward on its last valid position; (B,) -> (B, T), zero elsewhere.

    A row with no valid position gets no reward at all.
    """
    valid = mask.bool()
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    # The largest index among the valid positions is the last one; masked positions count as -1.
    last = torch.where(valid, positions, -1).amax(dim=1)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    has_any = last >= 0
    rows = torch.arange(mask.size(0), device=mask.device)[has_any]
    out[rows, last[has_any]] = seq_rewards.float().to(mask.device)[has_any]
    return out


def gae(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> Tensor:
    """Generalised advantage estimation with V ≡ 0: A_t = Σ_l (γλ)^l r_{t+l}.

    With V = 0 the TD residual is just r_t, so the recursion is A_t = r_t + γλ·A_{t+1}, run right to left.
    Rewards on masked positions are ignored and the advantages there are 0. A masked position *inside* a
    response (not produced by right padding) still counts as one time step of decay, as in the authors' code.
    """
    m = mask.to(token_rewards.dtype)
    rewards = token_rewards * m
    discount = gamma * lam
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.size(1) - 1, -1, -1):
        running = rewards[:, t] + discount * running
        adv[:, t] = running
    return adv * m


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8, shift_mean: bool = True) -> Tensor:
    """Whiten ``x`` with one global mean and std over all valid positions: (x - μ) / sqrt(max(σ², eps)).

    σ² is the biased (population) variance and ``eps`` floors the *variance*, as in OpenRLHF's advantage
    normalisation. With ``shift_mean=False`` the mean is added back (only the scale is normalised).
    Masked positions are set to 0 so they cannot leak into any later unmasked reduction.
    """
    m = mask.to(x.dtype)
    count = m.sum().clamp(min=1.0)
    mean = (x * m).sum() / count
    var = ((x - mean).pow(2) * m).sum() / count
    out = (x - mean) * var.clamp(min=eps).rsqrt()
    if not shift_mean:
        out = out + mean
    return out * m


def sequence_advantages(adv_per_seq: Tensor, mask: Tensor) -> Tensor:
    """Broadcast one advantage per sequence to all its valid positions; (B,) -> (B, T)."""
    m = mask.to(torch.float32)
    return adv_per_seq.float().to(m.device).unsqueeze(1) * m


def compute_advantages(
    seq_rewards: Tensor,
    mask: Tensor,
    group_size: int,
    mode: Literal["group", "gae"] = "gae",
    gamma: float = 1.0,
    lam: float = 0.95,
    kl_penalty: Tensor | None = None,
    *,
    baseline: Baseline = "group",
    greedy_rewards: Tensor | None = None,
    eps: float = 1e-8,
    clamp: float = 10.0,
    scale: Literal["group", "none"] = "group",
) -> Tensor:
    """Per-position advantages (B, T) from scalar sequence rewards (B,); r̂ below is
    :func:`baseline_advantages` (GRPO's group-normalised reward by default).

    ``mode="group"``: A_{i,t} = r̂_i on every valid position (textbook GRPO; KL belongs in the loss, so
    passing ``kl_penalty`` here is an error).

    ``mode="gae"`` (the authors' recipe):
      1. r̂ placed on the last valid position;
      2. every valid position also gets the reward ``-kl_penalty[t]`` where ``kl_penalty = β·KL_t`` is
         supplied already multiplied by β (e.g. β·k1 = β·(log π - log π_ref));
      3. A = GAE(γ, λ) with V = 0;
      4. A is whitened over all valid positions of the batch.
    """
    adv_seq = baseline_advantages(seq_rewards, group_size, baseline, greedy_rewards, eps=eps, clamp=clamp,
                                  scale=scale)
    if mode == "group":
        if kl_penalty is not None:
            raise ValueError("mode='group' puts the KL in the loss; pass kl_penalty only with mode='gae'")
        return sequence_advantages(adv_seq, mask)
    if mode != "gae":
        raise ValueError(f"unknown advantage mode {mode!r}; expected 'group' or 'gae'")
    rewards = terminal_token_rewards(adv_seq, mask)
    if kl_penalty is not None:
        rewards = rewards - kl_penalty.float()
    adv = gae(rewards, mask, gamma=gamma, lam=lam)
    return masked_whiten(adv, mask, eps=eps)
