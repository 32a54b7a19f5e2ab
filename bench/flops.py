"""Matmul parameter counts and the FLOP-ideal decode ratio of a CoLA model (2 × matmul parameters per token,
attention's own FLOPs left out); shared by bench/generation.py and bench/gpu_check.py."""

from __future__ import annotations

import torch


def matmul_params(module: torch.nn.Module) -> int:
    """Parameters used as matmul weights per token (embedding lookups and norms excluded)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def flop_ideal(model: torch.nn.Module) -> tuple[float, dict[str, int]]:
    """base FLOPs / (base + policy + merge) FLOPs per decoded token, and the matmul parameters of each."""
    base = matmul_params(model.base)  # decoder blocks + LM head
    added = {"policy": matmul_params(model.policy) + model.policy_head.weight.numel(),
             "merge": matmul_params(model.merge_blocks)}
    return base / (base + sum(added.values())), {"base": base, **added}
