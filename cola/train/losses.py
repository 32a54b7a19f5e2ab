"""The training objectives of CoLA's stages (cola-spec.md §3), each on a batch of token ids (B, T).

Alignment everywhere: slot t of an action tensor holds the action that produces x_{t+1}, so the world-model
logits at t are scored against x_{t+1}, and the policy logits at t against the IDM label at slot t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cola.model.inputs import left_padded_positions
from cola.model.modeling_cola import CoLAForCausalLM, gumbel_straight_through


@dataclass
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, float]
    actions: torch.Tensor | None = None  # (B, T) the actions the loss used


def next_token_ce(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
    loss_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean CE of logits[:, t] against x_{t+1} over the slots selected by `_target_mask`."""
    targets = input_ids[:, 1:].masked_fill(~_target_mask(input_ids, attention_mask, loss_mask), -100)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=-100)


def _positions(mask: torch.Tensor | None) -> torch.Tensor | None:
    return left_padded_positions(mask) if mask is not None else None


def latent_pretraining_loss(
    model: CoLAForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    gumbel_temperature: float = 2.0,
    entropy_coef: float = 1e-3,
) -> LossOutput:
    """Stage 1: CE under straight-through Gumbel-max IDM actions plus the entropy bonus.

    L = CE(ℓ_t, x_{t+1}) + c · mean_t Σ_k p_{t,k} log p_{t,k}; minimising the second term maximises the
    entropy of the relaxed probabilities p (temperature τ = `gumbel_temperature`, c = `entropy_coef`; the
    paper's values are the defaults), the method's only defence against codebook collapse.
    """
    positions = _positions(attention_mask)
    with torch.no_grad():
        h, _ = model.base_hidden(input_ids, attention_mask, positions)
    z = model.idm_logits(h, attention_mask, positions)
    one_hot, probs, index = gumbel_straight_through(z, gumbel_temperature, generator)
    logits = model.world_model_logits(h, one_hot)
    ce = next_token_ce(logits, input_ids, attention_mask)
    neg_entropy = (probs * torch.log(probs.clamp_min(1e-20))).sum(-1)
    valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(index, dtype=torch.bool)
    neg_entropy = neg_entropy[valid].mean()
    loss = ce + entropy_coef * neg_entropy
    return LossOutput(loss, {"latent_loss": loss.item(), "wm_ce": ce.item(),
                             "relaxed_entropy": -neg_entropy.item()},
                      index)


def behaviour_cloning_loss(
    model: CoLAForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
    loss_mask: torch.Tensor | None = None,
) -> LossOutput:
    """Stage 2 (and FTA-I policy re-BC): CE of the policy logits at t against the IDM argmax label at slot t.

    `loss_mask` (B, T) restricts the loss to slots whose produced token x_{t+1} is marked (e.g. responses
    only); by default every slot with a real next token counts.
    """
    positions = _positions(attention_mask)
    with torch.no_grad():
        h, _ = model.base_hidden(input_ids, attention_mask, positions)
        labels = model.idm_logits(h, attention_mask, positions).argmax(-1)
    w, _ = model.policy_logits(h, attention_mask, positions)
    target_mask = _target_mask(input_ids, attention_mask, loss_mask)
    targets = labels[:, :-1].masked_fill(~target_mask, -100)
    loss = F.cross_entropy(w[:, :-1].reshape(-1, w.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)
    with torch.no_grad():
        hit = (w[:, :-1].argmax(-1) == labels[:, :-1])[target_mask].float().mean()
    return LossOutput(loss, {"bc_loss": loss.item(), "train_top1": hit.item()}, labels)


def _target_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 loss_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T-1) bool: slot t counts when its target x_{t+1} is a real token selected by `loss_mask`."""
    mask = torch.ones_like(input_ids[:, 1:], dtype=torch.bool)
    if attention_mask is not None:
        mask &= attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    if loss_mask is not None:
        mask &= loss_mask[:, 1:].bool()
    return mask


def world_model_loss(
    model: CoLAForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    action_source: str = "idm",
    loss_mask: torch.Tensor | None = None,
) -> LossOutput:
    """CE of the world model under deterministic actions: `idm` argmax (FTA-I) or `policy` argmax (FTA-P).

    The base runs with gradient here: which path reaches it is the model's `hidden_grad` route, set by
    `model.set_stage` (FTA-I: through s⁰ = h; FTA-P: through the −h term only).
    """
    positions = _positions(attention_mask)
    h, _ = model.base_hidden(input_ids, attention_mask, positions)
    with torch.no_grad():
        if action_source == "idm":
            actions = model.idm_logits(h, attention_mask, positions).argmax(-1)
        elif action_source == "policy":
            actions = model.policy_logits(h, attention_mask, positions)[0].argmax(-1)
        else:
            raise ValueError(f"action_source must be 'idm' or 'policy', got {action_source!r}")
    logits = model.world_model_logits(h, actions)
    loss = next_token_ce(logits, input_ids, attention_mask, loss_mask)
    return LossOutput(loss, {"response_ce": loss.item()}, actions)
