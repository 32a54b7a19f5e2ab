"""Hand-computed checks of the GRPO/PPO math in cola.rl.advantages and cola.rl.losses.

Every expected number is written out explicitly, with its derivation in a comment; none is produced by
re-running the formula under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from cola.rl.advantages import (
    baseline_advantages,
    compute_advantages,
    gae,
    group_normalize,
    groups_with_signal,
    leave_one_out,
    masked_whiten,
    sequence_advantages,
    terminal_token_rewards,
)
from cola.rl.losses import grpo_loss, kl_estimate, masked_mean, ppo_clip_loss

ATOL = 1e-5


def close(actual: torch.Tensor, expected: list | float) -> None:
    torch.testing.assert_close(actual.float(), torch.tensor(expected, dtype=torch.float32), atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- group normalisation


def test_group_normalize_unbiased_std_and_zero_std_group() -> None:
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1])
    # Group [1,0,0,0]: mean 0.25; deviations .75,-.25,-.25,-.25; squares sum .5625+3*.0625 = .75;
    #   unbiased var = .75/3 = .25 -> std .5 -> r̂ = [1.5, -.5, -.5, -.5].
    # Group [1,1,0,0]: mean .5; squares sum 4*.25 = 1; var 1/3 -> std .577350 -> ±.5/.577350 = ±.866025.
    # Group [1,1,1,1]: std 0 -> floored at eps, centred rewards are exactly 0 -> r̂ = 0 (no NaN).
    out = group_normalize(rewards, group_size=4)
    close(out, [1.5, -0.5, -0.5, -0.5, 0.866025, 0.866025, -0.866025, -0.866025, 0, 0, 0, 0])


def test_group_normalize_clamp() -> None:
    # Default clamp 10: a group of 200 with one success. mean .005; squares sum .995² + 199*.005²
    #   = .990025 + .004975 = .995; unbiased var .995/199 = .005 -> std .0707107.
    #   Winner: .995/.0707107 = 14.0714 -> clamped to 10.  Losers: -.005/.0707107 = -.0707107.
    rewards = torch.zeros(200)
    rewards[0] = 1.0
    out = group_normalize(rewards, group_size=200)
    close(out[0], 10.0)
    close(out[1:], [-0.0707107] * 199)
    # Explicit clamp 1: [1.5, -.5, -.5, -.5] -> [1, -.5, -.5, -.5].
    close(group_normalize(torch.tensor([1.0, 0, 0, 0]), 4, clamp=1.0), [1.0, -0.5, -0.5, -0.5])


def test_group_normalize_scale_none_only_centres() -> None:
    # Dr. GRPO: [1,0,0,0] - .25 and [2,2,0,0] - 1.
    out = group_normalize(torch.tensor([1.0, 0, 0, 0, 2, 2, 0, 0]), 4, scale="none")
    close(out, [0.75, -0.25, -0.25, -0.25, 1, 1, -1, -1])


def test_group_normalize_group_size_one_and_bad_shapes() -> None:
    close(group_normalize(torch.tensor([3.0, -1.0]), 1), [0.0, 0.0])  # a lone sample has no baseline signal
    with pytest.raises(ValueError):
        group_normalize(torch.zeros(6), 4)


def test_groups_with_signal() -> None:
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 1])
    # Groups 1 and 4 have mixed rewards, 2 and 3 are constant -> 2/4.
    assert groups_with_signal(rewards, 4) == pytest.approx(0.5)


# --------------------------------------------------------------------------- token rewards and GAE


def test_terminal_token_rewards_and_broadcast() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    out = terminal_token_rewards(torch.tensor([2.0, -1.0, 5.0]), mask)
    close(out, [[0, 0, 2, 0], [-1, 0, 0, 0], [0, 0, 0, 0]])  # empty row gets nothing
    close(
        sequence_advantages(torch.tensor([2.0, -1.0, 5.0]), mask), [[2, 2, 2, 0], [-1, 0, 0, 0], [0, 0, 0, 0]]
    )


def test_gae_terminal_reward_decays_by_lambda() -> None:
    # Terminal reward 1 at step 4, γ=1, λ=.95: A = [.95³, .95², .95, 1] = [.857375, .9025, .95, 1].
    rewards = torch.tensor([[0.0, 0, 0, 1]])
    close(gae(rewards, torch.ones(1, 4), gamma=1.0, lam=0.95), [[0.857375, 0.9025, 0.95, 1.0]])
    # γ=.5, λ=1: A = [.125, .25, .5, 1].
    close(gae(rewards, torch.ones(1, 4), gamma=0.5, lam=1.0), [[0.125, 0.25, 0.5, 1.0]])
    # A per-step reward adds in: r = [-.1, 0, 0, 1] -> A_0 = -.1 + .857375 = .757375.
    dense = torch.tensor([[-0.1, 0, 0, 1]])
    close(gae(dense, torch.ones(1, 4), 1.0, 0.95), [[0.757375, 0.9025, 0.95, 1.0]])


def test_gae_masked_tail() -> None:
    # Row 0: 2 valid steps, reward 1 at the last one -> [.95, 1, 0, 0].
    # Row 1: junk rewards (7, 9) on masked positions must not leak backwards -> [.9025*2, .95*2, 2, 0].
    rewards = torch.tensor([[0.0, 1, 7, 9], [0, 0, 2, 9]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    close(gae(rewards, mask, 1.0, 0.95), [[0.95, 1.0, 0, 0], [1.805, 1.9, 2.0, 0]])


# --------------------------------------------------------------------------- whitening


def test_masked_whiten() -> None:
    # Valid values 1,2,3,4: mean 2.5; biased var (2.25+.25+.25+2.25)/4 = 1.25 -> std 1.118034.
    # (x - 2.5)/1.118034 = [-1.341641, -.447214, .447214, 1.341641]; masked positions -> 0.
    x = torch.tensor([[1.0, 2, 3, 100], [4, -50, 8, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    close(masked_whiten(x, mask), [[-1.341641, -0.447214, 0.447214, 0], [1.341641, 0, 0, 0]])
    # shift_mean=False adds the mean 2.5 back.
    close(
        masked_whiten(x, mask, shift_mean=False),
        [[1.158359, 2.052786, 2.947214, 0], [3.841641, 0, 0, 0]],
    )
    # Constant input: variance floored at eps, output 0 rather than NaN.
    close(masked_whiten(torch.full((2, 3), 4.0), torch.ones(2, 3)), [[0.0] * 3] * 2)


# --------------------------------------------------------------------------- compute_advantages


def test_compute_advantages_group_mode() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    out = compute_advantages(torch.tensor([1.0, 0, 0, 0]), mask, group_size=4, mode="group")
    # r̂ = [1.5, -.5, -.5, -.5] broadcast over valid positions; no whitening.
    close(out, [[1.5, 1.5, 0], [-0.5, 0, 0], [-0.5, -0.5, -0.5], [-0.5, -0.5, -0.5]])
    with pytest.raises(ValueError):
        compute_advantages(torch.tensor([1.0, 0]), mask[:2], 2, mode="group", kl_penalty=torch.zeros(2, 3))


def test_rloo_subtracts_the_mean_of_the_other_samples() -> None:
    # Group [1, 0, 0, 1]: sample 0's baseline is (0 + 0 + 1) / 3, so 1 - 1/3 = 2/3; sample 1's is 2/3.
    # Second group all 0.5: no signal, all zero. RLOO = G/(G-1) × the centred reward, with no std scaling.
    rewards = torch.tensor([1.0, 0, 0, 1, 0.5, 0.5, 0.5, 0.5])
    close(leave_one_out(rewards, 4), [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0])
    close(baseline_advantages(rewards, 4, "rloo"), [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0])
    with pytest.raises(ValueError):
        leave_one_out(torch.tensor([1.0, 0.0]), 1)


def test_remax_subtracts_the_greedy_responses_reward() -> None:
    # Prompt 0's greedy answer scored 1: its samples [1, 0] get [0, -1]; prompt 1's scored 0: [1, 1] -> [1, 1]
    # (a group with no spread still learns when the greedy answer differs: ReMax's point).
    rewards = torch.tensor([1.0, 0, 1, 1])
    close(baseline_advantages(rewards, 2, "remax", torch.tensor([1.0, 0])), [0, -1, 1, 1])
    mask = torch.ones(4, 2, dtype=torch.bool)
    out = compute_advantages(rewards, mask, 2, mode="group", baseline="remax",
                             greedy_rewards=torch.tensor([1.0, 0]))
    close(out, [[0, 0], [-1, -1], [1, 1], [1, 1]])
    with pytest.raises(ValueError, match="one greedy reward per prompt"):
        baseline_advantages(rewards, 2, "remax")
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_advantages(rewards, 2, "ppo")


def test_compute_advantages_gae_mode_whitened() -> None:
    # G=2, rewards [1, 0]: unbiased std sqrt(.5) -> r̂ = [a, -a], a = .707107.
    # λ = 1 so every valid position carries the full return: row 0 [a, a, a], row 1 [-a, -a].
    # Whitening over the 5 valid values: mean a/5; deviations .8a (×3), -1.2a (×2);
    #   biased var = (3*.64 + 2*1.44)a²/5 = .96a² -> std .979796a.
    #   Row 0: .8/.979796 = .816497; row 1: -1.2/.979796 = -1.224745 (independent of a).
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    out = compute_advantages(torch.tensor([1.0, 0]), mask, group_size=2, mode="gae", gamma=1.0, lam=1.0)
    close(out, [[0.816497, 0.816497, 0.816497], [-1.224745, -1.224745, 0]])


def test_compute_advantages_gae_mode_with_kl_penalty() -> None:
    # Same batch, λ = .95, β·KL = .1 on every valid position (junk 5 on the masked one is ignored).
    # Token rewards: row 0 [-.1, -.1, a - .1], row 1 [-.1, -a - .1, masked], a = .707107.
    # GAE(γ=1, λ=.95), right to left:
    #   row 0: A_2 = .607107; A_1 = -.1 + .95*.607107 = .476752; A_0 = -.1 + .95*.476752 = .352914
    #   row 1: A_1 = -.807107; A_0 = -.1 + .95*(-.807107) = -.866752
    # Whitening (checked on its own above) then maps these to the returned advantages.
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    kl_pen = torch.tensor([[0.1, 0.1, 0.1], [0.1, 0.1, 5.0]])
    out = compute_advantages(torch.tensor([1.0, 0]), mask, 2, "gae", gamma=1.0, lam=0.95, kl_penalty=kl_pen)
    raw = torch.tensor([[0.352914, 0.476752, 0.607107], [-0.866752, -0.807107, 0.0]])
    torch.testing.assert_close(out, masked_whiten(raw, mask), atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- KL estimators


def test_kl_estimators_by_hand() -> None:
    logp = torch.tensor([math.log(0.5), math.log(0.25), math.log(0.3)])
    ref = torch.tensor([math.log(0.25), math.log(0.5), math.log(0.3)])
    # d = logp - ref = [ln 2, -ln 2, 0] = [.693147, -.693147, 0].
    close(kl_estimate(logp, ref, "k1"), [0.693147, -0.693147, 0.0])
    # k2 = d²/2 = .480453/2 = .240227.
    close(kl_estimate(logp, ref, "k2"), [0.240227, 0.240227, 0.0])
    # k3 = e^{-d} + d - 1: .5 + .693147 - 1 = .193147;  2 - .693147 - 1 = .306853;  0.
    close(kl_estimate(logp, ref, "k3"), [0.193147, 0.306853, 0.0])
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")  # type: ignore[arg-type]


def test_k1_k3_unbiased_for_reverse_kl() -> None:
    # π = [.5, .5], π_ref = [.25, .75]. KL(π‖π_ref) = .5 ln 2 + .5 ln(2/3) = .346574 - .202733 = .143841.
    # Taking the exact expectation under π of the per-action estimates must give that number for k1 and k3.
    pi = torch.tensor([0.5, 0.5])
    logp, ref = pi.log(), torch.tensor([0.25, 0.75]).log()
    assert (pi * kl_estimate(logp, ref, "k1")).sum().item() == pytest.approx(0.143841, abs=ATOL)
    assert (pi * kl_estimate(logp, ref, "k3")).sum().item() == pytest.approx(0.143841, abs=ATOL)
    # k2 is biased: E[½d²] = .5*(.240227) + .5*(½*.164402) = .120113 + .041100 = .161214.
    assert (pi * kl_estimate(logp, ref, "k2")).sum().item() == pytest.approx(0.161214, abs=ATOL)


def test_masked_mean() -> None:
    x = torch.tensor([[1.0, 2, 3], [4, 5, 6]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    close(masked_mean(x, mask), 1.5)
    close(masked_mean(x, mask, dim=-1), [1.5, 0.0])  # empty row -> 0, not NaN


# --------------------------------------------------------------------------- PPO clip


def _ppo_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # ε = .2, old_logp = 0 so ratio = exp(logp). One position per case:
    #   0: A=+1, ρ=1.5 > 1.2: min(1.5, 1.2) = 1.2 -> clipped, loss -1.2, grad 0
    #   1: A=+1, ρ=0.5 < 0.8: min(.5, .8) = .5   -> unclipped, loss -.5, dL/dlogp = -ρA = -.5
    #   2: A=-1, ρ=1.5 > 1.2: min(-1.5, -1.2) = -1.5 -> unclipped, loss 1.5, grad -ρA = 1.5
    #   3: A=-1, ρ=0.5 < 0.8: min(-.5, -.8) = -.8 -> clipped, loss .8, grad 0
    #   4: A=+1, ρ=1.1 inside: loss -1.1, grad -1.1
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5, 1.1]])
    logp = ratio.log().requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0]])
    return logp, torch.zeros(1, 5), adv, torch.ones(1, 5, dtype=torch.bool)


def test_ppo_clip_branches_and_gradients() -> None:
    logp, old, adv, mask = _ppo_case()
    loss, stats = ppo_clip_loss(logp, old, adv, mask, clip_eps=0.2)
    # Token mean: (-1.2 - .5 + 1.5 + .8 - 1.1)/5 = -.5/5 = -.1.
    close(loss.detach(), -0.1)
    loss.backward()
    # Per-position gradients divided by the 5 valid positions: [0, -.1, .3, 0, -.22].
    close(logp.grad, [[0.0, -0.1, 0.3, 0.0, -0.22]])
    assert stats["clip_fraction"] == pytest.approx(0.4)  # cases 0 and 3
    assert stats["ratio_mean"] == pytest.approx(1.02, abs=ATOL)  # (1.5+.5+1.5+.5+1.1)/5 = 5.1/5
    # k3 of KL(π_old‖π) = (ρ-1) - ln ρ: 1.5 -> .5 - .405465 = .094535; .5 -> -.5 + .693147 = .193147;
    # 1.1 -> .1 - .095310 = .004690. Mean = (2*.094535 + 2*.193147 + .004690)/5 = .580054/5 = .116011.
    assert stats["approx_kl"] == pytest.approx(0.116011, abs=ATOL)


def test_ppo_token_vs_sequence_reduction() -> None:
    # ρ = 1 everywhere, so the per-position loss is just -A.
    adv = torch.tensor([[1.0, 2, 3], [4, 100, 100], [9, 9, 9]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    zeros = torch.zeros(3, 3)
    # Token: -(1+2+3+4)/4 = -2.5.  Sequence: mean(-2, -4) = -3 (the empty row is left out).
    tok, _ = ppo_clip_loss(zeros, zeros, adv, mask, reduction="token")
    seq, _ = ppo_clip_loss(zeros, zeros, adv, mask, reduction="sequence")
    close(tok, -2.5)
    close(seq, -3.0)


# --------------------------------------------------------------------------- GRPO loss


def test_grpo_loss_with_kl_in_loss() -> None:
    # ρ = 1 (logp = old), A = [+1, -1] -> PG terms [-1, +1], mean 0.
    # ref chosen so d = logp - ref = [ln 2, -ln 2]: k3 = [.193147, .306853], mean .25; k1 mean 0.
    logp = torch.tensor([[math.log(0.5), math.log(0.25)]], requires_grad=True)
    old = logp.detach().clone()
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]])
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)

    loss, stats = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, kl_coef=0.1, kl_estimator="k3")
    close(loss.detach(), 0.025)  # 0 + .1 * .25
    assert stats["kl"] == pytest.approx(0.25, abs=ATOL)
    assert stats["pg_loss"] == pytest.approx(0.0, abs=ATOL)
    loss.backward()
    # d k3 / d logp = 1 - e^{-d} = [1 - .5, 1 - 2] = [.5, -1]; PG grad -ρA = [-1, 1].
    # Total / 2 positions: [(-1 + .1*.5)/2, (1 - .1)/2] = [-.475, .45].
    close(logp.grad, [[-0.475, 0.45]])

    loss_k1, stats_k1 = grpo_loss(logp, old, ref, adv, mask, 0.2, 0.1, "k1")
    close(loss_k1.detach(), 0.0)  # k1 mean = (ln 2 - ln 2)/2 = 0
    assert stats_k1["kl"] == pytest.approx(0.0, abs=ATOL)


def test_grpo_loss_kl_only_logged_when_not_in_loss() -> None:
    logp = torch.tensor([[math.log(0.5), math.log(0.25)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]])
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = grpo_loss(logp, logp, ref, adv, mask, 0.2, kl_coef=0.1, kl_estimator="k3", kl_in_loss=False)
    close(loss, 0.0)  # PG only
    assert stats["kl"] == pytest.approx(0.25, abs=ATOL)  # still measured
    loss_noref, stats_noref = grpo_loss(logp, logp, None, adv, mask, 0.2, kl_coef=0.0)
    close(loss_noref, 0.0)
    assert "kl" not in stats_noref
    with pytest.raises(ValueError):
        grpo_loss(logp, logp, None, adv, mask, 0.2, kl_coef=0.1, kl_in_loss=True)
