"""The GPU fast path of latent decoding: static KV caches and a decode step compiled once.

Eager decoding of a small batch on a GPU is bound by kernel launches and Python, not by the matrix work: on
an H200 the base's own `generate` made 60 tokens/s at batch 1 on a 0.5B model (bench/gpu_check.py), about
16 ms a token for well under 1 ms of arithmetic. Here the base's and the policy's caches are transformers'
`StaticCache` (fixed-shape buffers written in place), so one decode step (base block stack + policy stack for
one new token) has fixed shapes and is compiled once with `torch.compile(mode="reduce-overhead")`, which
replays it as a CUDA graph. On CPU the same static caches run eagerly (the tests' check that this path decodes
exactly what the dynamic one does); `COLA_DECODE_FAST_PATH=0` turns the fast path off everywhere.

Cache lengths are rounded up to a multiple of `LENGTH_BUCKET`, and the model keeps the caches of its last
decode shape and resets them for the next call, so prompts of other lengths and repeated calls (an RL run's
rollouts) replay one compiled step on the same buffers; each new batch size compiles once more (torch's
recompile limit then falls back to eager, with a warning).
"""

from __future__ import annotations

import logging
import os
import weakref

import torch
from transformers import StaticCache

#: Cache lengths are multiples of this many positions (fewer distinct shapes to compile).
LENGTH_BUCKET = 256
#: Set to 0 to decode with dynamic caches everywhere, also on a GPU.
FAST_PATH_ENV = "COLA_DECODE_FAST_PATH"

log = logging.getLogger(__name__)


def fast_path_default(device: torch.device) -> bool:
    """The fast path is on by default on CUDA devices outside autocast, unless `COLA_DECODE_FAST_PATH=0`.

    Under autocast (a training stage's bf16 mixed precision, where GRPO samples its rollouts) the dynamic path
    stays: transformers' static cache takes one dtype for keys and values, while autocast gives fp32 keys
    (after the fp32 rotary) and bf16 values. The rollout's recorded log-probs then come from the same
    precision as the update's."""
    return (device.type == "cuda" and not torch.is_autocast_enabled(device.type)
            and os.environ.get(FAST_PATH_ENV, "1") != "0")


def static_steps(model, batch: int, length: int, compile_step: bool) -> StaticSteps:
    """Static steps for a decode of `batch` rows and up to `length` positions: the model's last ones, reset,
    when the shape is the same (one set at a time: an 8B model's caches are gigabytes), else new ones. They
    are kept beside the model (a weak table), not on it: copying or saving a model never meets them."""
    capacity = -(-length // LENGTH_BUCKET) * LENGTH_BUCKET
    key = (batch, capacity, model.dtype, compile_step)
    kept = _KEPT.get(model)
    if kept is not None and kept.key == key:
        kept.reset()
        return kept
    _KEPT.pop(model, None)  # free the old buffers before allocating new ones
    _KEPT[model] = StaticSteps(model, batch, capacity, compile_step, key)
    return _KEPT[model]


class StaticSteps:
    """Runs base + policy for the newest positions of a batch on static caches sized for the whole decode.

    Args:
        model: a CoLA model (`base_hidden`, `policy_logits`, `base`, `policy`); not kept (see `__call__`).
        batch: rows decoded together (fixed for the decode: samples of a group are rows from the start).
        capacity: the most positions the caches hold (prompt + new tokens, or more).
        compile_step: compile the one-token step (CUDA graphs on a GPU); the prompt pass stays eager.
        key: the shape these steps serve (`static_steps` reuses them for the same one).
    """

    def __init__(self, model, batch: int, capacity: int, compile_step: bool, key: tuple = ()) -> None:
        self.key = key
        self.base_cache = _static_cache(model.base.config, capacity)
        self.policy_cache = _static_cache(model.policy.config, capacity)
        device = next(model.parameters()).device
        self.mask = torch.zeros(batch, capacity, dtype=torch.long, device=device)
        self.step = _compiled_step() if compile_step else _step

    def reset(self) -> None:
        """Empty caches and mask for the next decode (same buffers: a CUDA graph keeps their addresses)."""
        self.base_cache.reset()
        self.policy_cache.reset()
        self.mask.zero_()

    def __call__(self, model, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor):
        """(h, w) of `model` at the positions `ids` holds; `mask` (B, L) is the attention mask up to and
        including them. (The model is passed, not kept: the weak table that keeps these steps must not hold
        its key alive.)"""
        self.mask[:, : mask.shape[1]].copy_(mask)
        step = self.step if ids.shape[1] == 1 else _step  # the prompt pass has its own shape: eager
        with torch.autocast(self.mask.device.type, enabled=False):  # in the model's dtype (see above)
            h, w = step(model, ids, self.mask, positions, self.base_cache, self.policy_cache)
        # A CUDA graph's outputs are overwritten by its next replay: keep copies.
        return (h.clone(), w.clone()) if step is not _step else (h, w)


#: Each model's last static steps.
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COMPILED: list = []  # the compiled step, made on first use


def _static_cache(config, capacity: int) -> StaticCache:
    return StaticCache(config=config, max_cache_len=capacity)


def _step(model, ids, mask, positions, base_cache, policy_cache):
    h, _ = model.base_hidden(ids, mask, positions, base_cache, use_cache=True)
    w, _ = model.policy_logits(h, mask, positions, policy_cache, use_cache=True)
    return h, w


def _compiled_step():
    """The step compiled once per process (torch compiles it again for each model and batch size)."""
    if not _COMPILED:
        log.info("compiling the latent decode step (static caches, CUDA graphs): the first call is slow")
        _COMPILED.append(torch.compile(_step, mode="reduce-overhead", fullgraph=False, dynamic=False))
    return _COMPILED[0]
