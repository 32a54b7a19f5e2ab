"""DeepSpeed ZeRO for the pretraining-style trainers, from an accelerate DeepSpeed config.

`accelerate launch --config_file configs/accelerate/deepspeed-zero2.yaml` (or ``-zero3``) sets
`ACCELERATE_USE_DEEPSPEED` and the config's ``deepspeed_config`` as ``ACCELERATE_DEEPSPEED_*`` variables in
every process. accelerate's own route (`Accelerator.prepare`) hands the model to DeepSpeed's engine, whose
``forward`` is the model's; our losses call the model's pieces (`base_hidden`, `world_model_logits`, ...)
instead, and under ZeRO-3 those run outside the engine's forward: the gradients come out wrong (checked
on a toy model). Here the engine's module is the *loss* (`LossModule`): the model is its child, so ZeRO-3's
hooks gather each submodule's parameters whichever piece of the loss runs it, and ZeRO-1/2 partition the
optimizer state (and the gradients) over the processes as usual.

What the engine takes from our params, not from DeepSpeed's config: the micro-batches (the trainer's
``micro_batch_size``; the engine is told which backward closes the step), gradient clipping (the stage's
``grad_clip``), the optimizer (our AdamW with its weight-decay rule, its moments partitioned by ZeRO) and
the schedule (ours, on the same parameter groups). Precision: the weights stay fp32 and bf16 comes from
autocast as in every other launch, so a ZeRO run trains what one process trains (DeepSpeed's own bf16
mode, bf16 weights with fp32 master copies, is not used).

Checkpoints hold whole tensors (DeepSpeed's `safe_get_full_*`, gathered by every process), in the layout a
plain AdamW writes, so a ZeRO run resumes with any process count, with or without ZeRO; when training ends
the model holds plain whole parameters again (`ZeroEngine.unshard`) and the stage saves and evaluates it
as on one process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cola.errors import ColaError

# Adam's moments: the optimizer state that has a parameter's shape (ZeRO partitions it).
MOMENTS = ("exp_avg", "exp_avg_sq")
DEVICES = ("none", "cpu")


@dataclass(frozen=True)
class ZeroSettings:
    """The parts of accelerate's ``deepspeed_config`` this trainer uses."""

    stage: int  # 1: optimizer state partitioned; 2: and gradients; 3: and parameters
    offload_optimizer: str  # "none" or "cpu": where the partitioned optimizer state lives
    offload_param: str  # "none" or "cpu" (stage 3): where the partitioned parameters live


def requested() -> ZeroSettings | None:
    """The ZeRO settings `accelerate launch` passed to this process, or None when it ran no DeepSpeed
    config."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none").lower() not in ("", "none"):
        raise ColaError("the accelerate config names a deepspeed_config_file; these trainers read only "
                        "zero_stage and the offload devices of deepspeed_config (batch sizes, clipping and "
                        "precision come from params): see configs/accelerate/deepspeed-zero2.yaml")
    stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
    offload_optimizer = os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none").lower()
    offload_param = os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none").lower()
    if stage not in (1, 2, 3):
        raise ColaError(f"deepspeed_config zero_stage {stage}: use 1, 2 or 3 (0 is plain data parallelism: "
                        "configs/accelerate/multi-gpu.yaml)")
    for key, device in (("offload_optimizer_device", offload_optimizer),
                        ("offload_param_device", offload_param)):
        if device not in DEVICES:
            raise ColaError(f"deepspeed_config {key} {device!r}: use none or cpu")
    return ZeroSettings(stage, offload_optimizer, offload_param)


class LossModule(nn.Module):
    """A loss as a module, so that DeepSpeed's engine runs it as its forward (see the module's doc)."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Any, noise: Any) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.loss_fn(batch, noise)
        return out.loss, out.metrics  # a tuple: ZeRO-3 hooks the tensors it finds in the output


