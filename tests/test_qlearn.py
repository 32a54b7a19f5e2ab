"""Training MCTS-Q's Q-network on tiny random models: recorded rollouts, batches, and double DQN that learns
which first action pays (through the shared training core)."""

from __future__ import annotations

import pytest
import torch

from cola.config.search import QLearnConfig
from cola.errors import ColaError
from cola.rl.policies import LatentActionPolicy
from cola.search.qlearn import QTrainer, RecordedRollout, calibration, collate, collect_rollouts
from cola.search.qnetwork import QNetwork
from tests.test_grpo import PROMPTS, ToyTask, make_tokenizer, tiny_base, tiny_cola


def test_rollouts_record_one_action_per_token_and_the_tasks_score() -> None:
    tokenizer = make_tokenizer()
    policy = LatentActionPolicy(tiny_cola(), tokenizer, top_k=8)
    rollouts = collect_rollouts(policy, ToyTask(), PROMPTS[:3], samples=4, max_new_tokens=3, seed=0)
    assert len(rollouts) == 12
    for i, r in enumerate(rollouts):
        assert len(r.actions) == len(r.response_ids) >= 1 and r.reward in (0.0, 1.0)
        completion = tokenizer.decode(r.response_ids, skip_special_tokens=True)
        assert r.reward == float(ToyTask().score(PROMPTS[i // 4], completion))
        assert tokenizer.decode(r.prompt_ids, skip_special_tokens=True) == PROMPTS[i // 4]["prompt"]
    again = collect_rollouts(policy, ToyTask(), PROMPTS[:3], samples=4, max_new_tokens=3, seed=0)
    assert [r.actions for r in again] == [r.actions for r in rollouts]  # seeded


def test_collate_by_hand() -> None:
    batch = collate([RecordedRollout([5, 6], [7, 8, 9], [3, 1, 4], 1.0), RecordedRollout([5], [7], [2], 0.0)],
                    pad_id=0)
    assert batch["ids"].tolist() == [[5, 6, 7, 8, 9], [5, 7, 0, 0, 0]]
    assert batch["attention"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    # Action t's state is position P − 1 + t: row 0 (P = 2) positions 1, 2, 3; row 1 (P = 1) position 0.
    assert batch["positions"].tolist() == [[1, 2, 3], [0, 0, 0]]
    assert batch["actions"].tolist() == [[3, 1, 4], [2, 0, 0]]
    assert batch["rewards"].tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    assert batch["mask"].tolist() == [[True, True, True], [True, False, False]]


def test_double_dqn_learns_which_first_action_pays() -> None:
    # Two-action rollouts from one prompt; the first action decides the first token (as the world model
    # would) and the reward is 1 exactly when it is action 3. Q(s₁, ·) learns the reward from the token it
    # sees; Q(s₀, 3) learns it by bootstrapping from Q̄(s₁, ·).
    g = torch.Generator().manual_seed(0)
    rollouts = []
    for _ in range(64):
        first, second = torch.randint(8, (2,), generator=g).tolist()
        rollouts.append(RecordedRollout([1, 2, 3], [2 + first, 5], [first, second], float(first == 3)))
    cfg = QLearnConfig(steps=120, lr=3e-3, batch_size=16, gamma=1.0, target_sync=10, warmup_steps=0,
                       log_every=20, checkpoint_every=1000)
    qnet = QNetwork.from_base(tiny_base(), num_actions=8)
    before = calibration(qnet, rollouts, pad_id=0, gamma=1.0)
    trainer = QTrainer(qnet, cfg, rollouts, pad_id=0)
    trainer.train()
    after = calibration(qnet, rollouts, pad_id=0, gamma=1.0)
    assert after["q_first_mse"] < before["q_first_mse"] / 4, (before, after)
    from cola.search.qlearn import state_values

    q0 = state_values(qnet.eval(), collate(rollouts[:1], 0))[0, 0]  # Q(s₀, ·): the prompt's state
    assert q0.argmax().item() == 3 and q0[3] > 0.6 and q0[torch.arange(8) != 3].max() < 0.4, q0
    losses = [stats["td_loss"] for _, stats in trainer.history]
    assert losses[-1] < losses[0]


def test_the_target_network_moves_only_at_its_sync() -> None:
    rollouts = [RecordedRollout([1, 2], [2 + a, 5], [a, 0], float(a == 1)) for a in range(8)]
    qnet = QNetwork.from_base(tiny_base(), num_actions=8)
    cfg = QLearnConfig(steps=6, lr=1e-2, batch_size=8, target_sync=4, warmup_steps=0, checkpoint_every=1000)
    trainer = QTrainer(qnet, cfg, rollouts, pad_id=0)
    trainer.train(steps=4)  # synced at step 0 only: the target still has the zero head
    assert torch.count_nonzero(trainer.target.q_head.weight) == 0
    assert torch.count_nonzero(trainer.model.q_head.weight) > 0
    trainer.train(steps=1)  # step 4 syncs first, then updates the online network once more
    assert not torch.equal(trainer.target.q_head.weight, trainer.model.q_head.weight)
    assert torch.count_nonzero(trainer.target.q_head.weight) > 0


def test_the_qlearn_stage_trains_saves_and_measures_calibration(tmp_path) -> None:
    """run_qlearn on a saved tiny CoLA model with train and val arith splits: a loadable Q-network folder,
    the TD-loss curve, and held-out calibration before and after."""
    import shutil

    from cola.search.qlearn import run_qlearn
    from cola.search.qnetwork import load_qnetwork
    from tests.test_harness import build_assets

    assets = build_assets(tmp_path / "assets")
    tasks = assets["root"] / "data" / "tasks"
    for split in ("train", "val"):
        shutil.copytree(tasks / "test", tasks / split)
    cfg = QLearnConfig(samples_per_prompt=2, n_prompts=4, heldout_prompts=2, batch_size=4, steps=4,
                       warmup_steps=1, log_every=2, checkpoint_every=100, target_sync=2)
    result = run_qlearn(cfg, tasks_dir=tasks, policy_dir=assets["root"] / "cola", rl_task="math",
                        max_new_tokens=4, out_dir=tmp_path / "qnet")
    metrics = result.metrics
    assert metrics["rollouts"] == 8 and 0 <= metrics["train_success_rate"] <= 1
    wanted = {"heldout_q_first_mean_before", "heldout_q_first_mean", "heldout_return_mean", "td_loss"}
    assert wanted <= set(metrics)
    assert metrics["heldout_q_first_mean_before"] == 0.0  # the zero head: no opinion before training
    assert [r["step"] for r in result.records["loss"]] == [2, 4] and result.models == [tmp_path / "qnet"]
    assert load_qnetwork(tmp_path / "qnet").config.num_actions == 8
    token = run_qlearn(cfg, tasks_dir=tasks, policy_dir=assets["root"] / "base", rl_task="math",
                       max_new_tokens=4, out_dir=tmp_path / "token_qnet")  # the token baseline's Q-head
    token_qnet = load_qnetwork(tmp_path / "token_qnet")
    assert token.metrics["rollouts"] == 8
    assert token_qnet.config.num_actions == token_qnet.config.base_config.vocab_size
    with pytest.raises(ColaError, match="unknown RL task 'chess'"):
        run_qlearn(cfg, tasks_dir=tasks, policy_dir=assets["root"] / "base", rl_task="chess",
                   max_new_tokens=4, out_dir=tmp_path / "bad")
