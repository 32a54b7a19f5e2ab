"""Benchmark: batched multi-turn agent rollouts on TextWorld games, CoLA policy vs token policy.

Both policies wrap the same tiny base (the default profile's shape, random weights, a tokenizer trained on the
games' own text), so replies are nonsense and episodes run to the step limit: the point is the cost of a
turn, not the score. For each policy it plays one batch of episodes (group environments: `--group` copies of
each of `--games` games, all stepped together, one batched generation per turn) in alternating repeats and
reports

    episodes/s        whole episodes per second
    engine share      the fraction of the time spent inside the game engine (`env.step`, reset included)
    model share       the rest: prompt building, batched generation, parsing

Run: `python bench/agent.py [--quick] [--out bench/results/agent.json]` (needs the `agents` extra).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from results_io import parse_bench_args, write_result  # bench/ is on sys.path: the script's folder

from cola.base.tiny import build_tiny_base
from cola.config import TinyBaseConfig, load_stage_config
from cola.envs.data import prompt_style
from cola.envs.episodes import EpisodeNoise, play_episodes
from cola.envs.textworld_env import GameSettings, TextWorldEnv, make_game
from cola.rl.policies import LatentActionPolicy, TokenPolicy
from cola.train.latent import cola_from_base

ROOT = Path(__file__).resolve().parents[1]


class TimedEnv(TextWorldEnv):
    """A TextWorld env that adds the seconds spent in the engine to a shared counter."""

    clock = [0.0]

    def reset(self):
        start = time.perf_counter()
        try:
            return super().reset()
        finally:
            self.clock[0] += time.perf_counter() - start

    def _play(self, command: str):
        start = time.perf_counter()
        try:
            return super()._play(command)
        finally:
            self.clock[0] += time.perf_counter() - start


def main() -> None:
    args = parse_bench_args(__doc__, "agent", "two games, fewer steps and repeats")
    n_games, group, max_steps, repeats = (2, 2, 4, 2) if args.quick else (4, 4, 10, 3)
    folder = Path(tempfile.mkdtemp(prefix="cola-bench-games-"))
    games = [make_game(GameSettings(quest_length=3), seed, folder) for seed in range(n_games)]
    probe = TextWorldEnv(games[0])
    text = [probe.start_episode().text, probe.last.objective, *probe.walkthrough]
    probe.close()
    base, tokenizer = build_tiny_base(text * 50, TinyBaseConfig(), seed=0)
    cola = cola_from_base(base, load_stage_config("latent", ROOT / "params.yaml")[0].cola).eval()
    policies = {"cola": LatentActionPolicy(cola, tokenizer), "token": TokenPolicy(base.eval(), tokenizer)}
    agent = load_stage_config("agent", ROOT / "params.yaml")[0]  # the default profile's prompt, reply sizes
    style = prompt_style(agent)

    def run(policy) -> tuple[float, float, int]:
        envs = [TimedEnv(game, max_steps=max_steps) for game in games for _ in range(group)]
        TimedEnv.clock[0] = 0.0
        start = time.perf_counter()
        episodes, _ = play_episodes(policy, envs, style, agent.max_new_tokens, EpisodeNoise(0))
        seconds = time.perf_counter() - start
        for env in envs:
            env.close()
        return seconds, TimedEnv.clock[0], sum(len(e.turns) for e in episodes)

    for policy in policies.values():  # warm-up
        run(policy)
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in policies}
    for _ in range(repeats):  # alternate, so machine noise hits both alike
        for name, policy in policies.items():
            results[name].append(run(policy))
    rows = []
    for name, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        engine = statistics.median(r[1] / r[0] for r in runs)
        rows.append({"policy": name, "episodes_s": n_games * group / seconds, "engine_share": engine,
                     "model_share": 1 - engine, "turns": runs[0][2], "seconds": seconds})
    print(f"{'policy':<8}{'episodes/s':>12}{'engine share':>14}{'model share':>13}{'turns':>7}")
    for r in rows:
        print(f"{r['policy']:<8}{r['episodes_s']:>12.2f}{r['engine_share']:>14.2f}{r['model_share']:>13.2f}"
              f"{r['turns']:>7}")
    write_result(args.out, {"games": n_games, "group": group, "max_steps": max_steps, "repeats": repeats,
                            "max_new_tokens": agent.max_new_tokens, "rows": rows})


if __name__ == "__main__":
    main()