class ZeroEngine:
    """One model's DeepSpeed engine: the loss forward, backward and optimizer step of a `BatchTrainer`.

    Args:
        model: the model (its trainable parameters are those of `optimizer`).
        loss_fn: ``loss_fn(batch, noise) -> LossOutput``, the trainer's loss.
        optimizer: the trainer's AdamW; the state it holds (a resumed checkpoint's) moves into the engine.
        settings: the ZeRO stage and offload devices.
        grad_clip: clip the whole gradient's norm to this (<= 0: never).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Any], optimizer: torch.optim.Optimizer,
                 settings: ZeroSettings, grad_clip: float) -> None:
        try:
            import deepspeed
        except ImportError as error:
            raise ColaError("a DeepSpeed launch needs deepspeed: pip install -e '.[deepspeed]'") from error
        self.model, self.stage = model, settings.stage
        self.ordered = [p for group in optimizer.param_groups for p in group["params"]]
        plain = optimizer.state_dict()  # before ZeRO replaces the groups' parameters by flat partitions
        self.group_indices = [group["params"] for group in plain["param_groups"]]  # plain AdamW's layout
        zero: dict[str, Any] = {"stage": settings.stage}
        if settings.offload_optimizer != "none":
            zero["offload_optimizer"] = {"device": settings.offload_optimizer}
        if settings.offload_param != "none":
            zero["offload_param"] = {"device": settings.offload_param}
        # The batch sizes are nominal: the trainer marks the backward that closes each step (`loss`).
        config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                  "gradient_clipping": max(grad_clip, 0.0), "zero_optimization": zero,
                  "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
                  "steps_per_print": 2**62, "wall_clock_breakdown": False}
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=LossModule(model, loss_fn),
                                                                 optimizer=optimizer, config=config)
        self.base_optimizer = optimizer  # the AdamW that steps the flat partitions (and the schedule's)
        if plain["state"]:
            self._load_moments(plain["state"])

    def summary(self) -> str:
        held, total = self.held()
        return (f"DeepSpeed ZeRO-{self.stage}: each process holds the optimizer state of {held:,} of "
                f"{total:,} trained parameters")

    def held(self) -> tuple[int, int]:
        """(numbers of optimizer state this process holds per Adam moment, numbers of trained parameters):
        about 1/N of them with N processes."""
        total = sum(getattr(p, "ds_numel", p.numel()) for p in self.ordered)
        return sum(flat.numel() for flat in self._flat_partitions()), total

    # ------------------------------------------------------------------------------------------ a step

    def loss(self, batch: Any, noise: Any, closes_step: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-batch through the engine; `closes_step` on the step's last one (its
        backward reduces the accumulated gradients)."""
        self.engine.set_gradient_accumulation_boundary(closes_step)
        return self.engine(batch, noise)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the trainer weights its micro-batches itself

    def step(self) -> float:
        """Clip and step (after the step's closing backward); the gradient norm before clipping."""
        self.engine.step()
        return float(self.engine.get_global_grad_norm())

    # ------------------------------------------------------------------------------------------ whole tensors

    def full_param(self, param: nn.Parameter) -> torch.Tensor:
        """A trained parameter's whole fp32 value (a collective: every process calls it)."""
        from deepspeed.utils import safe_get_full_fp32_param

        return safe_get_full_fp32_param(param).detach().reshape(self._shape(param)).cpu()

    def optimizer_state_dict(self) -> dict[str, Any]:
        """The state dict a plain AdamW over the whole parameters would have (a collective)."""
        from deepspeed.utils import safe_get_full_optimizer_state

        step = next(iter(self.base_optimizer.state.values()), {}).get("step")
        state: dict[int, dict[str, torch.Tensor]] = {}
        if step is not None:
            self._link_states()
            for index, param in enumerate(self.ordered):
                state[index] = {"step": step.detach().clone().cpu()}
                for key in MOMENTS:
                    value = safe_get_full_optimizer_state(param, key)
                    state[index][key] = value.detach().reshape(self._shape(param)).cpu()
        groups = [{k: v for k, v in now.items() if k != "params"} | {"params": indices}
                  for now, indices in zip(self.base_optimizer.param_groups, self.group_indices, strict=True)]
        return {"state": state, "param_groups": groups}

    def _load_moments(self, state: dict[int, dict[str, torch.Tensor]]) -> None:
        """Put a plain AdamW's per-parameter state into the engine's partitions."""
        from deepspeed.utils import safe_set_full_optimizer_state

        step = next(iter(state.values()))["step"]
        # AdamW creates its state at its first step; create it now, then fill it.
        for flat in self._flat_partitions():
            self.base_optimizer.state[flat] = {"step": step.clone(), **{k: torch.zeros_like(flat)
                                                                        for k in MOMENTS}}
        self._link_states()
        for index, param in enumerate(self.ordered):
            for key in MOMENTS:
                safe_set_full_optimizer_state(param, state[index][key].to(torch.float32), key)

    def _link_states(self) -> None:
        """Point ZeRO-1/2's per-parameter views at the optimizer state of every partition. DeepSpeed links
        them once, after its first group's first step, before AdamW creates the other groups' state."""
        if self.stage < 3:  # ZeRO-3 reads the state when asked
            self.optimizer._hp_optimizer_states_linked = False
            self.optimizer._lazy_init_hp_params_optimizer_state()

    def _flat_partitions(self) -> list[torch.Tensor]:
        if self.stage == 3:
            return list(self.optimizer.fp32_partitioned_groups_flat)
        return list(self.optimizer.single_partition_of_fp32_groups)

    @staticmethod
    def _shape(param: nn.Parameter) -> torch.Size:
        return param.ds_shape if hasattr(param, "ds_shape") else param.shape  # ZeRO-3 empties `param`

    # ------------------------------------------------------------------------------------------ the end

    def unshard(self) -> None:
        """Give the model back as plain modules holding whole parameters (a collective): every parameter
        a new `nn.Parameter` (ZeRO's hooks and attributes stay with the old ones), the engine's module hooks
        removed."""
        import deepspeed

        params = list(self.model.parameters())
        whole: dict[int, nn.Parameter] = {}
        with deepspeed.zero.GatheredParameters(params, enabled=self.stage == 3):
            for param in params:
                whole[id(param)] = nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
        self.engine.destroy()
        for module in self.model.modules():
            for name, param in list(module._parameters.items()):
                if param is not None:
                    module._parameters[name] = whole[id(param)]
        self.engine = self.optimizer = None
