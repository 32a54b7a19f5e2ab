"""Double-DQN on recorded CoLA rollouts: the Q-network's loss (cola-spec.md §3 stage 5a), pure tensor math.

A rollout of T actions is one row: ``actions[t]`` is the latent action taken at step t, ``rewards[t]`` the
reward received after it (the task's reward on the last action, 0 before), ``mask[t]`` whether step t is an
action of the response. The Q-network gives ``Q(s_t, ·)`` over the K actions at every step. With the online
network Q and the target network Q̄ (a copy synced every N updates):

    target_t = r_t + γ · Q̄(s_{t+1}, argmax_a Q(s_{t+1}, a)) · mask_{t+1}
    loss     = masked mean over t of (Q(s_t, a_t) − target_t)²

The online network picks the next action and the target network values it (double DQN: the max over one
network's noisy estimates is biased upwards); the target carries no gradient. The step after the last action
has mask 0, so the last action's target is its reward alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["double_dqn_targets", "td_loss", "td_error_squared"]


def double_dqn_targets(rewards: Tensor, q_online: Tensor, q_target: Tensor, mask: Tensor,
                       gamma: float) -> Tensor:
    """(B, T) targets from rewards (B, T), both networks' Q-values (B, T, K) and the action mask (B, T)."""
    if q_online.shape != q_target.shape or q_online.shape[:2] != rewards.shape:
        raise ValueError(f"shapes differ: rewards {tuple(rewards.shape)}, Q {tuple(q_online.shape)}, "
                         f"target Q {tuple(q_target.shape)}")
    with torch.no_grad():
        next_action = q_online[:, 1:].argmax(dim=-1, keepdim=True)              # (B, T-1, 1)
        next_value = q_target[:, 1:].gather(-1, next_action).squeeze(-1)         # (B, T-1)
        next_value = next_value * mask[:, 1:].to(next_value.dtype)
        # The last step has no next state (also when it is the only one: T = 1 leaves next_value empty).
        bootstrap = torch.zeros(rewards.shape, dtype=next_value.dtype, device=next_value.device)
        bootstrap[:, :-1] = next_value
        return rewards.float() + gamma * bootstrap


def td_loss(q_online: Tensor, actions: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Masked mean of (Q(s_t, a_t) − target_t)² over the valid steps; gradients reach Q(s_t, a_t) only."""
    taken = q_online.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    m = mask.to(taken.dtype)
    return ((taken - targets.detach()) ** 2 * m).sum() / m.sum().clamp(min=1.0)


def td_error_squared(q_taken: Tensor, q_next: Tensor, gamma: float) -> Tensor:
    """δ² = (q − γ · max_a Q(s′, a))², the search's test of whether the Q-network agrees with itself one step
    on (a chunk keeps growing while δ² is under the threshold). q_taken (...,), q_next (..., K)."""
    return (q_taken - gamma * q_next.max(dim=-1).values) ** 2
