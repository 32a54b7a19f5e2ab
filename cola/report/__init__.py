"""The `report` stage's library: one markdown report + PNG plots comparing every model of the RL comparison.

Rows, in the shape of the paper's tables: the base, the SFT baseline (token RL's start), CoLA-BC, CoLA-FTA
(CoLA RL's start), and for each RL task the token-level and the latent-action RL model
(`cola.comparison.rows`).
Inputs are the files the other stages write (nothing is recomputed here, so the report takes seconds):

    eval_rl/<model>/summary.json     rl_eval: accuracies, perplexity, diversity (per seed and aggregated)
    eval_rl/<model>/[seed<s>/]<task>.jsonl   per-problem greedy records (for paired differences)
    metrics/rl/<run>.json            rl: reward start/end, KL, entropy, speed, time-to-threshold
    plots/rl/<run>.json              rl: the logged step curves
    metrics/<stage>.json             every stage's wall-clock seconds (metrics/rl/<run>.json for RL)

Uncertainty. Every accuracy carries its binomial standard error (one seed) or mean ± spread over seeds
(``rl.seeds`` with several seeds, see :mod:`cola.comparison`). Differences between two models evaluated on the
same problems (RL model − its start model, CoLA-RL − token-RL) use the *paired* standard error sd(c₁ − c₂)/√n
of the per-problem correctness, which is smaller than the unpaired √(se₁² + se₂²) because the problems are
shared; with several seeds they are mean ± spread of the per-seed differences.

Modules: `inputs` (reading those files), `statistics` (estimates and their uncertainty), `sections` (one
function per markdown section), `figures` (the three plots), `markdown` (table and number cells).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola.config import ReportConfig
from cola.report import sections
from cola.report.figures import _accuracy_figure, _curves_figure, _delta_figure, _tradeoff_figure
from cola.report.inputs import ModelEval, ReportInputs, load_eval, load_inputs
from cola.report.statistics import (
    Bound,
    Estimate,
    accuracy,
    accuracy_difference,
    metric,
    metric_difference,
    paired_difference,
    threshold_cell,
    threshold_label,
    time_to_threshold_ratio,
)
from cola.results import StageResult

__all__ = [
    "Bound",
    "Estimate",
    "ModelEval",
    "Report",
    "ReportConfig",
    "ReportInputs",
    "accuracy",
    "accuracy_difference",
    "build_report",
    "load_eval",
    "metric",
    "metric_difference",
    "paired_difference",
    "run_report",
    "threshold_cell",
    "threshold_label",
    "time_to_threshold_ratio",
]


@dataclass
class Report:
    """The rendered report: markdown, figures (file name -> matplotlib figure) and flat headline metrics."""

    markdown: str
    figures: dict[str, Any]
    metrics: dict[str, float]
    missing: list[str]


def build_report(cfg: ReportConfig, *, evals_dir: Path, rl_metrics_dir: Path, rl_curves_dir: Path,
                 stage_metrics_dir: Path, profile: str = "", cola_start: str = "fta") -> Report:
    """Read the pipeline's outputs and render the report (no file is written here).

    `evals_dir/<model>/` is what rl_eval wrote, `rl_metrics_dir/<run>.json` and `rl_curves_dir/<run>.json`
    what each RL run wrote, `stage_metrics_dir/<stage>.json` every other stage's metrics (its wall-clock);
    `cola_start` is the model CoLA-RL started from (``rl.cola_start``: its gains are measured against it).
    """
    inputs = load_inputs(cfg, evals_dir=evals_dir, rl_metrics_dir=rl_metrics_dir, rl_curves_dir=rl_curves_dir,
                         stage_metrics_dir=stage_metrics_dir, cola_start=cola_start)
    parts = [
        sections.introduction(inputs, profile),
        sections.every_model(inputs),
        sections.rl_runs(inputs),
        sections.rl_changes(inputs),
        sections.cola_minus_token(inputs),
        sections.time_to_threshold(inputs),
        sections.wall_clock(inputs),
        sections.search(inputs),
        sections.math500(inputs),
        sections.agent(inputs),
    ]
    figures = {
        "accuracy.png": _accuracy_figure(inputs.table_rows, inputs.evals, inputs.tasks, inputs.spread_kind),
        "rl_curves.png": _curves_figure(inputs.rl_rows, inputs.curves, cfg.smooth),
        "rl_deltas.png": _delta_figure(inputs.rl_rows, inputs.evals, inputs.retention, inputs.spread_kind),
        "gain_vs_retention.png": _tradeoff_figure(inputs.rl_rows, inputs.evals, inputs.retention,
                                                  inputs.spread_kind),
    }
    parts += [sections.plots(figures), sections.seeds(inputs)]
    headline: dict[str, float] = {}
    for part in parts:
        headline.update(part.metrics)
    return Report("\n".join(part.markdown for part in parts), figures,
                  {k: v for k, v in headline.items() if v is not None}, inputs.missing)


def run_report(cfg: ReportConfig, out_dir: Path, *, profile: str = "", **inputs: Path) -> StageResult:
    """The `report` stage: `build_report` from `inputs`, its markdown written to ``out_dir/report.md``; the
    figures come back named by their file in `out_dir` (``accuracy.png``, ...) for the stage to save."""
    report = build_report(cfg, profile=profile, **inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    from cola.io import atomic_write_text

    atomic_write_text(out_dir / "report.md", report.markdown)
    if report.missing:
        print(f"warning: the report is incomplete: {', '.join(report.missing)} not found", file=sys.stderr)
    return StageResult(report.metrics, report.figures, artifacts=[out_dir / "report.md"])
