"""The tasks, each an object that owns its prompt, scoring, format check, RL reward and vote (`Task`).

    TASKS["countdown"].reward(completion, example)      # the RL reward
    scorer("countdown").format_ok(completion)           # the reported format rate: the same check

`TASKS` holds the procedural tasks the pipeline generates (:mod:`cola.tasks.procedural`) and MATH-500, whose
examples come from its JSONL file. Torch-free and light: reasoning-gym and math-verify load only when used.
"""

from __future__ import annotations

from cola.tasks.base import BoxedMathTask, CountdownTask, ExactBoxedTask, Task
from cola.tasks.procedural import PROCEDURAL

__all__ = ["MATH500", "TASKS", "TASK_NAMES", "BoxedMathTask", "CountdownTask", "ExactBoxedTask", "Task",
           "scorer"]

#: MATH-500 (HuggingFaceH4/MATH-500 or a local copy, through lm-eval): boxed answers, the math grader.
MATH500 = BoxedMathTask("math500", "math", "MATH-500 competition problems (examples from a JSONL file)")

TASKS: dict[str, Task] = {task.name: task for task in (*PROCEDURAL, MATH500)}
#: The tasks the `prepare` stage generates, in the order of their files.
TASK_NAMES: tuple[str, ...] = tuple(task.name for task in PROCEDURAL)


def scorer(name: str) -> Task:
    """The task called `name`; a task file of another name (a user's own JSONL) is graded as boxed math."""
    return TASKS.get(name, MATH500)
