"""Gradient checkpointing (activation recomputation): a decoder block's activations are not kept for the
backward pass but recomputed there, one more forward pass of each block for memory that no longer grows with
depth — the knob that fits the 8B profile's long sequences on a GPU (`launch.gradient_checkpointing`).

It uses transformers' own checkpointing of decoder layers, turned on in every sub-model that has it (the
base, the IDM and policy stacks). Like dropout it acts in train mode only: the latent, BC and FTA/SFT
trainers; GRPO keeps eval mode (its sampler and learner are one function) and is not affected. Results are the
same with it on or off (tests/test_recompute.py); only memory and time change.
"""

from __future__ import annotations

import os

import torch
from transformers import PreTrainedModel

from cola.config.launch import GRADIENT_CHECKPOINTING_ENV


def requested() -> bool:
    """Whether the stage's params asked for it (``launch.gradient_checkpointing``, via the stage runner)."""
    return os.environ.get(GRADIENT_CHECKPOINTING_ENV) == "1"


def enable_gradient_checkpointing(model: torch.nn.Module) -> int:
    """Turn on checkpointing in every sub-model that supports it; returns how many were turned on."""
    enabled = 0
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing:
            # Non-reentrant: correct when a block's inputs need no gradient (a frozen base feeding it).
            # transformers 5.2x renamed the method; older releases (GPU images) have the first name only.
            enable = getattr(module, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            enabled += 1
    return enabled
