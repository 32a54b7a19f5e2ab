"""The tiny base builder gives an ordinary HF folder of the calibrated size."""

from __future__ import annotations

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
