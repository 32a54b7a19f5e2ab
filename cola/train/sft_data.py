"""Supervised fine-tuning batches over task examples (FTA and the token-level SFT baseline).

Each example becomes one sequence ``EOS + prompt + completion + EOS``: the leading EOS plays the BOS role, as
in the pretraining corpus (examples joined by EOS), so the model sees the same context shape at fine-tuning
and at generation time. Prompt and completion are tokenised *separately* so the prompt/response boundary is
exact and the prompt tokens are the ones the model will see when it is given the prompt alone at test time.

Batches are **right-padded** and carry a ``loss_mask`` that marks the completion tokens and the final EOS
(response-only loss, as the authors' SFT masks prompts). Right padding is fine for training even though the
model API assumes left padding for generation: ``left_padded_positions`` (cumsum − 1) of a row whose ones
form a prefix gives 0, 1, …, L−1 on its real tokens, i.e. the unpadded positions, and causal attention never
lets a real token see the padding after it. (The one slot that differs is the IDM label at a row's last real
token, which reads the next, padded position; that slot's target is padding and is never scored.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cola.errors import ColaError
from cola.io import read_jsonl


def load_task_examples(tasks_dir: str | Path, split: str, tasks: Sequence[str]) -> list[dict[str, Any]]:
    """Examples of `tasks` (in that order, file order within a task) from ``tasks_dir/<split>/<task>.jsonl``.

    Raises FileNotFoundError naming the missing file (usually: the `prepare` stage has not run), and one
    `cola.io.InputError` line naming the file and line of a row that is not a JSON object with string
    ``prompt`` and ``completion`` (or not UTF-8).
    """
    files = [Path(tasks_dir) / split / f"{task}.jsonl" for task in tasks]
    return [ex for path in files for ex in read_jsonl(path, required=("prompt", "completion"))]


class SFTBatches:
    """Seeded batches of ``EOS + prompt + completion + EOS`` sequences, sampled with replacement.

    Yields ``{"input_ids", "attention_mask", "loss_mask"}`` of shape (B, L) with L the longest sequence in the
    batch; padding is on the right with the tokenizer's pad id. ``loss_mask`` is True on the completion tokens
    and the final EOS: the losses read it as "the target x_{t+1} at slot t counts" (``loss_mask[:, 1:]``), so
    the first completion token is scored from the last prompt slot and the prompt itself never is.

    Sequences longer than `max_len` keep their first `max_len` tokens (the completion is cut, so it has no
    final EOS); examples whose prompt leaves no room for a single completion token are dropped. Both counts
    are kept in `n_truncated` / `n_dropped`. The sampler's state lives in `generator`, which the training loop
    checkpoints, so a resumed run draws the same batches as an uninterrupted one.
    """

    def __init__(self, examples: Sequence[dict[str, Any]], tokenizer, batch_size: int, max_len: int,
                 seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3 (EOS, one prompt token, one target), got {max_len}")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no eos_token_id")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        self.batch_size, self.max_len, self.pad_id, self.eos_id = batch_size, max_len, pad, eos
        prompts = _encode(tokenizer, [ex["prompt"] for ex in examples])
        completions = _encode(tokenizer, [ex["completion"] for ex in examples])
        # Each kept example: (token ids, index of the first completion token).
        self.sequences: list[tuple[list[int], int]] = []
        self.n_truncated = self.n_dropped = 0
        for prompt, completion in zip(prompts, completions, strict=True):
            ids = [eos, *prompt, *completion, eos]
            start = 1 + len(prompt)
            if start >= max_len:  # not even the first completion token fits
                self.n_dropped += 1
                continue
            if len(ids) > max_len:
                self.n_truncated += 1
                ids = ids[:max_len]
            self.sequences.append((ids, start))
        if not self.sequences:
            raise ColaError(f"no SFT example fits in max_len={max_len} tokens "
                            f"({len(examples)} examples, {self.n_dropped} dropped)")
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.sequences)

    def __iter__(self) -> SFTBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        picks = torch.randint(0, len(self.sequences), (self.batch_size,), generator=self.generator)
        return self.collate([self.sequences[i] for i in picks.tolist()])

    def collate(self, rows: Sequence[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        """Right-pad `(ids, completion_start)` rows into one batch."""
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        loss_mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for r, (ids, start) in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            attention_mask[r, : len(ids)] = 1
            loss_mask[r, start : len(ids)] = True
        return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}

    def all_batches(self, batch_size: int | None = None):
        """Every kept example once, in order, in batches (for evaluation; does not touch `generator`)."""
        size = batch_size or self.batch_size
        for i in range(0, len(self.sequences), size):
            yield self.collate(self.sequences[i : i + size])


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    # One batched call (fast tokenizers parallelise it); no special tokens: EOS is placed by hand.
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]
