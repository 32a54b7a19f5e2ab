"""The `agent_data` stage: the games of every split and the walkthrough fine-tuning data.

Layout of the output folder (``agent_data``)::

    games/train/tw-<seed>.z8   seeds 0 … train_games-1, the training settings (walkthrough data, RL)
    games/seen/tw-<seed>.z8    the next eval_games seeds, the same settings (held-out games of the family)
    games/unseen/tw-<seed>.z8  eval_games seeds of other settings (more rooms and objects)
    tasks/train/agent.jsonl    one example per walkthrough step of the training games: the agent prompt the
                               policy would see there (`cola.envs.protocol.agent_prompt`) and the command
    tasks/val/agent.jsonl      the same over the seen games (the fine-tuning's held-out response CE)

Examples have the task files' fields (``prompt``, ``completion``), so walkthrough fine-tuning is the `fta` /
`sft` stages' code on another task folder.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cola.config import AgentConfig
from cola.envs.protocol import PromptStyle, Transcript, agent_prompt
from cola.envs.textworld_env import GameSettings, TextWorldEnv, make_game
from cola.io import atomic_dir
from cola.results import StageResult

__all__ = ["SPLITS", "build_agent_data", "game_files", "prompt_style", "walkthrough_examples"]

SPLITS = ("train", "seen", "unseen")


def prompt_style(cfg: AgentConfig) -> PromptStyle:
    return PromptStyle(history=cfg.history, max_observation_chars=cfg.max_observation_chars,
                       max_objective_chars=cfg.max_objective_chars, show_admissible=cfg.show_admissible)


def split_games(cfg: AgentConfig) -> dict[str, tuple[GameSettings, range]]:
    """Each split's game settings and seeds."""
    seen = GameSettings(cfg.world_size, cfg.nb_objects, cfg.quest_length)
    unseen = GameSettings(cfg.unseen_world_size, cfg.unseen_nb_objects, cfg.quest_length)
    first_eval = cfg.train_games
    return {"train": (seen, range(cfg.train_games)),
            "seen": (seen, range(first_eval, first_eval + cfg.eval_games)),
            "unseen": (unseen, range(first_eval, first_eval + cfg.eval_games))}


def game_files(data_dir: Path, split: str) -> list[Path]:
    """The games of a split, in seed order."""
    files = sorted((Path(data_dir) / "games" / split).glob("tw-*.z8"), key=lambda p: int(p.stem[3:]))
    if not files:
        raise FileNotFoundError(f"no games in {Path(data_dir) / 'games' / split} (run the agent_data stage)")
    return files


def walkthrough_examples(game: Path, style: PromptStyle, max_steps: int) -> list[dict[str, str]]:
    """(prompt, command) at every step of the game's walkthrough, the prompts the agent would see."""
    env = TextWorldEnv(game, max_steps=max(max_steps, 1))
    try:
        first = env.start_episode()
        transcript, examples = Transcript(first.objective, first.text), []
        for command in env.walkthrough:
            examples.append({"prompt": agent_prompt(transcript, env.last.admissible, style),
                             "completion": " " + command})
            step = env.step(command)
            transcript.turns.append((command, step.observation.text))
            if step.done:
                break
        return examples
    finally:
        env.close()


def build_agent_data(cfg: AgentConfig, out_dir: Path) -> StageResult:
    """Generate every split's games and the walkthrough examples into `out_dir` (atomically)."""
    style, metrics = prompt_style(cfg), {}
    with atomic_dir(out_dir) as tmp:
        # tw-make is a subprocess per game (2-6 s each): `threads` of them at once.
        with ThreadPoolExecutor(max(1, cfg.threads)) as pool:
            for split, (settings, seeds) in split_games(cfg).items():
                folder = tmp / "games" / split
                games = list(pool.map(lambda seed: make_game(settings, seed, folder), seeds))  # noqa: B023
                metrics[f"{split}_games"] = len(games)
        for split, games_split in (("train", "train"), ("val", "seen")):
            examples = [ex for game in game_files(tmp, games_split)
                        for ex in walkthrough_examples(game, style, cfg.max_steps)]
            path = tmp / "tasks" / split / "agent.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(ex) + "\n" for ex in examples))
            metrics[f"{split}_examples"] = len(examples)
            metrics[f"{split}_walkthrough_steps"] = len(examples) / max(1, metrics[f"{games_split}_games"])
    return StageResult(metrics, outputs=[out_dir])
