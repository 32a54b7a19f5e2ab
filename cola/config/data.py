"""The ``prepare`` section: sizes and seed of the procedural data (cola.data.prepare)."""

from __future__ import annotations

from dataclasses import dataclass

from cola.config.fields import param
from cola.config.training import task_names

# About 4 M tokens of corpus with the 1024-token BPE (calibration.md §1), dominated by the RL target and the
# two retention tasks whose copy skills need many examples to emerge. Countdown is the slowest generator
# (sympy, ~0.8 ms per item), so it gets fewer examples.
DEFAULT_N_TRAIN = {"arith": 60_000, "wordprob": 25_000, "countdown": 12_000, "spell": 40_000, "wrev": 40_000}


@dataclass
class PrepareConfig:
    """The ``prepare`` section."""

    seed: int = param(0, "Seed of the generators, the held-out hash and the shuffle.")
    n_train: dict[str, int] = param(DEFAULT_N_TRAIN, "Train examples per task (duplicates allowed); its keys "
                                                     "are the tasks to build.", min=0)
    n_val: int = param(450, "Unique validation questions per task; their texts form the validation corpus.",
                       min=1)
    n_test: int = param(700, "Unique test questions per task (>= 650 keeps the standard error of an accuracy "
                             "< 2 points).", min=1)
    test_fraction: float = param(0.12, "Share of each task's question space (by hash) reserved for test.",
                                 min=0, max=1)
    val_fraction: float = param(0.08, "Share of each task's question space (by hash) reserved for "
                                      "validation.", min=0, max=1)
    max_scan_factor: int = param(5, "Give up after scanning this many times the requested examples (+10k) of "
                                    "a task.", min=1)

    def __post_init__(self) -> None:
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError("test_fraction + val_fraction must leave a train share "
                             f"(got {self.test_fraction} + {self.val_fraction})")
        unknown = sorted(set(self.n_train) - set(task_names()))
        if unknown:
            raise ValueError(f"n_train names unknown tasks {unknown}; known: {', '.join(task_names())}")
