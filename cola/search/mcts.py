"""MCTS-Q for one prompt (cola-spec.md §3 stage 5b): the loop that drives the tree, over CoLA's latent actions
or, as the token-level baseline, a plain LM's tokens (`cola.search.spaces`).

Each round selects a node (PUCT, `cola.search.tree.select`) and adds one child to it:

1. on the node's first visit, the policy's action probabilities and the Q-values at its last position are
   computed once and kept, with the KV caches of its prefix (a child runs only its own chunk's tokens);
2. the untried action with the highest policy probability is taken (children are the top-b actions, never
   samples), q = Q(s, a), and the world model turns it into its greedy token (a token is its own token);
3. adaptive chunking: v′ = max Q(s′, ·) and δ² = (q − γ·v′)²; when δ² < ``td_threshold`` and the token is not
   EOS, the child grows by up to ``chunk_tokens`` more tokens of greedy-action, greedy-token decoding, else it
   is that one token; π̄ is the mean probability of the chunk's chosen actions;
4. a greedy rollout from the child, to at most ``rollout_tokens`` after the prompt, is scored: by the task's
   reward with the gold answer (``oracle``: search with a verifier, a pass@k-like upper bound, as the paper's
   number should be read) or, with no gold answer (``q_only``), by the Q-network's value of the rollout's
   last action;
5. backup, and the search stops after ``rounds`` rounds or as soon as a child ends in EOS.

The answer is `cola.search.tree.choose_answer`'s node: a terminal node's own text, else its rollout's.
Deviation: nodes keep their token ids instead of re-tokenising their text (the same states, without a round
trip through the tokenizer). Budget: model forward passes (one per decoded token, one per state, one per
world-model call) and Q-network passes are counted per search.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cola.config.search import SearchConfig
from cola.errors import ColaError
from cola.model.inputs import encode_prompts
from cola.search.qnetwork import QNetwork
from cola.search.spaces import LatentSpace, State, TokenSpace
from cola.search.tree import Node, backup, choose_answer, nodes, select


@dataclass
class SearchResult:
    answer: str                 # the completion after the prompt
    root: Node
    model_passes: int           # model forward passes (the budget unit)
    q_passes: int
    seconds: float
    nodes: int = field(default=0)


def action_space(model, tokenizer, kind: str, use_cache: bool = True) -> LatentSpace | TokenSpace:
    """The space a loaded model searches over: ``cola`` → latent actions, ``base`` (a plain LM) → tokens."""
    if kind == "cola":
        return LatentSpace(model, tokenizer.eos_token_id, use_cache)
    return TokenSpace(model, tokenizer.eos_token_id, use_cache)


class Search:
    """MCTS-Q over an action space with its Q-network; `reward(completion)` scores a rollout (None:
    ``q_only``)."""

    def __init__(self, space: LatentSpace | TokenSpace, tokenizer, qnet: QNetwork, cfg: SearchConfig,
                 reward: Callable[[str], float] | None = None) -> None:
        if qnet.config.num_actions != space.num_actions:
            raise ColaError(f"the Q-network scores {qnet.config.num_actions} actions, the model has "
                            f"{space.num_actions}")
        for name in ("root_children", "children"):
            if getattr(cfg, name) > space.num_actions:
                raise ColaError(f"{name} = {getattr(cfg, name)}: more children than the "
                                f"{space.num_actions} actions a node has")
        self.space, self.tokenizer, self.qnet, self.cfg, self.reward = space, tokenizer, qnet, cfg, reward
        self.eos = tokenizer.eos_token_id
        self.max_depth = min(cfg.max_depth, cfg.rollout_tokens)  # no node is longer than a completion
        self.q_passes = 0
        self._states: dict[int, State] = {}
        self._q_values: dict[tuple[int, ...], torch.Tensor] = {}
        self._tried: dict[int, set[int]] = {}

    # ------------------------------------------------------------------------------------- model calls

    def state(self, node: Node) -> State:
        """The node's model state, computed once, from its parent's (only the node's own chunk is run)."""
        if id(node) not in self._states:
            self._states[id(node)] = self.space.state(node.ids, self.known_state(node.parent))
        return self._states[id(node)]

    def known_state(self, node: Node | None) -> State | None:
        """The computed state of `node` or of its nearest ancestor that has one (None: start from scratch)."""
        while node is not None and id(node) not in self._states:
            node = node.parent
        return self._states[id(node)] if node is not None else None

    def _q(self, ids: list[int] | tuple[int, ...]) -> torch.Tensor:
        """Q(s, ·) of the state after `ids`, computed once per state: the v′ of an expansion is also the Q of
        the child it makes (when the child is not chunked), read again when that child is expanded."""
        key = tuple(ids)
        if key not in self._q_values:
            self.q_passes += 1
            self._q_values[key] = self.qnet(torch.tensor([list(key)]))[0, -1]
        return self._q_values[key]

    # ------------------------------------------------------------------------------------- the search

    @torch.no_grad()
    def run(self, prompt: str, rounds: int | None = None) -> SearchResult:
        """Search `rounds` rounds (default: the config's) from `prompt`."""
        start, passes_before = time.perf_counter(), self.space.passes
        prompt_ids = encode_prompts(self.tokenizer, [prompt])[0]
        root = Node(prompt, ids=tuple(prompt_ids), budget=self.cfg.root_children)
        self._rollout(root, len(prompt_ids))
        backup(root, self.cfg.gamma)
        for _ in range(self.cfg.rounds if rounds is None else rounds):
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
        return SearchResult(answer, root, self.space.passes - passes_before, self.q_passes,
                            time.perf_counter() - start, nodes=sum(1 for _ in nodes(root)))

    def _expand(self, node: Node, prompt_length: int) -> Node:
        state = self.state(node)
        tried = self._tried.setdefault(id(node), set())
        ranked = torch.argsort(state.probs, descending=True)[: len(tried) + 1].tolist()
        action = next(a for a in ranked if a not in tried)
        tried.add(action)
        q = float(self._q(node.ids)[action])
        token = self.space.token(state, action)
        ids, actions, chosen = [*node.ids, token], [action], [float(state.probs[action])]
        next_value = float(self._q(ids).max())
        if (q - self.cfg.gamma * next_value) ** 2 < self.cfg.td_threshold and token != self.eos:
            room = min(self.cfg.chunk_tokens, self.max_depth - (len(ids) - prompt_length))
            more, more_actions, more_probs = self.space.decode(tuple(ids), room, start=state)
            ids, actions, chosen = ids + more, actions + more_actions, chosen + more_probs
        depth = len(ids) - prompt_length
        child = Node(self.tokenizer.decode(ids[1:], skip_special_tokens=True), ids=tuple(ids),
                     actions=tuple(actions), prior=sum(chosen) / len(chosen), depth=depth,
                     budget=self.cfg.children, terminal=ids[-1] == self.eos or depth >= self.max_depth)
        return node.add(child)

    def _rollout(self, node: Node, prompt_length: int) -> None:
        """R and the rollout text of a node: greedy decoding to EOS (or the budget), scored."""
        room = self.cfg.rollout_tokens - node.depth  # a completion is never longer than rollout_tokens
        more = [] if node.terminal else self.space.decode(node.ids, room, start=self.known_state(node))[0]
        full = [*node.ids, *more]
        node.rollout = self.tokenizer.decode(full[prompt_length:], skip_special_tokens=True)
        if self.reward is not None:
            node.reward = float(self.reward(node.rollout))
        else:  # q_only: the Q-network's value of the rollout's last action, no gold answer
            node.reward = float(self._q(full[:-1]).max()) if len(full) > prompt_length else 0.0
