"""Held-out cross-entropy of any pipeline model, and CoLA's latent-space diagnostics (cola-spec.md §10).

`perplexity` scores held-out text for the base LM and, for a CoLA model, the world model under IDM and
policy-argmax actions, the policy-marginal likelihood and the IDM's action usage (sanity checks (i)-(iv)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from cola.eval.context import EvalError
from cola.model.inputs import left_pad, left_padded_positions, pad_token_id

CODE_ALIVE_SHARE = 0.005  # a code is "alive" when it labels more than 0.5 % of tokens (cola-spec.md §10 (i))


def pack_windows(tokenizer, lines: Sequence[str], seq_len: int, max_tokens: int | None = None):
    """EOS-joined lines (`EOS l1 EOS l2 ...`) cut into consecutive windows: (ids, mask) of shape (N, seq_len).

    The last, shorter window is left-padded so every token of the stream is scored once.
    """
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(list(lines), add_special_tokens=False)["input_ids"]:
        stream += [eos, *ids]
    if max_tokens:
        stream = stream[:max_tokens]
    if len(stream) < 2:
        raise EvalError("perplexity needs at least two tokens of text")
    rows = [stream[i : i + seq_len] for i in range(0, len(stream), seq_len)]
    rows = [r for r in rows if len(r) >= 2]  # a 1-token tail has nothing to predict
    return left_pad(rows, pad_token_id(tokenizer))

def _targets(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens x_{t+1} (B, T-1) and where they count: both x_t and x_{t+1} are real tokens."""
    return ids[:, 1:], (mask[:, 1:] & mask[:, :-1]).bool()

def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits[:, t])[x_{t+1}] for t < T-1, without materialising the full log-softmax."""
    logits = logits[:, :-1].float()
    return logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)

def policy_marginal_logprobs(
    model, h: torch.Tensor, policy_logits: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """log Σₐ π(a|s_t) p(x_{t+1}|s_t, a) per slot (B, T-1): the CoLA likelihood with actions summed out.

    One world-model pass per action on the cached base states h (the base never reruns); the sum is
    accumulated in log space so that tiny probabilities do not underflow.
    """
    log_pi = torch.log_softmax(policy_logits[:, :-1].float() / model.config.policy_temperature, -1)
    total = None
    for a in range(model.config.num_actions):
        actions = torch.full(h.shape[:-1], a, dtype=torch.long, device=h.device)
        term = log_pi[..., a] + _token_logprobs(model.world_model_logits(h, actions), targets)
        total = term if total is None else torch.logaddexp(total, term)
    return total

def _usage_stats(counts: torch.Tensor) -> dict[str, Any]:
    """Action-usage summary of IDM argmax labels (cola-spec.md §10 check (i))."""
    share = counts.double() / counts.sum().clamp(min=1)
    nonzero = share[share > 0]
    return {
        "codes_alive": int((share > CODE_ALIVE_SHARE).sum()),
        "max_code_share": float(share.max()),
        "usage_entropy": float(-(nonzero * nonzero.log()).sum()),  # nats; log K when every code is equal
        "usage_histogram": counts.tolist(),
    }

@torch.inference_mode()
def _cola_window_sums(model, ids, mask, targets, valid, marginal: bool = True) -> dict[str, Any]:
    """Summed token log-probs of one batch of windows under every CoLA readout, plus IDM label counts."""
    positions = left_padded_positions(mask)
    h, _ = model.base_hidden(ids, mask, positions)
    idm = model.idm_logits(h, mask, positions).argmax(-1)
    w, _ = model.policy_logits(h, mask, positions)
    greedy = w.argmax(-1)
    base_logits = model.base(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    sums = {
        "base_loss": _token_logprobs(base_logits, targets),
        "wm_loss_idm": _token_logprobs(model.world_model_logits(h, idm), targets),
        "wm_loss_policy_argmax": _token_logprobs(model.world_model_logits(h, greedy), targets),
    }
    if marginal:
        sums["wm_loss_policy_marginal"] = policy_marginal_logprobs(model, h, w, targets)
    out = {k: -float(v[valid].sum()) for k, v in sums.items()}
    out["policy_idm_agreement"] = float((greedy[:, :-1] == idm[:, :-1])[valid].sum())
    out["counts"] = torch.bincount(idm[:, :-1][valid], minlength=model.config.num_actions)
    return out

@torch.inference_mode()
def _base_window_sums(model, ids, mask, targets, valid) -> dict[str, Any]:
    logits = model(input_ids=ids, attention_mask=mask, position_ids=left_padded_positions(mask)).logits
    return {"base_loss": -float(_token_logprobs(logits, targets)[valid].sum())}

def perplexity(
    model,
    tokenizer,
    kind: str,
    lines: Sequence[str],
    *,
    seq_len: int = 128,
    batch_size: int = 16,
    max_tokens: int | None = None,
    marginal: bool = True,
) -> dict[str, Any]:
    """Mean next-token cross-entropy (nats per token) of held-out `lines`, joined with EOS as in training.

    `marginal=False` skips the policy-marginal loss (K world-model passes; meaningless before BC), and with it
    the CoLA `loss` and `perplexity`.

    Every kind: `base_loss` (the base LM's own CE), `loss` (the model's own LM loss), `perplexity` = e^loss.
    For CoLA, `loss` is `wm_loss_policy_marginal` = −log Σₐ π(a|s) p(x|s,a); also `wm_loss_idm` (world model
    under IDM argmax actions, which leak the next token, so clearly below base_loss once trained),
    `wm_loss_policy_argmax`, `policy_idm_agreement` (BC top-1) and the IDM action usage: `codes_alive`,
    `max_code_share`, `usage_entropy` (nats) and `usage_histogram` (counts per action).
    """
    ids, mask = pack_windows(tokenizer, lines, seq_len, max_tokens)
    device = next(model.parameters()).device
    totals: dict[str, Any] = {}
    n_tokens = 0
    for start in range(0, ids.shape[0], batch_size):
        b_ids, b_mask = (
            ids[start : start + batch_size].to(device),
            mask[start : start + batch_size].to(device),
        )
        targets, valid = _targets(b_ids, b_mask)
        if kind == "cola":
            sums = _cola_window_sums(model, b_ids, b_mask, targets, valid, marginal)
        else:
            sums = _base_window_sums(model, b_ids, b_mask, targets, valid)
        for key, value in sums.items():
            totals[key] = totals[key] + value if key in totals else value
        n_tokens += int(valid.sum())
    counts = totals.pop("counts", None)
    result: dict[str, Any] = {key: value / n_tokens for key, value in totals.items()}
    if kind != "cola" or marginal:
        result["loss"] = result["wm_loss_policy_marginal"] if kind == "cola" else result["base_loss"]
        result["perplexity"] = math.exp(result["loss"])
    result["n_tokens"] = n_tokens
    if counts is not None:
        result.update(_usage_stats(counts.cpu()))
    return result
