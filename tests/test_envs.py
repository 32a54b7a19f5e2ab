"""The TextWorld backend on games generated offline: walkthroughs win, games are reproducible from their seed,
invalid commands are answered and counted, rewards are score differences, and a random agent does not always
win."""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("textworld")

from cola.envs.base import EnvUnavailableError  # noqa: E402
from cola.envs.textworld_env import GameSettings, TextWorldEnv, make_game  # noqa: E402

SETTINGS = GameSettings(world_size=2, nb_objects=4, quest_length=3)
SEEDS = (1, 2, 3)
ALFWORLD_DATA = Path(__file__).parent / "data" / "alfworld"  # a hand-written ALFWorld-style PDDL game


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
    from cola.envs.episodes import play_random
    from cola.envs.evaluation import episode_summary

    envs = [TextWorldEnv(games[seed], max_steps=10) for seed in SEEDS]
    episodes = [e for _ in range(4) for e in play_random(envs, random.Random(0))]
    again = [e for _ in range(4) for e in play_random(envs, random.Random(0))]
    assert [[t.command for t in e.turns] for e in episodes] == [[t.command for t in e.turns] for e in again]
    summary = episode_summary(episodes)
    assert summary["success"] < 1 and summary["invalid_rate"] == 0 and summary["games"] == 12
    assert all(1 <= len(e.turns) <= 10 for e in episodes)


def test_a_missing_game_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(EnvUnavailableError, match="no such TextWorld game file"):
        TextWorldEnv(tmp_path / "missing.z8")


# --------------------------------------------------------------------------------------------- agents


def test_prompts_keep_a_bounded_history_and_replies_become_one_command() -> None:
    from cola.envs.protocol import PromptStyle, Transcript, agent_prompt, parse_command

    transcript = Transcript("Find the key.", "You are in a hall.",
                            [("go east", "A kitchen."), ("take key", "Taken."), ("look", "A kitchen. " * 40)])
    prompt = agent_prompt(transcript, ["go west", "look"], PromptStyle(history=2, max_observation_chars=50))
    assert prompt.splitlines()[0] == "Goal: Find the key."
    assert "go east" not in prompt and "> take key\nTaken.\n> look\nA kitchen." in prompt
    assert max(len(line) for line in prompt.splitlines()[1:-2]) <= 50
    assert prompt.endswith("Commands: go west | look\nAction:")
    bare = agent_prompt(transcript, ["look"], PromptStyle(history=0, show_admissible=False))
    assert bare.splitlines()[1].startswith("A kitchen.") and "Commands" not in bare
    first = agent_prompt(Transcript("Goal.", "You are in a hall."), [], PromptStyle())
    assert first == "Goal: Goal.\nYou are in a hall.\nAction:"
    # The goal has its own limit: its steps come after a sentence of flavour text.
    quest = "Welcome to TextWorld, a profound round! " * 3 + "First, go east. Then, take the key."
    style = PromptStyle(max_observation_chars=40, max_objective_chars=200)
    long_goal = agent_prompt(Transcript(quest, "A hall."), [], style).splitlines()[0]
    assert long_goal == f"Goal: {quest}"
    assert agent_prompt(Transcript(quest, "A hall."), [], PromptStyle(max_objective_chars=40)).splitlines()[
        0] == "Goal: Welcome to TextWorld, a profound round!…"
    assert parse_command("\n  > take key \nmore text") == "take key" and parse_command("  \n") == ""


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
@pytest.mark.parametrize("kind", ["cola", "base"])
def test_batched_episodes_in_both_action_spaces_match_one_at_a_time(games, tmp_path, kind, greedy) -> None:
    """A micro model plays full episodes of two games (two copies of one: a group) batched, and the same
    episodes one at a time: the same transcripts, greedy or sampled (each episode draws from its own
    streams, `EpisodeNoise`, so its batch-mates change nothing)."""

    from cola.envs.episodes import EpisodeNoise, play_episodes
    from cola.envs.protocol import PromptStyle
    from cola.model.checkpoint import load_model_and_tokenizer
    from cola.rl.policies import LatentActionPolicy, TokenPolicy
    from tests.test_harness import build_assets

    assets = build_assets(tmp_path)
    model, tokenizer, _ = load_model_and_tokenizer(assets["root"] / kind)
    policy = LatentActionPolicy(model, tokenizer) if kind == "cola" else TokenPolicy(model, tokenizer)
    files = [games[SEEDS[0]], games[SEEDS[0]], games[SEEDS[1]]]
    style = PromptStyle(history=1, max_observation_chars=60, show_admissible=False)

    def play(paths, first=0, seed=11):
        envs = [TextWorldEnv(path, max_steps=3) for path in paths]
        return play_episodes(policy, envs, style, 6, EpisodeNoise(seed, first), greedy=greedy)

    batched, turns = play(files)
    alone = [play([path], first=i)[0][0] for i, path in enumerate(files)]
    assert [len(e.turns) for e in batched] == [3, 3, 3] and len(turns) == 3  # every turn one batch
    assert all(len(batch.episodes) == 3 and len(batch.rollout.completions) == 3 for batch in turns)
    for together, single in zip(batched, alone, strict=True):
        assert [(t.prompt, t.reply, t.command, t.answer, t.actions) for t in together.turns] == \
               [(t.prompt, t.reply, t.command, t.answer, t.actions) for t in single.turns]
        assert together.invalid == sum(not t.valid for t in together.turns)
    if not greedy:  # the streams do drive the sampling: another seed samples other actions or tokens
        def choices(episodes):
            return [[(t.reply, t.actions) for t in e.turns] for e in episodes]
        assert choices(batched) != choices(play(files, seed=12)[0])
    if kind == "cola":
        assert all(t.actions is not None and len(t.actions) >= 1 for e in batched for t in e.turns)
    else:
        assert all(t.actions is None for e in batched for t in e.turns)


