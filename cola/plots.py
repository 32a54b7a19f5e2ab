"""PNG plots logged by the stages (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curves(history: list[tuple[int, dict[str, float]]], keys: list[str], title: str):
    """Line plot of logged metrics against the step."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        points = [(step, m[key]) for step, m in history if key in m]
        if points:
            ax.plot(*zip(*points, strict=True), label=key)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    else:  # e.g. an imported base: no training, but the declared DVC plot must still exist
        ax.text(0.5, 0.5, "no training steps", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def histogram(shares: list[float], title: str, xlabel: str = "latent action (sorted by share)"):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(len(shares)), sorted(shares, reverse=True))
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
