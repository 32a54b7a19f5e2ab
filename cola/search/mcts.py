"""MCTS-Q over latent actions for one prompt (cola-spec.md §3 stage 5b): the loop that drives the tree.

Each round selects a node (PUCT, `cola.search.tree.select`) and adds one child to it:

1. on the node's first visit, the policy's action probabilities and the Q-values at its last position are
   computed once and cached;
2. the untried action with the highest policy probability is taken (children are the top-b actions, never
   samples), q = Q(s, a), and the world model turns it into its greedy token;
3. adaptive chunking: v′ = max Q(s′, ·) and δ² = (q − γ·v′)²; when δ² < ``td_threshold`` and the token is not
   EOS, the child grows by up to ``chunk_tokens`` more tokens of greedy-action, greedy-token decoding, else it
   is that one token; π̄ is the mean probability of the chunk's chosen actions;
4. a greedy rollout of up to ``rollout_tokens`` from the child is scored: by the task's reward with the
   gold answer (``oracle``: search with a verifier, a pass@k-like upper bound, as the paper's number should
   be read) or, with no gold answer (``q_only``), by the Q-network's value of the rollout's last action;
5. backup, and the search stops after ``rounds`` rounds or as soon as a child ends in EOS.

The answer is `cola.search.tree.choose_answer`'s node: a terminal node's own text, else its rollout's.
Deviation: nodes keep their token ids instead of re-tokenising their text (the same states, without a round
trip through the tokenizer). Budget: base + world-model forward passes (one per decoded token, one per state
scored) and Q-network passes are counted per search.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cola.model.inputs import encode_prompts
from cola.search.qnetwork import QNetwork
from cola.search.tree import Node, backup, choose_answer, nodes, select


@dataclass
class SearchConfig:
    """The search's budget and knobs (defaults: the authors' `_mcts` script, cola-spec.md §3 stage 5b)."""

    rounds: int = 128
    root_children: int = 4     # b1
    children: int = 2          # b2
    max_depth: int = 256       # D, tokens from the root
    chunk_tokens: int = 64
    td_threshold: float = 0.01
    c_puct: float = 0.7
    gamma: float = 0.99
    rollout_tokens: int = 1024


@dataclass
class SearchResult:
    answer: str                 # the completion after the prompt
    root: Node
    model_passes: int           # base + world-model forward passes (the budget unit)
    q_passes: int
    seconds: float
    nodes: int = field(default=0)


class LatentSearch:
    """MCTS-Q for a CoLA model and its Q-network; `reward(completion)` scores a rollout (None: ``q_only``)."""

    def __init__(self, model, tokenizer, qnet: QNetwork, cfg: SearchConfig,
                 reward: Callable[[str], float] | None = None) -> None:
        self.model, self.tokenizer, self.qnet, self.cfg, self.reward = model, tokenizer, qnet, cfg, reward
        self.eos = tokenizer.eos_token_id
        self.model_passes = self.q_passes = 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._q_values: dict[tuple[int, ...], torch.Tensor] = {}
        self._tried: dict[int, set[int]] = {}

    # ------------------------------------------------------------------------------------- model calls

    def _state(self, node: Node) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h at the last position, action probabilities, Q-values) of a node's state, computed once."""
        if id(node) not in self._cache:
            ids = torch.tensor([node.ids])
            h, _ = self.model.base_hidden(ids)
            w, _ = self.model.policy_logits(h)
            probs = torch.softmax(w[0, -1].float() / self.model.config.policy_temperature, dim=-1)
            self._cache[id(node)] = (h[:, -1], probs, self._q(node.ids))
            self.model_passes += 1
        return self._cache[id(node)]

    def _q(self, ids: list[int] | tuple[int, ...]) -> torch.Tensor:
        """Q(s, ·) of the state after `ids`, computed once per state: the v′ of an expansion is also the Q of
        the child it makes (when the child is not chunked), read again when that child is expanded."""
        key = tuple(ids)
        if key not in self._q_values:
            self.q_passes += 1
            self._q_values[key] = self.qnet(torch.tensor([list(key)]))[0, -1]
        return self._q_values[key]

    def _decode(self, ids: list[int], max_new_tokens: int) -> tuple[list[int], list[int], list[float]]:
        """Greedy actions and greedy tokens from `ids`: (tokens, actions, action probabilities)."""
        if max_new_tokens <= 0:
            return [], [], []
        out = self.model.generate_latent(torch.tensor([ids]), max_new_tokens=max_new_tokens,
                                         action_mode="greedy", eos_token_id=self.eos)
        valid = out.response_mask[0]
        self.model_passes += int(valid.sum())
        tokens = out.sequences[0, out.prompt_length :][valid].tolist()
        return tokens, out.actions[0][valid].tolist(), out.action_logprobs[0][valid].exp().tolist()

    # ------------------------------------------------------------------------------------- the search

    @torch.no_grad()
    def run(self, prompt: str) -> SearchResult:
        start = time.perf_counter()
        prompt_ids = encode_prompts(self.tokenizer, [prompt])[0]
        root = Node(prompt, ids=tuple(prompt_ids), budget=self.cfg.root_children)
        self._rollout(root, len(prompt_ids))
        backup(root, self.cfg.gamma)
        for _ in range(self.cfg.rounds):
            node = select(root, self.cfg.c_puct)
            if node is None:
                break
            child = self._expand(node, len(prompt_ids))
            self._rollout(child, len(prompt_ids))
            backup(child, self.cfg.gamma)
            if child.ids[-1] == self.eos:
                break
        chosen = choose_answer(root)
        answer = (self.tokenizer.decode(chosen.ids[len(prompt_ids):], skip_special_tokens=True)
                  if chosen.terminal else chosen.rollout)
        return SearchResult(answer, root, self.model_passes, self.q_passes, time.perf_counter() - start,
                            nodes=sum(1 for _ in nodes(root)))

    def _expand(self, node: Node, prompt_length: int) -> Node:
        h, probs, q_values = self._state(node)
        tried = self._tried.setdefault(id(node), set())
        ranked = [a for a in torch.argsort(probs, descending=True).tolist() if a not in tried]
        action = ranked[0]
        tried.add(action)
        q = float(q_values[action])
        token = int(self.model.world_model_logits(h, torch.tensor([action])).argmax(-1))
        self.model_passes += 1
        ids, actions, chosen = [*node.ids, token], [action], [float(probs[action])]
        next_value = float(self._q(ids).max())
        if (q - self.cfg.gamma * next_value) ** 2 < self.cfg.td_threshold and token != self.eos:
            room = min(self.cfg.chunk_tokens, self.cfg.max_depth - (len(ids) - prompt_length))
            more, more_actions, more_probs = self._decode(ids, room)
            ids, actions, chosen = ids + more, actions + more_actions, chosen + more_probs
        depth = len(ids) - prompt_length
        child = Node(self.tokenizer.decode(ids[1:], skip_special_tokens=True), ids=tuple(ids),
                     actions=tuple(actions), prior=sum(chosen) / len(chosen), depth=depth,
                     budget=self.cfg.children, terminal=ids[-1] == self.eos or depth >= self.cfg.max_depth)
        return node.add(child)

    def _rollout(self, node: Node, prompt_length: int) -> None:
        """R and the rollout text of a node: greedy decoding to EOS (or the budget), scored."""
        more = [] if node.terminal else self._decode(list(node.ids), self.cfg.rollout_tokens)[0]
        full = [*node.ids, *more]
        node.rollout = self.tokenizer.decode(full[prompt_length:], skip_special_tokens=True)
        if self.reward is not None:
            node.reward = float(self.reward(node.rollout))
        else:  # q_only: the Q-network's value of the rollout's last action, no gold answer
            node.reward = float(self._q(full[:-1]).max()) if len(full) > prompt_length else 0.0

