"""Dataset loaders and scorers for the cola lm-eval tasks in this folder (see README.md).

lm-eval imports this file when it resolves the ``!function utils.…`` tags of a task YAML. Scoring uses the
project's task objects (`cola.tasks`): MATH-500 and the math tasks by the math grader (last ``\\boxed{}``,
normalisation, math-verify), the retention tasks by an exact string match of the boxed answer, Countdown by
its expression check and its think/answer format — the very functions of the RL rewards and of `cola eval`, so
train-time reward and eval-time metric agree.

Local data files are found without editing a YAML, in this order:

* MATH-500 (``cola_math500_local``): metadata ``math500_path`` (``--metadata math500_path=/abs/test.jsonl``
  or ``TaskManager(metadata={"math500_path": ...})``), else the environment variable ``COLA_MATH500_PATH``.
* procedural tasks: metadata ``tasks_dir``, else ``COLA_TASKS_DIR``, else ``<repo>/data/tasks/test`` (what the
  ``prepare`` stage writes), holding ``<task>.jsonl``.

Relative paths are resolved against the current directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import datasets

# Importing the model module registers `--model cola` with lm-eval. lm-eval resolves a task YAML's functions
# before it builds the model when the task is given as a YAML *path* (`lm_eval run --tasks evals/x.yaml`), so
# this import is what makes `--model cola` work with the stock `lm_eval` command (see README.md).
import cola.eval.lm_eval_model  # noqa: F401
from cola.tasks import MATH500, TASKS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TASKS_DIR = REPO_ROOT / "data" / "tasks" / "test"


def _read_jsonl(path: Path) -> datasets.Dataset:
    """A JSONL file as a `datasets.Dataset`, read directly (no builder, no cache folder, works offline)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such JSONL file")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no examples")
    return datasets.Dataset.from_list(rows)


def load_math500_local(math500_path: str | None = None, **_: Any) -> dict[str, datasets.Dataset]:
    """``custom_dataset`` of ``cola_math500_local``: MATH-500 from a local JSONL (HuggingFaceH4/MATH-500
    fields).

    lm-eval calls it with the task metadata merged with the run's metadata (model args included), hence the
    catch-all keyword arguments.
    """
    path = math500_path or os.environ.get("COLA_MATH500_PATH")
    if not path:
        raise ValueError(
            "cola_math500_local needs the MATH-500 JSONL path: pass --metadata math500_path=/abs/test.jsonl "
            "(TaskManager(metadata={'math500_path': ...}) in Python) or set COLA_MATH500_PATH"
        )
    return {"test": _read_jsonl(Path(path).expanduser().resolve())}


def load_procedural(cola_task: str, tasks_dir: str | None = None, **_: Any) -> dict[str, datasets.Dataset]:
    """``custom_dataset`` of the procedural tasks: ``<tasks_dir>/<cola_task>.jsonl`` from the prepare stage.

    ``cola_task`` comes from the task YAML's ``dataset_kwargs``; ``tasks_dir`` from the run's metadata.
    """
    folder = tasks_dir or os.environ.get("COLA_TASKS_DIR") or DEFAULT_TASKS_DIR
    return {"test": _read_jsonl(Path(folder).expanduser().resolve() / f"{cola_task}.jsonl")}


def _response(results: list[str]) -> str:
    # generate_until gives one string per document (a list, because of lm-eval's filter pipeline).
    return results[0] if results else ""


def process_math(doc: dict[str, Any], results: list[str]) -> dict[str, int]:
    """MATH-500 and the procedural math tasks: the last boxed answer, graded against ``doc["answer"]``."""
    return {"exact_match": int(MATH500.score(doc, _response(results)))}


def process_exact_boxed(doc: dict[str, Any], results: list[str]) -> dict[str, int]:
    """Retention tasks (spell, wrev): the last boxed answer must equal the reference string (ends
    stripped)."""
    return {"exact_match": int(TASKS[doc.get("task", "spell")].score(doc, _response(results)))}


def process_countdown(doc: dict[str, Any], results: list[str]) -> dict[str, int]:
    """Countdown: the last ``<answer>`` expression must use the numbers once each and make the target;
    ``format``: the whole response is ``<think>…</think> <answer>…</answer>`` (what the format reward
    checks)."""
    task, text = TASKS["countdown"], _response(results)
    return {"exact_match": int(task.score(doc, text)), "format": int(task.format_ok(text))}
