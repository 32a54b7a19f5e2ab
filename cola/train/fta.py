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

The SFT baseline is plain next-token CE of the base on the same examples, with the same budget and batch shape
and all base parameters trainable: it is where the token-level RL baseline starts (design.md §4).

Resumption: every (sub-)stage checkpoints into its own subfolder of `checkpoint_dir` (``fta_p``,
``fta_i_world``, ``fta_i_policy``, ``sft``). A finished FTA-I (a) also writes its final base + head weights to
``fta_i_world.done``, so a run killed during (b) restores them instead of redoing (a).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from cola.model.modeling_cola import CoLAForCausalLM, left_padded_positions
from cola.train.loop import LogFn, OptimConfig, to_device, train
from cola.train.losses import LossOutput, behaviour_cloning_loss, next_token_ce, world_model_loss
from cola.train.sft_data import SFTBatches

# The task names of cola.data.tasks.TASKS, spelled out so this module does not import reasoning-gym
# (tests/test_fta.py checks that the two lists agree).
TASK_NAMES = ("arith", "wordprob", "countdown", "spell", "wrev")
# The paper fine-tunes on its RL domain's data; here that is the math tasks plus countdown ("thinking"). The
# retention tasks (spell, wrev) are left out on purpose: they measure what fine-tuning and RL cost.
DEFAULT_TASKS = ("arith", "wordprob", "countdown")


def default_sft_optim() -> OptimConfig:
    """Optimisation defaults shared by FTA and the SFT baseline (same budget and batch shape by construction).

    The paper uses lr 5e-6 at 8B with batch 256 for one epoch, Adam (0.9, 0.95), no weight decay, 3 % warmup
    and cosine to 0.1× (cola-spec.md §8). A 1.25M-parameter base needs a far larger step size to move in a few
    hundred steps, so the tiny default is 1e-3 (a third of its pretraining lr); the schedule shape is the
    paper's. Scale lr back towards 5e-6 for large bases.
    """
    return OptimConfig(steps=300, batch_size=32, seq_len=128, lr=1e-3, min_lr_ratio=0.1, warmup_steps=9,
                       weight_decay=0.0, beta1=0.9, beta2=0.95, grad_clip=1.0, log_every=25,
                       checkpoint_every=100, seed=0)


@dataclass
class SFTConfig:
    """Plain supervised fine-tuning of the base (``params.yaml`` section ``sft``): the token-level baseline."""

    tasks: list[str] = field(
        default_factory=lambda: list(DEFAULT_TASKS),
        metadata={"help": "Tasks whose train split is the SFT data (sampled uniformly over all their examples).",
                  "choices": list(TASK_NAMES)},
    )
    optim: OptimConfig = field(
        default_factory=default_sft_optim,
        metadata={"help": "Optimisation; optim.seq_len is unused (a sequence is one example, see max_len)."},
    )
    max_len: int = field(
        default=128,
        metadata={"help": "Longest sequence EOS+prompt+completion+EOS in tokens; longer ones are cut at the "
                          "end, ones whose prompt does not fit are dropped.", "min": 3},
    )

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("tasks must name at least one task")


