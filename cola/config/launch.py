"""The ``launch`` section: how the training stages start their processes (`cola.pipeline` reads it).

With one process (the default) a stage is a plain ``python stages/<name>.py``; with more, the stage re-runs
itself under ``accelerate launch`` with these settings, so `dvc exp run -S launch.num_processes=8` scales a
run out by params alone. Results do not depend on the process count (cola.train.distributed), but DVC still
re-runs the stages whose ``launch`` params changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cola.config.fields import param

#: How the stage runner hands ``gradient_checkpointing`` to the trainers (and `accelerate launch`'s workers).
GRADIENT_CHECKPOINTING_ENV = "COLA_GRADIENT_CHECKPOINTING"


@dataclass
class LaunchConfig:
    """Processes and machines of the training stages (base, latent, bc, fta, sft, rl)."""

    num_processes: int = param(1, "Processes over all machines (GPUs; on CPU, gloo processes). 1 runs the "
                                  "stage in its own process, without accelerate's launcher.", min=1)
    num_machines: int = param(1, "Machines (nodes); each runs `dvc repro` / the stage with its own "
                                 "`launch.machine_rank`.", min=1)
    machine_rank: int = param(0, "This machine's rank (0 = the main machine, the one that writes).", min=0)
    main_process_ip: str = param("", "The main machine's address (several machines only).")
    main_process_port: int = param(29500, "The main process's port for the rendezvous.", min=1, max=65535)
    config_file: str = param("", "An accelerate config file (configs/accelerate/*.yaml: cpu-2proc, "
                                 "multi-gpu; fsdp, fsdp-grad-op, deepspeed-zero2, deepspeed-zero3 shard the "
                                 "pretraining-style stages); '' = accelerate's defaults for the settings "
                                 "above.")
    # Not accelerate's 'no': YAML 1.1 (DVC's writer) reads an unquoted no as false.
    precision: Literal["fp32", "bf16"] = param("fp32", "The training steps' precision: fp32, or bf16 "
                                                       "autocast (accelerate's mixed_precision; GPU).")
    gradient_checkpointing: bool = param(False, "Recompute decoder-block activations in the backward pass "
                                                "instead of keeping them (less memory, ~1/3 more compute; "
                                                "train-mode stages: latent, bc, fta, sft; same results).")

    @property
    def mixed_precision(self) -> str:
        """accelerate's name for `precision`."""
        return "no" if self.precision == "fp32" else self.precision

    def __post_init__(self) -> None:
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"machine_rank {self.machine_rank} must be below num_machines "
                             f"{self.num_machines}")

    @property
    def distributed(self) -> bool:
        return self.num_processes > 1 or self.num_machines > 1
