"""Latent-action decoding: KV caches change nothing, batching with left padding, alignment, stopping."""

from __future__ import annotations

import pytest
import torch

from cola.model.generation import choose_actions
from tests.conftest import VOCAB, tiny_cola

PROMPTS = [[5, 9, 13, 21, 8, 30, 2], [7, 3], [11, 12, 40, 41]]


def left_pad(prompts: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def _decode(model, use_cache: bool, **kwargs):
    ids, mask = left_pad(PROMPTS)
    return model.generate_latent(ids, mask, max_new_tokens=12, use_cache=use_cache,
                                 generator=torch.Generator().manual_seed(123), **kwargs)


@pytest.mark.parametrize(
    "options",
    [
        dict(action_mode="greedy"),
        dict(action_mode="sample", action_top_k=5, action_temperature=1.3),
        dict(action_mode="sample", token_sampling=True, token_top_k=10),
        dict(action_mode="random"),
        dict(action_mode="forced", forced_action=3),
    ],
    ids=["greedy", "sampled-actions", "sampled-tokens", "random", "forced"],
)
def test_kv_cache_gives_exactly_the_uncached_tokens_and_actions(cola_model, options):
    cached = _decode(cola_model, True, **options)
    uncached = _decode(cola_model, False, **options)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert torch.equal(cached.actions, uncached.actions)
    torch.testing.assert_close(cached.action_logprobs, uncached.action_logprobs, rtol=0, atol=1e-5)
    if options["action_mode"] == "forced":
        assert (cached.actions[cached.response_mask] == 3).all()


def test_batched_left_padding_matches_one_prompt_at_a_time(cola_model):
    batched = _decode(cola_model, True, action_mode="greedy")
    p = batched.prompt_length
    for row, prompt in enumerate(PROMPTS):
        ids = torch.tensor([prompt])
        single = cola_model.generate_latent(ids, max_new_tokens=12, action_mode="greedy")
        assert batched.sequences[row, p:].tolist() == single.sequences[0, len(prompt):].tolist()
        assert batched.actions[row].tolist() == single.actions[0].tolist()


def test_actions_are_aligned_with_the_tokens_they_produced(cola_model):
    out = _decode(cola_model, True, action_mode="sample", return_hidden=True)
    by_position = out.actions_by_position()
    p, n = out.prompt_length, out.actions.shape[1]
    assert by_position.shape == out.sequences.shape
    assert torch.equal(by_position[:, p - 1 : p - 1 + n], out.actions)
    assert (by_position[:, : p - 1] == -100).all()
    # Re-scoring with the world model under the recorded actions reproduces every greedy token.
    with torch.no_grad():
        logits = cola_model(out.sequences, out.attention_mask, actions=by_position.clamp(min=0)).logits
    predicted = logits[:, p - 1 : p - 1 + n].argmax(-1)
    assert torch.equal(predicted[out.response_mask], out.sequences[:, p:][out.response_mask])
    # The recorded log-probs are those of the full-softmax policy at the same positions, from the returned h.
    assert out.hidden.shape[1] == out.sequences.shape[1] - 1
    with torch.no_grad():
        w, _ = cola_model.policy_logits(out.hidden, out.attention_mask[:, :-1])
    logp = torch.log_softmax(w[:, p - 1 :], -1).gather(-1, out.actions.clamp(min=0)[..., None]).squeeze(-1)
    torch.testing.assert_close(logp[out.response_mask], out.action_logprobs[out.response_mask], atol=1e-5,
                               rtol=0)


def test_eos_stops_rows_and_pads_after(cola_model):
    free = _decode(cola_model, True, action_mode="greedy")
    p = free.prompt_length
    eos = int(free.sequences[0, p + 2])  # a token row 0 produces at its third step
    out = _decode(cola_model, True, action_mode="greedy", eos_token_id=eos, pad_token_id=0)
    for row in range(len(PROMPTS)):
        generated = out.sequences[row, p:].tolist()
        if eos in generated:
            stop = generated.index(eos)
            assert out.response_mask[row, : stop + 1].all() and not out.response_mask[row, stop + 1 :].any()
            assert all(t == 0 for t in generated[stop + 1 :])
            assert (out.actions[row, stop + 1 :] == -1).all()
    first = free.sequences[0, p:].tolist().index(eos)  # row 0 must stop at its first eos
    assert out.response_mask[0, : first + 1].all() and not out.response_mask[0, first + 1 :].any()


def test_choose_actions_modes():
    logits = torch.tensor([[0.0, 5.0, 1.0, -2.0]])
    assert choose_actions(logits, "greedy").item() == 1
    assert choose_actions(logits, "forced", forced_action=2).item() == 2
    with pytest.raises(ValueError, match="forced action must be in"):
        choose_actions(logits, "forced", forced_action=9)
    draws = torch.cat([choose_actions(logits.expand(500, 4), "sample", top_k=2,
                                      generator=torch.Generator().manual_seed(0))])
    assert set(draws.tolist()) <= {1, 2}  # top-2 truncation
    randoms = choose_actions(torch.zeros(4000, 4), "random", generator=torch.Generator().manual_seed(0))
    assert torch.bincount(randoms, minlength=4).min() > 900


def test_vocab_fixture_is_consistent():
    assert tiny_cola("llama").base.config.vocab_size == VOCAB


def test_num_samples_encodes_each_prompt_once_and_matches_repeated_prompts(cola_model):
    """An RL group: the prompt pass runs once per prompt, then its caches are repeated per sample."""
    ids, mask = left_pad(PROMPTS)
    options = dict(max_new_tokens=10, action_mode="sample", action_top_k=5, return_hidden=True)
    grouped = cola_model.generate_latent(ids, mask, num_samples=3, generator=torch.Generator().manual_seed(7),
                                         **options)
    repeated = cola_model.generate_latent(ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0),
                                          generator=torch.Generator().manual_seed(7), **options)
    assert torch.equal(grouped.sequences, repeated.sequences)
    assert torch.equal(grouped.actions, repeated.actions)
    torch.testing.assert_close(grouped.action_logprobs, repeated.action_logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(grouped.hidden, repeated.hidden, atol=1e-5, rtol=0)
    assert torch.equal(grouped.attention_mask, repeated.attention_mask)
    uncached = cola_model.generate_latent(ids, mask, num_samples=3, use_cache=False,
                                          generator=torch.Generator().manual_seed(7), **options)
    assert torch.equal(uncached.sequences, grouped.sequences)


def test_decoding_from_a_prefixs_caches_matches_decoding_from_scratch(cola_model):
    """The search's nodes pass the KV caches of a prefix: only the rest of the ids is run."""
    ids = torch.tensor([[1, 5, 7, 9, 4]])
    full = cola_model.generate_latent(ids, max_new_tokens=6, action_mode="greedy")
    prefix = cola_model.generate_latent(ids[:, :3], max_new_tokens=1, action_mode="greedy")  # caches of 3 ids
    assert [cache.get_seq_length() for cache in prefix.caches] == [3, 3]
    warm = cola_model.generate_latent(ids, max_new_tokens=6, action_mode="greedy", caches=prefix.caches)
    assert torch.equal(warm.sequences, full.sequences) and torch.equal(warm.actions, full.actions)
    length = warm.sequences.shape[1] - 1  # extended in place: they now cover all but the last token
    with pytest.raises(ValueError, match=f"the caches cover {length} tokens"):
        cola_model.generate_latent(ids, max_new_tokens=1, caches=warm.caches)
