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
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola.comparison import RL_TASKS, SPREADS, Row, rows, seed_values, spread, values_by_seed
from cola.config import ReportConfig
from cola.plots import plt
from cola.results import StageResult

__all__ = ["ReportConfig", "build_report", "paired_difference", "run_report"]

PIPELINE_STAGES = ("prepare", "base", "latent", "bc", "evaluate", "fta", "sft")


# --------------------------------------------------------------------------------------------- inputs


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


# --------------------------------------------------------------------------------------------- statistics


def paired_difference(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> tuple[float, float, int]:
    """(mean(a − b), its paired standard error, n) of per-problem correctness over the problems both scored.

    Records are matched by their ``index`` (the problem's position in the test split).
    """
    b_by_index = {r["index"]: bool(r["correct"]) for r in b}
    diffs = [float(bool(r["correct"])) - float(b_by_index[r["index"]]) for r in a if r["index"] in b_by_index]
    n = len(diffs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else math.nan
    return mean, math.sqrt(var / n) if n > 1 else math.nan, n


@dataclass
class Estimate:
    """A number with its uncertainty: a standard error (one seed) or a spread over `n_seeds` seeds."""

    value: float
    error: float = math.nan
    n_seeds: int = 1

    def fmt(self, scale: float = 1.0, digits: int = 1, signed: bool = False) -> str:
        if self.value is None or not math.isfinite(self.value):
            return "—"
        sign = "+" if signed else ""
        text = f"{self.value * scale:{sign}.{digits}f}"
        if math.isfinite(self.error):
            text += f" ± {self.error * scale:.{digits}f}"
        return text


def _float(value: Any) -> float:
    """A metric value as a float; None (a JSON null, e.g. a non-finite value) becomes NaN."""
    return math.nan if value is None else float(value)


def accuracy(ev: ModelEval | None, task: str, spread_kind: str) -> Estimate:
    """Accuracy of a model on `task`: ± binomial SE for one seed, mean ± spread over several."""
    if ev is None or ev.metrics.get(f"{task}_acc") is None:
        return Estimate(math.nan)
    values = seed_values(ev.metrics, f"{task}_acc")
    if len(values) > 1:
        return Estimate(sum(values) / len(values), spread(values, spread_kind), len(values))
    return Estimate(values[0], _float(ev.metrics.get(f"{task}_stderr")))


def metric(ev: ModelEval | None, key: str, spread_kind: str) -> Estimate:
    """Any other metric: the value for one seed, mean ± spread over several."""
    if ev is None:
        return Estimate(math.nan)
    values = [v for v in seed_values(ev.metrics, key) if v is not None]
    if not values:
        return Estimate(math.nan)
    if len(values) > 1:
        return Estimate(sum(values) / len(values), spread(values, spread_kind), len(values))
    return Estimate(values[0])


def accuracy_difference(a: ModelEval | None, b: ModelEval | None, task: str, spread_kind: str) -> Estimate:
    """acc(a) − acc(b) on `task`: paired SE when both are single models, else mean ± spread over a's seeds.

    With several seeds on both sides (CoLA-RL − token-RL) the seeds are paired by position.
    """
    if a is None or b is None or f"{task}_acc" not in a.metrics or f"{task}_acc" not in b.metrics:
        return Estimate(math.nan)
    a_values, b_values = seed_values(a.metrics, f"{task}_acc"), seed_values(b.metrics, f"{task}_acc")
    if len(a_values) == 1 and len(b_values) == 1:
        ra, rb = a.records(next(iter(a.seeds)), task), b.records(next(iter(b.seeds)), task)
        if ra is not None and rb is not None:
            mean, se, _ = paired_difference(ra, rb)
            return Estimate(mean, se)
        se = math.hypot(_float(a.metrics.get(f"{task}_stderr")), _float(b.metrics.get(f"{task}_stderr")))
        return Estimate(a_values[0] - b_values[0], se)
    if len(b_values) == 1:
        b_values = b_values * len(a_values)
    elif len(a_values) == 1:
        a_values = a_values * len(b_values)
    diffs = [x - y for x, y in zip(a_values, b_values, strict=False)]
    return Estimate(sum(diffs) / len(diffs), spread(diffs, spread_kind), len(diffs))


def metric_difference(a: ModelEval | None, b: ModelEval | None, key: str, spread_kind: str) -> Estimate:
    """metric(a) − metric(b) (mean over seeds, with a's spread when a has several)."""
    ma, mb = metric(a, key, spread_kind), metric(b, key, spread_kind)
    return Estimate(ma.value - mb.value, ma.error, ma.n_seeds)


def threshold_label(cola: Mapping[str, Any], token: Mapping[str, Any]) -> str:
    """The task's threshold as configured: a reward value or a rise over each run's own start, and its hold."""
    value = cola.get("reward_threshold", token.get("reward_threshold"))
    if not isinstance(value, int | float):
        return "—"
    label = f"start + {value:.2f}" if cola.get("threshold_is_gain", token.get("threshold_is_gain")) else _num(value, 2)
    hold = cola.get("threshold_hold", token.get("threshold_hold"))
    return f"{label}, held {hold:.0f} steps" if isinstance(hold, int | float) and hold > 0 else label


def threshold_cell(m: Mapping[str, Any]) -> str:
    """``step / seconds`` to an RL run's reward threshold (mean over the seeds that learned their way there)."""
    steps = _threshold_times(m, "threshold_step")
    if not steps:
        return "—"
    learned = [s for s, v in steps.items() if not isinstance(v, str)]
    if not learned:
        if all(v == "start" for v in steps.values()):
            return "at the start (its start model was already above it)"
        return f"not reached in {_seconds(m.get('train_seconds'))} s"
    seconds = _threshold_times(m, "threshold_seconds")
    mean_step = sum(steps[s] for s in learned) / len(learned)
    mean_seconds = sum(seconds[s] for s in learned) / len(learned)
    return f"{mean_step:.0f} / {mean_seconds:.0f}" + (f" ({len(learned)} of {len(steps)} seeds)"
                                                      if len(steps) > 1 else "")


@dataclass
class Bound(Estimate):
    """An estimate known only as a bound: ``< value`` (upper) or ``> value`` (lower)."""

    relation: str = "<"

    def fmt(self, scale: float = 1.0, digits: int = 1, signed: bool = False) -> str:
        return f"{self.relation} {super().fmt(scale, digits, signed)}"


def _threshold_times(m: Mapping[str, Any], key: str) -> dict[int | None, float | str]:
    """Per seed: the time to the threshold, ``"never"`` (not reached), or ``"start"`` (the start model was
    already above it, so the run measured no learning)."""
    at_start = values_by_seed(m, "threshold_at_start")
    times = values_by_seed(m, key)
    out: dict[int | None, float | str] = {}
    for seed, reached in values_by_seed(m, "threshold_reached").items():
        if not reached > 0:
            out[seed] = "never"
        elif at_start.get(seed, 0.0) > 0:
            out[seed] = "start"
        elif seed in times:
            out[seed] = times[seed]
    return out


def time_to_threshold_ratio(cola: Mapping[str, Any], token: Mapping[str, Any], unit: str,
                            spread_kind: str = "sd") -> Estimate:
    """CoLA's time to the reward threshold over token-RL's, in ``seconds`` or ``step``, paired by seed.

    Seeds where both learned their way to it give ratios (mean ± `spread_kind` over seeds). When there are none but in
    some seed one method got there and the other never did, a bound from that time over the other's whole run
    (steps or train seconds). A seed whose start model was already above the threshold measured nothing.
    """
    key, total_key = f"threshold_{unit}", "train_seconds" if unit == "seconds" else "steps"
    a, b = _threshold_times(cola, key), _threshold_times(token, key)
    pairs = [(a[s], b[s]) for s in a.keys() & b.keys()]
    ratios = [x / y for x, y in pairs if not isinstance(x, str) and not isinstance(y, str) and y > 0]
    if ratios:
        return Estimate(sum(ratios) / len(ratios), spread(ratios, spread_kind), len(ratios))
    a_total, b_total = _float(cola.get(total_key)), _float(token.get(total_key))
    upper = [x for x, y in pairs if not isinstance(x, str) and y == "never"]
    lower = [y for x, y in pairs if x == "never" and not isinstance(y, str)]
    if upper and b_total > 0:  # only CoLA got there: token-RL would have needed more than its whole run
        return Bound(min(upper) / b_total, relation="<")
    if lower and a_total > 0:
        return Bound(a_total / min(lower), relation=">")
    return Estimate(math.nan)


# --------------------------------------------------------------------------------------------- report


@dataclass
class Report:
    """The rendered report: markdown, figures (file name -> matplotlib figure) and flat headline metrics."""

    markdown: str
    figures: dict[str, Any]
    metrics: dict[str, float]
    missing: list[str]


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _seconds(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) and math.isfinite(value) else "—"


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and math.isfinite(value) else "—"


def build_report(cfg: ReportConfig, *, evals_dir: Path, rl_metrics_dir: Path, rl_curves_dir: Path,
                 stage_metrics_dir: Path, profile: str = "") -> Report:
    """Read the pipeline's outputs and render the report (no file is written here).

    `evals_dir/<model>/` is what rl_eval wrote, `rl_metrics_dir/<run>.json` and `rl_curves_dir/<run>.json` what
    each RL run wrote, `stage_metrics_dir/<stage>.json` every other stage's metrics (its wall-clock).
    """
    spread_kind = cfg.seed_spread
    if spread_kind not in SPREADS:
        raise ValueError(f"seed_spread must be one of {SPREADS}")
    table_rows = rows()
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
    headline: dict[str, float] = {}
    md: list[str] = []

    md.append("# CoLA vs token-level RL: comparison report\n")
    md.append(f"Profile `{profile}` · {n_seeds} RL seed{'s' if n_seeds > 1 else ''} · accuracies in % "
              "(greedy decoding). "
              + ("Each accuracy is ± its binomial standard error (one seed)."
                 if n_seeds == 1 else
                 f"RL rows are mean ± {spread_kind} over {n_seeds} seeds; single models ± binomial standard "
                 "error.")
              + "\n")
    if missing:
        md.append(f"**Incomplete:** not found: {', '.join(missing)}.\n")

    # 1. Every model on every metric.
    header = ["model", *tasks, "val ppl", *[f"QD {t}" for t in qd_tasks],
              *[f"sampled acc {t}" for t in qd_tasks]]
    body = []
    for row in table_rows:
        ev = evals[row.name]
        cells = [row.label]
        cells += [accuracy(ev, t, spread_kind).fmt(100) for t in tasks]
        cells.append(metric(ev, "val_ppl", spread_kind).fmt(1, 3))
        cells += [metric(ev, f"{t}_qd", spread_kind).fmt(1, 2) for t in qd_tasks]
        cells += [metric(ev, f"{t}_sampled_acc", spread_kind).fmt(100) for t in qd_tasks]
        body.append(cells)
        for t in tasks:
            if ev is not None and ev.metrics.get(f"{t}_acc") is not None:
                headline[f"{row.name}/{t}_acc"] = ev.metrics[f"{t}_acc"]
    md.append("## 1. Every model on every metric\n")
    md.append(_table(header, body) + "\n")
    md.append("Val ppl: held-out corpus perplexity (a CoLA model's is the policy-marginal likelihood). QD: "
              "semantic diversity of M sampled solutions per test prompt (1 / mean pairwise cosine "
              "similarity; higher is more diverse); sampled acc: accuracy of those samples.\n")

    # 2. The RL runs themselves.
    rl_rows = [row for row in table_rows if row.method]
    header = ["run", "start", "reward start → end", "KL end", "entropy end", "response tokens", "s / step",
              "tokens / s", "steps", "threshold target", "threshold: step / s", "train s"]
    body = []
    for row in rl_rows:
        m = rl_metrics[row.name]
        body.append([row.label, row.start, f"{_num(m.get('reward_start'))} → {_num(m.get('reward_end'))}",
                     _num(m.get("kl")), _num(m.get("entropy")), _num(m.get("response_length"), 1),
                     _num(m.get("seconds_per_step"), 3), _seconds(m.get("tokens_per_second")),
                     _seconds(m.get("steps")), _num(m.get("threshold_target")), threshold_cell(m),
                     _seconds(m.get("train_seconds"))])
        for key in ("reward_start", "reward_end", "threshold_step", "threshold_seconds", "train_seconds"):
            if m.get(key) is not None:
                headline[f"{row.name}/{key}"] = m[key]
    md.append("## 2. RL runs\n")
    md.append(_table(header, body) + "\n")
    md.append("Reward: mean sampled reward over the first and last 20 % of steps. KL, entropy (of the action "
              "or token distribution), response length, s/step and tokens/s: the last logged interval. "
              "Threshold: the first step (and training seconds) at which the 10-step moving average of the "
              "sampled reward reached the threshold target: the task's `rl.tasks.<task>.reward_threshold` "
              "itself (`rl.threshold_kind: absolute`) or that much above the run's first 10-step window "
              "(`gain`, the default: the two methods start from different models), counted only once the average "
              "has stayed there `rl.threshold_hold` more steps (a lucky window that falls back is not a "
              "crossing).\n")

    # 3. What RL changed, against the model each run started from.
    retention = [t for t in cfg.retention_tasks if t in tasks]
    header = ["run", "Δ RL task acc", *[f"Δ {t}" for t in retention], "Δ val ppl",
              *[f"Δ QD {t}" for t in qd_tasks]]
    body = []
    for row in rl_rows:
        ev, start = evals[row.name], evals[row.start]
        gain = accuracy_difference(ev, start, row.split, spread_kind)
        kept = {t: accuracy_difference(ev, start, t, spread_kind) for t in retention}
        body.append([f"{row.label} vs {row.start}", f"{row.split}: {gain.fmt(100, signed=True)}",
                     *[kept[t].fmt(100, signed=True) for t in retention],
                     metric_difference(ev, start, "val_ppl", spread_kind).fmt(1, 3, signed=True),
                     *[metric_difference(ev, start, f"{t}_qd", spread_kind).fmt(1, 2, signed=True)
                       for t in qd_tasks]])
        headline[f"{row.name}/delta_{row.split}_acc"] = gain.value
        for t, est in kept.items():
            headline[f"{row.name}/delta_{t}_acc"] = est.value
    md.append("## 3. What RL changed (RL model − the model it started from)\n")
    md.append(_table(header, body) + "\n")
    md.append("Accuracy changes in points, ± paired standard error over the shared test problems (or mean ± "
              f"{spread_kind} over seeds). Retention tasks ({', '.join(retention) or 'none'}) are never "
              "trained on after pretraining: a change there is capability lost or gained.\n")

    # 4. The paper's comparison: latent-action RL against token-level RL, per task.
    header = ["task", "CoLA-RL − Token-RL on the RL task", *[f"on {t}" for t in retention]]
    body = []
    for task, split in RL_TASKS.items():
        cola, token = evals.get(f"cola-{task}"), evals.get(f"token-{task}")
        diff = accuracy_difference(cola, token, split, spread_kind)
        body.append([f"{task} ({split})", diff.fmt(100, signed=True),
                     *[accuracy_difference(cola, token, t, spread_kind).fmt(100, signed=True)
                       for t in retention]])
        headline[f"cola_minus_token/{task}"] = diff.value
    md.append("## 4. CoLA-RL − Token-RL\n")
    md.append(_table(header, body) + "\n")
    md.append("Note the two arms start from different models (CoLA-FTA and SFT); section 3 separates the RL "
              "gain from the starting point.\n")

    # 5. The paper's "half the computation" claim: time for each method's sampled reward to reach the threshold.
    body = []
    for task in RL_TASKS:
        cola, token = rl_metrics.get(f"cola-{task}", {}), rl_metrics.get(f"token-{task}", {})
        seconds, steps = (time_to_threshold_ratio(cola, token, unit, spread_kind) for unit in ("seconds", "step"))
        body.append([task, threshold_label(cola, token),
                     threshold_cell(cola), threshold_cell(token), seconds.fmt(1, 2), steps.fmt(1, 2)])
        for name, est in (("seconds", seconds), ("steps", steps)):
            headline[f"cola_over_token_threshold_{name}/{task}"] = est.value
    md.append("## 5. Time to the reward threshold: CoLA-RL / Token-RL\n")
    md.append(_table(["task", "threshold", "CoLA-RL: step / s", "Token-RL: step / s",
                      "ratio of seconds", "ratio of steps"], body) + "\n")
    md.append("The paper reports that latent-action RL reaches the reward in about half the computation of "
              "token-level RL (a ratio ≤ 0.5). Seconds are GRPO step time (rollout + update); ratios are over "
              "the seeds where both runs reached the threshold (mean ± spread with several seeds). `< x`: only "
              "CoLA reached it, so the ratio is below CoLA's time over token-RL's whole run; `> x`: the reverse.\n")

    # 6. Wall-clock: each stage's own work, and its whole process (imports and MLflow set-up included).
    files = [(name, stage_metrics_dir / f"{name}.json") for name in PIPELINE_STAGES]
    files += [(f"rl@{row.name}", rl_metrics_dir / f"{row.name}.json") for row in rl_rows]
    files += [("rl_eval", stage_metrics_dir / "rl_eval.json")]
    body, totals = [], [0.0, 0.0]
    for name, path in files:
        m = _read_json(path) or {}
        times = [m.get("wall_clock_seconds"), m.get("process_seconds")]
        body.append([name, *map(_seconds, times)])
        totals = [t + (v if isinstance(v, int | float) else 0.0) for t, v in zip(totals, times, strict=True)]
    body.append(["**total**", *[f"**{t:.0f}**" for t in totals]])
    headline["pipeline_seconds"], headline["pipeline_process_seconds"] = totals
    md.append("## 6. Wall-clock per stage (seconds, last run of each)\n")
    md.append(_table(["stage", "work", "process"], body) + "\n")
    md.append("Work: the stage's own computation; process: the whole stage process, Python start-up, imports "
              "and MLflow set-up included (DVC's own bookkeeping between stages is not counted).\n")

    figures = {
        "accuracy.png": _accuracy_figure(table_rows, evals, tasks, spread_kind),
        "rl_curves.png": _curves_figure(rl_rows, curves, cfg.smooth),
        "rl_deltas.png": _delta_figure(rl_rows, evals, retention, spread_kind),
    }
    md.append("## Plots\n")
    md += [f"![{name[:-4]}]({name})\n" for name in figures]
    md.append("## Seeds\n")
    source = f"{n_seeds} seeds" if n_seeds > 1 else "one seed"
    md.append(f"The RL numbers above come from {source}. To repeat the comparison over several seeds: "
              "`dvc exp run -S 'rl.seeds=[0,1,2]'` (every RL run trains one model per seed from the same "
              "start model; `rl_eval` scores each; this report then shows mean ± spread over seeds, "
              "`report.seed_spread` choosing sd, se or range).\n")
    return Report("\n".join(md), figures, {k: v for k, v in headline.items() if v is not None}, missing)


# --------------------------------------------------------------------------------------------- figures


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
