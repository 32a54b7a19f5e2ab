"""What a training batch is, and how the trainers cut it into parts, move it and count it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Batch = Any  # a tensor, or a dict / tuple of tensors (ids, attention mask, loss mask)


def map_batch(batch: Batch, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
    """`fn` applied to every tensor of a batch (a tensor, or a dict / tuple of tensors)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: map_batch(v, fn) for k, v in batch.items()}
    return type(batch)(map_batch(v, fn) for v in batch)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return map_batch(batch, lambda t: t.to(device))


def count_rows(batch: Batch) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    return count_rows(batch["input_ids"] if isinstance(batch, dict) else batch[0])


def count_tokens(batch: Batch) -> int:
    """Tokens in a batch: the attention mask's ones when there is one, else the id tensor's size."""
    if isinstance(batch, torch.Tensor):
        return batch.numel()
    if isinstance(batch, dict):
        mask = batch.get("attention_mask")
        return int(mask.sum()) if mask is not None else count_tokens(batch["input_ids"])
    return count_tokens(batch[0])
