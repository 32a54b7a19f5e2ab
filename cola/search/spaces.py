"""What the search branches over: CoLA's latent actions, or a plain LM's tokens (the token-level baseline).

The search loop (`cola.search.mcts`) only asks an action space four things, so the same code searches both:

- `state(ids, parent)`: the policy's distribution over the actions after `ids`; it runs only the tokens the
  parent's state does not cover, on a copy of the parent's KV caches (the node's prefix is never re-run);
- `token(state, action)`: the token an action writes (CoLA: the world model's greedy token; tokens: itself);
- `decode(ids, n, start)`: greedy decoding of up to n tokens after `ids` (chunks and rollouts), from a copy of
  the caches of `start`, the state of a prefix of `ids` (only the rest is run);
- `passes`: the forward passes run so far, the budget unit (one per token decoded, one per state, one per
  world-model call).

``use_cache=False`` recomputes every prefix from scratch: slower, and only there to test that the caches
change nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from cola.model.kv_cache import returned_cache, with_cache


@dataclass
class State:
    """A node's model state: its token ids, the policy's probabilities over the actions at its last position,
    the KV caches covering the ids (None uncached), and what `token` needs (CoLA: the base state h)."""

    ids: tuple[int, ...]
    probs: Tensor
    caches: Any = None
    hidden: Tensor | None = None


def _start_caches(ids: tuple[int, ...], start: State | None) -> Any:
    """Copies of `start`'s caches for decoding after `ids`: they must leave at least one token of `ids` to run
    (its output is the first prediction), so a state of all of `ids` is cut back by one."""
    if start is None or start.caches is None:
        return None
    if start.ids != ids[: len(start.ids)]:
        raise ValueError("the start state is not a prefix of the ids to decode from")
    copies = copy.deepcopy(start.caches)
    if len(start.ids) == len(ids):
        for cache in copies if isinstance(copies, tuple) else (copies,):
            cache.crop(len(ids) - 1)
    return copies


def _new_tokens(ids: tuple[int, ...], parent: State | None, use_cache: bool) -> tuple[Tensor, Tensor, Any]:
    """The ids still to run, their positions and copies of the parent's caches (everything when uncached)."""
    start = len(parent.ids) if parent is not None and use_cache else 0
    caches = copy.deepcopy(parent.caches) if start else None
    return torch.tensor([ids[start:]]), torch.arange(start, len(ids))[None], caches


class LatentSpace:
    """CoLA's K latent actions: the policy's distribution, the world model's greedy token per action."""

    def __init__(self, model, eos_token_id: int | None, use_cache: bool = True) -> None:
        self.model, self.eos, self.use_cache = model, eos_token_id, use_cache
        self.num_actions = model.config.num_actions
        self.passes = 0

    @torch.no_grad()
    def state(self, ids: tuple[int, ...], parent: State | None = None) -> State:
        new, positions, caches = _new_tokens(ids, parent, self.use_cache)
        base_cache, policy_cache = caches if caches is not None else (None, None)
        h, base_cache = self.model.base_hidden(new, None, positions, base_cache, use_cache=self.use_cache)
        w, policy_cache = self.model.policy_logits(h, None, positions, policy_cache, use_cache=self.use_cache)
        self.passes += 1
        probs = torch.softmax(w[0, -1].float() / self.model.config.policy_temperature, dim=-1)
        return State(ids, probs, (base_cache, policy_cache) if self.use_cache else None, h[:, -1])

    @torch.no_grad()
    def token(self, state: State, action: int) -> int:
        self.passes += 1
        return int(self.model.world_model_logits(state.hidden, torch.tensor([action])).argmax(-1))

    @torch.no_grad()
    def decode(self, ids: tuple[int, ...], max_new_tokens: int,
               start: State | None = None) -> tuple[list[int], list[int], list[float]]:
        """(tokens, actions, action probabilities) of greedy-action, greedy-token decoding."""
        if max_new_tokens <= 0:
            return [], [], []
        out = self.model.generate_latent(torch.tensor([ids]), max_new_tokens=max_new_tokens,
                                         action_mode="greedy", eos_token_id=self.eos,
                                         caches=_start_caches(ids, start))
        valid = out.response_mask[0]
        self.passes += int(valid.sum())
        tokens = out.sequences[0, out.prompt_length :][valid].tolist()
        return tokens, out.actions[0][valid].tolist(), out.action_logprobs[0][valid].exp().tolist()


class TokenSpace:
    """A plain causal LM's vocabulary as the actions: the LM's next-token distribution; an action is its
    token."""

    def __init__(self, model, eos_token_id: int | None, use_cache: bool = True) -> None:
        self.model, self.eos, self.use_cache = model, eos_token_id, use_cache
        self.num_actions = model.config.vocab_size
        self.passes = 0

    @torch.no_grad()
    def state(self, ids: tuple[int, ...], parent: State | None = None) -> State:
        new, positions, cache = _new_tokens(ids, parent, self.use_cache)
        out = self.model(input_ids=new, position_ids=positions, **with_cache(cache, self.use_cache))
        self.passes += 1
        probs = torch.softmax(out.logits[0, -1].float(), dim=-1)
        return State(ids, probs, returned_cache(out) if self.use_cache else None)

    def token(self, state: State, action: int) -> int:
        return action

    @torch.no_grad()
    def decode(self, ids: tuple[int, ...], max_new_tokens: int,
               start: State | None = None) -> tuple[list[int], list[int], list[float]]:
        """(tokens, the same tokens as actions, their probabilities) of greedy decoding (a small KV-cached
        loop: `generate`'s per-call set-up costs more than a tiny model's whole rollout)."""
        cache = _start_caches(ids, start)
        cached = cache.get_seq_length() if cache is not None else 0
        step, positions = torch.tensor([ids[cached:]]), torch.arange(cached, len(ids))[None]
        tokens: list[int] = []
        probs: list[float] = []
        for _ in range(max_new_tokens):
            out = self.model(input_ids=step, position_ids=positions, **with_cache(cache, True))
            cache, p = returned_cache(out), torch.softmax(out.logits[0, -1].float(), dim=-1)
            token = int(p.argmax())
            tokens.append(token)
            probs.append(float(p[token]))
            if token == self.eos:
                break
            step, positions = torch.tensor([[token]]), positions[:, -1:] + 1
        self.passes += len(tokens)
        return tokens, list(tokens), probs
