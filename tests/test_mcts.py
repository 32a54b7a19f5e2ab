"""MCTS-Q's search loop on a tiny random CoLA model and Q-network: children are the policy's top actions,
budgets hold, chunking follows the TD test, both scoring modes run, and the budget is counted."""

from __future__ import annotations

import pytest
import torch

from cola.config.search import SearchConfig
from cola.errors import ColaError
from cola.model.inputs import encode_prompts
from cola.search.mcts import Search, action_space
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


def latent_search(setup, cfg: SearchConfig, reward=None, use_cache: bool = True) -> Search:
    model, tokenizer, qnet = setup
    return Search(action_space(model, tokenizer, "cola", use_cache), tokenizer, qnet, cfg, reward)


def oracle(completion: str) -> float:
    return 1.0 if completion.split()[:1] == [TARGET] else 0.0


def test_children_are_the_top_policy_actions_and_budgets_hold(setup) -> None:
    model, tokenizer, qnet = setup
    cfg = SearchConfig(rounds=6, root_children=3, children=2, max_depth=6, chunk_tokens=2, td_threshold=0.0,
                       rollout_tokens=4)
    search = latent_search(setup, cfg, reward=oracle)
    result = search.run(PROMPT)
    root = result.root
    assert len(root.children) <= 3 and result.nodes == len(list(nodes(root))) <= 1 + 6
    top = torch.argsort(search.state(root).probs, descending=True)[: len(root.children)].tolist()
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
    result = latent_search(setup, cfg, reward=oracle).run(PROMPT)
    children = list(nodes(result.root))[1:]
    assert children and all(len(c.actions) > 1 or c.ids[-1] == tokenizer.eos_token_id for c in children)
    for child in children:
        assert len(child.ids) - len(child.parent.ids) == len(child.actions) <= 1 + cfg.chunk_tokens
        assert 0 < child.prior <= 1


def test_q_only_needs_no_gold_answer_and_is_deterministic(setup) -> None:
    model, tokenizer, qnet = setup
    cfg = SearchConfig(rounds=4, root_children=2, children=2, max_depth=6, chunk_tokens=2, rollout_tokens=4)
    first = latent_search(setup, cfg).run(PROMPT)
    again = latent_search(setup, cfg).run(PROMPT)
    assert first.answer == again.answer and first.model_passes == again.model_passes
    assert all(n.reward not in (0.0, 1.0) for n in nodes(first.root))  # Q-network values, not 0/1 scores


def test_search_and_best_of_n_at_its_budget(setup) -> None:
    from cola.search.evaluate import best_of_n_at_budget, search_accuracy
    from tests.test_grpo import ToyTask

    model, tokenizer, qnet = setup
    examples = [{"prompt": p, "answer": TARGET} for p in ("a b c", "d e", "f g h i")]
    cfg = SearchConfig(rounds=4, root_children=2, children=2, max_depth=4, chunk_tokens=2, rollout_tokens=3)
    searched = search_accuracy(model, tokenizer, "cola", qnet, ToyTask(), examples, cfg, "oracle")
    assert 0 <= searched["accuracy"] <= 1 and searched["model_passes"] > 0 and searched["nodes"] >= 1
    sampled = best_of_n_at_budget(model, tokenizer, "cola", ToyTask(), examples, searched["model_passes"],
                                  max_new_tokens=3, seed=0)
    # n samples of at most 3 tokens within the search's passes: the spent budget cannot exceed n × 3 and the
    # chosen n is the largest whose expected cost fits.
    assert sampled["n"] >= 1 and sampled["model_passes"] <= sampled["n"] * 3
    assert sampled["oracle"] >= sampled["sample_accuracy"] and 0 <= sampled["majority_vote"] <= 1
    with pytest.raises(ValueError, match="unknown search mode"):
        search_accuracy(model, tokenizer, "cola", qnet, ToyTask(), examples, cfg, "greedy")


def token_setup():
    tokenizer = make_tokenizer()
    lm = tiny_base(3)
    qnet = QNetwork.from_base(tiny_base(4), num_actions=lm.config.vocab_size).eval()
    torch.nn.init.normal_(qnet.q_head.weight, std=0.05, generator=torch.Generator().manual_seed(2))
    return lm, tokenizer, qnet


def tree_of(result) -> list[tuple]:
    return [(n.ids, n.actions, round(n.prior, 5), n.visits, round(n.value, 5), round(n.reward, 5), n.rollout)
            for n in nodes(result.root)]


