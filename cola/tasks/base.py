"""A task owns its behaviour (the nanochat ``tasks/`` habit): prompt, scoring, format check, RL reward, vote.

Evaluation (`cola.eval`), the RL reward (`cola.rl`), the lm-eval YAML scorers (`evals/utils.py`) and the
report all ask the task object and never test a task's name, so the reward RL optimises and the accuracy and
format rate the report shows are the same functions.

    BoxedMathTask     the last balanced ``\\boxed{}`` is MATH-equivalent to the answer
                      (arith, wordprob, MATH-500)
    ExactBoxedTask    the last ``\\boxed{}`` equals the answer string, ends stripped
                      (spell, wrev: copy skills)
    CountdownTask     the last ``<answer>`` expression uses the numbers once each and makes the target; the
                      "enhanced thinking" format is ``<think>…</think> <answer>…</answer>`` and nothing else

The procedural tasks (their reasoning-gym source, config and formatter) are in :mod:`cola.tasks.procedural`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from cola.tasks.countdown import check_countdown, parse_answer_tag
from cola.tasks.math_grader import extract_boxed, grade, normalize_answer

Example = Mapping[str, Any]
Role = Literal["math", "thinking", "retention"]


@dataclass(frozen=True)
class Task:
    """One task: where its examples come from, how it is prompted and how an answer is scored.

    ``source``/``config``/``formatter`` generate examples with reasoning-gym (None for tasks whose examples
    come from a file, like MATH-500); ``formatter`` maps a reasoning-gym item to ``{"question", "answer",
    "completion"}`` plus extras. ``key`` is a problem's identity for held-out splitting (two questions with
    the same key never land in different splits). ``role``: ``math`` and ``thinking`` tasks are fine-tuned and
    RL targets; ``retention`` tasks are never trained on after pretraining and measure what later stages cost.
    """

    name: str
    role: Role
    description: str = ""
    source: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    formatter: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    extras: tuple[str, ...] = ()
    key: Callable[[Example], str] = field(default=lambda ex: ex["question"])
    #: Whether n sampled answers can vote (self-consistency): not where different answers can all be right.
    majority_vote: ClassVar[bool] = True

    def prompt(self, question: str) -> str:
        """The prompt the model sees (and is trained on): short, one line, answer after ``A:``."""
        return f"Q: {question} A:"

    def score(self, example: Example, completion: str) -> bool:
        """Is `completion` a correct answer to `example`?"""
        raise NotImplementedError

    def format_ok(self, completion: str) -> bool:
        """Does `completion` have the task's answer format (whatever its correctness)?"""
        raise NotImplementedError

    def reward(self, completion: str, example: Example) -> float:
        """The verifiable RL reward of one completion: 1 if correct, else 0 (the evaluation, reused)."""
        return 1.0 if self.score(example, completion) else 0.0

    def vote_key(self, completion: str) -> str | None:
        """The answer a completion votes for in a majority vote; None abstains (nothing to vote with)."""
        return None


class BoxedMathTask(Task):
    """Direct-answer math: the last ``\\boxed{}`` graded with MATH normalisation, exact numbers,
    math-verify."""

    def score(self, example: Example, completion: str) -> bool:
        return grade(completion, str(example["answer"]))

    def format_ok(self, completion: str) -> bool:
        return extract_boxed(completion) is not None

    def vote_key(self, completion: str) -> str | None:
        boxed = extract_boxed(completion)
        return None if boxed is None else normalize_answer(boxed)


class ExactBoxedTask(Task):
    """A string to reproduce: the last ``\\boxed{}`` must equal the answer (ends stripped).

    Not the math grader's equivalence, which would compare ``cat`` and ``act`` (or ``a, b`` and ``b, a``) as
    SymPy products / sets of symbols and call them equal.
    """

    def score(self, example: Example, completion: str) -> bool:
        boxed = extract_boxed(completion)
        return boxed is not None and boxed.strip() == str(example["answer"]).strip()

    def format_ok(self, completion: str) -> bool:
        return extract_boxed(completion) is not None

    def vote_key(self, completion: str) -> str | None:
        boxed = extract_boxed(completion)
        return None if boxed is None else boxed.strip()


# The whole completion is a think block then an answer block (whitespace around them allowed); DOTALL so a
# multi-line trace still counts. The R1-style format reward checks the same full match.
_THINK_THEN_ANSWER = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)


@dataclass(frozen=True)
class CountdownTask(Task):
    """Make a target from numbers with + - * /, after a ``<think>`` trace (the "enhanced thinking" prompt).

    The RL reward is ``format_weight`` for the format plus 1 for a correct expression in the last answer tag:
    correctness does not require the format, which only shapes early exploration (the usual "format +
    correctness" reward). There is no majority vote: different expressions can all be right.
    """

    format_weight: float = 0.1
    majority_vote: ClassVar[bool] = False

    def score(self, example: Example, completion: str) -> bool:
        expression = parse_answer_tag(completion)
        return expression is not None and check_countdown(expression, list(example["numbers"]),
                                                          int(example["target"]))

    def format_ok(self, completion: str) -> bool:
        return _THINK_THEN_ANSWER.fullmatch(completion) is not None

    def reward(self, completion: str, example: Example) -> float:
        fmt = self.format_weight if self.format_ok(completion) else 0.0
        return fmt + (1.0 if self.score(example, completion) else 0.0)
