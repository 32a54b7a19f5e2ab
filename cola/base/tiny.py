"""The tiny default base: a ~1.25M-parameter Llama and its BPE tokenizer, trained on the pipeline's corpus.

Calibration on 2 CPU cores (calibration.md §2): d=128, 4 layers, 4 heads / 2 KV heads, FFN 512, untied head,
vocabulary 1024 reaches val loss 0.83 in about 6 minutes; models above ~2M parameters are too slow there.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from cola.base.tokenizer import train_tokenizer
from cola.config import TinyBaseConfig


def tiny_llama_config(cfg: TinyBaseConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def build_tiny_base(
    corpus: Iterable[str], cfg: TinyBaseConfig, seed: int = 0
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Train the tokenizer on `corpus` and initialise a Llama of the configured shape (weights random)."""
    tokenizer = train_tokenizer(corpus, vocab_size=cfg.vocab_size,
                                model_max_length=cfg.max_position_embeddings)
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(cfg, tokenizer)), tokenizer
