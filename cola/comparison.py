"""The RL comparison's design in one place: its grid of runs, the report's rows, and its seeds.

**Grid.** RL runs are (method, task) pairs: ``cola`` (latent-action RL, starting from the FTA model) and
``token`` (token-level RL, starting from the SFT baseline), on ``math`` (prompts of the arith split) and
``countdown``. dvc.yaml's ``rl`` entries spell out the same pairs (tests/test_report.py checks that they
agree).
The report's rows are the base, SFT, CoLA-BC, CoLA-FTA and the four RL models (:func:`rows`).

**Seeds.** How the comparison is repeated over several seeds in one ``dvc repro``, with no extra stages:

- ``rl.seeds`` lists the RL seeds (default ``[0]``). Each ``rl@<method>-<task>`` stage trains one model per
  seed, each from the same start model: the first seed's model is the folder ``models/rl/<run>/`` itself (so
  ``cola eval models/rl/<run>`` works), the others go to ``models/rl/<run>/seeds/<seed>/``
  (:func:`model_variants` lists them).
- ``rl_eval`` evaluates every seed's model with the same protocol.
- Both write their metrics through :func:`aggregate`: with one seed the metrics are the run's own; with
  several, ``key`` is the mean over seeds, ``key_sd`` the sample standard deviation and ``seed<s>/key`` each
  seed's value, so ``dvc exp show`` and the report read the same files whatever the number of seeds.
- The report prints accuracies as ``mean ± spread`` over seeds (``report.seed_spread``: sd, se or range) when
  there are several, and as ``accuracy ± binomial standard error`` otherwise.

So ``dvc exp run -S 'rl.seeds=[0,1,2]'`` re-runs the RL comparison over three seeds (about three times the RL
time) and the report shows mean ± spread. Only RL is seeded this way: the models RL starts from are shared by
every seed, so the spread is the RL run's own variance.

Pure Python (no torch), so params validation and the report can import it cheaply.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola.io import is_main_process

__all__ = ["METHODS", "RL_TASKS", "RUN_INFO", "START_MODELS", "Row", "aggregate", "model_variants", "rows",
           "seed_key", "seed_values", "spread", "values_by_seed", "write_run_info"]

#: RL task -> the task split of its prompts (data/tasks/train/<split>.jsonl), reward and headline test.
RL_TASKS = {"math": "arith", "countdown": "countdown"}
#: method -> the model (under models/) its RL starts from by default; `rl.cola_start` may make CoLA's `bc`
#: (dvc.yaml's `rl` entries read it for their --start and dependency).
START_MODELS = {"cola": "fta", "token": "sft"}
METHODS = tuple(START_MODELS)
METHOD_LABELS = {"token": "Token-RL", "cola": "CoLA-RL"}
RUN_INFO = "rl_run.json"  # beside each RL model's weights: method, task, seed and start model


@dataclass(frozen=True)
class Row:
    """One model of the comparison: its name, label, and for an RL run its method, task and start model."""

    name: str
    label: str
    method: str | None = None
    task: str | None = None
    start: str | None = None

    @property
    def folder(self) -> Path:
        """The model folder, relative to the models folder (``models/`` in dvc.yaml)."""
        return Path("rl") / self.name if self.method else Path(self.name)

    @property
    def split(self) -> str | None:
        """The task split an RL run trained on (its headline accuracy); None for the other rows."""
        return RL_TASKS[self.task] if self.task else None


def rows(cola_start: str = START_MODELS["cola"]) -> list[Row]:
    """Every model in table order: base, SFT, CoLA-BC, CoLA-FTA, then token-RL and CoLA-RL per task (CoLA-RL
    starting from `cola_start`, ``rl.cola_start``)."""
    out = [Row("base", "Base"), Row("sft", "SFT"), Row("bc", "CoLA-BC"), Row("fta", "CoLA-FTA")]
    starts = {**START_MODELS, "cola": cola_start}
    for task in RL_TASKS:
        for method in ("token", "cola"):
            out.append(Row(f"{method}-{task}", f"{METHOD_LABELS[method]} ({task})", method, task,
                           starts[method]))
    return out


# --------------------------------------------------------------------------------------------- seeds

SPREADS = ("sd", "se", "range")


def seed_key(seed: int, key: str) -> str:
    """The flat-metrics name of one seed's value of `key` (``seed3/arith_acc``)."""
    return f"seed{seed}/{key}"


