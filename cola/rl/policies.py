"""Policies for GRPO: something that acts (rolls out G samples per prompt) and scores log-probs of its
actions.

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
``trainable_parameters()``. ``reference()`` returns a frozen copy that scores the same rollout for the KL
term.

Prompts are encoded as the evaluation harness does (``EOS prompt``, as examples appear in the packed corpus)
and left-padded; the G samples of a prompt are consecutive rows, the group layout :mod:`cola.rl.advantages`
expects. Both policies exploit that layout: the shared prompt is computed once per group when scoring (and
when prefilling the token sampler), with its KV cache repeated G times (:func:`score_positions`), which gives
the same values and gradients as the plain full forward.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cola.model import inputs
from cola.model.inputs import left_padded_positions, pad_token_id
from cola.model.kv_cache import returned_cache, with_cache
from cola.model.modeling_cola import CoLAForCausalLM
from cola.model.sampling import NoiseSource, sample_top_k

__all__ = [
    "LatentActionPolicy",
    "LatentReference",
    "Policy",
    "Rollout",
    "Scorer",
    "TokenPolicy",
    "TokenReference",
    "encode_prompts",
    "score_positions",
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
    group_size: int  # G: rows b and b' hold the same prompt ids when b // G == b' // G
    actions: Tensor | None = None  # (B, N) latent action per step (-1 masked); None for the token policy
    hidden: Tensor | None = None  # (B, P + N − 1, d) base states h that chose the actions (latent only)

    @property
    def response_tokens(self) -> Tensor:
        """(B, N) generated token ids (pad after EOS)."""
        return self.sequences[:, self.prompt_length :]


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores a rollout's recorded actions: the live policy or its frozen reference."""

    def logprobs(self, rollout: Rollout, with_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B, N) log-probs of the recorded actions; with ``with_entropy`` also the (B, N) detached
        entropy."""
        ...


@runtime_checkable
class Policy(Scorer, Protocol):
    """The interface the GRPO trainer needs: act, score, say what trains, and give a frozen reference."""

    kind: str  # "cola" or "token", used in logs

    def rollout(self, prompts: list[str], group_size: int, max_new_tokens: int, generator: NoiseSource,
                greedy: bool = False) -> Rollout:
        """Sample ``group_size`` responses for each prompt (no gradient); ``greedy``: argmax actions or tokens
        instead (ReMax's baseline, the validation accuracy), drawing nothing from `generator`."""
        ...

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters RL updates (and nothing else requires grad afterwards)."""
        ...

    def reference(self) -> Scorer:
        """A frozen deep copy of the trainable part, scoring rollouts exactly like this policy did at the
        start.

        It is an ``nn.Module`` too, so the trainer can checkpoint it with ``state_dict()``.
        """
        ...


# ------------------------------------------------------------------------------------------------ helpers


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], group_size: int = 1
) -> tuple[Tensor, Tensor]:
    """Left-padded ids and mask (B, P) with every prompt repeated ``group_size`` times consecutively.

    The encoding is the evaluation's (``EOS prompt``, no other special tokens, `cola.model.inputs`), so RL
    optimises exactly the inputs the reported accuracy is measured on. Each distinct prompt is tokenized once.
    """
    rows = [ids for ids in inputs.encode_prompts(tokenizer, prompts) for _ in range(group_size)]
    return inputs.left_pad(rows, pad_token_id(tokenizer))


def decode_completions(tokenizer: PreTrainedTokenizerBase, tokens: Tensor, mask: Tensor) -> list[str]:
    """Decode each row's valid response tokens; special tokens (EOS) are dropped."""
    rows = [row[m].tolist() for row, m in zip(tokens, mask.bool(), strict=True)]
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


# A causal network run on (inputs, mask, positions, cache, use_cache, keep) -> (outputs of the last `keep`
# positions, or of all when keep is None; cache).
CausalRun = Callable[[Tensor, Tensor, Tensor, Any, bool, "int | None"], tuple[Tensor, Any]]


def score_positions(run: CausalRun, inputs: Tensor, mask: Tensor, prompt_length: int, group_size: int,
                    share_prompt: bool = True) -> Tensor:
    """Outputs of a causal network at positions P − 1 … T − 1 of ``inputs`` (B, T, …): the ones that score
    the response.

    With ``share_prompt`` the prompt, identical for the G rows of a group, runs once per group: its KV cache
    is repeated G times and the response positions run on top of it. The result equals the plain full
    forward (same keys, values, masks and positions) at about (P·B/G + (T − P)·B) / (T·B) of the cost, and
    gradients flow through the cached keys and values into the prompt computation, so training is unchanged.
    """
    positions = left_padded_positions(mask)  # generation's positions, so RoPE sees the same offsets
    p, g, t = prompt_length, group_size, inputs.shape[1]
    if not share_prompt or g == 1:
        out, _ = run(inputs, mask, positions, None, False, t - p + 1)
        return out
    head, cache = run(inputs[::g, :p], mask[::g, :p], positions[::g, :p], None, True, 1)
    head = head.repeat_interleave(g, dim=0)
    if t == p:
        return head
    cache.batch_repeat_interleave(g)
    tail, _ = run(inputs[:, p:], mask, positions[:, p:], cache, True, None)
    return torch.cat([head, tail], dim=1)


# ------------------------------------------------------------------------------------------------ latent


def _latent_logprobs(stack: nn.Module, head: nn.Module, temperature: float, rollout: Rollout,
                     with_entropy: bool, share_prompt: bool = True) -> Tensor | tuple[Tensor, Tensor]:
    """Re-score the recorded actions from the recorded h: the policy stack runs over all P + N − 1 positions
    (it is causal and attends to the prompt), the head only at the N action positions P − 1 + i."""
    if rollout.hidden is None or rollout.actions is None:
        raise ValueError("a latent rollout needs its recorded hidden states and actions")

    def run(h: Tensor, mask: Tensor, positions: Tensor, cache: Any, use_cache: bool, keep: int | None):
        out = stack(inputs_embeds=h, attention_mask=mask, position_ids=positions,
                    **with_cache(cache, use_cache))
        states = out.last_hidden_state
        return head(states if keep is None else states[:, -keep:]), returned_cache(out)

    # h is a constant here: the policy reads sg(h) (cola-spec.md §9 item 4), so no gradient reaches the base.
    w = score_positions(run, rollout.hidden.detach(), rollout.attention_mask[:, :-1], rollout.prompt_length,
                        rollout.group_size, share_prompt)
    return _gather_logprobs(w, rollout.actions, rollout.response_mask, temperature, with_entropy)


class LatentReference(nn.Module):
    """A frozen copy of the policy part only (decoder stack + K-way head), scoring on recorded base states.

    The base, the IDM and the world model are not copied: the reference reads the same h as the policy, and
    nothing else enters log π_ref(a_t).
    """

    def __init__(self, stack: nn.Module, head: nn.Module, temperature: float,
                 share_prompt: bool = True) -> None:
        super().__init__()
        self.stack = copy.deepcopy(stack).requires_grad_(False).eval()
        self.head = copy.deepcopy(head).requires_grad_(False).eval()
        self.temperature, self.share_prompt = temperature, share_prompt

    @torch.no_grad()
    def logprobs(self, rollout: Rollout, with_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        return _latent_logprobs(self.stack, self.head, self.temperature, rollout, with_entropy,
                                self.share_prompt)


class LatentActionPolicy:
    """CoLA's latent-action policy: sampled actions (top-k), greedy world-model tokens, only the policy
    trains.

    Args:
        model: a CoLA model (after behaviour cloning / FTA); RL calls ``model.set_stage("rl")``.
        tokenizer: its tokenizer (left padding is done here, whatever the tokenizer's side).
        top_k: behaviour sampling keeps the top k of the K action logits (paper: 40 of 64).
        temperature: behaviour sampling temperature of the actions (paper: 1). Log-probs always use
            ``model.config.policy_temperature``, as the released code does.
        share_prompt: score the G rows of a group on one shared prompt computation (see `score_positions`).
    """

    kind = "cola"

    def __init__(
        self, model: CoLAForCausalLM, tokenizer: PreTrainedTokenizerBase, top_k: int | None = 40,
        temperature: float = 1.0, share_prompt: bool = True,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.top_k, self.temperature, self.share_prompt = top_k, temperature, share_prompt
        # Eval mode throughout: no dropout, so the policy that sampled and the one being updated are the same
        # function (the ratio is exactly 1 on the first PPO epoch).
        self.model.eval()

    @torch.no_grad()
    def rollout(self, prompts: list[str], group_size: int, max_new_tokens: int, generator: NoiseSource,
                greedy: bool = False) -> Rollout:
        ids, mask = encode_prompts(self.tokenizer, prompts)  # each prompt's pass runs once per group
        ids, mask = ids.to(self.model.device), mask.to(self.model.device)
        out = self.model.generate_latent(
            ids, mask, max_new_tokens=max_new_tokens, action_mode="greedy" if greedy else "sample",
            action_top_k=self.top_k,
            action_temperature=self.temperature, token_sampling=False,
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=pad_token_id(self.tokenizer),
            generator=generator, return_hidden=True, num_samples=group_size,
        )
        tokens = out.sequences[:, out.prompt_length :]
        return Rollout(
            prompts=[p for p in prompts for _ in range(group_size)],
            completions=decode_completions(self.tokenizer, tokens, out.response_mask),
            sequences=out.sequences, attention_mask=out.attention_mask, response_mask=out.response_mask,
            old_logprobs=out.action_logprobs, prompt_length=out.prompt_length, group_size=group_size,
            actions=out.actions, hidden=out.hidden,
        )

    def logprobs(self, rollout: Rollout, with_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """log π(a_t) of the recorded actions from the recorded h (the base is never run again)."""
        return _latent_logprobs(self.model.policy, self.model.policy_head,
                                self.model.config.policy_temperature, rollout, with_entropy,
                                self.share_prompt)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Only the policy (stack + head), per cola-spec.md §7; everything else is frozen."""
        return self.model.set_stage("rl")

    def reference(self) -> LatentReference:
        return LatentReference(self.model.policy, self.model.policy_head,
                               self.model.config.policy_temperature, self.share_prompt)


# ------------------------------------------------------------------------------------------------ token


def _token_logprobs(model: PreTrainedModel, temperature: float, rollout: Rollout, with_entropy: bool,
                    share_prompt: bool = True) -> Tensor | tuple[Tensor, Tensor]:
    """The last token is never an input (nothing is scored after it); the LM head runs only at positions
    P − 1 … P + N − 2, which score the N response tokens."""

    def run(ids: Tensor, mask: Tensor, positions: Tensor, cache: Any, use_cache: bool, keep: int | None):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                    logits_to_keep=keep or 0, **with_cache(cache, use_cache))
        return out.logits, returned_cache(out)

    logits = score_positions(run, rollout.sequences[:, :-1], rollout.attention_mask[:, :-1],
                             rollout.prompt_length, rollout.group_size, share_prompt)
    return _gather_logprobs(logits, rollout.response_tokens, rollout.response_mask, temperature, with_entropy)


class TokenReference(nn.Module):
    """A frozen deep copy of the whole token-level model."""

    def __init__(self, model: PreTrainedModel, temperature: float, share_prompt: bool = True) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.temperature, self.share_prompt = temperature, share_prompt

    @torch.no_grad()
    def logprobs(self, rollout: Rollout, with_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        return _token_logprobs(self.model, self.temperature, rollout, with_entropy, self.share_prompt)


class TokenPolicy:
    """The token-level baseline: a plain HF causal LM sampling tokens; the whole model trains.

    Sampling is a small KV-cached loop rather than ``model.generate`` because ``generate`` cannot take a
    ``torch.Generator``: with one, a seeded run is reproducible without touching the global RNG. It also
    lets the G copies of a prompt share one prefill.

    Args:
        model: any ``AutoModelForCausalLM``.
        temperature: sampling temperature; log-probs are scored at the same temperature (as TRL does), so the
            ratio is 1 on the first epoch.
        top_k: optional truncation of the sampling distribution (None = the full vocabulary, the spec's
            baseline). Log-probs use the full softmax either way.
        share_prompt: prefill and score each prompt once per group (see `score_positions`).
    """

    kind = "token"

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, temperature: float = 1.0,
        top_k: int | None = None, share_prompt: bool = True,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.temperature, self.top_k, self.share_prompt = temperature, top_k, share_prompt
        self.model.eval()  # no dropout: sampler and learner are the same function

    @torch.no_grad()
    def rollout(self, prompts: list[str], group_size: int, max_new_tokens: int, generator: NoiseSource,
                greedy: bool = False) -> Rollout:
        ids, prompt_mask = encode_prompts(self.tokenizer, prompts, group_size)
        ids, prompt_mask = ids.to(self.model.device), prompt_mask.to(self.model.device)
        eos, pad = self.tokenizer.eos_token_id, pad_token_id(self.tokenizer)
        batch, prompt_length = ids.shape
        positions = left_padded_positions(prompt_mask)

        # Prefill: the G rows of a group hold the same prompt, so run it once per group and repeat the cache.
        g = group_size if self.share_prompt else 1
        out = self.model(input_ids=ids[::g], attention_mask=prompt_mask[::g], position_ids=positions[::g],
                         use_cache=True, logits_to_keep=1)
        cache, logits = returned_cache(out), out.logits[:, -1].repeat_interleave(g, dim=0)
        if g > 1:
            cache.batch_repeat_interleave(g)

        sequences, mask = ids, prompt_mask
        done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
        step_positions = positions[:, -1:]
        alive, logprobs = [], []
        for step in range(max_new_tokens):
            scaled = logits.float() / self.temperature
            token = scaled.argmax(-1) if greedy else sample_top_k(scaled, self.top_k, 1.0, generator)
            logp = torch.log_softmax(scaled, -1).gather(-1, token[:, None]).squeeze(-1)

            alive.append(~done)
            logprobs.append(torch.where(done, 0.0, logp))
            token = torch.where(done, pad, token)
            if eos is not None:
                done = done | (token == eos)
            sequences = torch.cat([sequences, token[:, None]], dim=1)
            # Every new column is attended during sampling; rows that are done only produce masked pads.
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            if done.all() or step == max_new_tokens - 1:
                break
            step_positions = step_positions + 1
            out = self.model(input_ids=token[:, None], attention_mask=mask, position_ids=step_positions,
                             **with_cache(cache, True))
            cache, logits = returned_cache(out), out.logits[:, -1]

        response_mask = torch.stack(alive, 1)
        return Rollout(
            prompts=[p for p in prompts for _ in range(group_size)],
            completions=decode_completions(self.tokenizer, sequences[:, prompt_length:], response_mask),
            sequences=sequences, attention_mask=torch.cat([prompt_mask, response_mask.long()], dim=1),
            response_mask=response_mask, old_logprobs=torch.stack(logprobs, 1), prompt_length=prompt_length,
            group_size=group_size,
        )

    def logprobs(self, rollout: Rollout, with_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """log π(x_{P+i}) from one pass over prompt + response; the LM head runs on the N scored positions."""
        return _token_logprobs(self.model, self.temperature, rollout, with_entropy, self.share_prompt)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter of the model (tied weights once)."""
        params = list(self.model.parameters())  # nn.Module.parameters() already de-duplicates shared tensors
        for p in params:
            p.requires_grad_(True)
        return params

    def reference(self) -> TokenReference:
        return TokenReference(self.model, self.temperature, self.share_prompt)
