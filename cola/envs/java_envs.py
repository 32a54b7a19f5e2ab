"""The Java agent benchmarks behind the same `TextEnv` interface: TextWorldExpress and ScienceWorld.

TextWorldExpress and ScienceWorld run a Java engine through py4j (Debian: ``default-jre-headless``); their
games are built from a game / task name, a parameter string or variation and a seed, with train / dev / test
folds, and both give a gold action sequence (the walkthrough). A missing package or Java is one
`EnvUnavailableError` line saying what to install, never a traceback. (ALFWorld: `cola.envs.alfworld_env`.)

Scores are made cumulative and comparable: TextWorldExpress reports a normalised score in [0, 1] (won at 1);
ScienceWorld a score out of 100 (won at 100), given here as a fraction of 1.
"""

from __future__ import annotations

import shutil

from cola.envs.base import EnvUnavailableError, Observation, TextEnv

__all__ = ["ScienceWorldEnv", "TextWorldExpressEnv", "require_java"]


def require_java() -> None:
    if shutil.which("java") is None:
        raise EnvUnavailableError("this game engine needs Java: apt-get install default-jre-headless")


def _import(package: str, pip_name: str):
    try:
        return __import__(package)
    except ImportError as exc:
        raise EnvUnavailableError(f"{pip_name} is not installed: pip install '{pip_name}' "
                                  "(and Java: apt-get install default-jre-headless)") from exc


class _GoldPathEnv(TextEnv):
    """A Java engine (`self.env`) whose reset computes the gold path (`self._gold`)."""

    env: object
    _gold: list[str]

    @property
    def walkthrough(self) -> list[str]:
        if not self._gold:
            self.reset()
        return list(self._gold)

    def close(self) -> None:
        self.env.close()


class TextWorldExpressEnv(_GoldPathEnv):
    """One TextWorldExpress game: `game` (cookingworld, twc, coin, mapreader, arithmetic, sorting, ...), its
    `params` string, a `fold` (train, dev, test) and a `seed` from that fold."""

    def __init__(self, game: str = "cookingworld", params: str = "", seed: int = 0, fold: str = "train",
                 max_steps: int = 20) -> None:
        require_java()
        module = _import("textworld_express", "textworld-express==1.1.0")
        self.env = module.TextWorldExpressEnv(envStepLimit=10_000)
        self.env.load(gameName=game, gameParams=params)
        self.seed, self.fold, self.max_steps, self.max_score = seed, fold, max_steps, 1.0
        self._gold: list[str] = []
        self._objective = ""

    def _observe(self, infos: dict, text: str) -> Observation:
        return Observation(" ".join(text.split()), self._objective, sorted(infos["validActions"]))

    def reset(self) -> Observation:
        text, infos = self.env.reset(seed=self.seed, gameFold=self.fold, generateGoldPath=True)
        self._objective = infos["taskDescription"]
        self._gold = list(self.env.getGoldActionSequence())
        return self._observe(infos, text)

    def _play(self, command: str) -> tuple[Observation, float, bool, bool]:
        text, _reward, done, infos = self.env.step(command)
        won = bool(infos["tasksuccess"])
        return self._observe(infos, text), float(infos["score"]), bool(done or infos["taskfailure"]), won


class ScienceWorldEnv(_GoldPathEnv):
    """One ScienceWorld task variation (`task` as `scienceworld`'s task names, `variation` an index of its
    train / dev / test variations). Its admissible list holds every valid action–object combination (hundreds:
    prompts should not show it)."""

    def __init__(self, task: str = "boil", variation: int = 0, max_steps: int = 30) -> None:
        require_java()
        module = _import("scienceworld", "scienceworld==1.2.3")
        self.env = module.ScienceWorldEnv("", envStepLimit=10_000)
        self.task, self.variation, self.max_steps, self.max_score = task, variation, max_steps, 1.0
        self._gold: list[str] = []

    def _observe(self, text: str) -> Observation:
        return Observation(" ".join(text.split()), self.env.get_task_description(),
                           sorted(self.env.get_valid_action_object_combinations()))

    def reset(self) -> Observation:
        self.env.load(self.task, self.variation, "", generateGoldPath=True)
        text, _info = self.env.reset()
        self._gold = list(self.env.get_gold_action_sequence())
        return self._observe(text)

    def _play(self, command: str) -> tuple[Observation, float, bool, bool]:
        text, _reward, done, info = self.env.step(command)
        score = max(float(info["score"]), 0.0) / 100  # -100 marks a failed task
        won = float(info["score"]) >= 100
        return self._observe(text), score, bool(done), won

