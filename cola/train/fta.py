"""Stage 3: fine-tuning under action guidance (FTA, cola-spec.md §3 stage 3) and the token-level SFT baseline.

FTA keeps the latent actions fixed and adapts the *world model* — the base LLM and its head (N_f, W_lm) — to
the downstream format, with a response-only next-token loss on the tasks' SFT data (`cola.train.sft_data`):

- **FTA-P** (the variant the paper ran for math): the frozen policy picks the argmax action at every slot and
  the base learns to produce the response under it. With the paper head o = sg(N_f(s²)) − h, the gradient
  reaches the base only through the −h term; with the `residual` head (W_lm N_f(s²), the tiny-width deviation)
  there is no −h term, so it goes through s⁰ = h and the merge blocks instead. `model.set_stage("fta_p")`
  selects that route (`CoLAForCausalLM.world_model_logits`); IDM, codebook, merge and policy stay frozen.
- **FTA-I**: (a) the base learns under the IDM's argmax actions (`fta_i_world`, gradient through s⁰ = h),
  then (b) the policy is behaviour-cloned again on the fine-tuned base's IDM labels (`fta_i_policy`), because
  (a) moved the hidden states the policy reads.

The guiding actions are deterministic but not constant: the frozen policy (or IDM) reads h, which FTA changes,
so the `action_usage_perplexity` metric tracks how they drift.

The SFT baseline is plain next-token CE of the base on the same examples, with the same budget and batch shape
and all base parameters trainable: it is where the token-level RL baseline starts (design.md §4).

Resumption: every (sub-)stage checkpoints into its own subfolder of `checkpoint_dir` (``fta_p``,
``fta_i_world``, ``fta_i_policy``, ``sft``); the loop deletes a subfolder once its sub-stage completes. A
finished FTA-I (a) writes its final base + head weights to ``fta_i_world.done``, so a run killed during (b)
restores them instead of redoing (a); that folder goes once (b) completes. Every checkpoint is stamped with a
fingerprint of the config, the examples and the caller's `inputs_fingerprint`, and is ignored on a mismatch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from cola.model.modeling_cola import CoLAForCausalLM, left_padded_positions
from cola.train.loop import LogFn, OptimConfig, fingerprint, optim_default, to_device, train
from cola.train.losses import LossOutput, behaviour_cloning_loss, next_token_ce, world_model_loss
from cola.train.sft_data import SFTBatches

# The task names of cola.data.tasks.TASKS, spelled out so this module does not import reasoning-gym
# (tests/test_fta.py checks that the two lists agree).
TASK_NAMES = ("arith", "wordprob", "countdown", "spell", "wrev")
# The paper fine-tunes on its RL domain's data; here that is the math tasks plus countdown ("thinking"). The
# retention tasks (spell, wrev) are left out on purpose: they measure what fine-tuning and RL cost.
DEFAULT_TASKS = ("arith", "wordprob", "countdown")

_OPTIM_META = {f.name: f.metadata for f in dataclasses.fields(OptimConfig)}


@dataclass
class SFTConfig(OptimConfig):
    """Supervised fine-tuning of the base on the tasks' SFT data (``params.yaml`` section ``sft``).

    The token-level baseline, and the data/budget half of `FTAConfig` (which inherits it, so both stages get
    the same defaults). The paper fine-tunes with lr 5e-6 at 8B, batch 256, one epoch, Adam (0.9, 0.95), no
    weight decay, 3 % warmup and cosine to 0.1x (cola-spec.md §8); the schedule shape here is the paper's.
    """

    steps: int = optim_default("steps", 300)
    batch_size: int = optim_default("batch_size", 32)
    seq_len: int = field(default=128, metadata={
        **_OPTIM_META["seq_len"],
        "help": "Longest sequence EOS+prompt+completion+EOS (one example per sequence, right-padded); longer "
                "ones are cut at the end, ones whose prompt does not fit are dropped.", "min": 3})
    lr: float = field(default=3e-4, metadata={
        **_OPTIM_META["lr"],
        "help": "Peak learning rate (paper 5e-6 at 8B). On the 1.25M tiny base 1e-3 erased most of the retention "
                "tasks in 300 steps with no task gain; 3e-4 keeps them. Scale it down for large bases."})
    warmup_steps: int = optim_default("warmup_steps", 9)  # 3 % of the steps, as the paper
    weight_decay: float = optim_default("weight_decay", 0.0)  # the paper's SFT uses none
    log_every: int = optim_default("log_every", 20)
    checkpoint_every: int = optim_default("checkpoint_every", 100)
    tasks: list[str] = field(
        default_factory=lambda: list(DEFAULT_TASKS),
        metadata={"help": "Tasks whose train split is the SFT data (sampled uniformly over all their examples).",
                  "choices": list(TASK_NAMES)},
    )
    # Sequences are one short example each (~20-60 tokens), where thread start-up costs more than it saves:
    # one thread was 1.5-10x faster than two for both FTA and SFT on the 1.25M base (a loaded 2-core machine).
    threads: int = field(default=1, metadata={"help": "torch CPU threads.", "min": 1})

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks must name at least one task")


@dataclass
class FTAConfig(SFTConfig):
    """Fine-tuning under action guidance (``params.yaml`` section ``fta``); same data and budget as `SFTConfig`."""

    variant: str = field(
        default="fta_p",
        metadata={"help": "fta_p: base trained under the frozen argmax policy's actions (the paper's math "
                          "setting); fta_i: base under IDM actions, then policy re-BC.",
                  "choices": ["fta_p", "fta_i"]},
    )
    policy_rebc_steps: int = field(
        default=300,  # the paper runs both sub-stages for one epoch of the same data
        metadata={"help": "FTA-I only: optimizer steps of the policy re-BC sub-stage (b), same optim otherwise.",
                  "min": 1},
    )


# ----------------------------------------------------------------------------------------------- FTA


def run_fta(
    model: CoLAForCausalLM,
    tokenizer,
    examples: Sequence[dict[str, Any]],
    cfg: FTAConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    on_log: LogFn | None = None,
    inputs_fingerprint: str = "",
) -> dict[str, float]:
    """Fine-tune `model` under action guidance on `examples` (``prompt`` / ``completion`` dicts).

    Returns the final logged metrics of the world-model fine-tune (`loss` = response CE of the world model
    under the guiding actions, `tokens_per_second`, `action_usage_perplexity`, ...); FTA-I adds its re-BC
    metrics prefixed ``rebc_``. `on_log(step, metrics)` sees the same keys; FTA-I's re-BC steps continue after
    the world-model steps so one MLflow run holds both curves (a restored, finished sub-stage (a) logs nothing
    again). `inputs_fingerprint` should identify the starting model (e.g. `file_digest` of its folder), which
    this function cannot hash cheaply. The model is left frozen (`set_stage("frozen")`, which also resets the
    gradient route) and in eval mode.
    """
    if cfg.variant not in ("fta_p", "fta_i"):
        raise ValueError(f"variant must be 'fta_p' or 'fta_i', got {cfg.variant!r}")
    torch.set_num_threads(cfg.threads)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    stamp = fingerprint(asdict(cfg), examples_digest(examples), inputs_fingerprint)
    batches = SFTBatches(examples, tokenizer, cfg.batch_size, cfg.seq_len, cfg.seed)

    if cfg.variant == "fta_p":
        model.set_stage("fta_p")
        metrics = train(model, _world_model_loss_fn(model, "policy"), batches, cfg,
                        checkpoint_dir=_sub(folder, "fta_p"), on_log=on_log, description="fta_p",
                        fingerprint=stamp)
    else:
        metrics = _fta_i_world(model, batches, cfg, folder, on_log, stamp)
        # Re-BC on the same seeded stream as (a): the labels are new anyway, since the IDM now reads the
        # fine-tuned base's hidden states.
        rebc_cfg = dataclasses.replace(cfg, steps=cfg.policy_rebc_steps,
                                       warmup_steps=min(cfg.warmup_steps, cfg.policy_rebc_steps))
        rebc_batches = SFTBatches(examples, tokenizer, cfg.batch_size, cfg.seq_len, cfg.seed)
        model.set_stage("fta_i_policy")
        offset = cfg.steps

        def rebc_log(step: int, values: dict[str, float]) -> None:
            if on_log is not None:
                on_log(offset + step, {f"rebc_{k}": v for k, v in values.items()})

        def rebc_loss(batch: dict[str, torch.Tensor], _generator: torch.Generator) -> LossOutput:
            return behaviour_cloning_loss(model, batch["input_ids"], batch["attention_mask"],
                                          loss_mask=batch["loss_mask"])

        rebc = train(model, rebc_loss, rebc_batches, rebc_cfg, checkpoint_dir=_sub(folder, "fta_i_policy"),
                     on_log=rebc_log, description="fta_i_policy", fingerprint=stamp)
        metrics = {**metrics, **{f"rebc_{k}": v for k, v in rebc.items()}}
        if folder is not None:  # FTA-I is complete: its stored (a) result is no longer needed
            shutil.rmtree(folder / "fta_i_world.done", ignore_errors=True)
    model.set_stage("frozen")
    model.eval()
    return metrics


def _world_model_loss_fn(model: CoLAForCausalLM, action_source: str):
    def loss_fn(batch: dict[str, torch.Tensor], _generator: torch.Generator) -> LossOutput:
        # Deterministic actions (argmax), so the loop's noise generator is not needed.
        out = world_model_loss(model, batch["input_ids"], batch["attention_mask"], action_source=action_source,
                               loss_mask=batch["loss_mask"])
        # Usage perplexity of the guiding actions on the scored slots (K = all used evenly, 1 = a single one).
        mask = batch["attention_mask"].bool()
        slots = mask[:, 1:] & mask[:, :-1] & batch["loss_mask"][:, 1:].bool()
        counts = torch.bincount(out.actions[:, :-1][slots], minlength=model.config.num_actions).float()
        probs = counts / counts.sum().clamp_min(1)
        entropy = -(probs * probs.clamp_min(1e-20).log()).sum()
        out.metrics["action_usage_perplexity"] = entropy.exp().item()
        return out

    return loss_fn


def _fta_i_world(model: CoLAForCausalLM, batches: SFTBatches, cfg: FTAConfig, folder: Path | None,
                 on_log: LogFn | None, stamp: str) -> dict[str, float]:
    """FTA-I (a), or its stored result when a previous run with the same fingerprint finished it."""
    model.set_stage("fta_i_world")
    done = _sub(folder, "fta_i_world.done")
    if done is not None and (done / "metrics.json").is_file():
        stored = json.loads((done / "metrics.json").read_text())
        if stored.get("fingerprint") == stamp:
            current = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in load_file(str(done / "trainable.safetensors")).items():
                    current[name].copy_(value)
            return stored["metrics"]
        print(f"note: ignoring {done}: it was written for other params or inputs")
    metrics = train(model, _world_model_loss_fn(model, "idm"), batches, cfg,
                    checkpoint_dir=_sub(folder, "fta_i_world"), on_log=on_log, description="fta_i_world",
                    fingerprint=stamp)
    if done is not None:
        trainable = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        tmp = done.with_name(done.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(trainable, str(tmp / "trainable.safetensors"))
        (tmp / "metrics.json").write_text(json.dumps({"fingerprint": stamp, "metrics": metrics}))
        shutil.rmtree(done, ignore_errors=True)
        tmp.rename(done)  # atomic: a kill leaves either no result or a complete one
    return metrics


def _sub(folder: Path | None, name: str) -> Path | None:
    return folder / name if folder is not None else None


def examples_digest(examples: Sequence[dict[str, Any]]) -> str:
    """A short content hash of the examples' prompts and completions (part of the checkpoint fingerprint)."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps([ex["prompt"], ex["completion"]]).encode())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- SFT


