"""PPO-clip / GRPO policy losses and KL estimators (pure tensor math).

All inputs are batch-first (B, T) per-position log-probabilities of the *taken* action (a latent action
index for CoLA, a token for the token-level baseline); ``mask`` marks valid positions.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["grpo_loss", "kl_estimate", "masked_mean", "ppo_clip_loss"]

Reduction = Literal["token", "sequence"]
KLEstimator = Literal["k1", "k2", "k3"]


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-position single-sample estimate of KL(π ‖ π_ref), for actions sampled from π.

    With d = log π(a) - log π_ref(a) (Schulman's "Approximating KL divergence" estimators):

    * ``k1 = d``: unbiased for KL(π ‖ π_ref) but high variance and often negative. As a *loss* its
      gradient is zero in expectation (E_π[∇ log π] = 0), so use it as a reward penalty (the authors' choice).
    * ``k2 = ½ d²``: biased (low bias when π ≈ π_ref), always ≥ 0, low variance. As a loss its expected
      gradient is exactly ∇ KL(π ‖ π_ref).
    * ``k3 = exp(-d) + d - 1``: unbiased for KL(π ‖ π_ref), always ≥ 0, lower variance than k1 (the GRPO /
      TRL default). As a loss its expected gradient is that of the *forward* KL(π_ref ‖ π), not the reverse.

    None of these is unbiased for the forward direction KL(π_ref ‖ π) from samples of π.
    """
    d = logp - ref_logp
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d.pow(2)
    if estimator == "k3":
        return torch.exp(-d) + d - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1', 'k2' or 'k3'")


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is set (all of them, or along ``dim``).

    An empty selection gives 0 rather than NaN.
    """
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1e-8)
    return (x * m).sum(dim=dim) / m.sum(dim=dim).clamp(min=1e-8)


def _reduce(per_position: Tensor, mask: Tensor, reduction: Reduction) -> Tensor:
    """Reduce a (B, T) per-position loss to a scalar.

    ``"token"``: masked mean over every valid position of the batch (long responses weigh more).
    ``"sequence"``: mean over sequences of each sequence's masked mean (original GRPO); sequences with no
    valid position are left out rather than counted as zero-loss sequences.
    """
    if reduction == "token":
        return masked_mean(per_position, mask)
    if reduction == "sequence":
        per_seq = masked_mean(per_position, mask, dim=-1)
        non_empty = mask.bool().any(dim=-1)
        return masked_mean(per_seq, non_empty)
    raise ValueError(f"unknown reduction {reduction!r}; expected 'token' or 'sequence'")


def _clipped_surrogate(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float
) -> tuple[Tensor, dict[str, float]]:
    """Per-position PPO-clip loss -min(ρA, clip(ρ, 1-ε, 1+ε)A) with ρ = π/π_old, and its statistics."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages
    per_position = -torch.minimum(unclipped, clipped)

    with torch.no_grad():
        # The clipped branch wins (and the gradient vanishes) exactly when the ratio has moved past 1 ± ε
        # in the direction the advantage pushes it.
        was_clipped = ((ratio > 1.0 + clip_eps) & (advantages > 0)) | (
            (ratio < 1.0 - clip_eps) & (advantages < 0)
        )
        stats = {
            "clip_fraction": masked_mean(was_clipped.float(), mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
            # k3 estimate of KL(π_old ‖ π_θ): the actions were sampled from π_old.
            "approx_kl": masked_mean(kl_estimate(old_logp, logp, "k3"), mask).item(),
        }
    return per_position, stats


def ppo_clip_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    reduction: Reduction = "token",
) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip policy loss L = reduce(-min(ρ_t A_t, clip(ρ_t, 1-ε, 1+ε) A_t)), ρ_t = exp(logp - old_logp).

    Returns the scalar loss and float stats ``clip_fraction`` (share of valid positions whose gradient is
    cut by the clip), ``ratio_mean`` and ``approx_kl`` (KL from the behaviour policy π_old to π_θ).
    """
    per_position, stats = _clipped_surrogate(logp, old_logp, advantages, mask, clip_eps)
    return _reduce(per_position, mask, reduction), stats


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    kl_in_loss: bool = True,
    reduction: Reduction = "token",
) -> tuple[Tensor, dict[str, float]]:
    """GRPO loss: PPO-clip term plus, when ``kl_in_loss``, β·KL(π_θ ‖ π_ref) per position (TRL style).

    L = reduce(-min(ρA, clip(ρ)A) + β·k(logp, ref_logp)), with the same reduction for both terms.
    With ``kl_in_loss=False`` (the authors' recipe, where the KL was already paid as a reward inside the
    advantages) the KL is only measured for logging. Stats add ``pg_loss``, ``kl`` (masked mean of the chosen
    estimator; absent without ``ref_logp``) and ``loss``.
    """
    per_position, stats = _clipped_surrogate(logp, old_logp, advantages, mask, clip_eps)
    stats["pg_loss"] = _reduce(per_position, mask, reduction).item()

    if ref_logp is None:
        if kl_in_loss and kl_coef != 0.0:
            raise ValueError("kl_in_loss with kl_coef != 0 needs ref_logp")
    else:
        kl = kl_estimate(logp, ref_logp, kl_estimator)
        stats["kl"] = masked_mean(kl.detach(), mask).item()
        if kl_in_loss and kl_coef != 0.0:
            per_position = per_position + kl_coef * kl

    loss = _reduce(per_position, mask, reduction)
    stats["grpo_loss"] = loss.item()
    return loss, stats
