"""FSDP (fully sharded data parallelism) for the pretraining-style trainers, from an accelerate FSDP config.

`accelerate launch --config_file configs/accelerate/fsdp.yaml` sets `ACCELERATE_USE_FSDP` and the
`fsdp_config` as `FSDP_*` variables in every process. accelerate's own wrapping (`Accelerator.prepare`)
hooks the model's `forward`, but our losses call the model's pieces (`base_hidden`, `world_model_logits`,
...). PyTorch's FSDP2 `fully_shard` hooks the module it is applied to, so here every decoder layer (the
config's `fsdp_transformer_layer_cls_to_wrap`) becomes a unit that gathers its parameters when it runs,
whichever piece calls it, and frees them after (`fsdp_reshard_after_forward`; false keeps them gathered
until the backward, ZeRO-2's memory profile). Gradients of those layers are reduce-scattered (averaged) by
FSDP; every parameter outside them (embeddings, norms, heads, action codebook, merge blocks unless listed)
stays whole on every process and is averaged like data-parallel gradients (`cola.train.distributed`).

The layers go back to plain modules when training ends (`Sharding.unshard`): the stage then saves and
evaluates its model as it does on one process. Checkpoints hold whole tensors, so a run resumes with any
process count, sharded or not.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from cola.errors import ColaError


@dataclass(frozen=True)
class FsdpSettings:
    """The parts of accelerate's `fsdp_config` this trainer uses."""

    wrap: tuple[str, ...]  # class names of the modules that become units (the decoder layers)
    reshard_after_forward: bool


def requested() -> FsdpSettings | None:
    """The FSDP settings `accelerate launch` passed to this process, or None when it ran no FSDP config."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise ColaError("the accelerate config asks for FSDP version 1; this trainer shards with FSDP2: "
                        "set fsdp_version: 2 (configs/accelerate/fsdp.yaml)")
    wrap = tuple(name.strip() for name in os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",")
                 if name.strip())
    if not wrap:
        raise ColaError("the accelerate FSDP config names no fsdp_transformer_layer_cls_to_wrap: name the "
                        "base's decoder layer class (e.g. LlamaDecoderLayer)")
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true"
    return FsdpSettings(wrap, reshard)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded one (a collective: every process must call it), else the tensor."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole tensor laid out as `like` is: this process's shard when `like` is sharded."""
    if isinstance(like, DTensor):
        return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements)
    return value


class Sharding:
    """The units of one model, sharded over every process of the run (`fully_shard` per unit).

    Args:
        model: the model to shard in place (already on this process's device).
        settings: which classes are units and whether they free their parameters after the forward.
        world: the number of processes (one shard each).
    """

    def __init__(self, model: nn.Module, settings: FsdpSettings, world: int) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self.model = model
        self.units = {name: module for name, module in model.named_modules()
                      if type(module).__name__ in settings.wrap}
        if not self.units:
            classes = sorted({type(m).__name__ for m in model.modules()
                              if type(m).__name__.endswith("Layer")})
            raise ColaError(f"FSDP: the model has no module of class {', '.join(settings.wrap)} "
                            f"(fsdp_transformer_layer_cls_to_wrap); its layer classes: {', '.join(classes)}")
        # Plain copies without storage, to put the layers back after training (FSDP2 has no inverse).
        self.templates = {name: copy.deepcopy(module).to("meta") for name, module in self.units.items()}
        device = next(model.parameters()).device
        mesh = init_device_mesh(device.type, (world,))
        for module in self.units.values():
            fully_shard(module, mesh=mesh, reshard_after_forward=settings.reshard_after_forward)

    def unshard(self) -> None:
        """Put every unit back as a plain module holding the whole trained parameters (a collective)."""
        for name, unit in self.units.items():
            plain = self.templates[name].to_empty(device=next(unit.parameters()).device)
            whole = dict(unit.named_parameters())
            with torch.no_grad():
                for key, param in plain.named_parameters():
                    param.copy_(full(whole[key].detach()))
                    param.requires_grad_(whole[key].requires_grad)
                for key, buffer in unit.named_buffers():  # not sharded; `to_empty` left them uninitialised
                    plain.get_buffer(key).copy_(buffer)
            parent_name, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent_name), child, plain)
        self.units = {}


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """`torch.nn.utils.clip_grad_norm_` over sharded and whole gradients together: the norm of the whole
    gradient (sharded parts' squares summed over processes), every gradient scaled when it is over
    `max_norm`."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if isinstance(g, DTensor)]
    whole = [g for g in grads if not isinstance(g, DTensor)]
    device = whole[0].device if whole else sharded[0].to_local().device
    squares = torch.zeros((), dtype=torch.float64, device=device)
    for g in sharded:
        squares += g.to_local().double().pow(2).sum()
    if dist.is_initialized():
        dist.all_reduce(squares)
    for g in whole:  # the same on every process (already averaged)
        squares += g.double().pow(2).sum()
    norm = math.sqrt(float(squares))
    scale = max_norm / (norm + 1e-6)
    if scale < 1:
        for g in grads:
            g.mul_(scale)
    return norm
