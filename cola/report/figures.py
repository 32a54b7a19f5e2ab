"""The report's three figures: accuracy per model and task, the RL curves, and what RL changed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cola.comparison import Row
from cola.plots import plt
from cola.report.inputs import ModelEval
from cola.report.statistics import accuracy, accuracy_difference


def _accuracy_figure(table_rows: list[Row], evals: Mapping[str, ModelEval | None], tasks: list[str],
                     spread_kind: str):
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(tasks)), 4))
    width = 0.8 / max(1, len(table_rows))
    for i, row in enumerate(table_rows):
        est = [accuracy(evals[row.name], t, spread_kind) for t in tasks]
        xs = [j + (i - (len(table_rows) - 1) / 2) * width for j in range(len(tasks))]
        ax.bar(xs, [100 * e.value if math.isfinite(e.value) else 0 for e in est], width, label=row.label,
               yerr=[100 * e.error if math.isfinite(e.error) else 0 for e in est], capsize=2)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("greedy accuracy (%)")
    ax.set_title("held-out accuracy (error bars: SE, or spread over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _smooth(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def _curves_figure(rl_rows: list[Row], curves: Mapping[str, list[dict[str, Any]]], window: int):
    """Reward, KL, entropy and response length against the step, CoLA vs token per task (mean over seeds)."""
    keys = ["reward_mean", "kl", "entropy", "response_length"]
    tasks = list(dict.fromkeys(row.task for row in rl_rows))
    fig, axes = plt.subplots(len(keys), len(tasks), figsize=(5 * len(tasks), 2.3 * len(keys)), squeeze=False)
    for col, task in enumerate(tasks):
        for row in (r for r in rl_rows if r.task == task):
            records = curves.get(row.name) or []
            steps = sorted({r["step"] for r in records})
            for k, key in enumerate(keys):
                per_step = [[r[key] for r in records if r["step"] == s and r.get(key) is not None]
                            for s in steps]
                points = [(s, sum(v) / len(v)) for s, v in zip(steps, per_step, strict=True) if v]
                if points:
                    xs, ys = zip(*points, strict=True)
                    axes[k][col].plot(xs, _smooth(list(ys), window), label=row.label)
        for k, key in enumerate(keys):
            axes[k][col].set_title(f"{task}: {key}", fontsize=9)
            axes[k][col].grid(alpha=0.3)
        axes[-1][col].set_xlabel("GRPO step")
        axes[0][col].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _delta_figure(rl_rows: list[Row], evals: Mapping[str, ModelEval | None], retention: list[str],
                  spread_kind: str):
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / max(1, len(rl_rows))
    groups = ["RL task", *retention]
    for i, row in enumerate(rl_rows):
        ev, start = evals[row.name], evals[row.start]
        est = [accuracy_difference(ev, start, t, spread_kind) for t in [row.split, *retention]]
        xs = [j + (i - (len(rl_rows) - 1) / 2) * width for j in range(len(groups))]
        ax.bar(xs, [100 * e.value if math.isfinite(e.value) else 0 for e in est], width, label=row.label,
               yerr=[100 * e.error if math.isfinite(e.error) else 0 for e in est], capsize=2)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("accuracy change (points)")
    ax.set_title("RL model − its start model (± paired SE, or spread over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