@pytest.mark.parametrize("kind", ["cola", "base"])
def test_cached_and_uncached_expansion_give_the_same_tree(setup, kind: str) -> None:
    """Nodes reuse their prefix's KV caches; recomputing every prefix from scratch must change nothing."""
    model, tokenizer, qnet = setup if kind == "cola" else token_setup()
    cfg = SearchConfig(rounds=8, root_children=3, children=2, max_depth=8, chunk_tokens=3, td_threshold=0.05,
                       rollout_tokens=5)
    runs = [Search(action_space(model, tokenizer, kind, use_cache), tokenizer, qnet, cfg, oracle).run(PROMPT)
            for use_cache in (True, False)]
    cached, uncached = tree_of(runs[0]), tree_of(runs[1])
    assert len(cached) > 3 and any(len(n[1]) > 1 for n in cached)  # a real tree, with a chunked child
    assert cached == uncached and runs[0].answer == runs[1].answer
    assert runs[0].model_passes == runs[1].model_passes  # the budget counts passes, cached or not


@pytest.mark.parametrize("kind", ["cola", "base"])
def test_budget_one_without_chunking_is_the_greedy_decode(setup, kind: str) -> None:
    model, tokenizer, qnet = setup if kind == "cola" else token_setup()
    cfg = SearchConfig(rounds=1, root_children=2, children=2, max_depth=8, chunk_tokens=0, rollout_tokens=6)
    space = action_space(model, tokenizer, kind)
    result = Search(space, tokenizer, qnet, cfg).run(PROMPT)
    greedy = space.decode(tuple(encode_prompts(tokenizer, [PROMPT])[0]), 6)[0]
    assert result.answer == tokenizer.decode(greedy, skip_special_tokens=True)
    assert len(result.root.children) == 1


def test_token_search_branches_over_the_top_tokens() -> None:
    lm, tokenizer, qnet = token_setup()
    cfg = SearchConfig(rounds=4, root_children=3, children=2, max_depth=6, chunk_tokens=0, rollout_tokens=4)
    search = Search(action_space(lm, tokenizer, "base"), tokenizer, qnet, cfg, oracle)
    root = search.run(PROMPT).root
    top = torch.argsort(search.state(root).probs, descending=True)[: len(root.children)].tolist()
    assert [child.actions[0] for child in root.children] == top
    assert all(child.ids[-1] == child.actions[0] for child in root.children)  # a token action is its token


def test_bad_search_settings_are_one_line_errors(setup) -> None:
    model, tokenizer, qnet = setup
    with pytest.raises(ColaError, match="root_children = 9: more children than the 8 actions"):
        latent_search(setup, SearchConfig(root_children=9))
    lm, _, token_qnet = token_setup()
    with pytest.raises(ColaError, match="the Q-network scores .* actions, the model has 8"):
        Search(action_space(model, tokenizer, "cola"), tokenizer, token_qnet, SearchConfig())


def test_chunking_triggers_exactly_when_the_td_error_is_under_the_threshold(setup) -> None:
    """δ² = (Q(s, a) − γ·max Q(s′, ·))² of the root's first child, worked out from the Q-network directly: a
    threshold just above it chunks that child, one just below does not."""
    model, tokenizer, qnet = setup
    base = dict(rounds=1, root_children=2, children=2, max_depth=8, chunk_tokens=3, rollout_tokens=8)
    probe = latent_search(setup, SearchConfig(**base, td_threshold=0.0))
    first = probe.run(PROMPT).root.children[0]
    root_ids = list(first.ids[:-1])
    with torch.no_grad():
        q = float(qnet(torch.tensor([root_ids]))[0, -1, first.actions[0]])
        v_next = float(qnet(torch.tensor([list(first.ids)]))[0, -1].max())
    delta2 = (q - 0.99 * v_next) ** 2
    assert first.ids[-1] != tokenizer.eos_token_id and delta2 > 0
    above = latent_search(setup, SearchConfig(**base, td_threshold=delta2 * 1.001)).run(PROMPT)
    below = latent_search(setup, SearchConfig(**base, td_threshold=delta2 * 0.999)).run(PROMPT)
    assert len(above.root.children[0].actions) > 1  # grew by a greedy chunk
    assert len(below.root.children[0].actions) == 1
