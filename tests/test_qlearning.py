"""Double-DQN targets and TD loss of MCTS-Q's Q-network on hand-computed cases (cola-spec.md §3, 5a)."""

from __future__ import annotations

import pytest
import torch

from cola.search.qlearning import double_dqn_targets, td_error_squared, td_loss


def test_double_dqn_targets_by_hand() -> None:
    # One rollout of 3 actions (K = 2) plus a padded step; reward 1 on the last action.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    q_online = torch.tensor([[[0.1, 0.2], [0.9, 0.3], [0.2, 0.8], [5.0, 0.0]]])
    q_target = torch.tensor([[[0.0, 0.0], [0.4, 0.7], [0.6, 0.5], [9.0, 9.0]]])
    # t=0: the online net picks a=0 at s1 (0.9 > 0.3); the target net values it 0.4: 0 + 0.9 · 0.4 = 0.36.
    #      (Plain DQN would take max Q̄(s1) = 0.7: double DQN does not.)
    # t=1: online picks a=1 at s2 (0.8); target values it 0.5: 0 + 0.9 · 0.5 = 0.45.
    # t=2: s3 is padding (mask 0): the target is the reward alone, 1.
    # t=3: no next step: 0.
    targets = double_dqn_targets(rewards, q_online, q_target, mask, gamma=0.9)
    torch.testing.assert_close(targets, torch.tensor([[0.36, 0.45, 1.0, 0.0]]))


def test_td_loss_by_hand_and_its_gradient() -> None:
    q = torch.tensor([[[0.1, 0.2], [0.9, 0.3], [0.2, 0.8], [5.0, 0.0]]], requires_grad=True)
    actions = torch.tensor([[1, 0, 1, 0]])
    targets = torch.tensor([[0.36, 0.45, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss = td_loss(q, actions, targets, mask)
    # Q(s_t, a_t) = 0.2, 0.9, 0.8 on the valid steps: ((−0.16)² + 0.45² + (−0.2)²) / 3.
    assert loss.item() == pytest.approx((0.16**2 + 0.45**2 + 0.2**2) / 3)
    loss.backward()
    grad = torch.zeros_like(q)
    grad[0, 0, 1], grad[0, 1, 0], grad[0, 2, 1] = 2 * -0.16 / 3, 2 * 0.45 / 3, 2 * -0.2 / 3
    torch.testing.assert_close(q.grad, grad)  # only the taken actions of valid steps get gradient


def test_targets_carry_no_gradient_and_shapes_are_checked() -> None:
    q = torch.randn(2, 3, 4, requires_grad=True)
    targets = double_dqn_targets(torch.zeros(2, 3), q, q, torch.ones(2, 3), gamma=1.0)
    assert not targets.requires_grad
    with pytest.raises(ValueError, match="shapes differ"):
        double_dqn_targets(torch.zeros(2, 3), q, q[:, :2], torch.ones(2, 3), gamma=1.0)


def test_td_error_squared() -> None:
    # q = 0.5, max Q(s') = 0.7, γ = 0.99: (0.5 − 0.693)² = 0.037249.
    delta2 = td_error_squared(torch.tensor(0.5), torch.tensor([0.1, 0.7]), 0.99)
    assert delta2.item() == pytest.approx(0.037249)


def test_a_batch_of_one_action_rollouts_targets_its_rewards() -> None:
    """T = 1 (every response one token): the last (only) step is terminal, its target is its reward. (The
    bootstrap term used to come out empty here, and the loss over an empty target was 0.)"""
    rewards = torch.tensor([[1.0], [0.0], [1.0]])
    q = torch.full((3, 1, 4), 0.25)
    targets = double_dqn_targets(rewards, q, q, torch.ones(3, 1, dtype=torch.bool), gamma=0.9)
    assert targets.shape == (3, 1) and targets.squeeze(1).tolist() == [1.0, 0.0, 1.0]
    loss = td_loss(q, torch.zeros(3, 1, dtype=torch.long), targets, torch.ones(3, 1, dtype=torch.bool))
    assert loss.item() == pytest.approx((0.75**2 * 2 + 0.25**2) / 3)
