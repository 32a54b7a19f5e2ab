"""Batched, left-padded decoding of any pipeline model: latent actions for CoLA, HF `generate` for a base.

Prompts are encoded as the trainers see examples in the packed corpus: ``EOS prompt`` (corpus lines are joined
as ``EOS ex EOS ex ...``), left-padded for batching, with positions that start at each row's first real token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cola.eval.context import EvalError
from cola.model.inputs import encode_prompts, left_pad, pad_token_id


def _device(model) -> torch.device:
    return next(model.parameters()).device

def _progress(iterable, total: int, desc: str | bool):
    """tqdm over `iterable` when `desc` is truthy (a string names the bar), else the iterable itself."""
    if not desc:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc if isinstance(desc, str) else None,
        unit="batch",
        leave=False,
        dynamic_ncols=True,
    )

def _generate_base_batch(model, ids, mask, max_new_tokens: int, token_sampling: bool, eos, pad: int):
    """New tokens (B, N) and their validity mask from HF `generate` (greedy, or full-vocabulary sampling)."""
    sampling = (
        dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
        if token_sampling
        else dict(do_sample=False, temperature=None, top_k=None, top_p=None)
    )
    # eos_token_id=None overrides the model's generation config: the full budget runs, as in latent decoding.
    sequences = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
        **sampling,
    )  # fmt: skip
    new = sequences[:, ids.shape[1] :]
    valid = torch.ones_like(new, dtype=torch.bool)
    if eos is not None:  # keep tokens up to and including the first EOS of each row
        hit = (new == eos).long()
        valid = (hit.cumsum(1) - hit) == 0
    return new, valid

@torch.inference_mode()
def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    kind: str,
    max_new_tokens: int,
    batch_size: int,
    action_mode: str = "greedy",
    forced_action: int | None = None,
    token_sampling: bool = False,
    seed: int = 0,
    stop_at_eos: bool = True,
    action_top_k: int | None = 40,
    action_temperature: float = 1.0,
    progress: bool | str = False,
) -> list[dict[str, Any]]:
    """Generate a completion for every prompt; returns `{prompt, completion, token_ids, actions}` records.

    Records are in input order. Prompts are sorted by length and decoded in left-padded batches (less
    padding). kind "cola": latent-action decoding with `action_mode` (greedy | sample | random | forced);
    `actions[i]` produced `token_ids[i]` (the generated ids, EOS included). kind "base": HF `generate`,
    greedy unless `token_sampling` (then temperature 1 over the whole vocabulary); `actions` is None.
    `completion` is the decoded text of the generated tokens without special tokens. One seeded generator
    (and, for HF sampling, the seeded global RNG, restored afterwards) drives every random choice of a call.
    """
    if kind not in ("cola", "base"):
        raise EvalError(f"kind must be 'cola' or 'base', got {kind!r}")
    encoded = encode_prompts(tokenizer, prompts)
    pad, device = pad_token_id(tokenizer), _device(model)
    eos = tokenizer.eos_token_id if stop_at_eos else None
    generator = torch.Generator(device=device).manual_seed(seed)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    latent_options = dict(
        max_new_tokens=max_new_tokens, action_mode=action_mode, forced_action=forced_action,
        action_top_k=action_top_k, action_temperature=action_temperature, token_sampling=token_sampling,
        eos_token_id=eos, pad_token_id=pad,
    )  # fmt: skip
    records: list[dict[str, Any]] = [{} for _ in encoded]
    # HF sampling draws from the global RNG: seed it here and restore the caller's state afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for chunk in _progress(chunks, len(chunks), progress):
            ids, mask = left_pad([encoded[i] for i in chunk], pad, device)
            if kind == "cola":
                out = model.generate_latent(ids, mask, generator=generator, **latent_options)
                new, valid, actions = out.sequences[:, out.prompt_length :], out.response_mask, out.actions
            else:
                new, valid = _generate_base_batch(model, ids, mask, max_new_tokens, token_sampling, eos, pad)
                actions = None
            token_ids = [row[v].tolist() for row, v in zip(new, valid, strict=True)]
            texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True)
            for j, i in enumerate(chunk):
                records[i] = {
                    "prompt": prompts[i],
                    "completion": texts[j],
                    "token_ids": token_ids[j],
                    "actions": actions[j][valid[j]].tolist() if actions is not None else None,
                }
    return records
