"""The tiny base builder gives an ordinary HF folder of the calibrated size."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from cola.base.tiny import build_tiny_base
from cola.config import TinyBaseConfig
from cola.model.checkpoint import save_hf_folder

CORPUS = [f"Q: Calculate {a} + {b}. A: \\boxed{{{a + b}}}" for a in range(40) for b in range(0, 40, 3)] + [
    "Q: Spell backward: neon A: \\boxed{noen}", "Q: Reverse the words: hundred, go A: \\boxed{go, hundred}"]


def test_default_tiny_base_is_about_1_25m_parameters_and_loads_with_auto_classes(tmp_path):
    model, tokenizer = build_tiny_base(CORPUS, TinyBaseConfig(vocab_size=400), seed=0)
    folder = save_hf_folder(model, tokenizer, tmp_path / "base")
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert loaded.config.model_type == "llama" and not loaded.config.tie_word_embeddings
    text = "Q: Calculate 13 - 92. A: \\boxed{-79}"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1 and tok.padding_side == "left"
    # With the default 1024-token vocabulary the model has ~1.25M parameters (calibration.md §2).
    full = AutoModelForCausalLM.from_config(
        loaded.config.__class__(**{**loaded.config.to_dict(), "vocab_size": 1024}))
    assert 1.0e6 < sum(p.numel() for p in full.parameters()) < 1.5e6
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # no temporary folder left behind


def test_a_bf16_hub_checkpoint_becomes_an_fp32_base(tmp_path):
    """`base.source: hf` keeps the trainers' weights fp32 (bf16 comes from autocast) even though transformers
    loads a checkpoint in its own dtype, bf16 for Llama 3.1."""
    import json

    import torch

    from cola.config import BaseConfig
    from cola.model.checkpoint import read_safetensors_header
    from cola.train.base_lm import run_base

    model, tokenizer = build_tiny_base(CORPUS, TinyBaseConfig(vocab_size=400), seed=0)
    hub = save_hf_folder(model.to(torch.bfloat16), tokenizer, tmp_path / "hub")
    assert {dtype for dtype, _ in read_safetensors_header(hub / "model.safetensors").values()} == {"BF16"}
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "val.txt").write_text("\n".join(CORPUS[:20]) + "\n")
    run_base(BaseConfig(source="hf", hf_path=str(hub), val_tokens=128), corpus, tmp_path / "base")
    saved = read_safetensors_header(tmp_path / "base" / "model.safetensors")
    assert {dtype for dtype, _ in saved.values()} == {"F32"}
    assert json.loads((tmp_path / "base" / "config.json").read_text())["dtype"] == "float32"


def test_saving_a_model_does_not_import_deepspeed(tmp_path):
    """accelerate's unwrapping inside `save_pretrained` would import DeepSpeed (1.4 s a stage) wherever it is
    installed; `save_hf_folder` skips it, and the folder still loads."""
    import subprocess
    import sys

    code = ("import sys; from tests.test_tiny_base import CORPUS; "
            "from cola.base.tiny import build_tiny_base; from cola.config import TinyBaseConfig; "
            "from cola.model.checkpoint import save_hf_folder; "
            "m, t = build_tiny_base(CORPUS, TinyBaseConfig(vocab_size=400), seed=0); "
            f"save_hf_folder(m, t, {str(tmp_path / 'base')!r}); print('deepspeed' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "base").config.model_type == "llama"
