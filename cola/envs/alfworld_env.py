"""ALFWorld behind the `TextEnv` interface: its TextWorld games, written in PDDL, played offline.

An ALFWorld game is a ``game.tw-pddl`` file: JSON holding a PDDL domain, a PDDL problem, a grammar (action
templates such as ``take {o} from {r}`` and the text of the feedback) and optionally a walkthrough. ALFWorld
plays them through TextWorld's PDDL engine (`textworld.envs.pddl.PddlEnv`, which needs the
``fast-downward-textworld`` planner); so does this adapter. The official games come only from ALFWorld's
data download, so offline they need ``$ALFWORLD_DATA``; a hand-written game in the same format runs anywhere
(`pddl_game`, tests/data/alfworld/). Downloaded games name objects by their simulator ids; when the
``alfworld`` package is installed its demangler gives them readable names, as ALFWorld's own agents see them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from cola.envs.base import EnvUnavailableError, Observation
from cola.envs.textworld_env import TextWorldGame

__all__ = ["ALFWORLD_HINT", "AlfWorldEnv", "alfworld_games", "pddl_game"]

ALFWORLD_HINT = ("ALFWorld's games are a separate download: run `alfworld-download` where the network is "
                 "reachable and point $ALFWORLD_DATA at the folder (pip install 'alfworld==0.4.2')")
PLANNER_HINT = ("ALFWorld's PDDL games need TextWorld's planner: pip install 'fast-downward-textworld' "
                "(compiles Fast Downward, ~3 min), or pip install 'alfworld==0.4.2'")
TASK = re.compile(r"Your task is to:\s*(.+)", re.DOTALL)


def alfworld_games(split: str = "valid_seen") -> list[Path]:
    """ALFWorld's game files of a split (``train``, ``valid_seen``, ``valid_unseen``) under
    ``$ALFWORLD_DATA/json_2.1.1/<split>``."""
    root = os.environ.get("ALFWORLD_DATA")
    if not root:
        raise EnvUnavailableError(f"$ALFWORLD_DATA is not set. {ALFWORLD_HINT}")
    folder = Path(root) / "json_2.1.1" / split
    games = sorted(folder.glob("**/game.tw-pddl"))
    if not games:
        raise EnvUnavailableError(f"no ALFWorld games under {folder}. {ALFWORLD_HINT}")
    return games


def pddl_game(domain: str, problem: str, grammar: str,
              walkthrough: list[str] | None = None) -> dict[str, Any]:
    """A ``game.tw-pddl`` document from its parts (write it with `json.dump`); without a walkthrough the
    planner finds one."""
    game: dict[str, Any] = {"pddl_domain": domain, "pddl_problem": problem, "grammar": grammar}
    if walkthrough is not None:
        game["walkthrough"] = list(walkthrough)
    return game


def _demangler() -> list[Any]:
    try:
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    except ImportError:
        return []
    return [AlfredDemangler()]


class AlfWorldEnv(TextWorldGame):
    """One ALFWorld game file (``game.tw-pddl``); the reward is 1 when the goal holds."""

    def __init__(self, game: str | Path, max_steps: int = 50) -> None:
        try:
            import fast_downward  # noqa: F401  (the planner the PDDL engine imports lazily)
            import textworld
        except ImportError as exc:
            raise EnvUnavailableError(PLANNER_HINT) from exc
        if not Path(game).is_file():
            raise EnvUnavailableError(f"{game}: no such ALFWorld game file. {ALFWORLD_HINT}")
        infos = textworld.EnvInfos(admissible_commands=True, won=True, lost=True, extras=["walkthrough"])
        self.game, self.max_steps, self.max_score = Path(game), max_steps, 1.0
        self.env = textworld.start(str(game), request_infos=infos, wrappers=_demangler())
        self._walkthrough: list[str] | None = None

    def _observe(self, state: Any, text: str) -> Observation:
        return Observation(" ".join(text.split()), self.objective, sorted(state["admissible_commands"] or []))

    def reset(self) -> Observation:
        state = self.env.reset()
        intro = state.feedback
        found = TASK.search(intro)  # ALFWorld states the goal at the end of the intro
        self.objective = " ".join((found.group(1) if found else intro).split())
        self._walkthrough = list(state.get("extra.walkthrough") or [])
        return self._observe(state, intro)

    def _play(self, command: str) -> tuple[Observation, float, bool, bool]:
        state, score, done = self.env.step(command)
        over, won = bool(done or state["lost"]), bool(state["won"])
        return self._observe(state, state.feedback), float(score), over, won
