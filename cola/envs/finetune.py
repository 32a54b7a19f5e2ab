"""The `agent_ft@<method>` stage: fine-tuning on the walkthrough examples of `agent_data`.

    agent_ft@cola    models/bc   -> FTA (the ``fta`` section's settings) -> models/agent/fta
    agent_ft@token   models/base -> SFT (the ``sft`` section's)          -> models/agent/sft

The `fta` / `sft` stages' code on another task folder, with the agent section's budget and sequence length.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cola.config import PipelineParams
from cola.errors import ColaError
from cola.results import StageResult
from cola.train.core import LogFn
from cola.train.finetune_stage import run_finetune_stage

__all__ = ["AGENT_MODELS", "AGENT_STARTS", "check_method", "run_agent_ft"]

#: method -> (its walkthrough fine-tuned model, its RL model), under models/agent/.
AGENT_MODELS = {"cola": ("fta", "rl-cola"), "token": ("sft", "rl-token")}
#: method -> the model its walkthrough fine-tuning starts from, under models/ (dvc.yaml's agent_ft items).
AGENT_STARTS = {"cola": "bc", "token": "base"}


def check_method(method: str) -> None:
    if method not in AGENT_MODELS:
        raise ColaError(f"unknown agent method {method!r}; expected one of {', '.join(AGENT_MODELS)}")


def run_agent_ft(params: PipelineParams, method: str, data_dir: Path, start: Path, out_dir: Path, *,
                 checkpoint_dir: Path | None = None, on_log: LogFn | None = None) -> StageResult:
    """FTA (CoLA, the ``fta`` section's settings) or SFT (token, ``sft``'s) on the walkthrough examples."""
    check_method(method)
    section = params.fta if method == "cola" else params.sft
    agent = params.agent
    cfg = dataclasses.replace(section, tasks=["agent"], steps=agent.ft_steps, lr=agent.ft_lr,
                              batch_size=agent.ft_batch_size, seq_len=agent.ft_seq_len)
    return run_finetune_stage(cfg, Path(data_dir) / "tasks", start, out_dir, checkpoint_dir=checkpoint_dir,
                              on_log=on_log)


