"""The interface every text game is played through, whatever engine runs it.

An episode: ``reset()`` gives the objective and the first observation; ``step(command)`` plays one command
and gives the next observation, the *step* reward (the score gained by this command: engines report the
cumulative score), whether the episode is over, and whether it was won. ``admissible`` lists the commands the
engine accepts in the current state (a hint for prompts and for the random baseline agent, never a filter on
what the agent may type: an invalid command goes to the game as typed and the game answers it as it answers a
person). ``walkthrough`` is an expert command sequence that wins the game from its start (SFT data).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from cola.errors import ColaError


class EnvUnavailableError(ColaError):
    """A game backend's package, Java runtime or data is missing: the message says what to install or set."""


@dataclass
class Observation:
    """What the agent sees after a reset or a step."""

    text: str          # the game's answer to the last command (the room description after a reset)
    objective: str     # the task, as the game states it
    admissible: list[str]


@dataclass
class Step:
    observation: Observation
    reward: float      # score gained by this command (never the cumulative score)
    done: bool         # won, lost, or out of steps
    won: bool
    score: float       # cumulative score after this command
    valid: bool        # the command was among the admissible ones when it was typed


class TextEnv(ABC):
    """One game, played one episode at a time; ``max_steps`` commands at most per episode."""

    max_steps: int
    max_score: float

    @abstractmethod
    def reset(self) -> Observation: ...

    @abstractmethod
    def _play(self, command: str) -> tuple[Observation, float, bool, bool]:
        """The engine's answer to `command`: (observation, cumulative score, game over, won)."""

    @property
    @abstractmethod
    def walkthrough(self) -> list[str]: ...

    def close(self) -> None:  # noqa: B027 (engines without resources keep this)
        """Release the engine's process or files."""

    def start_episode(self) -> Observation:
        self.steps, self.score = 0, 0.0
        self.last = self.reset()
        return self.last

    def step(self, command: str) -> Step:
        """Play `command`; the step's reward is the score it gained."""
        if getattr(self, "last", None) is None:
            raise RuntimeError("call start_episode() before step()")
        valid = command.strip() in self.last.admissible
        observation, score, over, won = self._play(command.strip())
        self.steps += 1
        reward, self.score, self.last = score - self.score, score, observation
        return Step(observation, reward, over or won or self.steps >= self.max_steps, won, score, valid)
