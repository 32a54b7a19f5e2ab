"""What every evaluation runner shares: the request (`EvalContext`), its error type, and reading task data.

`cola eval` builds one `EvalContext` (the loaded model, where the data is, the generation options) and the
runners of :mod:`cola.eval.runner` read everything from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cola.errors import ColaError
from cola.io import read_jsonl, read_text_lines


class EvalError(ColaError):
    """An evaluation request that cannot run as given (unknown task, missing data file, bad option)."""

@dataclass
class EvalContext:
    """Everything a task runner may need: the loaded model, where the data is, and the generation options."""

    model_path: str
    model: Any
    tokenizer: Any
    kind: str
    data_dir: Path = Path("data")
    split: str = "test"
    limit: int | None = None
    batch_size: int = 64
    max_new_tokens: int | None = None  # None: room for the longest reference completion (+8 tokens)
    action_mode: str = "greedy"
    seed: int = 0
    progress: bool = True
    samples: int = 1  # > 1: that many sampled answers per problem (pass@k, best-of-n, majority vote)
    options: dict[str, Any] = field(default_factory=dict)  # runner-specific extras (e.g. lm-eval settings)

    @property
    def task_dir(self) -> Path:
        return Path(self.data_dir) / "tasks" / self.split

def task_files(data_dir: Path | str, split: str) -> dict[str, Path]:
    """Task name → `<data_dir>/tasks/<split>/<task>.jsonl` for the task files that exist."""
    folder = Path(data_dir) / "tasks" / split
    return {p.stem: p for p in sorted(folder.glob("*.jsonl"))} if folder.is_dir() else {}

def default_max_new_tokens(tokenizer, examples: Sequence[dict[str, Any]]) -> int:
    """Room for the longest reference completion plus 8 tokens (countdown traces are ~3× a boxed answer)."""
    completions = [ex["completion"] for ex in examples if ex.get("completion")]
    if not completions:
        return 32
    lengths = [len(ids) for ids in tokenizer(completions, add_special_tokens=False)["input_ids"]]
    return max(lengths) + 8

def heldout_lines(ctx: EvalContext) -> list[str]:
    """`<data_dir>/corpus/<split>.txt` if it exists, else the `text` of every example of the split's tasks."""
    corpus = Path(ctx.data_dir) / "corpus" / f"{ctx.split}.txt"
    if corpus.is_file():
        lines = read_text_lines(corpus)
    else:
        lines = [
            ex["text"] for path in task_files(ctx.data_dir, ctx.split).values() for ex in read_jsonl(path)
        ]
    if not lines:
        raise EvalError(f"no held-out text: neither {corpus} nor task files in {ctx.task_dir}")
    return lines[: ctx.limit or None]

def cut_prefixes(texts: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """`n` texts (seeded choice) cut at a random point of their middle half, as open prefixes.

    Diversity and action-following need prefixes whose continuation is open: after a task prompt's "A:", the
    answer format fixes the next tokens whatever the action, which would hide what the actions do.
    """
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(texts), generator=generator)[:n].tolist()
    cuts = torch.rand(len(picks), generator=generator).tolist()
    return [texts[i][: max(1, int(len(texts[i]) * (0.25 + 0.5 * c)))]
            for i, c in zip(picks, cuts, strict=True)]

def heldout_prefixes(ctx: EvalContext, n: int) -> list[str]:
    """`n` open prefixes of the split's held-out texts (see `cut_prefixes`)."""
    return cut_prefixes(heldout_lines(ctx), n, seed=ctx.seed)

def headline_metrics(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The scalar numbers of a result, flattened with `/` (records, histograms and examples left out)."""
    flat: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(headline_metrics(value, name))
        elif isinstance(value, bool | int | float) and not isinstance(value, bool):
            flat[name] = value
    return flat
