"""The report's numbers with their uncertainty: accuracies (± binomial SE, or mean ± spread over seeds),
paired differences between two models scored on the same problems, and the time-to-threshold ratio."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cola.comparison import seed_values, spread, values_by_seed
from cola.report.inputs import ModelEval
from cola.report.markdown import _num, _seconds


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


def metric(ev: ModelEval | None, key: str, spread_kind: str, stderr: str | None = None) -> Estimate:
    """Any other metric: the value for one seed (± the metric named `stderr`, when given and logged), mean ±
    spread over several."""
    if ev is None:
        return Estimate(math.nan)
    values = [v for v in seed_values(ev.metrics, key) if v is not None]
    if not values:
        return Estimate(math.nan)
    if len(values) > 1:
        return Estimate(sum(values) / len(values), spread(values, spread_kind), len(values))
    return Estimate(values[0], _float(ev.metrics.get(stderr)) if stderr else math.nan)


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
    """The task's threshold as configured: a reward value or a rise over each run's own start, and its
    hold."""
    value = cola.get("reward_threshold", token.get("reward_threshold"))
    if not isinstance(value, int | float):
        return "—"
    is_gain = cola.get("threshold_is_gain", token.get("threshold_is_gain"))
    label = f"start + {value:.2f}" if is_gain else _num(value, 2)
    hold = cola.get("threshold_hold", token.get("threshold_hold"))
    return f"{label}, held {hold:.0f} steps" if isinstance(hold, int | float) and hold > 0 else label


def threshold_cell(m: Mapping[str, Any]) -> str:
    """``step / seconds`` to an RL run's reward threshold (mean over the seeds that learned their way
    there)."""
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

    Seeds where both learned their way to it give ratios (mean ± `spread_kind` over seeds). When there are
    none but in some seed one method got there and the other never did, a bound from that time over the
    other's whole run (steps or train seconds). A seed whose start model was already above the threshold
    measured nothing.
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
