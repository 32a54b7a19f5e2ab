"""One training loop for every pretraining-style stage (base LM, latent actions, BC, FTA, SFT).

AdamW with linear warmup and cosine decay to a floor, gradient clipping, accelerate for devices and mixed
precision, a progress bar, interval logging, and resumable checkpoints: the budget is counted in optimizer steps
so the same params give the same result, and a stage killed mid-way resumes from its last checkpoint to the
same final weights as an uninterrupted run (model, optimizer, scheduler and data-sampler state are all saved).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from cola.train.losses import LossOutput


@dataclass
class OptimConfig:
    """Optimisation settings shared by the training stages (one copy per stage in params.yaml)."""

    steps: int = field(default=500, metadata={"help": "Optimizer steps (the training budget).", "min": 1})
    batch_size: int = field(default=32, metadata={"help": "Sequences per optimizer step.", "min": 1})
    seq_len: int = field(default=128, metadata={"help": "Tokens per training sequence.", "min": 2})
    lr: float = field(default=2e-3, metadata={"help": "Peak learning rate.", "min": 0, "exclusive_min": True})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "Cosine floor as a fraction of lr.", "min": 0,
                                                       "max": 1})
    warmup_steps: int = field(default=30, metadata={"help": "Linear warmup steps.", "min": 0})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (0 for the codebook).",
                                                        "min": 0})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1.", "min": 0, "max": 1})
    beta2: float = field(default=0.95, metadata={"help": "AdamW beta2.", "min": 0, "max": 1})
    grad_clip: float = field(default=1.0, metadata={"help": "Max global gradient norm (0 disables).", "min": 0})
    log_every: int = field(default=25, metadata={"help": "Log metrics every N steps.", "min": 1})
    checkpoint_every: int = field(default=200, metadata={"help": "Save a resumable checkpoint every N steps.",
                                                         "min": 1})
    seed: int = field(default=0, metadata={"help": "Seed for init, data sampling and Gumbel noise."})


def optim_default(name: str, value: Any) -> Any:
    """OptimConfig's field `name` with another default: stage configs inherit OptimConfig (so params read
    `latent.lr`, `bc.steps`, ...) and set their own calibrated defaults this way."""
    return field(default=value, metadata={f.name: f for f in fields(OptimConfig)}[name].metadata)


def fingerprint(*parts: Any) -> str:
    """A short hash of params and inputs: a resumable checkpoint is reused only for the same fingerprint."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """Content hash of an input file or of every file in an input folder (mtimes change on checkout)."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def cosine_with_warmup(step: int, cfg: OptimConfig) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to `min_lr_ratio` at `steps`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(named_params: list[tuple[str, torch.nn.Parameter]], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with no weight decay on norms, biases and the action codebook (cola-spec.md §2.4)."""
    decay, no_decay = [], []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or "action_codebook" in name or "norm" in name
        (no_decay if exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


class TokenStream:
    """Random windows of a packed token stream, drawn with a seeded generator whose state is checkpointed."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int) -> None:
        if tokens.numel() <= seq_len:
            raise ValueError(f"token stream of {tokens.numel()} tokens is shorter than seq_len {seq_len}")
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.generator = torch.Generator().manual_seed(seed)

    def __next__(self) -> torch.Tensor:
        starts = torch.randint(0, self.tokens.numel() - self.seq_len, (self.batch_size,), generator=self.generator)
        return torch.stack([self.tokens[s : s + self.seq_len] for s in starts.tolist()])

    def __iter__(self) -> TokenStream:
        return self


Batch = Any  # a tensor, or a dict / tuple of tensors (e.g. ids, attention mask, loss mask)
LossFn = Callable[[Batch, torch.Generator], LossOutput]


class BatchSource(Protocol):
    """Anything that yields batches and draws them with `generator` (checkpointed for exact resumption)."""

    generator: torch.Generator

    def __next__(self) -> Batch: ...


def to_device(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return type(batch)(to_device(v, device) for v in batch)


def count_tokens(batch: Batch) -> int:
    """Tokens in a batch: the attention mask's ones when there is one, else the id tensor's size."""
    if isinstance(batch, torch.Tensor):
        return batch.numel()
    if isinstance(batch, dict):
        mask = batch.get("attention_mask")
        return int(mask.sum()) if mask is not None else count_tokens(batch["input_ids"])
    return count_tokens(batch[0])
LogFn = Callable[[int, dict[str, float]], None]


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    batches: BatchSource,
    cfg: OptimConfig,
    *,
    checkpoint_dir: Path | None = None,
    on_log: LogFn | None = None,
    description: str = "train",
    fingerprint: str = "",
) -> dict[str, float]:
    """Run `cfg.steps` optimizer steps of `loss_fn(batch, generator)` on the model's trainable parameters.

    `loss_fn` receives a batch (see `BatchSource`) and a seeded generator for its own randomness (Gumbel noise), whose state
    is checkpointed with everything else. A checkpoint is resumed only when its `fingerprint` (a hash of the
    stage's params and inputs) matches, and is deleted once training completes, so a re-run with other params
    never continues from stale weights. Returns the last logged metrics plus `tokens_per_second`.
    """
    torch.manual_seed(cfg.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("no trainable parameters: call model.set_stage(...) first")
    optimizer = make_optimizer(named, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, cfg))
    model, optimizer = accelerator.prepare(model, optimizer)
    params = [p for _, p in named]
    noise = torch.Generator().manual_seed(cfg.seed + 1)
    start = _resume(checkpoint_dir, fingerprint, accelerator.unwrap_model(model), optimizer, scheduler, batches,
                    noise)

    model.train()
    window: dict[str, list[float]] = {}
    logged: dict[str, float] = {}
    tokens, clock = 0, time.perf_counter()
    bar = tqdm(range(start, cfg.steps), desc=description, initial=start, total=cfg.steps,
               disable=not accelerator.is_main_process, mininterval=2.0)
    for step in bar:
        batch = to_device(next(batches), accelerator.device)
        out = loss_fn(batch, noise)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(out.loss)
        grad_norm = (accelerator.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0
                     else torch.tensor(float("nan")))
        optimizer.step()
        scheduler.step()
        tokens += count_tokens(batch)
        for key, value in {**out.metrics, "grad_norm": float(grad_norm)}.items():
            window.setdefault(key, []).append(value)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            elapsed = time.perf_counter() - clock
            logged = {k: sum(v) / len(v) for k, v in window.items()}
            logged.update(lr=scheduler.get_last_lr()[0], tokens_per_second=tokens / max(elapsed, 1e-9))
            window, tokens, clock = {}, 0, time.perf_counter()
            bar.set_postfix(loss=f"{logged.get('loss', float('nan')):.3f}")
            if on_log is not None:
                on_log(step + 1, logged)
        if checkpoint_dir is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            _save(checkpoint_dir, fingerprint, step + 1, accelerator.unwrap_model(model), optimizer, scheduler,
                  batches, noise)
    if checkpoint_dir is not None:  # done: keep the (DVC-declared) folder, empty
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        checkpoint_dir.mkdir(parents=True)
    model.eval()
    return logged


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _save(folder: Path, fingerprint: str, step: int, model, optimizer, scheduler, batches: BatchSource,
          noise: torch.Generator) -> None:
    """Write a resumable checkpoint atomically (temp folder, then rename over the old one); no pickle."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
    opt = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.contiguous() for i, st in opt["state"].items() for k, v in st.items()}
    tensors.update(data_rng=batches.generator.get_state(), noise_rng=noise.get_state(),
                   torch_rng=torch.get_rng_state())
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    meta = {"step": step, "fingerprint": fingerprint, "param_groups": opt["param_groups"], "scheduler": scheduler.state_dict()}
    (tmp / "progress.json").write_text(json.dumps(meta))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _resume(folder: Path | None, fingerprint: str, model, optimizer, scheduler, batches: BatchSource,
            noise: torch.Generator) -> int:
    """Restore the latest checkpoint in `folder`, if any; return the step to continue from."""
    if folder is None or not (folder / "progress.json").is_file():
        return 0
    meta = json.loads((folder / "progress.json").read_text())
    if meta.get("fingerprint") != fingerprint:
        print(f"note: ignoring the checkpoint in {folder}: it was written for other params or inputs")
        return 0
    current = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in load_file(str(folder / "trainable.safetensors")).items():
            current[name].copy_(value)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    batches.generator.set_state(tensors.pop("data_rng"))
    noise.set_state(tensors.pop("noise_rng"))
    torch.set_rng_state(tensors.pop("torch_rng"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    return meta["step"]
