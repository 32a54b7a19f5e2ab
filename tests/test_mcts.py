"""MCTS-Q's search loop on a tiny random CoLA model and Q-network: children are the policy's top actions,
budgets hold, chunking follows the TD test, both scoring modes run, and the budget is counted."""

from __future__ import annotations

import pytest
import torch

from cola.search.mcts import LatentSearch, SearchConfig
from cola.search.qnetwork import QNetwork
from cola.search.tree import nodes
from tests.test_grpo import TARGET, make_tokenizer, tiny_base, tiny_cola

PROMPT = "a b c"


@pytest.fixture(scope="module")
def setup():
    tokenizer = make_tokenizer()
    model = tiny_cola().eval()
    qnet = QNetwork.from_base(tiny_base(), num_actions=model.config.num_actions).eval()
    torch.nn.init.normal_(qnet.q_head.weight, std=0.05, generator=torch.Generator().manual_seed(1))
    return model, tokenizer, qnet


def oracle(completion: str) -> float:
    return 1.0 if completion.split()[:1] == [TARGET] else 0.0


def test_children_are_the_top_policy_actions_and_budgets_hold(setup) -> None:
    model, tokenizer, qnet = setup
    cfg = SearchConfig(rounds=6, root_children=3, children=2, max_depth=6, chunk_tokens=2, td_threshold=0.0,
                       rollout_tokens=4)
    result = LatentSearch(model, tokenizer, qnet, cfg, reward=oracle).run(PROMPT)
    root = result.root
    assert len(root.children) <= 3 and result.nodes == len(list(nodes(root))) <= 1 + 6
    _, probs, _ = LatentSearch(model, tokenizer, qnet, cfg)._state(root)
    top = torch.argsort(probs, descending=True)[: len(root.children)].tolist()
    assert [child.actions[0] for child in root.children] == top  # most probable untried action first
    for node in nodes(root):
        assert len(node.children) <= node.budget and node.depth <= cfg.max_depth
        if node is not root:
            assert len(node.actions) == 1  # td_threshold 0: no chunk is ever extended
            assert node.reward == oracle(node.rollout)
    assert result.model_passes > 0 and result.q_passes > 0 and isinstance(result.answer, str)


def test_a_self_consistent_q_network_makes_chunks(setup) -> None:
    model, tokenizer, qnet = setup
    cfg = SearchConfig(rounds=3, root_children=2, children=2, max_depth=8, chunk_tokens=3,
                       td_threshold=float("inf"), rollout_tokens=4)
    result = LatentSearch(model, tokenizer, qnet, cfg, reward=oracle).run(PROMPT)
    children = list(nodes(result.root))[1:]
    assert children and all(len(c.actions) > 1 or c.ids[-1] == tokenizer.eos_token_id for c in children)
    for child in children:
        assert len(child.ids) - len(child.parent.ids) == len(child.actions) <= 1 + cfg.chunk_tokens
        assert 0 < child.prior <= 1


def test_q_only_needs_no_gold_answer_and_is_deterministic(setup) -> None:
    model, tokenizer, qnet = setup
    cfg = SearchConfig(rounds=4, root_children=2, children=2, max_depth=6, chunk_tokens=2, rollout_tokens=4)
    first = LatentSearch(model, tokenizer, qnet, cfg).run(PROMPT)
    again = LatentSearch(model, tokenizer, qnet, cfg).run(PROMPT)
    assert first.answer == again.answer and first.model_passes == again.model_passes
    assert all(n.reward not in (0.0, 1.0) for n in nodes(first.root))  # Q-network values, not 0/1 scores


def test_search_and_best_of_n_at_its_budget(setup) -> None:
    from cola.search.evaluate import best_of_n_at_budget, search_accuracy
    from tests.test_grpo import ToyTask

    model, tokenizer, qnet = setup
    examples = [{"prompt": p, "answer": TARGET} for p in ("a b c", "d e", "f g h i")]
    cfg = SearchConfig(rounds=4, root_children=2, children=2, max_depth=4, chunk_tokens=2, rollout_tokens=3)
    searched = search_accuracy(model, tokenizer, qnet, ToyTask(), examples, cfg, "oracle")
    assert 0 <= searched["accuracy"] <= 1 and searched["model_passes"] > 0 and searched["nodes"] >= 1
    sampled = best_of_n_at_budget(model, tokenizer, "cola", ToyTask(), examples, searched["model_passes"],
                                  max_new_tokens=3, seed=0)
    # n samples of at most 3 tokens within the search's passes: the spent budget cannot exceed n × 3 and the
    # chosen n is the largest whose expected cost fits.
    assert sampled["n"] >= 1 and sampled["model_passes"] <= sampled["n"] * 3
    assert sampled["oracle"] >= sampled["sample_accuracy"] and 0 <= sampled["majority_vote"] <= 1
    with pytest.raises(ValueError, match="unknown search mode"):
        search_accuracy(model, tokenizer, qnet, ToyTask(), examples, cfg, "greedy")
