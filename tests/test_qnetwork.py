"""MCTS-Q's Q-network on a tiny random base: shapes, a copy of the base, save and load, left padding."""

from __future__ import annotations

import torch

from cola.search.qnetwork import QNetwork, action_values, load_qnetwork
from tests.test_grpo import tiny_base


def test_q_values_come_from_a_copy_of_the_base_and_survive_save_and_load(tmp_path) -> None:
    base = tiny_base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    qnet = QNetwork.from_base(base, num_actions=8)
    ids = torch.tensor([[2, 3, 4, 5], [6, 7, 8, 9]])
    q = qnet(ids)
    assert q.shape == (2, 4, 8) and torch.count_nonzero(q) == 0  # the head starts at zero: no preference
    torch.nn.init.normal_(qnet.q_head.weight)
    for p in qnet.decoder.parameters():
        p.data.add_(1.0)  # training the Q-network never moves the base
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    qnet.save_pretrained(tmp_path / "qnet")
    # Freed memory full of junk: a buffer the loader leaves uninitialised (the rotary frequencies once were)
    # then reads junk rather than, by luck, the right values; it made Q-values flaky, sometimes NaN.
    junk = [torch.full((4096,), float("nan")) for _ in range(2000)]
    del junk
    loaded = load_qnetwork(tmp_path / "qnet")
    buffers = dict(loaded.named_buffers())
    for name, buffer in qnet.named_buffers():
        torch.testing.assert_close(buffers[name], buffer, msg=name)
    torch.testing.assert_close(loaded(ids), qnet.eval()(ids))


def test_left_padding_gives_the_unpadded_q_values() -> None:
    qnet = QNetwork.from_base(tiny_base(), num_actions=8).eval()
    torch.nn.init.normal_(qnet.q_head.weight, generator=torch.Generator().manual_seed(0))
    alone = qnet(torch.tensor([[4, 5, 6]]))
    padded = qnet(torch.tensor([[0, 0, 4, 5, 6]]), attention_mask=torch.tensor([[0, 0, 1, 1, 1]]))
    torch.testing.assert_close(padded[:, 2:], alone, atol=1e-5, rtol=1e-4)
    # The states of a response's actions: positions P − 1 … P − 1 + N − 1.
    values = action_values(qnet, torch.tensor([[4, 5, 6]]), torch.ones(1, 3, dtype=torch.long), 2, 1)
    torch.testing.assert_close(values, alone[:, 1:2])
