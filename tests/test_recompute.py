"""Gradient checkpointing (`launch.gradient_checkpointing`): the same loss and gradients, with the decoder
blocks run again in the backward pass; the training core turns it on from the stage's params."""

from __future__ import annotations

import torch

from cola.config import OptimConfig
from cola.config.launch import GRADIENT_CHECKPOINTING_ENV
from cola.train.core import Trainer
from cola.train.losses import latent_pretraining_loss
from cola.train.recompute import enable_gradient_checkpointing
from tests.conftest import VOCAB, tiny_cola


def latent_step(checkpointing: bool) -> tuple[float, dict[str, torch.Tensor], int]:
    """One latent-pretraining loss and backward; returns the loss, the gradients and how often the IDM's
    first block ran."""
    model = tiny_cola(seed=0)
    model.set_stage("latent")
    model.train()
    if checkpointing:
        assert enable_gradient_checkpointing(model) >= 3  # the base, the IDM and the policy stacks
    calls = []
    # The block's first module: transformers keeps the block's own hooks outside the checkpoint, and torch's
    # recomputation stops early once it has every saved tensor it needs.
    model.idm.layers[0].input_layernorm.register_forward_hook(lambda *_: calls.append(1))
    ids = torch.randint(2, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))
    out = latent_pretraining_loss(model, ids, torch.ones_like(ids),
                                  generator=torch.Generator().manual_seed(2))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.item(), grads, len(calls)


def test_checkpointing_recomputes_blocks_and_changes_no_gradient() -> None:
    loss, grads, calls = latent_step(checkpointing=False)
    loss_ckpt, grads_ckpt, calls_ckpt = latent_step(checkpointing=True)
    assert (calls, calls_ckpt) == (1, 2)  # the block's forward ran again in the backward pass
    assert abs(loss - loss_ckpt) < 1e-6 and grads.keys() == grads_ckpt.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_the_training_core_turns_it_on_from_the_launch_params(monkeypatch) -> None:
    for flag, expected in (("0", False), ("1", True)):
        monkeypatch.setenv(GRADIENT_CHECKPOINTING_ENV, flag)
        model = tiny_cola(seed=0)
        model.set_stage("latent")
        Trainer(model, OptimConfig(steps=1))
        assert model.idm.gradient_checkpointing is expected
        assert model.policy.gradient_checkpointing is expected
