"""Policies for GRPO: something that acts (rolls out G samples per prompt) and scores log-probs of its actions.

One trainer (:mod:`cola.rl.grpo`) serves both action spaces of the paper's comparison:

* :class:`LatentActionPolicy` -- CoLA (cola-spec.md §3 stage 4). The policy samples a latent action per
  step from the top-k of its K logits, the frozen world model turns it into the *greedy* next token, and only
  the policy (its decoder stack and K-way head) is trained. The base's hidden states h are recorded during the
  rollout and reused to re-score the actions, so an update never runs the base again: the policy reads
  sg(h), so h is a constant of the optimisation.
* :class:`TokenPolicy` -- the token-level baseline: a plain HF causal LM samples tokens at a temperature and
  the whole model is trained.

Both return a :class:`Rollout`; ``logprobs(rollout)`` gives log π(a_t) for the recorded actions (latent
actions or tokens) as a (B, N) tensor aligned with ``rollout.response_mask``, with gradient to
``trainable_parameters()``. ``reference()`` returns a frozen copy that scores the same rollout for the KL term.

Prompts are encoded without special tokens and prefixed with the tokenizer's BOS when it has one (the tiny
tokenizer's EOS doubles as BOS and its corpus is ``EOS ex EOS ex ...``), then left-padded: the G samples of a
prompt are consecutive rows, which is the group layout :mod:`cola.rl.advantages` expects.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cola.model.generation import choose_actions
from cola.model.modeling_cola import CoLAForCausalLM, left_padded_positions

__all__ = [
    "LatentActionPolicy",
    "LatentReference",
    "Policy",
    "Rollout",
    "Scorer",
    "TokenPolicy",
    "encode_prompts",
]


@dataclass
class Rollout:
    """B = n_prompts × G sampled responses; the G samples of each prompt are consecutive rows.

    Position i of the response axis (N) is the i-th generated step: its action (a latent action or a token)
    was chosen at sequence position P − 1 + i and produced ``sequences[:, P + i]``.
    """

    prompts: list[str]  # (B,) prompt text of every row (each prompt repeated G times)
    completions: list[str]  # (B,) decoded response up to, without, EOS
    sequences: Tensor  # (B, P + N) left-padded prompt + response; pad after a row's EOS
    attention_mask: Tensor  # (B, P + N) prompt mask followed by the response mask
    response_mask: Tensor  # (B, N) bool, generated steps up to and including EOS
    old_logprobs: Tensor  # (B, N) log π_behaviour(a) recorded while sampling; 0 on masked steps
    prompt_length: int  # P
    actions: Tensor | None = None  # (B, N) latent action per step (-1 masked); None for the token policy
    hidden: Tensor | None = None  # (B, P + N − 1, d) base states h that chose the actions (latent only)

    @property
    def group_size(self) -> int:
        """G, recovered from the layout: rows are prompts repeated consecutively."""
        first = self.prompts[0]
        return next((i for i, p in enumerate(self.prompts) if p != first), len(self.prompts))

    @property
    def response_tokens(self) -> Tensor:
        """(B, N) generated token ids (pad after EOS)."""
        return self.sequences[:, self.prompt_length :]


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores a rollout's recorded actions: the live policy or its frozen reference."""

    def logprobs(self, rollout: Rollout, with_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B, N) log-probs of the recorded actions; with ``with_entropy`` also the (B, N) detached entropy."""
        ...


@runtime_checkable
class Policy(Scorer, Protocol):
    """The interface the GRPO trainer needs: act, score, say what trains, and give a frozen reference."""

    kind: str  # "cola" or "token", used in logs

    def rollout(
        self, prompts: list[str], group_size: int, max_new_tokens: int, generator: torch.Generator
    ) -> Rollout:
        """Sample ``group_size`` responses for each prompt (no gradient)."""
        ...

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters RL updates (and nothing else requires grad afterwards)."""
        ...

    def reference(self) -> Scorer:
        """A frozen deep copy of the trainable part, scoring rollouts exactly like this policy did at the start."""
        ...


# ------------------------------------------------------------------------------------------------ helpers


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], group_size: int = 1, prepend_bos: bool = True
) -> tuple[Tensor, Tensor]:
    """Left-padded ids and mask (B, P) with every prompt repeated ``group_size`` times consecutively.

    Each distinct prompt is tokenized once. No special tokens are added by the tokenizer; BOS is prepended
    by hand (when the tokenizer has one) so both policies see exactly the same prompt ids.
    """
    bos = tokenizer.bos_token_id if prepend_bos else None
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    rows = [([bos] if bos is not None else []) + ids for ids in encoded for _ in range(group_size)]
    width = max(map(len, rows))
    pad = pad_token_id(tokenizer)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad id, falling back to EOS for tokenizers without one (many chat models)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def decode_completions(tokenizer: PreTrainedTokenizerBase, tokens: Tensor, mask: Tensor) -> list[str]:
    """Decode each row's valid response tokens; special tokens (EOS) are dropped."""
    rows = [row[m].tolist() for row, m in zip(tokens, mask.bool())]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


