"""The one training core: every trainer of the pipeline (base, latent, BC, FTA/SFT, GRPO) runs this loop.

`Trainer` owns what all stages share, once: AdamW with one weight-decay rule, linear warmup + cosine decay to
a floor, gradient clipping, the logging window and its progress bar, and resumable checkpoints (trainable
weights, optimizer, schedule, random streams, the logged curve; a fingerprint of params and inputs; an atomic
rename). A trainer supplies its step and what else its state holds, TRL's "override the hook, not the loop":

    training_step()       compute a loss, call `self.optimize(loss)` (once, or once per PPO epoch), return
                          metrics
    extra_state()         tensors and JSON-able values to checkpoint besides the core's own (data samplers,
                          ...)
    load_extra_state()    their inverse

`BatchTrainer` is the trainer of the pretraining-style stages: one batch, one loss, one optimizer step.
Budgets are optimizer steps, so the same params give the same result, and a run killed mid-way resumes from
its last checkpoint to the same weights and the same logged numbers as an uninterrupted one.

Devices, precision and processes go through `accelerate`: under ``accelerate launch`` every process keeps
its block of each global batch, gradients are averaged across processes and only the main process logs and
writes (`cola.train.distributed`), so N processes train the same weights as one. A `BatchTrainer` splits its
block into micro-batches of ``micro_batch_size`` rows (gradient accumulation to the same global batch), and
shards under an FSDP launch (`cola.train.sharding`) or a DeepSpeed ZeRO one (`cola.train.zero`).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm

from cola.config import OptimConfig
from cola.errors import ColaError
from cola.io import atomic_dir
from cola.model.sampling import BatchRows, NoiseSource
from cola.train import recompute, sharding, zero
from cola.train.batches import Batch, count_rows, count_tokens, map_batch, to_device
from cola.train.distributed import Processes
from cola.train.losses import LossOutput

LogFn = Callable[[int, dict[str, float]], None]

STATE_FILE, META_FILE = "state.safetensors", "meta.json"


def cosine_with_warmup(step: int, cfg: OptimConfig) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to `min_lr_ratio` at `steps`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(named_params: list[tuple[str, torch.nn.Parameter]], cfg: OptimConfig,
                   foreach: bool | None = None) -> torch.optim.AdamW:
    """AdamW; matrices decay, while norms, biases and the action codebook do not (cola-spec.md §2.4).
    `foreach=False` where sharded and whole parameters mix (the fused multi-tensor kernels take one kind)."""
    decay, no_decay = [], []
    for name, param in named_params:
        exempt = param.ndim < 2 or "action_codebook" in name or "norm" in name
        (no_decay if exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=foreach)


class Trainer:
    """Runs ``cfg.steps`` steps of :meth:`training_step` on the model's trainable parameters.

    Args:
        model: the module whose parameters with ``requires_grad`` train (freeze the rest first).
        cfg: the stage's params section (any `OptimConfig`).
        seed: seeds the global RNG at the start of :meth:`train`.
        checkpoint_dir: where resumable checkpoints go (None: no checkpoints).
        fingerprint: a hash of the params and inputs; a checkpoint with another one is ignored.
        keep_final: keep a checkpoint of the finished run (a later sub-stage or seed can be killed without
            redoing this one); otherwise the folder is emptied when training completes.
        description: the progress bar's label.
        on_log: ``on_log(step, metrics)`` every ``cfg.log_every`` steps with the window's mean metrics.
    """

    #: Train mode during training (dropout on); RL keeps eval mode so sampler and learner are one function.
    train_mode = True
    #: Metrics shown beside the progress bar (a BatchTrainer shows its loss function's first metric).
    postfix_keys: tuple[str, ...] = ()
    #: Whether an FSDP launch shards the model (`cola.train.sharding`): trainers whose model is called only
    #: through its pieces inside `training_step`. RL's samplers and references, Q-learning's target hold the
    #: model elsewhere: under an FSDP launch they train data-parallel, so one launch section serves a DAG.
    shardable = False

    def __init__(self, model: torch.nn.Module, cfg: OptimConfig, *, seed: int = 0,
                 checkpoint_dir: str | Path | None = None, fingerprint: str = "", keep_final: bool = False,
                 description: str = "train", on_log: LogFn | None = None) -> None:
        self.cfg, self.seed, self.fingerprint = cfg, seed, fingerprint
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.keep_final, self.description, self.on_log = keep_final, description, on_log
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.processes = Processes(self.accelerator)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("no trainable parameters: freeze by stage (model.set_stage(...)) "
                             "before training")
        # The model is moved, not wrapped: gradients are averaged by `Processes` (cola.train.distributed), or
        # FSDP shards its layers in place (cola.train.sharding), or `train` gives the loss to ZeRO (.zero).
        self.model = model.to(self.accelerator.device)
        if recompute.requested():
            recompute.enable_gradient_checkpointing(self.model)
        fsdp, zero_settings = sharding.requested(), zero.requested()
        self.sharding = sharding.Sharding(self.model, fsdp, self.processes.world) \
            if self._shards(fsdp, "shard its model (FSDP)") else None
        self.zero_settings = zero_settings if self._shards(zero_settings, "partition its training state "
                                                                         "(DeepSpeed ZeRO)") else None
        self.zero: zero.ZeroEngine | None = None  # started by `train`, after a checkpoint is loaded
        self.unsharded = False
        # Our own bf16 autocast, the same under every launch (accelerate's is off under DeepSpeed).
        self.bf16 = self.accelerator.mixed_precision == "bf16"
        self._collect_params()
        self.optimizer = make_optimizer(self.named_params, cfg, foreach=False if self.sharding else None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda s: cosine_with_warmup(s, cfg))
        self.global_step = 0
        self.history: list[tuple[int, dict[str, float]]] = []  # every logged window, in order
        self._window: dict[str, list[float]] = {}

    def _shards(self, settings: object | None, what: str) -> bool:
        """Whether this trainer applies a launch's sharding `settings` (None: the launch asks for none)."""
        if settings is None or self.processes.world == 1:
            return False
        if not self.shardable and self.processes.is_main:
            print(f"note: {type(self).__name__} does not {what}: it trains data-parallel, the whole model "
                  "and optimizer on every process")
        return self.shardable

    def _start_zero(self) -> zero.ZeroEngine:
        """The ZeRO engine of a shardable trainer (`BatchTrainer` gives it its loss)."""
        raise NotImplementedError

    def _collect_params(self) -> None:
        """The trainable parameters as the model holds them now (sharding replaces them)."""
        self.named_params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named_params]
        self.whole_params = [p for p in self.params if not isinstance(p, DTensor)]

    # ------------------------------------------------------------------------------------------ hooks

    def training_step(self) -> dict[str, float]:
        """One step: compute a loss, `self.optimize(loss)`, return its metrics (``n_tokens`` gives
        tokens/s)."""
        raise NotImplementedError

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON-able values) a subclass must checkpoint besides the core's own state."""
        return {}, {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    # ------------------------------------------------------------------------------------------ the loop

    @property
    def lr(self) -> float:
        """The learning rate of the next optimizer step."""
        return self.scheduler.get_last_lr()[0]

    def optimize(self, loss: torch.Tensor) -> float:
        """Backward, clip and one optimizer step; returns the gradient norm before clipping."""
        self.zero_grad()
        self.backward(loss)
        return self.step_optimizer()

    def zero_grad(self) -> None:
        """Forget the last step's gradients (a ZeRO engine clears its own; offloading, it keeps buffers)."""
        if self.zero is None:
            self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate `loss`'s gradients (through the ZeRO engine under DeepSpeed)."""
        if self.zero is not None:
            self.zero.backward(loss)
        else:
            loss.backward()

    def step_optimizer(self) -> float:
        """Average the accumulated gradients over processes, clip, step; the norm before clipping."""
        if self.zero is not None:  # the engine reduces, clips and steps
            return self.zero.step()
        self.processes.average_gradients(self.whole_params)  # FSDP averaged the sharded ones
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf  # inf: measure, never clip
        if self.sharding is not None:
            grad_norm = sharding.clip_grad_norm(self.params, max_norm)
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        self.optimizer.step()
        return grad_norm

    def train(self, steps: int | None = None) -> dict[str, float]:
        """Train to ``cfg.steps`` (or `steps` more); return the last logged window's metrics.

        Resumes from a matching checkpoint first and replays its logged curve to `on_log`, so a resumed
        stage's tracking run is complete.
        """
        if self.unsharded:  # its optimizer holds the sharded parameters, which the model no longer has
            raise ColaError("a sharded trainer trains once: its layers were put back after train()")
        torch.manual_seed(self.seed)
        self._resume()
        if self.zero_settings is not None and self.zero is None:  # it takes over the loaded state
            self.zero = self._start_zero()
            if self.processes.is_main:
                print(f"{self.description}: {self.zero.summary()}")
        for step, metrics in self.history:
            self._emit(step, metrics)
        total = self.cfg.steps if steps is None else self.global_step + steps
        self.model.train(self.train_mode)
        tokens, clock = 0, time.perf_counter()
        bar = tqdm(range(self.global_step, total), desc=self.description, initial=self.global_step,
                   total=total, disable=not self.accelerator.is_main_process, mininterval=2.0)
        for _ in bar:
            metrics = self.advance()
            tokens += int(metrics.pop("n_tokens", 0))
            for key, value in metrics.items():
                self._window.setdefault(key, []).append(float(value))
            if self.global_step % self.cfg.log_every == 0 or self.global_step == self.cfg.steps:
                logged = {k: sum(v) / len(v) for k, v in self._window.items()}
                if tokens:
                    logged["tokens_per_second"] = tokens / max(time.perf_counter() - clock, 1e-9)
                self._window, tokens, clock = {}, 0, time.perf_counter()
                self.history.append((self.global_step, logged))
                bar.set_postfix({k: f"{logged[k]:.3f}" for k in self.postfix_keys if k in logged})
                self._emit(self.global_step, logged)
            if self.checkpoint_dir is not None and self.global_step % self.cfg.checkpoint_every == 0 \
                    and self.global_step < self.cfg.steps:
                self.save()
        bar.close()
        self.model.eval()
        if self.checkpoint_dir is not None and self.global_step >= self.cfg.steps:
            if self.keep_final:
                self.save()
            elif self.processes.is_main:  # done: keep the (DVC-declared) folder, empty
                shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
                self.checkpoint_dir.mkdir(parents=True)
            self.processes.barrier()
        if self.sharding is not None or self.zero is not None:  # the stage saves and evaluates a plain model
            for held in filter(None, (self.sharding, self.zero)):
                held.unshard()
            self.sharding, self.zero, self.unsharded = None, None, True  # `unsharded` bars a second train()
            self._collect_params()
        return dict(self.history[-1][1]) if self.history else {}

    def advance(self) -> dict[str, float]:
        """One step of the loop without its logging: `training_step`, then the schedule moves on. The
        step's metrics are averaged over processes (token counts added up)."""
        with torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            metrics = {"lr": self.lr, **self.training_step()}
        metrics = self.processes.reduce(metrics, summed=("n_tokens",))
        self.scheduler.step()
        self.global_step += 1
        return metrics

    def _emit(self, step: int, metrics: dict[str, float]) -> None:
        if self.on_log is not None and self.processes.is_main:
            self.on_log(step, metrics)

    # ------------------------------------------------------------------------------------------ checkpoints

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything needed to resume bit-exactly, as (tensors for safetensors, JSON-able metadata)."""
        model = self.model
        # Whole tensors (gathered when sharded: every process calls this), so any process count resumes.
        whole = self.zero.full_param if self.zero is not None else lambda p: sharding.full(p.detach())
        tensors = {f"param.{n}": whole(p).contiguous() for n, p in model.named_parameters()
                   if p.requires_grad}
        opt = self.zero.optimizer_state_dict() if self.zero is not None else self.optimizer.state_dict()
        tensors.update({f"opt.{i}.{k}": sharding.full(v).contiguous() for i, st in opt["state"].items()
                        for k, v in st.items()})
        tensors["rng.torch"] = torch.get_rng_state()
        extra_tensors, extra_meta = self.extra_state()
        tensors.update({f"extra.{k}": v.contiguous() for k, v in extra_tensors.items()})
        meta = {"step": self.global_step, "fingerprint": self.fingerprint,
                "param_groups": opt["param_groups"], "scheduler": self.scheduler.state_dict(),
                "history": self.history, "window": self._window, "extra": extra_meta}
        json.dumps(meta)  # fail here, not half-way through writing, if something is not JSON-able
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore :meth:`state` into a trainer built with the same model shape and params."""
        current = dict(self.model.named_parameters())
        ordered = [p for group in self.optimizer.param_groups for p in group["params"]]  # the state's indices
        state: dict[int, dict[str, torch.Tensor]] = {}
        extra: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for key, value in tensors.items():
                kind, name = key.split(".", 1)
                if kind == "param":
                    current[name].copy_(sharding.shard_like(value, current[name]))
                elif kind == "opt":
                    index, slot = name.split(".", 1)
                    param = ordered[int(index)]
                    if value.shape == param.shape:  # Adam's moments, laid out like their parameter
                        value = sharding.shard_like(value, param)
                    state.setdefault(int(index), {})[slot] = value
                elif kind == "extra":
                    extra[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        self.global_step = int(meta["step"])
        self.history = [(int(step), metrics) for step, metrics in meta["history"]]
        self._window = {k: list(v) for k, v in meta["window"].items()}
        self.load_extra_state(extra, meta["extra"])

    def save(self) -> None:
        """Write a checkpoint atomically: the folder is the previous checkpoint or the new one, never half.
        The main process writes it (every process holds the same state); the others wait for it."""
        gathers = self.sharding is not None or self.zero is not None  # whole tensors take every process
        if self.processes.is_main or gathers:
            tensors, meta = self.state()
        if self.processes.is_main:
            with atomic_dir(self.checkpoint_dir) as tmp:
                save_file(tensors, str(tmp / STATE_FILE))
                (tmp / META_FILE).write_text(json.dumps(meta))
        self.processes.barrier()

    def _resume(self) -> None:
        folder = self.checkpoint_dir
        if folder is None or not (folder / META_FILE).is_file():
            return
        meta = json.loads((folder / META_FILE).read_text())
        if meta.get("fingerprint") != self.fingerprint:
            print(f"note: ignoring the checkpoint in {folder}: it was written for other params or inputs")
            return
        self.load_state(load_file(str(folder / STATE_FILE)), meta)
        done = " (finished)" if self.global_step >= self.cfg.steps else ""
        if self.processes.is_main:
            print(f"{self.description}: resuming from step {self.global_step}{done}, checkpoint {folder}")


class BatchSource(Protocol):
    """Anything that yields batches and draws them with `generator` (checkpointed for exact resumption)."""

    generator: torch.Generator

    def __next__(self) -> Batch: ...


LossFn = Callable[[Batch, NoiseSource], LossOutput]


class BatchTrainer(Trainer):
    """One global batch, one loss, one optimizer step: the trainer of base, latent, BC, FTA and SFT.

    `loss_fn(batch, noise)` takes its randomness (Gumbel noise) from `noise`, a `BatchRows` of a seeded
    generator checkpointed with the batch sampler's, so the draws do not depend on how the batch is split.
    Each process takes its block of the batch (`cfg.batch_size` is the global batch), in micro-batches of
    ``cfg.micro_batch_size`` rows (0: all at once) whose losses are averaged by rows: the global batch's
    mean when the loss is a mean over equally many positions per row (base, latent, BC); SFT and FTA mask
    prompts, so there a split batch averages per-part token means (a difference within a batch's noise).
    """

    shardable = True

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn, batches: BatchSource, cfg: Any,
                 **kwargs: Any):
        kwargs.setdefault("seed", getattr(cfg, "seed", 0))
        super().__init__(model, cfg, **kwargs)
        self.loss_fn, self.batches = loss_fn, batches
        self.noise = torch.Generator().manual_seed(self.seed + 1)

    def training_step(self) -> dict[str, float]:
        batch = next(self.batches)  # the global batch: every process draws the same one
        total = count_rows(batch)
        start, stop = self.processes.rows(total)
        rows = stop - start
        micro = getattr(self.cfg, "micro_batch_size", 0) or rows
        noise_state = self.noise.get_state()
        self.zero_grad()
        metrics: dict[str, float] = {}
        tokens = 0
        for first in range(start, stop, micro):
            last = min(first + micro, stop)
            part = to_device(map_batch(batch, lambda t, a=first, b=last: t[a:b]), self.accelerator.device)
            self.noise.set_state(noise_state)  # each part takes its rows of the same whole-batch draws
            noise = BatchRows(self.noise, first, last, total)
            if self.zero is not None:
                loss, part_metrics = self.zero.loss(part, noise, closes_step=last == stop)
            else:
                out = self.loss_fn(part, noise)
                loss, part_metrics = out.loss, out.metrics
            weight = (last - first) / rows
            self.backward(loss * weight)
            for key, value in part_metrics.items():
                metrics[key] = metrics.get(key, 0.0) + value * weight
            tokens += count_tokens(part)
        self.postfix_keys = self.postfix_keys or tuple(metrics)[:1]
        grad_norm = self.step_optimizer()
        return {**metrics, "grad_norm": grad_norm, "n_tokens": tokens}

    def _start_zero(self) -> zero.ZeroEngine:
        return zero.ZeroEngine(self.model, self.loss_fn, self.optimizer, self.zero_settings,
                               self.cfg.grad_clip)

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {"data_rng": self.batches.generator.get_state(), "noise_rng": self.noise.get_state()}, {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.batches.generator.set_state(tensors["data_rng"])
        self.noise.set_state(tensors["noise_rng"])


def train(model: torch.nn.Module, loss_fn: LossFn, batches: BatchSource, cfg: Any,
          **kwargs: Any) -> dict[str, float]:
    """`BatchTrainer(model, loss_fn, batches, cfg, **kwargs).train()`: the last logged window's metrics."""
    return BatchTrainer(model, loss_fn, batches, cfg, **kwargs).train()
