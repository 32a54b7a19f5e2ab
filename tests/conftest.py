"""Shared fixtures: tiny random base models of two architectures, wrapped as CoLA models."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# Tests never log to the project's own MLflow store; the tracking tests point MLFLOW_TRACKING_URI at tmp_path.
os.environ.setdefault("COLA_TRACKING", "off")
# Runs kept for `cola track sync` when a test's store fails go to a throwaway folder, not the repository's.
os.environ.setdefault("COLA_OUTBOX", tempfile.mkdtemp(prefix="cola-outbox-"))
# Tiny test models run several times faster on one thread than on two (OpenMP overhead dominates).
torch.set_num_threads(1)

VOCAB = 50


def tiny_base_config(arch: str = "llama"):
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=0, eos_token_id=1, bos_token_id=1)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    raise ValueError(arch)


def tiny_cola(arch: str = "llama", seed: int = 0, **cola_kwargs):
    from cola.model import CoLAForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(tiny_base_config(arch))
    cola_kwargs.setdefault("num_actions", 8)
    cola_kwargs.setdefault("merge_intermediate_size", 64)
    return CoLAForCausalLM.from_base(base, **cola_kwargs).eval()


@pytest.fixture(params=["llama", "qwen2"])
def arch(request) -> str:
    return request.param


@pytest.fixture
def cola_model(arch):
    return tiny_cola(arch)
