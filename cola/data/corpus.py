"""Packed token streams for pretraining-style stages: corpus lines joined as EOS ex EOS ex ...
(calibration §1)."""

from __future__ import annotations

from pathlib import Path

import torch

from cola.io import read_text_lines


def pack_lines(lines: list[str], tokenizer) -> torch.Tensor:
    """One 1-D stream: EOS before every example, so each example starts from a clean boundary."""
    eos = tokenizer.eos_token_id
    encodings = tokenizer.backend_tokenizer.encode_batch(lines, add_special_tokens=False)
    stream: list[int] = []
    for encoding in encodings:
        stream.append(eos)
        stream.extend(encoding.ids)
    return torch.tensor(stream, dtype=torch.long)


def token_stream(path: Path, tokenizer) -> torch.Tensor:
    return pack_lines(read_text_lines(path), tokenizer)


def validation_batches(stream: torch.Tensor, seq_len: int, max_tokens: int) -> torch.Tensor:
    """Consecutive non-overlapping windows (N, seq_len) covering up to `max_tokens` of a validation stream."""
    n = min(stream.numel(), max_tokens) // seq_len
    return stream[: n * seq_len].view(n, seq_len)


class TokenStream:
    """Random windows of a packed token stream, drawn with a seeded generator whose state is checkpointed."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int) -> None:
        if tokens.numel() <= seq_len:
            raise ValueError(f"token stream of {tokens.numel()} tokens is shorter than seq_len {seq_len}")
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.generator = torch.Generator().manual_seed(seed)

    def __next__(self) -> torch.Tensor:
        starts = torch.randint(0, self.tokens.numel() - self.seq_len, (self.batch_size,),
                               generator=self.generator)
        return torch.stack([self.tokens[s : s + self.seq_len] for s in starts.tolist()])

    def __iter__(self) -> TokenStream:
        return self