@dataclass
class FTAConfig(SFTConfig):
    """Fine-tuning under action guidance (``params.yaml`` section ``fta``); shares the SFT data and budget."""

    variant: str = field(
        default="fta_p",
        metadata={"help": "fta_p: base trained under the frozen argmax policy's actions (the paper's math "
                          "setting); fta_i: base under IDM actions, then policy re-BC.",
                  "choices": ["fta_p", "fta_i"]},
    )
    policy_rebc_steps: int = field(
        default=150,
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
) -> dict[str, float]:
    """Fine-tune `model` under action guidance on `examples` (``prompt`` / ``completion`` dicts).

    Returns the final logged metrics of the world-model fine-tune (`loss` = response CE of the world model
    under the guiding actions, `tokens_per_second`, ...); FTA-I adds its re-BC metrics prefixed ``rebc_``.
    `on_log(step, metrics)` sees the same keys; FTA-I's re-BC steps continue after the world-model steps so
    one MLflow run holds both curves. The model is left frozen (`set_stage("frozen")`) and in eval mode.
    """
    if cfg.variant not in ("fta_p", "fta_i"):
        raise ValueError(f"variant must be 'fta_p' or 'fta_i', got {cfg.variant!r}")
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    batches = SFTBatches(examples, tokenizer, cfg.optim.batch_size, cfg.max_len, cfg.optim.seed)

    if cfg.variant == "fta_p":
        model.set_stage("fta_p")
        metrics = train(model, _world_model_loss_fn(model, "policy"), batches, cfg.optim,
                        checkpoint_dir=_sub(folder, "fta_p"), on_log=on_log, description="fta_p")
    else:
        metrics = _fta_i_world(model, batches, cfg.optim, folder, on_log)
        # Re-BC from the same data stream position as (a) started (same seed): the labels are new anyway, since
        # the IDM now reads the fine-tuned base's hidden states.
        rebc_optim = dataclasses.replace(cfg.optim, steps=cfg.policy_rebc_steps,
                                         warmup_steps=min(cfg.optim.warmup_steps, cfg.policy_rebc_steps))
        rebc_batches = SFTBatches(examples, tokenizer, cfg.optim.batch_size, cfg.max_len, cfg.optim.seed)
        model.set_stage("fta_i_policy")
        offset = cfg.optim.steps

        def rebc_log(step: int, values: dict[str, float]) -> None:
            if on_log is not None:
                on_log(offset + step, {f"rebc_{k}": v for k, v in values.items()})

        def rebc_loss(batch: dict[str, torch.Tensor], _generator: torch.Generator) -> LossOutput:
            return behaviour_cloning_loss(model, batch["input_ids"], batch["attention_mask"],
                                          loss_mask=batch["loss_mask"])

        rebc = train(model, rebc_loss, rebc_batches, rebc_optim, checkpoint_dir=_sub(folder, "fta_i_policy"),
                     on_log=rebc_log, description="fta_i_policy")
        metrics = {**metrics, **{f"rebc_{k}": v for k, v in rebc.items()}}
    model.set_stage("frozen")
    model.eval()
    return metrics


def _world_model_loss_fn(model: CoLAForCausalLM, action_source: str):
    def loss_fn(batch: dict[str, torch.Tensor], _generator: torch.Generator) -> LossOutput:
        # Deterministic actions (argmax), so the loop's noise generator is not needed.
        return world_model_loss(model, batch["input_ids"], batch["attention_mask"], action_source=action_source,
                                loss_mask=batch["loss_mask"])

    return loss_fn


def _fta_i_world(model: CoLAForCausalLM, batches: SFTBatches, optim: OptimConfig, folder: Path | None,
                 on_log: LogFn | None) -> dict[str, float]:
    """FTA-I (a), or its stored result when a previous run finished it (see the module docstring)."""
    model.set_stage("fta_i_world")
    done = _sub(folder, "fta_i_world.done")
    if done is not None and (done / "metrics.json").is_file():
        current = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in load_file(str(done / "trainable.safetensors")).items():
                current[name].copy_(value)
        return json.loads((done / "metrics.json").read_text())
    metrics = train(model, _world_model_loss_fn(model, "idm"), batches, optim,
                    checkpoint_dir=_sub(folder, "fta_i_world"), on_log=on_log, description="fta_i_world")
    if done is not None:
        trainable = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        tmp = done.with_name(done.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(trainable, str(tmp / "trainable.safetensors"))
        (tmp / "metrics.json").write_text(json.dumps(metrics))  # written last: its presence marks completion
        shutil.rmtree(done, ignore_errors=True)
        tmp.rename(done)
    return metrics


def _sub(folder: Path | None, name: str) -> Path | None:
    return folder / name if folder is not None else None


# ----------------------------------------------------------------------------------------------- SFT


def run_sft(
    base_model: PreTrainedModel,
    tokenizer,
    examples: Sequence[dict[str, Any]],
    cfg: SFTConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    on_log: LogFn | None = None,
) -> dict[str, float]:
    """Fine-tune every parameter of a plain causal LM with response-only next-token CE on `examples`.

    The same data, batches and budget as `run_fta`, so the token-level RL baseline starts from a model that
    saw exactly what CoLA's world model saw. Returns the final logged metrics (`loss`, `tokens_per_second`,
    ...) and leaves the model in eval mode (its parameters stay trainable).
    """
    base_model.requires_grad_(True)
    batches = SFTBatches(examples, tokenizer, cfg.optim.batch_size, cfg.max_len, cfg.optim.seed)

    def loss_fn(batch: dict[str, torch.Tensor], _generator: torch.Generator) -> LossOutput:
        loss = response_loss(base_model, batch)
        return LossOutput(loss, {"loss": loss.item()})

    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    metrics = train(base_model, loss_fn, batches, cfg.optim, checkpoint_dir=_sub(folder, "sft"), on_log=on_log,
                    description="sft")
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
