"""The tiny byte-level BPE tokenizer: exact round trips, one token per digit, offline save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from cola.base.tokenizer import train_tokenizer
from cola.tasks import TASK_NAMES
from cola.tasks.procedural import make_examples

EXTRA = [
    "Q: Calculate 13 - 92. A: \\boxed{-79}",
    "Q: Use 7, 5, 1 to make 35. A: <think> 7*5=35, 35/1=35 </think> <answer>7*5/1</answer>",
    "  two  spaces , odd   punctuation ?! tab\there é ü 😀 1234567890 -0.5",
]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [ex["text"] for task in sorted(TASK_NAMES) for ex in make_examples(task, 300, seed=0)]


@pytest.fixture(scope="module")
def tok(texts: list[str]):
    return train_tokenizer(texts, vocab_size=512)


def test_special_tokens_and_settings(tok) -> None:
    assert (tok.pad_token, tok.pad_token_id) == ("<pad>", 0)
    assert (tok.eos_token, tok.eos_token_id) == ("<eos>", 1)
    assert tok.bos_token_id == 1
    assert tok.padding_side == "left"
    assert 300 < len(tok) <= 512
    # nothing is added on encode: the trainers place EOS themselves
    assert tok("Q:")["input_ids"] == tok.convert_tokens_to_ids(tok.tokenize("Q:"))


def test_round_trip(tok, texts: list[str]) -> None:
    for text in texts + EXTRA:
        assert tok.decode(tok(text)["input_ids"]) == text


def test_digits_are_single_tokens(tok, texts: list[str]) -> None:
    for text in texts + EXTRA:
        ids = tok(text)["input_ids"]
        digit_tokens = [tok.decode([i]) for i in ids if any(c.isdigit() for c in tok.decode([i]))]
        assert all(len(t) == 1 for t in digit_tokens), digit_tokens
        assert len(digit_tokens) == sum(c.isdigit() for c in text)


def test_merges_were_learned(tok) -> None:
    # frequent words of the task templates become single tokens
    assert len(tok("\\boxed")["input_ids"]) <= 2
    assert len(tok(" Calculate")["input_ids"]) == 1


def test_save_load_offline(tok, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.bos_token_id) == (0, 1, 1)
    assert loaded.padding_side == "left"
    for text in EXTRA:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"]) == text
    batch = loaded(["Q: hi", "Q: Calculate 1 + 2. A:"], padding=True)
    short = batch["input_ids"][0]
    assert short[0] == 0 and short[-1] != 0  # left padding
    assert batch["attention_mask"][0][0] == 0
