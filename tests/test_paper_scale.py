"""The `llama-3.1-8b` profile builds the paper's model: built on the meta device (no weights, no download)
from the profile's own params, its modules have the parameter counts of cola-spec.md §2.7."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from cola.config import PipelineParams, from_dict
from cola.config.profiles import merged_profile
from cola.train.latent import cola_from_base

REPO = Path(__file__).resolve().parents[1]

# Llama-3.1-8B's shapes (cola-spec.md §1): the hub config, which this offline machine cannot fetch.
LLAMA_3_1_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                    rms_norm_eps=1e-5, rope_theta=5e5, tie_word_embeddings=False)


def billions(*modules: torch.nn.Module) -> float:
    return sum(p.numel() for m in modules for p in m.parameters()) / 1e9


def test_the_paper_profile_builds_the_paper_sized_model_on_the_meta_device() -> None:
    profile = merged_profile("llama-3.1-8b", REPO / "configs" / "profiles")
    architecture = from_dict(PipelineParams, profile, where="", source="llama-3.1-8b").latent.cola
    with torch.device("meta"):
        model = cola_from_base(AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA_3_1_8B)), architecture)
    assert all(p.is_meta for p in model.parameters())
    assert billions(model.base) == pytest.approx(8.030, rel=0.01)
    assert billions(model.idm, model.idm_head) == pytest.approx(0.873, rel=0.01)
    assert billions(model.merge_blocks) == pytest.approx(0.587, rel=0.01)
    assert billions(model.policy, model.policy_head) == pytest.approx(1.745, rel=0.01)
    assert billions(model) == pytest.approx(11.236, rel=0.01)
    assert len(model.state_dict()) == 410  # the released checkpoint's tensor count