def _gather_logprobs(
    logits: Tensor, targets: Tensor, mask: Tensor, temperature: float, with_entropy: bool
) -> Tensor | tuple[Tensor, Tensor]:
    """log softmax(logits / τ)[target] over the *full* distribution, zeroed on masked steps.

    The behaviour policy may have sampled from a top-k truncation; like the authors (cola-spec.md §9 item 9)
    we still score with the full softmax, so π_old and π_θ are the same function of the parameters.
    """
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logp = torch.where(mask, logp, torch.zeros_like(logp))
    if not with_entropy:
        return logp
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1) * mask
    return logp, entropy


def _top_k_sample(logits: Tensor, top_k: int | None, generator: torch.Generator) -> Tensor:
    """One sample per row from softmax of (already temperature-scaled) logits truncated to the top k."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


# ------------------------------------------------------------------------------------------------ latent


class LatentReference(nn.Module):
    """A frozen copy of the policy part only (decoder stack + K-way head), scoring on recorded base states.

    The base, the IDM and the world model are not copied: the reference reads the same h as the policy, and
    nothing else enters log π_ref(a_t).
    """

    def __init__(self, stack: nn.Module, head: nn.Module, temperature: float) -> None:
        super().__init__()
        self.stack = copy.deepcopy(stack).requires_grad_(False).eval()
        self.head = copy.deepcopy(head).requires_grad_(False).eval()
        self.temperature = temperature

    @torch.no_grad()
    def logprobs(self, rollout: Rollout, with_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        return _latent_logprobs(self.stack, self.head, self.temperature, rollout, with_entropy)


def _latent_logprobs(
    stack: nn.Module, head: nn.Module, temperature: float, rollout: Rollout, with_entropy: bool
) -> Tensor | tuple[Tensor, Tensor]:
    """Re-score the recorded actions from the recorded h: the policy stack over all P + N − 1 positions
    (it is causal and attends to the prompt), the head only at the N action positions P − 1 + i."""
    if rollout.hidden is None or rollout.actions is None:
        raise ValueError("a latent rollout needs its recorded hidden states and actions")
    mask = rollout.attention_mask[:, :-1]
    positions = left_padded_positions(mask)  # the positions generation used, so RoPE sees the same offsets
    states = stack(inputs_embeds=rollout.hidden.detach(), attention_mask=mask, position_ids=positions)
    w = head(states.last_hidden_state[:, rollout.prompt_length - 1 :])
    return _gather_logprobs(w, rollout.actions, rollout.response_mask, temperature, with_entropy)


class LatentActionPolicy:
    """CoLA's latent-action policy: sampled actions (top-k), greedy world-model tokens, only the policy trains.

    Args:
        model: a CoLA model (after behaviour cloning / FTA); RL calls ``model.set_stage("rl")``.
        tokenizer: its tokenizer (left padding is done here, whatever the tokenizer's side).
        top_k: behaviour sampling keeps the top k of the K action logits (paper: 40 of 64).
        temperature: behaviour sampling temperature of the actions (paper: 1). Log-probs always use
            ``model.config.policy_temperature``, as the released code does.
    """

    kind = "cola"

    def __init__(
        self, model: CoLAForCausalLM, tokenizer: PreTrainedTokenizerBase, top_k: int | None = 40,
        temperature: float = 1.0, prepend_bos: bool = True,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.top_k, self.temperature, self.prepend_bos = top_k, temperature, prepend_bos
        # Eval mode throughout: no dropout, so the policy that sampled and the one being updated are the same
        # function (the ratio is exactly 1 on the first PPO epoch).
        self.model.eval()

    @torch.no_grad()
    def rollout(
        self, prompts: list[str], group_size: int, max_new_tokens: int, generator: torch.Generator
    ) -> Rollout:
        ids, mask = encode_prompts(self.tokenizer, prompts, group_size, self.prepend_bos)
        out = self.model.generate_latent(
            ids, mask, max_new_tokens=max_new_tokens, action_mode="sample", action_top_k=self.top_k,
            action_temperature=self.temperature, token_sampling=False, eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=pad_token_id(self.tokenizer), generator=generator, return_hidden=True,
        )
        tokens = out.sequences[:, out.prompt_length :]
        return Rollout(
            prompts=[p for p in prompts for _ in range(group_size)],
            completions=decode_completions(self.tokenizer, tokens, out.response_mask),
            sequences=out.sequences, attention_mask=out.attention_mask, response_mask=out.response_mask,
            old_logprobs=out.action_logprobs, prompt_length=out.prompt_length, actions=out.actions,
            hidden=out.hidden,
        )

    def logprobs(self, rollout: Rollout, with_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """log π(a_t) of the recorded actions from the recorded h (the base is never run again)."""
        return _latent_logprobs(
            self.model.policy, self.model.policy_head, self.model.config.policy_temperature, rollout, with_entropy
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Only the policy (stack + head), per cola-spec.md §7; everything else is frozen."""
        return self.model.set_stage("rl")

    def reference(self) -> LatentReference:
        return LatentReference(self.model.policy, self.model.policy_head, self.model.config.policy_temperature)


# ------------------------------------------------------------------------------------------------ token


class TokenPolicy:
    """The token-level baseline: a plain HF causal LM sampling tokens; the whole model trains.

    Sampling is a small KV-cached loop rather than ``model.generate`` because ``generate`` cannot take a
    ``torch.Generator``: with one, a seeded run is reproducible without touching the global RNG.

    Args:
        model: any ``AutoModelForCausalLM``.
        temperature: sampling temperature; log-probs are scored at the same temperature (as TRL does), so the
            ratio is 1 on the first epoch.
        top_k: optional truncation of the sampling distribution (None = the full vocabulary, the spec's
            baseline). Log-probs use the full softmax either way.
    """

    kind = "token"

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, temperature: float = 1.0,
        top_k: int | None = None, prepend_bos: bool = True,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.temperature, self.top_k, self.prepend_bos = temperature, top_k, prepend_bos
        self.model.eval()  # no dropout: sampler and learner are the same function

    @torch.no_grad()
    def rollout(
        self, prompts: list[str], group_size: int, max_new_tokens: int, generator: torch.Generator
    ) -> Rollout:
        ids, prompt_mask = encode_prompts(self.tokenizer, prompts, group_size, self.prepend_bos)
        eos = self.tokenizer.eos_token_id
        pad = pad_token_id(self.tokenizer)
        batch, prompt_length = ids.shape
        sequences, mask = ids, prompt_mask
        done = torch.zeros(batch, dtype=torch.bool)
        step_ids, step_positions = ids, left_padded_positions(prompt_mask)
        cache, alive, logprobs = None, [], []
        for _ in range(max_new_tokens):
            out = self.model(input_ids=step_ids, attention_mask=mask, position_ids=step_positions, cache=cache,
                             use_cache=True, logits_to_keep=1)
            cache = out.cache
            logits = out.logits[:, -1].float() / self.temperature
            token = _top_k_sample(logits, self.top_k, generator)
            logp = torch.log_softmax(logits, -1).gather(-1, token[:, None]).squeeze(-1)

            alive.append(~done)
            logprobs.append(torch.where(done, 0.0, logp))
            token = torch.where(done, pad, token)
            if eos is not None:
                done = done | (token == eos)
            sequences = torch.cat([sequences, token[:, None]], dim=1)
            # Every new column is attended during sampling; rows that are done only produce masked pads.
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step_ids, step_positions = token[:, None], step_positions[:, -1:] + 1
            if done.all():
                break
        response_mask = torch.stack(alive, 1)
        return Rollout(
            prompts=[p for p in prompts for _ in range(group_size)],
            completions=decode_completions(self.tokenizer, sequences[:, prompt_length:], response_mask),
            sequences=sequences, attention_mask=torch.cat([prompt_mask, response_mask.long()], dim=1),
            response_mask=response_mask, old_logprobs=torch.stack(logprobs, 1), prompt_length=prompt_length,
        )

    def logprobs(self, rollout: Rollout, with_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """log π(x_{P+i}) from one forward over prompt + response; the LM head runs on the N scored positions."""
        return _token_logprobs(self.model, self.temperature, rollout, with_entropy)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter of the model (tied weights once)."""
        params = list(self.model.parameters())  # nn.Module.parameters() already de-duplicates shared tensors
        for p in params:
            p.requires_grad_(True)
        return params

    def reference(self) -> _TokenReference:
        return _TokenReference(self.model, self.temperature)


def _token_logprobs(
    model: PreTrainedModel, temperature: float, rollout: Rollout, with_entropy: bool
) -> Tensor | tuple[Tensor, Tensor]:
    n = rollout.response_mask.shape[1]
    mask = rollout.attention_mask[:, :-1]
    # The last token is never an input (nothing is scored after it); logits_to_keep=N applies the LM head
    # only at positions P − 1 … P + N − 2, which score the N response tokens.
    out = model(input_ids=rollout.sequences[:, :-1], attention_mask=mask, position_ids=left_padded_positions(mask),
                use_cache=False, logits_to_keep=n)
    return _gather_logprobs(out.logits, rollout.response_tokens, rollout.response_mask, temperature, with_entropy)


class _TokenReference(nn.Module):
    """A frozen deep copy of the whole token-level model."""

    def __init__(self, model: PreTrainedModel, temperature: float) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.temperature = temperature

    @torch.no_grad()
    def logprobs(self, rollout: Rollout, with_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        return _token_logprobs(self.model, self.temperature, rollout, with_entropy)
