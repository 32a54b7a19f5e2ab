"""Model inputs, shared by every caller that batches prompts: EOS-first encoding and left padding.

The lowest layer that needs them (model, evaluation, RL and the lm-eval wrappers all use these), so nothing
above imports sideways for a helper:

    encode_prompts   ``EOS prompt`` token ids: examples sit in the packed corpus as ``EOS ex EOS ex ...``
    left_pad         (ids, mask) with every row right-aligned, as batched generation needs
    left_padded_positions   position ids starting at 0 on each row's first real token
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def left_padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding), as HF `generate` does."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pad_token_id(tokenizer) -> int:
    """The pad id, falling back to EOS for tokenizers without one (many chat models), else 0."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, preceded by EOS as in the packed training corpus (no other specials)."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    return [([eos] if eos is not None else []) + list(ids) for ids in encoded]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"):
    """(ids, mask) of shape (B, max_len) with every row right-aligned (left padding)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)
