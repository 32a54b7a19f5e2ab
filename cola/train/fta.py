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
``fta_i_world``, ``fta_i_policy``, ``sft``) through the training core, which empties a subfolder once its
sub-stage completes. FTA-I (a) keeps its final checkpoint, so a run killed during (b) restores (a)'s result
instead of redoing it; that folder goes once (b) completes. Every checkpoint is stamped with a fingerprint of
the config, the examples and the caller's `inputs_fingerprint`, and is ignored on a mismatch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from cola.config import FTAConfig, SFTConfig
from cola.io import fingerprint
from cola.model.inputs import left_padded_positions
from cola.model.modeling_cola import CoLAForCausalLM
from cola.train.batches import to_device
from cola.train.core import BatchTrainer, LogFn
from cola.train.losses import LossOutput, behaviour_cloning_loss, next_token_ce, world_model_loss
from cola.train.sft_data import SFTBatches

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
) -> tuple[dict[str, float], list[tuple[int, dict[str, float]]]]:
    """Fine-tune `model` under action guidance on `examples` (``prompt`` / ``completion`` dicts).

    Returns the final logged metrics and the logged curve. The metrics are of the world-model fine-tune
    (`loss` = response CE of the world model under the guiding actions, `tokens_per_second`,
    `action_usage_perplexity`, ...); FTA-I adds its re-BC metrics prefixed ``rebc_``. `on_log(step, metrics)`
    sees the same keys; FTA-I's re-BC steps continue after the world-model steps so one MLflow run holds both
    curves. `inputs_fingerprint` should identify the starting model (e.g. `file_digest` of its folder), which
    this function cannot hash cheaply. The model is left frozen (`set_stage("frozen")`, which also resets the
    gradient route) and in eval mode.
    """
    torch.set_num_threads(cfg.threads)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    stamp = fingerprint(asdict(cfg), examples_digest(examples), inputs_fingerprint)
    batches = SFTBatches(examples, tokenizer, cfg.batch_size, cfg.seq_len, cfg.seed)

    if cfg.variant == "fta_p":
        model.set_stage("fta_p")
        trainer = BatchTrainer(model, _world_model_loss_fn(model, "policy"), batches, cfg,
                               checkpoint_dir=_sub(folder, "fta_p"), on_log=on_log, description="fta_p",
                               fingerprint=stamp)
        metrics = trainer.train()
        history = trainer.history
    else:
        # (a) keeps its final checkpoint: a kill during (b) restores it instead of training (a) again.
        model.set_stage("fta_i_world")
        world = BatchTrainer(model, _world_model_loss_fn(model, "idm"), batches, cfg,
                             checkpoint_dir=_sub(folder, "fta_i_world"), keep_final=True, on_log=on_log,
                             description="fta_i_world", fingerprint=stamp)
        metrics = world.train()
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

        rebc = BatchTrainer(model, rebc_loss, rebc_batches, rebc_cfg,
                            checkpoint_dir=_sub(folder, "fta_i_policy"), on_log=rebc_log,
                            description="fta_i_policy", fingerprint=stamp)
        rebc_metrics = rebc.train()
        metrics = {**metrics, **{f"rebc_{k}": v for k, v in rebc_metrics.items()}}
        history = world.history + [(offset + step, {f"rebc_{k}": v for k, v in values.items()})
                                   for step, values in rebc.history]
        if folder is not None:  # FTA-I is complete: (a)'s kept checkpoint is no longer needed
            shutil.rmtree(folder / "fta_i_world", ignore_errors=True)
    model.set_stage("frozen")
    model.eval()
    return metrics, history


def _world_model_loss_fn(model: CoLAForCausalLM, action_source: str):
    def loss_fn(batch: dict[str, torch.Tensor], _generator: torch.Generator) -> LossOutput:
        # Deterministic actions (argmax), so the loop's noise generator is not needed.
        out = world_model_loss(model, batch["input_ids"], batch["attention_mask"],
                               action_source=action_source, loss_mask=batch["loss_mask"])
        # Usage perplexity of the guiding actions on the scored slots (K = all used evenly, 1 = a single one).
        mask = batch["attention_mask"].bool()
        slots = mask[:, 1:] & mask[:, :-1] & batch["loss_mask"][:, 1:].bool()
        counts = torch.bincount(out.actions[:, :-1][slots], minlength=model.config.num_actions).float()
        probs = counts / counts.sum().clamp_min(1)
        entropy = -(probs * probs.clamp_min(1e-20).log()).sum()
        out.metrics["action_usage_perplexity"] = entropy.exp().item()
        return out

    return loss_fn


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
) -> tuple[dict[str, float], list[tuple[int, dict[str, float]]]]:
    """Fine-tune every parameter of a plain causal LM with response-only next-token CE on `examples`.

    The same data, batches and budget as `run_fta`, so the token-level RL baseline starts from a model that
    saw exactly what CoLA's world model saw. Returns the final logged metrics (`loss`, `tokens_per_second`,
    ...) and the logged curve, and leaves the model in eval mode (its parameters stay trainable). Checkpoints
    go to ``checkpoint_dir/sft``; `inputs_fingerprint` as in `run_fta`.
    """
    torch.set_num_threads(cfg.threads)
    base_model.requires_grad_(True)
    batches = SFTBatches(examples, tokenizer, cfg.batch_size, cfg.seq_len, cfg.seed)

    def loss_fn(batch: dict[str, torch.Tensor], _generator: torch.Generator) -> LossOutput:
        loss = response_loss(base_model, batch)
        return LossOutput(loss, {"response_ce": loss.item()})

    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    stamp = fingerprint(asdict(cfg), examples_digest(examples), inputs_fingerprint)
    trainer = BatchTrainer(base_model, loss_fn, batches, cfg, checkpoint_dir=_sub(folder, "sft"),
                           on_log=on_log, description="sft", fingerprint=stamp)
    metrics = trainer.train()
    base_model.eval()
    return metrics, trainer.history


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
