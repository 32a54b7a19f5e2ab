"""The `agent_eval` stage: every agent model on seen and unseen games (greedy episodes: success, score, steps,
invalid commands, ± SE) and its retention (spell, wrev, held-out perplexity), with each RL model's deltas
against its start (the walkthrough fine-tuned model). The models before walkthrough fine-tuning (base, BC)
and a seeded random admissible agent are scored beside them: the rates fine-tuning must rise above."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from cola.config import PipelineParams
from cola.envs.data import SPLITS, game_files, prompt_style
from cola.envs.episodes import Episode, play_episodes, play_random
from cola.envs.finetune import AGENT_MODELS, AGENT_STARTS
from cola.envs.textworld_env import TextWorldEnv
from cola.eval.perplexity import perplexity
from cola.eval.sampling_metrics import stderr_of_mean
from cola.eval.scoring import binomial_stderr, task_accuracy
from cola.io import read_jsonl, read_text_lines
from cola.model.checkpoint import load_model_and_tokenizer
from cola.results import StageResult
from cola.rl.grpo import build_policy

__all__ = ["episode_summary", "play_split", "random_agent", "run_agent_eval"]

RETENTION_TASKS = ("spell", "wrev")


def episode_summary(episodes: list[Episode]) -> dict[str, float]:
    """Success rate, mean score, mean steps and invalid-command rate of one split's episodes, with ± SE."""
    n, turns = len(episodes), [len(e.turns) for e in episodes]
    success = sum(e.won for e in episodes) / n
    scores = [e.score for e in episodes]
    return {"success": success, "success_se": binomial_stderr(success, n), "score": sum(scores) / n,
            "score_se": stderr_of_mean(scores), "steps": sum(turns) / n,
            "invalid_rate": sum(e.invalid for e in episodes) / max(1, sum(turns)), "games": n}


def _split_envs(games: list[Path], max_steps: int) -> list[TextWorldEnv]:
    return [TextWorldEnv(game, max_steps=max_steps) for game in games]


@torch.inference_mode()
def play_split(model, tokenizer, kind: str, games: list[Path], params: PipelineParams) -> dict[str, float]:
    """Greedy episodes, one per game: success rate, mean score, mean steps, invalid-command rate, ± SE."""
    agent = params.agent
    policy = build_policy(model, tokenizer, "cola" if kind == "cola" else "token", params.rl)
    envs = _split_envs(games, agent.max_steps)
    try:
        episodes, _ = play_episodes(policy, envs, prompt_style(agent), agent.max_new_tokens, None,
                                    greedy=True)
    finally:
        for env in envs:
            env.close()
    return episode_summary(episodes)


def random_agent(params: PipelineParams, data_dir: Path) -> dict[str, float]:
    """The seeded random admissible agent on every evaluation split (`random_episodes` episodes a game)."""
    agent, rng, out = params.agent, random.Random(params.agent.seed), {}
    for split in SPLITS[1:]:
        envs = _split_envs(game_files(data_dir, split), agent.max_steps)
        try:
            episodes = [e for _ in range(agent.random_episodes) for e in play_random(envs, rng)]
        finally:
            for env in envs:
                env.close()
        out.update({f"{split}_{k}": v for k, v in episode_summary(episodes).items()})
    return out


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
    metrics: dict[str, Any] = {f"random/{k}": v for k, v in random_agent(params, data_dir).items()}
    for start in AGENT_STARTS.values():
        found = evaluate_agent_model(Path(models_dir) / start, params, data_dir, tests_dir, heldout)
        metrics.update({f"{start}/{k}": v for k, v in found.items()})
    for tuned, rl in AGENT_MODELS.values():
        for name in (tuned, rl):
            folder = Path(models_dir) / "agent" / name
            found = evaluate_agent_model(folder, params, data_dir, tests_dir, heldout)
            metrics.update({f"{name}/{k}": v for k, v in found.items()})
        for key in ("seen_success", "unseen_success", "spell_acc", "wrev_acc", "perplexity"):
            metrics[f"{rl}/delta_{key}"] = metrics[f"{rl}/{key}"] - metrics[f"{tuned}/{key}"]
    return StageResult(metrics)
