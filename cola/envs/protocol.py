"""How an LLM agent sees a text game and how its reply becomes a command.

The prompt is built from the objective, the last ``history`` turns (command and the game's answer) and the
current observation, optionally followed by the admissible commands; the agent's reply is read up to its
first line break, and a leading ``>`` is dropped. Whatever is left is sent to the game as typed, even when it
is not an admissible command (the game answers it as it answers a person; the episode counts it as invalid).
Long observations are cut to ``max_observation_chars`` so the prompt fits small models' context; the goal has
its own, longer limit (``max_objective_chars``): it names every step of the quest after a sentence of
flavour text, and a cut there hides the steps the agent must take.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ACTION_CUE = "Action:"


@dataclass
class PromptStyle:
    """The prompt's knobs."""

    history: int = 2                  # past turns shown (a bounded history); 0: only the current observation
    max_observation_chars: int = 240  # observations are cut to this length
    max_objective_chars: int = 400    # the goal is cut to this length
    show_admissible: bool = True      # list the commands the game accepts now


@dataclass
class Transcript:
    """One episode so far: the objective and (command, observation) turns after the first observation."""

    objective: str
    first: str
    turns: list[tuple[str, str]] = field(default_factory=list)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def agent_prompt(transcript: Transcript, admissible: list[str], style: PromptStyle) -> str:
    """The prompt for the next command: the goal, the last ``style.history`` turns (the last one's answer is
    the current observation; before any turn, the first observation) and the admissible commands."""
    cut = style.max_observation_chars
    lines = [f"Goal: {_cut(transcript.objective, style.max_objective_chars)}"]
    if not transcript.turns:
        lines.append(_cut(transcript.first, cut))
    elif style.history == 0:
        lines.append(_cut(transcript.turns[-1][1], cut))
    for command, answer in transcript.turns[-style.history :] if style.history else []:
        lines += [f"> {command}", _cut(answer, cut)]
    if style.show_admissible and admissible:
        lines.append("Commands: " + " | ".join(admissible))
    lines.append(ACTION_CUE)
    return "\n".join(lines)


def parse_command(reply: str) -> str:
    """The command in an agent's reply: its first non-empty line, without a leading ``>``."""
    for line in reply.splitlines():
        line = line.strip().lstrip(">").strip()
        if line:
            return line
    return ""
