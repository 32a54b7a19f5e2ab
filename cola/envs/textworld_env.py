"""The default agent backend: TextWorld games generated offline by ``tw-make custom`` from a seed.

A game is fixed by (world size, objects, quest length, seed): the same settings give a byte-identical ``.z8``
and the same walkthrough (``PYTHONHASHSEED`` is pinned for the side ``.json``). Steps cost milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola.envs.base import EnvUnavailableError, Observation, TextEnv

INSTALL_HINT = "TextWorld is not installed: pip install 'textworld==1.7.0' (builds jericho with gcc, ~1 min)"


def _textworld():
    try:
        import textworld
    except ImportError as exc:
        raise EnvUnavailableError(INSTALL_HINT) from exc
    return textworld


# Z-machine interpreter commands that are not moves in the game (see `TextWorldEnv._play`).
META_COMMANDS = frozenset({"save", "restore", "script", "unscript", "transcript", "restart", "quit", "q",
                           "undo", "verbose", "brief", "superbrief", "notify", "pronouns"})


#: Longer input overflows the Z-machine interpreter's line buffer (a segfault, or a file written under a
#: garbage name); every TextWorld command is a few words.
MAX_COMMAND_CHARS = 80


def engine_command(command: str) -> str:
    """What the interpreter may safely read of a model's command: lower-case letters, digits, spaces,
    apostrophes and hyphens (punctuation would chain commands, "open box. save"), at most
    `MAX_COMMAND_CHARS`, cut at a word boundary. The transcript keeps the command as typed."""
    kept = re.sub(r"[^a-z0-9' -]+", " ", command.lower())
    words, length = [], 0
    for word in kept.split():
        length += len(word) + bool(words)
        if length > MAX_COMMAND_CHARS:
            break
        words.append(word)
    return " ".join(words)


@contextlib.contextmanager
def _quiet_jericho() -> Iterator[None]:
    """Jericho warns that a generated game is not one of the commercial games it knows; TextWorld supplies
    the walkthrough and the admissible commands itself, so the warning says nothing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unable to (retrieve walkthrough|find valid actions)")
        yield


@dataclass(frozen=True)
class GameSettings:
    """What `tw-make custom` builds: rooms, objects, quest length (walkthrough steps)."""

    world_size: int = 2
    nb_objects: int = 4
    quest_length: int = 2


def make_game(settings: GameSettings, seed: int, folder: Path) -> Path:
    """Generate game `seed` into `folder` (``tw-<seed>.z8`` and its ``.json``), unless it is there already."""
    _textworld()
    game = Path(folder) / f"tw-{seed}.z8"
    if game.is_file() and game.with_suffix(".json").is_file():
        return game
    folder.mkdir(parents=True, exist_ok=True)
    tw_make = shutil.which("tw-make", path=str(Path(sys.executable).parent)) or shutil.which("tw-make")
    if tw_make is None:
        raise EnvUnavailableError(INSTALL_HINT)
    cmd = [tw_make, "custom", "--world-size", str(settings.world_size), "--nb-objects",
           str(settings.nb_objects), "--quest-length", str(settings.quest_length), "--seed", str(seed),
           "--output", str(game), "-f", "--silent"]
    done = subprocess.run(cmd, env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True)
    if done.returncode != 0 or not game.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"tw-make failed for seed {seed}: {last}")
    return game


class TextWorldGame(TextEnv):
    """What games played through TextWorld's engines share: ``self.env`` (a started TextWorld environment)
    and a walkthrough that a reset reads (``self._walkthrough``)."""

    env: Any
    _walkthrough: list[str] | None = None

    @property
    def walkthrough(self) -> list[str]:
        if self._walkthrough is None:
            self.reset()
        return list(self._walkthrough or [])

    def close(self) -> None:
        self.env.close()


class TextWorldEnv(TextWorldGame):
    """One TextWorld game file (``.z8`` with its ``.json`` beside it)."""

    def __init__(self, game: str | Path, max_steps: int = 20) -> None:
        textworld = _textworld()
        if not Path(game).is_file():
            raise EnvUnavailableError(f"{game}: no such TextWorld game file")
        infos = textworld.EnvInfos(objective=True, admissible_commands=True, max_score=True, won=True,
                                   lost=True, score=True, description=True, extras=["walkthrough"])
        self.game, self.max_steps = Path(game), max_steps
        with _quiet_jericho():
            self.env = textworld.start(str(game), request_infos=infos)
        self._walkthrough: list[str] | None = None
        self.max_score = 0.0

    def _observe(self, state, text: str) -> Observation:
        return Observation(" ".join(text.replace(">", " ").split()), state["objective"],
                           sorted(state["admissible_commands"] or []))

    def reset(self) -> Observation:
        with _quiet_jericho():
            state = self.env.reset()
        self.max_score = float(state["max_score"])
        self._walkthrough = list(state["extra.walkthrough"])
        return self._observe(state, state["description"])  # the feedback opens with an ASCII-art banner

    def _play(self, command: str) -> tuple[Observation, float, bool, bool]:
        words = engine_command(command).split()
        meta = next((word for word in words if word in META_COMMANDS), None)
        if not words or meta is not None:
            # The interpreter's own commands act outside the game: `save`/`script` write files into the
            # working directory, `restore` of a garbage file name crashes the process. Answered, not played.
            text = (f"The command {meta!r} is not available in this game." if meta is not None
                    else "I beg your pardon?")
            return Observation(text, self.last.objective, self.last.admissible), self.score, False, False
        with _quiet_jericho():
            state, score, done = self.env.step(" ".join(words))
        over = bool(done or state["lost"])
        return self._observe(state, state.feedback), float(score), over, bool(state["won"])
