"""The search tree of MCTS-Q (cola-spec.md §3 stage 5b), free of any model: nodes, PUCT selection, backup and
answer selection. The search loop (expansion by the policy's top actions, adaptive chunking by the Q-network's
TD error, greedy rollouts scored by the task) drives these and is the only part that runs a model.

Conventions taken from the authors' `mcts_utils.py` as the spec reads it:

- a node is expandable while it is not terminal and has fewer children than its budget (b1 at the root, b2
  elsewhere); selection scores every expandable node, breadth first, by
  ``V + c_puct · π̄ · √N_parent / (1 + N)`` and takes the first maximum. The root has no parent: its own
  visit count stands in (our reading);
- backup walks from the new node to the root, adding one visit to each; at each node every child's
  ``Q_node(c) = (R_c − R_node) + γ · V_c`` and ``V_node`` is the visit-weighted mean of those; a node without
  visited children keeps ``V = R``;
- the answer: each child's value is first replaced by its parent's Q entry for it; the terminal node with
  the highest value wins if that value is at least the best rollout reward anywhere in the tree, else the
  node with the highest rollout reward (its rollout text is the answer).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(eq=False)
class Node:
    """One node: the text so far and what the search knows about it.

    Args:
        text: the decoded content from the root (the root's is the prompt).
        actions: the latent actions (or tokens) of this node's chunk; empty at the root.
        prior: π̄, the mean policy probability of the chunk's chosen actions (1 at the root).
        depth: tokens from the root.
        budget: how many children it may get (b1 at the root, b2 below).
        terminal: it ends in EOS or reached the depth limit.
        reward: R, the reward of the greedy rollout from this node.
        rollout: that rollout's full text (what the answer is read from).
    """

    text: str
    actions: tuple[int, ...] = ()
    prior: float = 1.0
    depth: int = 0
    budget: int = 2
    terminal: bool = False
    reward: float = 0.0
    rollout: str = ""
    ids: tuple[int, ...] = ()  # token ids from the prompt's start (the search's; the tree ignores them)
    parent: Node | None = field(default=None, repr=False)
    children: list[Node] = field(default_factory=list, repr=False)
    visits: int = 0
    value: float = 0.0
    q: dict[int, float] = field(default_factory=dict, repr=False)  # child index -> Q_node(child)

    def add(self, child: Node) -> Node:
        child.parent = self
        self.children.append(child)
        return child

    @property
    def expandable(self) -> bool:
        return not self.terminal and len(self.children) < self.budget


def nodes(root: Node) -> Iterator[Node]:
    """Every node, breadth first (the order selection breaks ties in)."""
    queue = deque([root])
    while queue:
        node = queue.popleft()
        yield node
        queue.extend(node.children)


def puct(node: Node, c_puct: float) -> float:
    """``V + c_puct · π̄ · √N_parent / (1 + N)`` (the root's own N stands in for its parent's)."""
    parent_visits = node.parent.visits if node.parent is not None else node.visits
    return node.value + c_puct * node.prior * math.sqrt(parent_visits) / (1 + node.visits)


def select(root: Node, c_puct: float) -> Node | None:
    """The expandable node with the highest PUCT score (the first one breadth first on ties); None when the
    tree has nothing left to expand."""
    best, best_score = None, -math.inf
    for node in nodes(root):
        if node.expandable:
            score = puct(node, c_puct)
            if score > best_score:
                best, best_score = node, score
    return best


def backup(leaf: Node, gamma: float) -> None:
    """After `leaf`'s rollout: one more visit on the path to the root, and each ancestor's Q entries and value
    recomputed from its children."""
    leaf.visits += 1
    if not leaf.children:
        leaf.value = leaf.reward
    node = leaf.parent
    while node is not None:
        node.visits += 1
        visited = [(i, c) for i, c in enumerate(node.children) if c.visits > 0]
        for i, child in visited:
            node.q[i] = (child.reward - node.reward) + gamma * child.value
        total = sum(c.visits for _, c in visited)
        node.value = sum(c.visits * node.q[i] for i, c in visited) / total if total else node.reward
        node = node.parent


def choose_answer(root: Node) -> Node:
    """The node whose text answers the prompt (module docstring): the best-valued terminal node if its value
    is at least the best rollout reward, else the node with the best rollout reward."""
    for node in nodes(root):
        for i, child in enumerate(node.children):
            if i in node.q:
                child.value = node.q[i]
    everything = list(nodes(root))
    best_reward = max(everything, key=lambda n: n.reward)
    terminal = [n for n in everything if n.terminal]
    if terminal:
        best_terminal = max(terminal, key=lambda n: n.value)
        if best_terminal.value >= best_reward.reward:
            return best_terminal
    return best_reward
