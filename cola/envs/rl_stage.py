"""The `agent_rl@<method>` stage: multi-turn GRPO (`cola.envs.agent_rl`) on the training games, from the
walkthrough fine-tuned model (models/agent/fta for CoLA, models/agent/sft for the token baseline)."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

import torch

from cola.comparison import write_run_info
from cola.config import PipelineParams
from cola.envs.agent_rl import AgentGRPOTrainer
from cola.envs.data import game_files, prompt_style
from cola.envs.finetune import check_method
from cola.envs.textworld_env import TextWorldEnv
from cola.errors import ColaError
from cola.io import file_digest, fingerprint
from cola.model.checkpoint import load_model_and_tokenizer, save_hf_folder
from cola.results import StageResult
from cola.rl.grpo import build_policy
from cola.train.core import LogFn

__all__ = ["run_agent_rl"]


def run_agent_rl(params: PipelineParams, method: str, data_dir: Path, start: Path, out_dir: Path, *,
                 checkpoint_dir: Path | None = None, on_log: LogFn | None = None) -> StageResult:
    """Multi-turn GRPO on the training games from the walkthrough fine-tuned model."""
    check_method(method)
    agent = params.agent
    cfg = dataclasses.replace(params.rl, steps=agent.rl_steps, prompts_per_step=agent.games_per_step,
                              group_size=agent.group_size)
    torch.set_num_threads(agent.threads)
    model, tokenizer, kind = load_model_and_tokenizer(start)
    if kind != ("cola" if method == "cola" else "base"):
        raise ColaError(f"{start}: {method} agent RL needs a {'CoLA' if method == 'cola' else 'plain LM'} "
                        f"start model, found a {kind} folder")
    games = game_files(data_dir, "train")
    trainer = AgentGRPOTrainer(
        build_policy(model, tokenizer, method, cfg), cfg, games,
        lambda game: TextWorldEnv(game, max_steps=agent.max_steps), style=prompt_style(agent),
        max_new_tokens=agent.max_new_tokens, win_bonus=agent.win_bonus, seed=agent.seed,
        checkpoint_dir=checkpoint_dir, on_log=on_log, description=f"agent rl {method}",
        fingerprint=fingerprint(asdict(cfg), asdict(agent), method, file_digest(start),
                                *[file_digest(g) for g in games]))
    last = trainer.train()
    if method == "cola":
        model.set_stage("frozen")
    model.eval()
    save_hf_folder(model, tokenizer, out_dir)
    write_run_info(out_dir, method=method, task="agent", seed=agent.seed, start=str(start))
    return StageResult({**last, **trainer.summary()}, models=[out_dir])
