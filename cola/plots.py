"""PNG plots logged by the stages (matplotlib, headless), and the same curves as DVC plot records."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curve_records(history: list[tuple[int, dict[str, float]]], keys: list[str]) -> list[dict[str, float]]:
    """The logged points of `keys` as ``{"step": s, key: value, ...}`` rows: a DVC plots file, which
    ``dvc plots diff`` overlays across experiments."""
    return [{"step": step, **{key: m[key] for key in keys if key in m}} for step, m in history
            if any(key in m for key in keys)]


def curves(history: list[tuple[int, dict[str, float]]], keys: list[str], title: str):
    """Line plot of logged metrics against the step. A curve equal to an earlier one is drawn dashed and
    named with it (``latent_loss = wm_ce``), so no line hides another."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn: list[tuple[str, list]] = []
    for key in keys:
        points = [(step, m[key]) for step, m in history if key in m]
        if not points:
            continue
        same = next((name for name, other in drawn if other == points), None)
        ax.plot(*zip(*points, strict=True), label=f"{key} = {same}" if same else key,
                linestyle="--" if same else "-")
        drawn.append((key, points))
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    else:  # e.g. an imported base: no training, but the declared DVC plot must still exist
        ax.text(0.5, 0.5, "no training steps", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def histogram(counts: list[float], title: str, xlabel: str = "latent action (sorted by share)"):
    """Each action's share of the tokens (counts normalised to sum to 1), largest first."""
    total = sum(counts) or 1.0
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(len(counts)), sorted((c / total for c in counts), reverse=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of tokens")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def bars(values: dict[str, float], title: str, ylabel: str = "", errors: dict[str, float] | None = None):
    """Bar chart; `errors` (same keys) draws ±1 standard-error whiskers."""
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(values)), 3.5))
    yerr = [errors[k] for k in values] if errors else None
    ax.bar(list(values), list(values.values()), yerr=yerr, capsize=3)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=60)
    fig.tight_layout()
    return fig


def accuracy_vs_budget(points: list[dict], title: str):
    """Accuracy against forward passes per problem, one line per action space and method (``space``,
    ``method``, ``passes``, ``accuracy`` keys): search and best-of-n at the same budgets side by side."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for p in points:
        series.setdefault((p["space"], p["method"]), []).append((p["passes"], p["accuracy"]))
    for (space, method), xy in series.items():
        ax.plot(*zip(*sorted(xy), strict=True), marker="o", label=f"{space} {method.replace('_', ' ')}",
                linestyle="-" if space == "cola" else "--")
    ax.set_xscale("log")
    ax.set_xlabel("forward passes per problem")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