def run_sft(
    base_model: PreTrainedModel,
    tokenizer,
    examples: Sequence[dict[str, Any]],
    cfg: SFTConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    on_log: LogFn | None = None,
    inputs_fingerprint: str = "",
) -> dict[str, float]:
    """Fine-tune every parameter of a plain causal LM with response-only next-token CE on `examples`.

    The same data, batches and budget as `run_fta`, so the token-level RL baseline starts from a model that
    saw exactly what CoLA's world model saw. Returns the final logged metrics (`loss`, `tokens_per_second`,
    ...) and leaves the model in eval mode (its parameters stay trainable). Checkpoints go to
    ``checkpoint_dir/sft``; `inputs_fingerprint` as in `run_fta`.
    """
    torch.set_num_threads(cfg.threads)
    base_model.requires_grad_(True)
    batches = SFTBatches(examples, tokenizer, cfg.batch_size, cfg.seq_len, cfg.seed)

    def loss_fn(batch: dict[str, torch.Tensor], _generator: torch.Generator) -> LossOutput:
        loss = response_loss(base_model, batch)
        return LossOutput(loss, {"loss": loss.item()})

    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    stamp = fingerprint(asdict(cfg), examples_digest(examples), inputs_fingerprint)
    metrics = train(base_model, loss_fn, batches, cfg, checkpoint_dir=_sub(folder, "sft"), on_log=on_log,
                    description="sft", fingerprint=stamp)
    base_model.eval()
    return metrics


