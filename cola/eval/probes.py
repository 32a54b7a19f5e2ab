"""What the latent actions do: semantic diversity of sampled continuations (cola-spec.md §5) and whether the
world model follows a forced action (§10 check (v)).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import torch

from cola.eval.context import EvalError
from cola.eval.generate import generate_texts
from cola.model.inputs import encode_prompts, left_pad, left_padded_positions, pad_token_id


def _random_token_texts(tokenizer, n: int, length: int, seed: int) -> list[str]:
    """`n` strings of `length` uniformly random non-special tokens: the diversity floor of cola-spec.md §5."""
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    generator = torch.Generator().manual_seed(seed)
    picks = allowed[torch.randint(len(allowed), (n, length), generator=generator)]
    return tokenizer.batch_decode(picks.tolist(), skip_special_tokens=True)

def _groups(texts: list[str], m: int) -> list[list[str]]:
    return [texts[i : i + m] for i in range(0, len(texts), m)]

def semantic_diversity_eval(
    model,
    tokenizer,
    kind: str,
    prefixes: Sequence[str],
    *,
    m: int = 8,
    length: int = 24,
    seed: int = 0,
    batch_size: int = 64,
    embedder: str = "all-MiniLM-L6-v2",
) -> dict[str, dict[str, Any]]:
    """QD of M continuations of each of N prefixes, by sampling method (cola-spec.md §5).

    `latent_random` (CoLA only): uniformly random latent actions, greedy world-model tokens;
    `token_sampling`: the base LM (a CoLA model's frozen `model.base`) sampled at temperature 1;
    `random_tokens`: uniformly random tokens (the floor). Continuations run the full `length` (EOS does not
    stop them). Each method's dict is `cola.eval.diversity.semantic_diversity`'s (`mean_similarity`, `qd`,
    `n_groups`, `group_size`) under `embedder` plus `examples`, the continuations of the first prefix.
    """
    from cola.eval.diversity import semantic_diversity

    if m < 2:
        raise EvalError(f"semantic diversity needs m >= 2 continuations per prefix, got {m}")
    repeated = [p for p in prefixes for _ in range(m)]  # consecutive runs of m rows form one group
    common = dict(max_new_tokens=length, batch_size=batch_size, stop_at_eos=False, seed=seed)
    texts: dict[str, list[str]] = {}
    if kind == "cola":
        out = generate_texts(model, tokenizer, repeated, kind="cola", action_mode="random", **common)
        texts["latent_random"] = [r["completion"] for r in out]
    base = model.base if kind == "cola" else model
    out = generate_texts(base, tokenizer, repeated, kind="base", token_sampling=True, **common)
    texts["token_sampling"] = [r["completion"] for r in out]
    texts["random_tokens"] = _random_token_texts(tokenizer, len(repeated), length, seed)
    results = {}
    for method, method_texts in texts.items():
        groups = _groups(method_texts, m)
        results[method] = {**semantic_diversity(groups, embedder=embedder), "examples": groups[0]}
    return results

def _mean_pairwise_tv(probs: torch.Tensor) -> torch.Tensor:
    """Mean total-variation distance ½‖p_i − p_j‖₁ over action pairs, per prefix: probs (A, N, V) → (N,)."""
    pairs = list(combinations(range(probs.shape[0]), 2))
    return torch.stack([0.5 * (probs[i] - probs[j]).abs().sum(-1) for i, j in pairs]).mean(0)

@torch.inference_mode()
def action_following_probe(
    model,
    tokenizer,
    prefixes: Sequence[str],
    *,
    actions: Sequence[int] | None = None,
    length: int = 12,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Does the world model follow the action it is given? (cola-spec.md §10 check (v))

    For each prefix, decode `length` greedy tokens with each action in `actions` forced at every step
    (default: the first min(4, K) actions). Reports `distinct_rate` (share of prefixes whose continuations
    all differ pairwise), `mean_distinct` (mean number of distinct continuations out of len(actions)),
    `next_token_tv` (mean total-variation distance between the next-token distributions of two forced
    actions at the prefix end), and `examples` (the continuations of the first few prefixes by action).
    """
    if actions is None:
        actions = tuple(range(min(4, model.config.num_actions)))
    actions = list(actions)
    if len(actions) < 2:
        raise EvalError("the action-following probe needs at least two actions")
    continuations = [
        [
            r["completion"]
            for r in generate_texts(
                model,
                tokenizer,
                prefixes,
                kind="cola",
                action_mode="forced",
                forced_action=a,
                max_new_tokens=length,
                batch_size=batch_size,
                stop_at_eos=False,
            )
        ]
        for a in actions
    ]  # (A, N)
    per_prefix = list(zip(*continuations, strict=True))  # (N, A)
    distinct = [len(set(c)) for c in per_prefix]
    tv = _next_token_tv(model, tokenizer, prefixes, actions, batch_size)
    return {
        "actions": actions,
        "n_prefixes": len(prefixes),
        "distinct_rate": sum(d == len(actions) for d in distinct) / len(distinct),
        "mean_distinct": sum(distinct) / len(distinct),
        "next_token_tv": float(tv.mean()),
        "examples": [
            {"prefix": p, "continuations": dict(zip(map(str, actions), c, strict=True))}
            for p, c in zip(prefixes[:4], per_prefix[:4], strict=False)
        ],
    }

def _next_token_tv(model, tokenizer, prefixes: Sequence[str], actions: list[int], batch_size: int):
    """Per prefix, the mean pairwise TV distance of p(x | prefix, a) over the forced actions (N,)."""
    encoded = encode_prompts(tokenizer, prefixes)
    device, out = next(model.parameters()).device, []
    for start in range(0, len(encoded), batch_size):
        ids, mask = left_pad(encoded[start : start + batch_size], pad_token_id(tokenizer), device)
        h, _ = model.base_hidden(ids, mask, left_padded_positions(mask))
        h_last = h[:, -1]
        probs = torch.stack(
            [
                torch.softmax(
                    model.world_model_logits(h_last, torch.full(h_last.shape[:1], a, device=device)).float(),
                    -1,
                )
                for a in actions
            ]
        )
        out.append(_mean_pairwise_tv(probs))
    return torch.cat(out)