def aggregate(per_seed: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
    """Flat metrics over seeds: one seed's metrics unchanged, or mean, sample sd and per-seed values.

    Every seed should report the same keys (they ran the same code); a key missing from a seed is averaged
    over the seeds that have it. ``n_seeds`` is always present.
    """
    if not per_seed:
        raise ValueError("aggregate needs the metrics of at least one seed")
    if len(per_seed) == 1:
        (only,) = per_seed.values()
        return {**only, "n_seeds": 1}
    out: dict[str, float] = {"n_seeds": len(per_seed)}
    keys = list(dict.fromkeys(k for metrics in per_seed.values() for k in metrics))
    for key in keys:
        values = [float(m[key]) for m in per_seed.values() if key in m]
        finite = [v for v in values if math.isfinite(v)]
        out[key] = statistics.fmean(finite) if finite else math.nan
        out[f"{key}_sd"] = statistics.stdev(finite) if len(finite) > 1 else math.nan
    for seed, metrics in per_seed.items():
        out.update({seed_key(seed, k): v for k, v in metrics.items()})
    return out


def values_by_seed(metrics: Mapping[str, float], key: str) -> dict[int | None, float]:
    """Each seed's value of `key` in metrics written by :func:`aggregate`, keyed by seed.

    Single-seed metrics have no per-seed keys: their value comes back under the key None. A seed that did not
    report `key` is absent.
    """
    prefix, suffix = "seed", f"/{key}"
    found = {}
    for name, value in metrics.items():
        seed = name[len(prefix) : -len(suffix)] if name.startswith(prefix) and name.endswith(suffix) else ""
        if seed.lstrip("-").isdigit():
            found[int(seed)] = value
    if found:
        return {s: math.nan if v is None else float(v) for s, v in found.items()}  # None: non-finite in JSON
    return {None: float(metrics[key])} if metrics.get(key) is not None else {}


def seed_values(metrics: Mapping[str, float], key: str) -> list[float]:
    """Every seed's value of `key` in metrics written by :func:`aggregate` (one value for a single seed)."""
    return list(values_by_seed(metrics, key).values())


def spread(values: Sequence[float], kind: str = "sd") -> float:
    """Spread of per-seed values: ``sd`` (sample), ``se`` (sd / √n) or ``range`` (max − min); NaN for one."""
    if kind not in SPREADS:
        raise ValueError(f"spread must be one of {', '.join(SPREADS)}, got {kind!r}")
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return math.nan
    if kind == "range":
        return max(finite) - min(finite)
    sd = statistics.stdev(finite)
    return sd / math.sqrt(len(finite)) if kind == "se" else sd


def write_run_info(model_dir: str | Path, **info: Any) -> None:
    """Record where an RL model came from (method, task, seed, start) in its folder (main process only)."""
    if not is_main_process():
        return
    (Path(model_dir) / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")


def model_variants(folder: str | Path) -> list[tuple[int | None, Path]]:
    """``(seed, folder)`` of every model in `folder`: itself, plus the ``seeds/<s>/`` of a multi-seed RL run.

    The seed comes from each folder's `RUN_INFO`; it is None for a model that did not come out of RL.
    """
    folder = Path(folder)
    found = [folder]
    seeds_dir = folder / "seeds"
    if seeds_dir.is_dir():
        found += sorted((p for p in seeds_dir.iterdir() if (p / "config.json").is_file()), key=_numeric_first)
    out: list[tuple[int | None, Path]] = []
    for path in found:
        info = path / RUN_INFO
        out.append((json.loads(info.read_text()).get("seed") if info.is_file() else None, path))
    return out


def _numeric_first(path: Path) -> tuple[int, int, str]:
    """Sort key: numeric folder names (seeds) in numeric order, then anything else by name."""
    name = path.name
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)
