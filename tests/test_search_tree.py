"""MCTS-Q's tree on hand-built trees with values worked out by hand (cola-spec.md §3 stage 5b)."""

from __future__ import annotations

import math

import pytest

from cola.search.tree import Node, backup, choose_answer, nodes, puct, select


def test_puct_scores_and_selection_by_hand() -> None:
    root = Node("Q:", budget=2, visits=4, value=0.5)
    a = root.add(Node("Q: a", prior=0.6, visits=3, value=0.2))
    b = root.add(Node("Q: b", prior=0.3, visits=0, value=0.0))
    # a: 0.2 + 0.7 · 0.6 · √4 / 4 = 0.41; b: 0 + 0.7 · 0.3 · 2 / 1 = 0.42; the root is full (2 of 2).
    assert puct(a, 0.7) == pytest.approx(0.41) and puct(b, 0.7) == pytest.approx(0.42)
    assert puct(root, 0.7) == pytest.approx(0.5 + 0.7 * 1.0 * 2 / 5)  # its own N stands in for a parent's
    assert select(root, 0.7) is b
    b.terminal = True  # a terminal node is never expanded
    assert select(root, 0.7) is a
    a.budget = 0
    assert select(root, 0.7) is None


def test_selection_breaks_ties_breadth_first() -> None:
    root = Node("Q:", budget=2, visits=2)
    first = root.add(Node("x", prior=0.5, visits=1, budget=1))
    second = root.add(Node("y", prior=0.5, visits=1, budget=1))
    below = first.add(Node("x z", prior=0.1, visits=0, budget=1, terminal=True))
    assert [n.text for n in nodes(root)] == ["Q:", "x", "y", "x z"]
    # x and y score alike (0 + 0.5 · √2 / 2); x is full (1 child of 1), so y is chosen.
    assert puct(first, 1.0) == puct(second, 1.0) and not first.expandable and not below.expandable
    assert select(root, 1.0) is second
    first.budget = 2
    assert select(root, 1.0) is first  # equal scores: the one met first, breadth first
    first.budget, second.budget = 1, 0
    assert select(root, 1.0) is None  # every node is full or terminal


def test_backup_by_hand() -> None:
    root = Node("Q:", reward=0.0, budget=2)
    backup(root, 0.9)  # the root's own rollout
    assert (root.visits, root.value) == (1, 0.0)
    a = root.add(Node("a", reward=1.0))
    backup(a, 0.9)
    # Q(a) = (1 − 0) + 0.9 · 1 = 1.9; the root's value is the visit-weighted mean: 1.9.
    assert (a.visits, a.value, root.visits) == (1, 1.0, 2) and root.q[0] == pytest.approx(1.9)
    assert root.value == pytest.approx(1.9)
    b = root.add(Node("b", reward=0.0))
    backup(b, 0.9)
    # Q(b) = 0 + 0.9 · 0 = 0; V_root = (1 · 1.9 + 1 · 0) / 2 = 0.95.
    assert root.q[1] == 0.0 and root.value == pytest.approx(0.95) and root.visits == 3
    c = a.add(Node("a c", reward=0.5))
    backup(c, 0.9)
    # At a: Q(c) = (0.5 − 1) + 0.9 · 0.5 = −0.05, V_a = −0.05 (its only visited child).
    # At the root: Q(a) = (1 − 0) + 0.9 · (−0.05) = 0.955 with a's 2 visits, Q(b) = 0 with 1:
    # V_root = (2 · 0.955 + 0) / 3.
    assert a.value == pytest.approx(-0.05) and a.visits == 2
    assert root.q[0] == pytest.approx(0.955) and root.value == pytest.approx(2 * 0.955 / 3)
    assert root.visits == 4


def test_answer_prefers_a_terminal_node_whose_value_beats_every_rollout() -> None:
    root = Node("Q:", reward=0.0)
    good = root.add(Node("Q: 4 \\boxed{4}", reward=1.0, terminal=True, rollout="4 \\boxed{4}"))
    bad = root.add(Node("Q: 5", reward=0.0, rollout="5 \\boxed{5}"))
    for node in (root, good, bad):
        backup(node, 1.0)
    # Q(good) = 1 + 1 · 1 = 2 ≥ the best rollout reward 1: the terminal node answers.
    assert choose_answer(root) is good and good.value == pytest.approx(2.0)


def test_answer_falls_back_to_the_best_rollout() -> None:
    root = Node("Q:", reward=0.0)
    unfinished = root.add(Node("Q: 4", reward=1.0, rollout="4 \\boxed{4}"))
    wrong_end = root.add(Node("Q: 5 done", reward=0.0, terminal=True, rollout="5"))
    backup(root, 1.0)
    backup(unfinished, 1.0)
    backup(wrong_end, 1.0)
    # The terminal node's value (Q = 0 + 0 = 0) is below the best rollout reward (1): take that rollout.
    assert choose_answer(root) is unfinished
    assert not math.isnan(root.value)
