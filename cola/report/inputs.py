"""The report's inputs: the files the other stages wrote, read once (nothing is recomputed here).

    <evals_dir>/<model>/summary.json             rl_eval: accuracies, perplexity, diversity (per seed, mean)
    <evals_dir>/<model>/[seed<s>/]<task>.jsonl   per-problem greedy records (for paired differences)
    <rl_metrics_dir>/<run>.json                  rl: reward start/end, KL, entropy, speed, time-to-threshold
    <rl_curves_dir>/<run>.json                   rl: the logged step curves
    <stage_metrics_dir>/<stage>.json             every other stage's wall-clock seconds
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola.comparison import SPREADS, START_MODELS, Row, rows
from cola.config import ReportConfig


@dataclass
class ModelEval:
    """What `rl_eval` wrote for one model: aggregated metrics, per-seed metrics, and a records reader."""

    folder: Path
    metrics: dict[str, float]
    seeds: dict[str, dict[str, float]]  # seed ("0" for a model that did not come out of RL) -> flat metrics

    def records(self, seed: str, task: str) -> list[dict[str, Any]] | None:
        """Per-problem greedy records of one seed's model on `task` (None when not written)."""
        folder = self.folder if len(self.seeds) == 1 else self.folder / f"seed{seed}"
        path = folder / f"{task}.jsonl"
        if not path.is_file():
            return None
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load_eval(folder: Path) -> ModelEval | None:
    summary = _read_json(folder / "summary.json")
    if summary is None:
        return None
    return ModelEval(folder, summary["metrics"], summary["seeds"])


@dataclass
class ReportInputs:
    """Everything the sections and figures read: the rows, each row's evaluation and RL metrics and curves,
    what was not found, and the tasks, seeds and spread the tables are laid out by."""

    spread_kind: str
    table_rows: list[Row]
    evals: dict[str, ModelEval | None]
    rl_metrics: dict[str, dict[str, Any]]
    curves: dict[str, list[dict[str, Any]]]
    missing: list[str]
    tasks: list[str]  # every task with a greedy accuracy, in the order the models list them
    qd_tasks: list[str]  # tasks with a diversity (QD) score
    n_seeds: int
    retention: list[str]  # report.retention_tasks that were evaluated
    rl_metrics_dir: Path
    stage_metrics_dir: Path

    @property
    def rl_rows(self) -> list[Row]:
        return [row for row in self.table_rows if row.method]


def load_inputs(cfg: ReportConfig, *, evals_dir: Path, rl_metrics_dir: Path, rl_curves_dir: Path,
                stage_metrics_dir: Path, cola_start: str = START_MODELS["cola"]) -> ReportInputs:
    """Read every row's evaluation, RL metrics and curves; a file not found is listed in ``missing``."""
    spread_kind = cfg.seed_spread
    if spread_kind not in SPREADS:
        raise ValueError(f"seed_spread must be one of {SPREADS}")
    table_rows = rows(cola_start)
    evals = {row.name: load_eval(evals_dir / row.name) for row in table_rows}
    rl_metrics = {row.name: _read_json(rl_metrics_dir / f"{row.name}.json") or {}
                  for row in table_rows if row.method}
    curves = {row.name: _read_json(rl_curves_dir / f"{row.name}.json") or []
              for row in table_rows if row.method}
    missing = [str(evals_dir / name) for name, ev in evals.items() if ev is None]
    missing += [str(rl_metrics_dir / f"{name}.json") for name, m in rl_metrics.items() if not m]

    present = [ev for ev in evals.values() if ev is not None]
    tasks = list(dict.fromkeys(k[: -len("_acc")] for ev in present for k in ev.metrics
                               if k.endswith("_acc") and "/" not in k and not k.endswith("_sampled_acc")))
    qd_tasks = list(dict.fromkeys(k[: -len("_qd")] for ev in present for k in ev.metrics
                                  if k.endswith("_qd") and "/" not in k))
    n_seeds = max((int(ev.metrics.get("n_seeds", 1)) for ev in present), default=1)
    retention = [t for t in cfg.retention_tasks if t in tasks]
    return ReportInputs(spread_kind, table_rows, evals, rl_metrics, curves, missing, tasks, qd_tasks, n_seeds,
                        retention, rl_metrics_dir, stage_metrics_dir)
