"""The TextWorld backend on games generated offline: walkthroughs win, games are reproducible from their seed,
invalid commands are answered and counted, rewards are score differences, and a random agent does not always
win."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

pytest.importorskip("textworld")

from cola.envs.base import EnvUnavailableError  # noqa: E402
from cola.envs.textworld_env import GameSettings, TextWorldEnv, make_game  # noqa: E402

SETTINGS = GameSettings(world_size=2, nb_objects=4, quest_length=3)
SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def games(tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("games")
    return {seed: make_game(SETTINGS, seed, folder) for seed in SEEDS}


def play(env: TextWorldEnv, commands: list[str]):
    env.start_episode()
    return [env.step(command) for command in commands]


@pytest.mark.parametrize("seed", SEEDS)
def test_the_walkthrough_wins_with_the_maximum_score_and_not_without_its_last_step(games, seed) -> None:
    env = TextWorldEnv(games[seed], max_steps=50)
    walkthrough = env.walkthrough
    assert 1 <= len(walkthrough) <= 2 * SETTINGS.quest_length
    steps = play(env, walkthrough)
    assert steps[-1].won and steps[-1].done and steps[-1].score == env.max_score > 0
    assert not any(s.done for s in steps[:-1])
    short = play(env, walkthrough[:-1])
    assert not any(s.won for s in short) and (not short or short[-1].score < env.max_score)
    env.close()


def test_the_same_seed_gives_the_same_game_and_walkthrough(games, tmp_path) -> None:
    again = make_game(SETTINGS, SEEDS[0], tmp_path)
    assert again.read_bytes() == games[SEEDS[0]].read_bytes()
    assert TextWorldEnv(again).walkthrough == TextWorldEnv(games[SEEDS[0]]).walkthrough
    assert games[SEEDS[0]].read_bytes() != games[SEEDS[1]].read_bytes()


def test_an_invalid_command_is_answered_counted_and_ends_nothing(games) -> None:
    env = TextWorldEnv(games[SEEDS[0]], max_steps=10)
    env.start_episode()
    step = env.step("dance with the keycard wildly")
    assert not step.done and not step.valid and step.reward == 0 and step.observation.text
    assert env.step(env.walkthrough[0]).valid  # the episode goes on


def test_step_rewards_are_score_differences_and_the_step_limit_ends_an_episode(games) -> None:
    env = TextWorldEnv(games[SEEDS[1]], max_steps=50)
    steps = play(env, env.walkthrough)
    scores = [0.0] + [s.score for s in steps]
    assert [s.reward for s in steps] == [b - a for a, b in zip(scores, scores[1:], strict=False)]
    limited = TextWorldEnv(games[SEEDS[1]], max_steps=2)
    assert [s.done for s in play(limited, ["look", "look"])] == [False, True]


def test_a_seeded_random_admissible_agent_sometimes_fails(games) -> None:
    rng, wins, episodes = random.Random(0), 0, 0
    for seed in SEEDS:
        env = TextWorldEnv(games[seed], max_steps=10)
        for _ in range(4):
            observation, done, episodes = env.start_episode(), False, episodes + 1
            while not done:
                step = env.step(rng.choice(observation.admissible))
                observation, done = step.observation, step.done
            wins += step.won
    assert wins < episodes


def test_a_missing_game_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(EnvUnavailableError, match="no such TextWorld game file"):
        TextWorldEnv(tmp_path / "missing.z8")
