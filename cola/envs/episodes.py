"""Batched multi-turn rollouts: many games played together, one batched generation per turn across the
episodes still running (issue: agent tasks).

Each turn every running episode gets its prompt (`cola.envs.protocol.agent_prompt`: the goal, a bounded
history, the admissible commands), the policy answers all of them in one `Policy.rollout` call (CoLA: sampled
or greedy latent actions and greedy world-model tokens; the token baseline: sampled or greedy tokens), each
reply is parsed into one command and played. KV caches are not kept across turns: every turn's prompt is
encoded afresh (prompts are short and change at their start as the history window slides). Group
environments (G episodes of one game, as GRPO needs) are G env objects on the same game file.

Sampled episodes take their random numbers from `EpisodeNoise`: turn t of episode e draws from a stream
seeded by (seed, e, t) alone, so an episode plays the same whichever other episodes share its batches (the
ones still running at that turn, or those of another process: agent RL on several processes plays each
process's block of episodes and reproduces one process, tests/test_distributed.py).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import torch

from cola.envs.base import TextEnv
from cola.envs.protocol import PromptStyle, Transcript, agent_prompt, parse_command
from cola.model.sampling import RowStreams
from cola.rl.policies import Policy, Rollout


@dataclass(frozen=True)
class EpisodeNoise:
    """The random streams of sampled episodes: one per (episode, turn), from `seed`. `first_episode` is the
    global index of the first env played here (a process's block of a step's episodes)."""

    seed: int
    first_episode: int = 0

    def turn(self, episodes: list[int], turn: int) -> RowStreams:
        """The streams of one turn's rows (local episode indices)."""
        return RowStreams(tuple(torch.Generator().manual_seed(self._seed(self.first_episode + e, turn))
                                for e in episodes))

    def _seed(self, episode: int, turn: int) -> int:
        digest = hashlib.blake2b(f"{self.seed}/{episode}/{turn}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1  # a generator's seed is below 2**63


@dataclass
class Turn:
    prompt: str
    reply: str
    command: str
    valid: bool
    reward: float
    answer: str                          # the game's answer to the command
    actions: list[int] | None = None     # the latent action behind each reply token (CoLA), else None


@dataclass
class Episode:
    objective: str
    first: str
    turns: list[Turn] = field(default_factory=list)
    won: bool = False
    score: float = 0.0

    @property
    def invalid(self) -> int:
        return sum(not t.valid for t in self.turns)


@dataclass
class TurnBatch:
    """One turn's batched generation and the episodes (indices) its rows belong to."""

    rollout: Rollout
    episodes: list[int]


def play_episodes(policy: Policy, envs: list[TextEnv], style: PromptStyle, max_new_tokens: int,
                  noise: EpisodeNoise | None, greedy: bool = False) -> tuple[list[Episode], list[TurnBatch]]:
    """Play one episode in each env, all together; returns the episodes and every turn's batch (what an RL
    update needs: the recorded tokens, actions and log-probs). `noise` seeds sampled play (None: unseeded,
    or greedy play, which draws nothing)."""
    episodes = []
    for env in envs:
        first = env.start_episode()
        episodes.append(Episode(first.objective, first.text))
    running, batches = list(range(len(envs))), []
    while running:
        prompts = [agent_prompt(Transcript(episodes[i].objective, episodes[i].first,
                                           [(t.command, t.answer) for t in episodes[i].turns]),
                                envs[i].last.admissible, style) for i in running]
        streams = noise.turn(running, len(batches)) if noise is not None and not greedy else None
        rollout = policy.rollout(prompts, 1, max_new_tokens, streams, greedy=greedy)
        batches.append(TurnBatch(rollout, list(running)))
        still = []
        for row, i in enumerate(running):
            command = parse_command(rollout.completions[row])
            step = envs[i].step(command)
            actions = (rollout.actions[row][rollout.response_mask[row]].tolist()
                       if rollout.actions is not None else None)
            episodes[i].turns.append(Turn(prompts[row], rollout.completions[row], command, step.valid,
                                          step.reward, step.observation.text, actions))
            episodes[i].won, episodes[i].score = step.won, step.score
            if not step.done:
                still.append(i)
        running = still
    return episodes, batches


def play_random(envs: list[TextEnv], rng: random.Random) -> list[Episode]:
    """The random baseline: one episode in each env, every command drawn uniformly from the admissible ones
    (the rate a policy must beat to have learned anything from the game's text)."""
    episodes = []
    for env in envs:
        observation = env.start_episode()
        episode = Episode(observation.objective, observation.text)
        done = False
        while not done:
            command = rng.choice(observation.admissible) if observation.admissible else "look"
            step = env.step(command)
            episode.turns.append(Turn("", command, command, step.valid, step.reward, step.observation.text))
            episode.won, episode.score, observation, done = step.won, step.score, step.observation, step.done
        episodes.append(episode)
    return episodes