def test_cola_play_prints_the_transcript_with_the_latent_actions(games, tmp_path) -> None:
    from typer.testing import CliRunner

    from cola.cli import app
    from tests.test_harness import build_assets

    assets = build_assets(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["play", str(assets["root"] / "cola"), "--game", str(games[SEEDS[0]]),
                                 "--max-steps", "2", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Goal: ") and "1. > " in result.stdout and "2. > " in result.stdout
    assert result.stdout.count("actions [") == 2 and "in 2 steps" in result.stdout
    assert "walkthrough (" in result.stderr
    missing = runner.invoke(app, ["play", str(assets["root"] / "cola"), "--game", str(tmp_path / "no.z8")])
    assert missing.exit_code == 2 and "no such TextWorld game file" in missing.stderr


def test_interpreter_commands_are_answered_without_touching_the_disk(games, tmp_path, monkeypatch) -> None:
    """A model may type `save` or `restore` with any file name: the interpreter would write the file into the
    working directory or crash on a garbage one, so these are answered as invalid and never played."""
    monkeypatch.chdir(tmp_path)
    env = TextWorldEnv(games[SEEDS[0]], max_steps=10)
    env.start_episode()
    for command in ("save", "restore junk", "SCRIPT", "quit"):
        step = env.step(command)
        assert not step.valid and not step.done and "not available" in step.observation.text
    assert list(tmp_path.iterdir()) == [] and env.step(env.walkthrough[0]).valid


def test_long_garbage_and_chained_commands_reach_the_engine_safely(games, tmp_path, monkeypatch) -> None:
    """A random model's reply of hundreds of characters crashed the interpreter (a segfault, a file with a
    garbage name in the working directory): commands are cut to a few safe words, punctuation that would chain
    commands ("open box. save") is dropped, and an interpreter command anywhere in them is refused."""
    from cola.envs.textworld_env import MAX_COMMAND_CHARS, engine_command

    assert engine_command("Open the BOX. then SAVE!") == "open the box then save"
    assert engine_command("é" * 3 + "take  key\n") == "take key"
    long = engine_command(" ".join(["word"] * 200))
    assert len(long) <= MAX_COMMAND_CHARS and long.startswith("word word")
    monkeypatch.chdir(tmp_path)
    env = TextWorldEnv(games[SEEDS[0]], max_steps=10)
    env.start_episode()
    garbage = "".join(chr(c) for c in range(32, 0x2FF)) * 3
    for command in (garbage, "look. save", "look then script", "\x00\x1b[2J", "   "):
        step = env.step(command)
        assert not step.valid and not step.done, command
    assert list(tmp_path.iterdir()) == [] and env.step(env.walkthrough[0]).valid


def test_episode_returns_and_their_group_advantages_by_hand() -> None:
    from cola.envs.agent_rl import episode_returns
    from cola.envs.episodes import Episode
    from cola.rl.advantages import baseline_advantages

    episodes = [Episode("g", "o", score=s, won=w) for s, w in [(1, True), (0, False), (2, False), (2, False)]]
    returns = episode_returns(episodes, win_bonus=0.5)
    assert returns.tolist() == [1.5, 0.0, 2.0, 2.0]
    # groups of 2: (1.5, 0) -> ±1/√2 (unbiased std 1.0607), (2, 2) -> 0
    advantage = baseline_advantages(returns, 2, "group")
    assert advantage[:2].tolist() == pytest.approx([0.7071, -0.7071], abs=1e-4)
    assert advantage[2:].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("kind", ["cola", "base"])
def test_multi_turn_grpo_trains_what_its_action_space_trains(games, tmp_path, kind) -> None:
    """Two GRPO steps over episodes (2 games x a group of 2, 3 turns each) with a reward that varies between
    samples (the score counts the characters typed): CoLA changes only its policy, the token baseline the
    LM; the logged episode statistics are those of the played episodes."""
    import torch

    from cola.config import RLConfig
    from cola.envs.agent_rl import AgentGRPOTrainer
    from cola.envs.protocol import PromptStyle
    from cola.model.checkpoint import load_model_and_tokenizer
    from cola.rl.grpo import build_policy
    from tests.test_harness import build_assets

    class CharacterCountEnv(TextWorldEnv):
        def _play(self, command):
            observation, score, over, won = super()._play(command)
            return observation, self.score + len(command), over, won

    model, tokenizer, _ = load_model_and_tokenizer(build_assets(tmp_path)["root"] / kind)
    method = "cola" if kind == "cola" else "token"
    if kind == "cola":  # large action embeddings: different sampled actions type different commands
        with torch.no_grad():
            model.action_codebook.weight.normal_(0, 5.0, generator=torch.Generator().manual_seed(0))
    cfg = RLConfig(steps=2, prompts_per_step=2, group_size=2, lr=1e-2, warmup_steps=0, log_every=1,
                   kl_in="loss")
    logged = []
    trainer = AgentGRPOTrainer(build_policy(model, tokenizer, method, cfg), cfg,
                               [games[SEEDS[0]], games[SEEDS[1]]],
                               lambda game: CharacterCountEnv(game, max_steps=3),
                               style=PromptStyle(history=1, max_observation_chars=60, show_admissible=False),
                               max_new_tokens=5, on_log=lambda step, m: logged.append(m))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer.train()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    if kind == "cola":
        assert changed and all(k.startswith(("policy.", "policy_head.")) for k in changed), sorted(changed)
    else:
        assert changed and any(k.startswith("model.layers.") for k in changed)
    assert len(logged) == 2
    for m in logged:
        assert m["steps_mean"] == 3 and 0 <= m["invalid_rate"] <= 1 and m["win_rate"] == 0
        assert m["reward_mean"] == pytest.approx(m["score_mean"]) and m["tokens_per_second"] > 0
    assert any(m["groups_with_signal"] > 0 for m in logged)


@pytest.mark.parametrize("backend", ["textworld-express", "scienceworld"])
def test_the_java_backends_win_with_their_gold_path_behind_the_same_interface(backend) -> None:
    """TextWorldExpress and ScienceWorld (Java engines): the gold path wins with the full score, without its
    last step it does not, and an invalid command is answered, counted and ends nothing."""
    from cola.envs.java_envs import ScienceWorldEnv, TextWorldExpressEnv

    pytest.importorskip("textworld_express" if backend == "textworld-express" else "scienceworld")
    if shutil.which("java") is None:
        pytest.skip("no Java runtime (apt-get install default-jre-headless)")
    if backend == "textworld-express":
        env = TextWorldExpressEnv("cookingworld", "numLocations=1,numIngredients=2,numDistractorItems=2,"
                                  "includeDoors=0", seed=0, max_steps=40)
    else:
        env = ScienceWorldEnv("find-plant", 0, max_steps=40)
    try:
        first = env.start_episode()
        walkthrough = env.walkthrough
        assert first.objective and first.admissible and len(walkthrough) >= 5
        invalid = env.step("xyzzy frobnicate")
        assert not invalid.valid and not invalid.done and invalid.reward == 0
        steps = [env.step(command) for command in walkthrough]
        assert steps[-1].won and steps[-1].done and steps[-1].score == pytest.approx(1.0)
        assert sum(s.reward for s in steps) == pytest.approx(1.0)  # step rewards are score differences
        env.start_episode()
        short = [env.step(command) for command in walkthrough[:-1]]
        assert not short[-1].won and short[-1].score < 1.0
    finally:
        env.close()


def test_a_missing_backend_or_data_is_one_line_saying_what_to_do(monkeypatch) -> None:
    from cola.envs.alfworld_env import AlfWorldEnv, alfworld_games
    from cola.envs.java_envs import require_java

    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    with pytest.raises(EnvUnavailableError, match=r"^\$ALFWORLD_DATA is not set\. ALFWorld's games are a "):
        alfworld_games()
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EnvUnavailableError, match="needs Java: apt-get install default-jre-headless"):
        require_java()
    monkeypatch.setitem(sys.modules, "fast_downward", None)  # the planner not installed
    with pytest.raises(EnvUnavailableError, match="need TextWorld's planner: pip install 'fast-downward-"):
        AlfWorldEnv(ALFWORLD_DATA / "kitchen.pddl")


@pytest.fixture
def alfworld_data(tmp_path, monkeypatch) -> Path:
    """$ALFWORLD_DATA shaped as ALFWorld's download, holding one hand-written game (tests/data/alfworld)."""
    from cola.envs.alfworld_env import pddl_game

    pytest.importorskip("fast_downward", reason="TextWorld's PDDL planner (fast-downward-textworld)")
    game = pddl_game(*[(ALFWORLD_DATA / name).read_text()
                       for name in ("kitchen.pddl", "kitchen.problem.pddl", "kitchen.twl2")])
    trial = tmp_path / "json_2.1.1" / "valid_seen" / "pick_and_place-apple-diningtable" / "trial_0"
    trial.mkdir(parents=True)
    (trial / "game.tw-pddl").write_text(json.dumps(game))
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    return tmp_path


def test_the_alfworld_adapter_plays_a_hand_written_pddl_game_offline(alfworld_data) -> None:
    from cola.envs.alfworld_env import AlfWorldEnv, alfworld_games

    (game,) = alfworld_games("valid_seen")
    env = AlfWorldEnv(game, max_steps=10)
    try:
        first = env.start_episode()
        assert first.objective == "put the apple on the diningtable."
        assert first.admissible == ["go to countertop", "go to diningtable", "go to fridge"]
        walkthrough = env.walkthrough  # the planner's, from the PDDL problem
        assert walkthrough == ["go to countertop", "take apple from countertop", "go to diningtable",
                               "put apple in/on diningtable"]
        invalid = env.step("take the mug")
        assert not invalid.valid and not invalid.done and invalid.observation.text == "Nothing happens."
        steps = [env.step(command) for command in walkthrough]
        assert all(s.valid for s in steps) and [s.reward for s in steps] == [0, 0, 0, 1]
        assert steps[-1].won and steps[-1].done and not any(s.done for s in steps[:-1])
        env.start_episode()
        short = [env.step(command) for command in walkthrough[:-1]]
        assert not short[-1].won and short[-1].score == 0
    finally:
        env.close()
    with pytest.raises(EnvUnavailableError, match=r"no ALFWorld games under .*valid_unseen\. ALFWorld's"):
        alfworld_games("valid_unseen")


def test_cola_play_plays_an_alfworld_game(alfworld_data, tmp_path) -> None:
    from typer.testing import CliRunner

    from cola.cli import app
    from cola.envs.alfworld_env import alfworld_games
    from tests.test_harness import build_assets

    assets = build_assets(tmp_path / "models")
    result = CliRunner().invoke(app, ["play", str(assets["root"] / "cola"), "--game",
                                      str(alfworld_games()[0]), "--max-steps", "2", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Goal: put the apple on the diningtable.") and "2. > " in result.stdout
    assert "walkthrough (4 steps): go to countertop / take apple from countertop" in result.stderr
