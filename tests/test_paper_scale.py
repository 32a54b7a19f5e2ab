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


def test_the_accelerate_configs_parse_and_the_fsdp_ones_name_the_paper_models_layers() -> None:
    """Every configs/accelerate/*.yaml loads with accelerate's own loader; the FSDP ones ask for FSDP2 and
    name classes the 8B CoLA model has, whose modules (the units `cola.train.sharding` shards) hold all of
    it but the base's embeddings and LM head (1.05B, replicated)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    folder = REPO / "configs" / "accelerate"
    configs = {path.stem: load_config_from_file(str(path)) for path in folder.glob("*.yaml")}
    assert set(configs) == {"cpu-2proc", "multi-gpu", "fsdp", "fsdp-grad-op", "deepspeed-zero2",
                            "deepspeed-zero3"}
    fsdp = {name: c for name, c in configs.items() if c.distributed_type == DistributedType.FSDP}
    assert set(fsdp) == {"fsdp", "fsdp-grad-op"}
    assert {c.fsdp_config["fsdp_reshard_after_forward"] for c in fsdp.values()} == {True, False}
    zero = {name: c.deepspeed_config for name, c in configs.items()
            if c.distributed_type == DistributedType.DEEPSPEED}
    assert {name: c["zero_stage"] for name, c in zero.items()} == {"deepspeed-zero2": 2, "deepspeed-zero3": 3}
    for config in zero.values():  # what cola.train.zero reads; the rest comes from params
        assert config["offload_optimizer_device"] == config["offload_param_device"] == "none"
        assert "deepspeed_config_file" not in config

    with torch.device("meta"):
        profile = merged_profile("llama-3.1-8b", REPO / "configs" / "profiles")
        architecture = from_dict(PipelineParams, profile, where="", source="llama-3.1-8b").latent.cola
        model = cola_from_base(AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA_3_1_8B)), architecture)
    for config in fsdp.values():
        assert config.fsdp_config["fsdp_version"] == 2
        wrap = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")
        assert wrap == ["LlamaDecoderLayer", "SwiGLUMerge"]
        assert type(model.base.model.layers[0]).__name__ == wrap[0]
        assert wrap[0] in model.base._no_split_modules  # transformers' own unit for this model
        units = [m for m in model.modules() if type(m).__name__ in wrap]
        assert len(units) == 32 + 4 + 8 + 2  # base, IDM and policy layers, merge blocks
        replicated = billions(model) - billions(*units)
        assert replicated == pytest.approx(billions(model.base.model.embed_tokens, model.base.lm_head),
                                           abs=0.001)
        assert replicated == pytest.approx(1.051, rel=0.01)
