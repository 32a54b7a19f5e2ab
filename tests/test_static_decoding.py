"""The decoding fast path (static KV caches, `cola.model.static_decoding`) decodes exactly what the dynamic
caches do. On CPU it runs eagerly; the compiled CUDA-graph step is measured by bench/gpu_check.py on a GPU."""

from __future__ import annotations

import pytest
import torch

from cola.model.kv_cache import CACHE_FIELD, returned_cache, with_cache
from cola.model.static_decoding import _KEPT, FAST_PATH_ENV, LENGTH_BUCKET, fast_path_default
from tests.test_generation import PROMPTS, left_pad


def _decode(model, fast_path: bool, prompts=PROMPTS, **options):
    ids, mask = left_pad(prompts)
    options = dict(max_new_tokens=12, action_mode="sample", action_top_k=5, return_hidden=True) | options
    return model.generate_latent(ids, mask, fast_path=fast_path, generator=torch.Generator().manual_seed(5),
                                 **options)


def _assert_same(fast, dynamic) -> None:
    assert torch.equal(fast.sequences, dynamic.sequences)
    assert torch.equal(fast.actions, dynamic.actions)
    assert torch.equal(fast.response_mask, dynamic.response_mask)
    assert torch.equal(fast.attention_mask, dynamic.attention_mask)
    torch.testing.assert_close(fast.action_logprobs, dynamic.action_logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.hidden, dynamic.hidden, atol=1e-5, rtol=0)


@pytest.mark.parametrize("options", [dict(), dict(num_samples=3), dict(eos_token_id=[4, 9, 17]),
                                     dict(token_sampling=True, token_top_k=10)],
                         ids=["sampled", "group-of-3", "eos", "sampled-tokens"])
def test_static_caches_decode_what_dynamic_caches_decode(cola_model, options):
    _assert_same(_decode(cola_model, True, **options), _decode(cola_model, False, **options))


def test_static_caches_are_reused_and_reset_between_calls(cola_model):
    """The model keeps its last static caches (a CUDA graph replays on fixed addresses): a second decode of
    the same shape must start from empty caches, and another shape gets new ones."""
    first = _decode(cola_model, True)
    kept = _KEPT[cola_model]
    other = [[p[-1], *p[:-1]] for p in PROMPTS]  # the same shape, other tokens
    _assert_same(_decode(cola_model, True, prompts=other), _decode(cola_model, False, prompts=other))
    assert _KEPT[cola_model] is kept
    _assert_same(_decode(cola_model, True), first)
    longer = _decode(cola_model, True, max_new_tokens=LENGTH_BUCKET)  # the next length bucket
    assert _KEPT[cola_model] is not kept
    _assert_same(longer, _decode(cola_model, False, max_new_tokens=LENGTH_BUCKET))
    import copy

    copy.deepcopy(cola_model)  # the steps live beside the model: a copy does not meet them


def test_fast_path_runs_in_the_models_dtype_under_autocast(cola_model):
    """transformers' static cache holds one dtype, autocast gives fp32 keys and bf16 values: the static path
    turns autocast off and decodes in the model's own (here fp32) precision."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = _decode(cola_model, True)
    _assert_same(fast, _decode(cola_model, False))


def test_fast_path_is_the_default_on_cuda_only(monkeypatch):
    assert not fast_path_default(torch.device("cpu"))
    assert fast_path_default(torch.device("cuda"))  # no CUDA needed to decide
    monkeypatch.setenv(FAST_PATH_ENV, "0")
    assert not fast_path_default(torch.device("cuda"))


def test_fast_path_refuses_what_it_cannot_do(cola_model):
    ids = torch.tensor([[1, 5, 7, 9]])
    prefix = cola_model.generate_latent(ids[:, :2], max_new_tokens=1, action_mode="greedy")
    with pytest.raises(ValueError, match="fast path decodes from scratch"):
        cola_model.generate_latent(ids, caches=prefix.caches, fast_path=True)
    with pytest.raises(ValueError, match="fast path decodes from scratch"):
        cola_model.generate_latent(ids, use_cache=False, fast_path=True)


def test_cache_argument_follows_the_installed_transformers(cola_model):
    """Model calls pass and read the KV cache under the installed version's name (`cache` since 5.2x,
    `past_key_values` before: GPU machines run this code on their own transformers)."""
    decoder = cola_model.base.get_decoder()
    out = decoder(input_ids=torch.tensor([[1, 2, 3]]), **with_cache(None, True))
    assert returned_cache(out).get_seq_length() == 3
    assert returned_cache(decoder(input_ids=torch.tensor([[4]]), **with_cache(returned_cache(out), True)))\
        .get_seq_length() == 4
    assert CACHE_FIELD in type(out).__dataclass_fields__
    assert returned_cache(decoder(input_ids=torch.tensor([[1]]), **with_cache(None, False))) is None
