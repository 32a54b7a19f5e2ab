"""The `agent_eval` stage: every agent model on seen and unseen games (greedy episodes: success, score, steps,
invalid commands, ± SE) and its retention (spell, wrev, held-out perplexity), with each RL model's deltas
against its start (the walkthrough fine-tuned model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cola.config import PipelineParams
from cola.envs.data import SPLITS, game_files, prompt_style
from cola.envs.episodes import play_episodes
from cola.envs.finetune import AGENT_MODELS
from cola.envs.textworld_env import TextWorldEnv
from cola.eval.perplexity import perplexity
from cola.eval.sampling_metrics import stderr_of_mean
from cola.eval.scoring import binomial_stderr, task_accuracy
from cola.io import read_jsonl, read_text_lines
from cola.model.checkpoint import load_model_and_tokenizer
from cola.results import StageResult
from cola.rl.grpo import build_policy

__all__ = ["play_split", "run_agent_eval"]

RETENTION_TASKS = ("spell", "wrev")


@torch.inference_mode()
def play_split(model, tokenizer, kind: str, games: list[Path], params: PipelineParams) -> dict[str, float]:
    """Greedy episodes, one per game: success rate, mean score, mean steps, invalid-command rate, ± SE."""
    agent = params.agent
    policy = build_policy(model, tokenizer, "cola" if kind == "cola" else "token", params.rl)
    envs = [TextWorldEnv(game, max_steps=agent.max_steps) for game in games]
    try:
        episodes, _ = play_episodes(policy, envs, prompt_style(agent), agent.max_new_tokens, None,
                                    greedy=True)
    finally:
        for env in envs:
            env.close()
    n, turns = len(episodes), [len(e.turns) for e in episodes]
    success = sum(e.won for e in episodes) / n
    scores = [e.score for e in episodes]
    mean_score = sum(scores) / n
    return {"success": success, "success_se": binomial_stderr(success, n), "score": mean_score,
            "score_se": stderr_of_mean(scores), "steps": sum(turns) / n,
            "invalid_rate": sum(e.invalid for e in episodes) / max(1, sum(turns)), "games": n}


def evaluate_agent_model(folder: Path, params: PipelineParams, data_dir: Path, tests_dir: Path,
                         heldout: Path) -> dict[str, float]:
    agent = params.agent
    model, tokenizer, kind = load_model_and_tokenizer(folder)
    out: dict[str, float] = {}
    for split in SPLITS[1:]:
        out.update({f"{split}_{k}": v for k, v in
                    play_split(model, tokenizer, kind, game_files(data_dir, split), params).items()})
    for task in RETENTION_TASKS:
        examples = read_jsonl(Path(tests_dir) / f"{task}.jsonl")[: agent.retention_limit]
        scored = task_accuracy(model, tokenizer, kind, examples, batch_size=params.rl_eval.batch_size,
                               max_new_tokens=params.rl_eval.max_new_tokens or 48, progress=False)
        out[f"{task}_acc"] = scored["accuracy"]
    diag = perplexity(model, tokenizer, kind, read_text_lines(heldout),
                      max_tokens=params.rl_eval.perplexity_tokens)
    out["perplexity"] = diag["perplexity"]
    return out


def run_agent_eval(params: PipelineParams, models_dir: Path, data_dir: Path, tests_dir: Path,
                   heldout: Path) -> StageResult:
    """Every agent model on seen and unseen games, with retention; each RL model's deltas against its
    start."""
    torch.set_num_threads(params.agent.threads)
    metrics: dict[str, Any] = {}
    for tuned, rl in AGENT_MODELS.values():
        for name in (tuned, rl):
            folder = Path(models_dir) / "agent" / name
            found = evaluate_agent_model(folder, params, data_dir, tests_dir, heldout)
            metrics.update({f"{name}/{k}": v for k, v in found.items()})
        for key in ("seen_success", "unseen_success", "spell_acc", "wrev_acc", "perplexity"):
            metrics[f"{rl}/delta_{key}"] = metrics[f"{rl}/{key}"] - metrics[f"{tuned}/{key}"]
    return StageResult(metrics)
