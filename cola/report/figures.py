"""The report's figures: accuracy per model and task, the RL curves, what RL changed, and the gain vs
retention trade-off."""

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


# (metric, the RL method it belongs to or None for both, panel title): the two entropies are different
# quantities (over 64 latent actions vs over the vocabulary), so each gets its own axis.
CURVE_PANELS = (("reward_mean", None, "sampled reward"),
                ("kl", None, "KL to the start model"),
                ("entropy", "cola", "latent-action entropy (CoLA)"),
                ("entropy", "token", "token entropy (token RL)"),
                ("response_length", None, "response length (tokens)"))


def _curves_figure(rl_rows: list[Row], curves: Mapping[str, list[dict[str, Any]]], window: int):
    """Reward, KL, the two entropies and response length against the step, CoLA vs token per task (mean
    over seeds, moving average of `window` points)."""
    tasks = list(dict.fromkeys(row.task for row in rl_rows))
    fig, axes = plt.subplots(len(CURVE_PANELS), len(tasks), figsize=(5 * len(tasks), 2.1 * len(CURVE_PANELS)),
                             squeeze=False)
    for col, task in enumerate(tasks):
        for color, row in enumerate(r for r in rl_rows if r.task == task):  # one colour per run, every panel
            records = curves.get(row.name) or []
            steps = sorted({r["step"] for r in records})
            for k, (key, method, _) in enumerate(CURVE_PANELS):
                if method not in (None, row.method):
                    continue
                per_step = [[r[key] for r in records if r["step"] == s and r.get(key) is not None]
                            for s in steps]
                points = [(s, sum(v) / len(v)) for s, v in zip(steps, per_step, strict=True) if v]
                if points:
                    xs, ys = zip(*points, strict=True)
                    axes[k][col].plot(xs, _smooth(list(ys), window), label=row.label, color=f"C{color}")
        for k, (_, _, title) in enumerate(CURVE_PANELS):
            axes[k][col].set_title(f"{task}: {title}", fontsize=9)
            axes[k][col].grid(alpha=0.3)
        axes[-1][col].set_xlabel("GRPO step")
        axes[0][col].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _run_changes(row: Row, evals: Mapping[str, ModelEval | None], retention: list[str],
                 spread_kind: str) -> tuple[Any, list[Any]]:
    """(gain on the run's own RL task, change on each retention task): RL model − its start model."""
    ev, start = evals[row.name], evals[row.start]
    return (accuracy_difference(ev, start, row.split, spread_kind),
            [accuracy_difference(ev, start, task, spread_kind) for task in retention])


def _delta_figure(rl_rows: list[Row], evals: Mapping[str, ModelEval | None], retention: list[str],
                  spread_kind: str):
    """Each RL run's accuracy change, on the task it trained on and on each retention task: a point with its
    error bar per run (a zero change is a point on the line, not an invisible bar)."""
    rl_tasks = list(dict.fromkeys(row.split for row in rl_rows))
    groups = [*(f"{task}\n(RL task)" for task in rl_tasks), *(f"{task}\n(retention)" for task in retention)]
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(groups)), 3.8))
    offset = 0.6 / max(1, len(rl_rows))
    for i, row in enumerate(rl_rows):
        gain, kept = _run_changes(row, evals, retention, spread_kind)
        xs, est = [rl_tasks.index(row.split)], [gain]
        xs += [len(rl_tasks) + j for j in range(len(retention))]
        est += kept
        shown = [(x + (i - (len(rl_rows) - 1) / 2) * offset, e) for x, e in zip(xs, est, strict=True)
                 if math.isfinite(e.value)]
        if shown:
            ax.errorbar([x for x, _ in shown], [100 * e.value for _, e in shown],
                        yerr=[100 * e.error if math.isfinite(e.error) else 0 for _, e in shown],
                        fmt="o", capsize=3, label=row.label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel("accuracy change (points)")
    ax.set_title("RL model − its start model (± paired SE, or spread over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _tradeoff_figure(rl_rows: list[Row], evals: Mapping[str, ModelEval | None], retention: list[str],
                     spread_kind: str):
    """The paper's comparison at a glance: each RL run's gain on its RL task (y) against its mean change on
    the retention tasks (x), with error bars. Up is better, left of zero is capability lost."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row in rl_rows:
        gain, kept = _run_changes(row, evals, retention, spread_kind)
        kept = [e for e in kept if math.isfinite(e.value)]
        if not kept or not math.isfinite(gain.value):
            continue
        mean = sum(e.value for e in kept) / len(kept)
        # the SE of a mean of independent estimates; spreads over seeds are combined the same way
        error = math.sqrt(sum(e.error**2 for e in kept if math.isfinite(e.error))) / len(kept)
        ax.errorbar(100 * mean, 100 * gain.value, xerr=100 * error,
                    yerr=100 * gain.error if math.isfinite(gain.error) else 0, fmt="o", capsize=3,
                    label=row.label)
        ax.annotate(row.label, (100 * mean, 100 * gain.value), textcoords="offset points", xytext=(5, 5),
                    fontsize=7)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.margins(0.2)
    ax.set_xlabel(f"mean change on retention tasks ({', '.join(retention)}), points")
    ax.set_ylabel("gain on its RL task (points)")
    ax.set_title("RL: task gain vs capability retention")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
