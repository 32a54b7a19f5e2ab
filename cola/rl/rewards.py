"""Verifiable rewards for GRPO (design.md §5): boxed-answer math and Countdown with a thinking format.

Two per-completion scorers and a registry of *example rewards*, ``reward(completion, example) -> float``, where
``example`` is a task row of ``data/tasks/*/{task}.jsonl`` (keys ``answer``; countdown also ``numbers`` and
``target``). The trainer only ever sees the example-reward signature, so any task plugs in the same way.

* math (arith, wordprob): 1 if the last ``\\boxed{}`` of the completion is equivalent to the gold answer
  (:func:`cola.eval.math_grader.grade`: MATH normalisation, exact numbers, then math-verify), else 0. The
  authors take the first greedy ``boxed{(.*)}`` match (cola-spec.md §3 stage 4); we grade the last balanced
  box, as the evaluation does, so the RL reward and the reported accuracy agree.
* countdown: ``format_weight`` (0.1) when a ``<think>…</think>`` block is followed by an ``<answer>…</answer>``
  block, plus 1.0 when the last answer uses each source number exactly once and hits the target
  (:func:`cola.eval.countdown.check_countdown`). Correctness does not require the format: the format term
  only shapes early exploration (the usual "format + correctness" R1-style reward).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cola.eval.countdown import check_countdown, parse_answer_tag
from cola.eval.math_grader import grade

__all__ = [
    "REWARDS",
    "ExampleReward",
    "countdown_format_ok",
    "countdown_reward",
    "math_reward",
    "reward_for",
]

#: A reward on one completion given its task example (the trainer's only view of rewards).
ExampleReward = Callable[[str, Mapping[str, Any]], float]

# A think block, then (anything, e.g. whitespace) an answer block; DOTALL so a multi-line trace still counts.
_THINK_THEN_ANSWER = re.compile(r"<think>.*?</think>.*?<answer>.*?</answer>", re.DOTALL)


def math_reward(completion: str, answer: str) -> float:
    """1.0 if the completion's last boxed answer is equivalent to ``answer``, else 0.0 (never raises)."""
    return 1.0 if grade(completion, answer) else 0.0


def countdown_format_ok(completion: str) -> bool:
    """True when ``<think>…</think>`` is followed somewhere later by ``<answer>…</answer>``."""
    return _THINK_THEN_ANSWER.search(completion) is not None


def countdown_reward(
    completion: str, numbers: Sequence[int], target: int, format_weight: float = 0.1
) -> float:
    """``format_weight`` for the think/answer format plus 1.0 for a correct expression in the last answer tag."""
    fmt = format_weight if countdown_format_ok(completion) else 0.0
    expression = parse_answer_tag(completion)
    correct = expression is not None and check_countdown(expression, list(numbers), int(target))
    return fmt + (1.0 if correct else 0.0)


def _math_example(completion: str, example: Mapping[str, Any]) -> float:
    return math_reward(completion, str(example["answer"]))


def _countdown_example(completion: str, example: Mapping[str, Any]) -> float:
    return countdown_reward(completion, example["numbers"], example["target"])


#: Example rewards by kind.
REWARDS: dict[str, ExampleReward] = {"math": _math_example, "countdown": _countdown_example}

# Which reward each RL task uses (its role in cola.data.tasks: math tasks are boxed, countdown is "thinking").
# Retention tasks (spell, wrev) are deliberately absent: they are never RL targets.
_TASK_REWARD = {"arith": "math", "wordprob": "math", "countdown": "countdown", "math": "math"}


def reward_for(task_name: str) -> ExampleReward:
    """The example reward of an RL task: arith / wordprob → math, countdown → countdown."""
    try:
        return REWARDS[_TASK_REWARD[task_name]]
    except KeyError:
        raise ValueError(
            f"no RL reward for task {task_name!r}; expected one of {', '.join(sorted(_TASK_REWARD))}"
        ) from None