def response_loss(base_model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token CE of a plain causal LM on the `loss_mask` tokens of an `SFTBatches` batch."""
    mask = batch["attention_mask"]
    # Explicit positions, computed as CoLA computes them, so base and world model see identical inputs.
    logits = base_model(input_ids=batch["input_ids"], attention_mask=mask,
                        position_ids=left_padded_positions(mask)).logits
    return next_token_ce(logits, batch["input_ids"], mask, batch["loss_mask"])


@torch.no_grad()
def evaluate_response_ce(
    model: PreTrainedModel,
    tokenizer,
    examples: Sequence[dict[str, Any]],
    *,
    max_len: int,
    batch_size: int = 64,
    action_source: str = "policy",
) -> float:
    """Token-weighted mean response CE over every example once (e.g. the val split, before and after).

    A CoLA model is scored as a world model under `action_source` actions (``policy`` argmax, as CoLA decodes
    greedily, or ``idm``); any other causal LM by its own logits. Uses `SFTBatches`' sequences and masks.
    """
    batches = SFTBatches(examples, tokenizer, batch_size, max_len, seed=0)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches.all_batches():
        batch = to_device(batch, device)
        if isinstance(model, CoLAForCausalLM):
            loss = world_model_loss(model, batch["input_ids"], batch["attention_mask"],
                                    action_source=action_source, loss_mask=batch["loss_mask"]).loss
        else:
            loss = response_loss(model, batch)
        mask, loss_mask = batch["attention_mask"].bool(), batch["loss_mask"]
        n = int((mask[:, 1:] & mask[:, :-1] & loss_mask[:, 1:]).sum())
        total, count = total + loss.item() * n, count + n
    model.train(was_training)
    return total / max(count, 1)
