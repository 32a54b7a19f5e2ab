"""The comparison report from synthetic stage outputs, and the seed aggregation it reads (no models run)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from cola.comparison import Row, aggregate, model_variants, rows, seed_values, spread, write_run_info
from cola.report import ReportConfig, build_report, paired_difference, threshold_cell, time_to_threshold_ratio

TASKS = ("arith", "countdown", "spell", "wrev")


@pytest.fixture(autouse=True)
def _close_figures():
    """build_report hands its figures to the caller (the pipeline closes them once saved); so do tests."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


# --------------------------------------------------------------------------------------------- seeds


def test_aggregate_one_seed_is_unchanged_and_several_give_mean_sd_and_per_seed_values():
    assert aggregate({0: {"acc": 0.5}}) == {"acc": 0.5, "n_seeds": 1}
    out = aggregate({0: {"acc": 0.2, "kl": 1.0}, 1: {"acc": 0.4, "kl": 3.0}, 2: {"acc": 0.3, "kl": 2.0}})
    assert out["n_seeds"] == 3 and out["acc"] == pytest.approx(0.3) and out["acc_sd"] == pytest.approx(0.1)
    assert out["seed1/kl"] == 3.0
    assert sorted(seed_values(out, "acc")) == pytest.approx([0.2, 0.3, 0.4])
    assert seed_values({"acc": 0.5, "n_seeds": 1}, "acc") == [0.5]
    assert seed_values({"acc_sd": 0.5}, "acc") == []
    with pytest.raises(ValueError):
        aggregate({})


def test_spread_kinds():
    values = [0.2, 0.4, 0.3]
    assert spread(values, "sd") == pytest.approx(0.1)
    assert spread(values, "se") == pytest.approx(0.1 / math.sqrt(3))
    assert spread(values, "range") == pytest.approx(0.2)
    assert math.isnan(spread([0.2], "sd"))
    with pytest.raises(ValueError):
        spread(values, "iqr")


def test_model_variants_lists_the_root_then_seed_folders_in_numeric_order(tmp_path):
    root = tmp_path / "run"
    for seed, folder in [(0, root), (10, root / "seeds" / "10"), (2, root / "seeds" / "2")]:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        write_run_info(folder, method="cola", task="math", seed=seed, start="models/fta")
    (root / "seeds" / "stray").mkdir()  # not a model folder: ignored
    assert model_variants(root) == [(0, root), (2, root / "seeds" / "2"), (10, root / "seeds" / "10")]
    plain = tmp_path / "base"
    plain.mkdir()
    assert model_variants(plain) == [(None, plain)]


# --------------------------------------------------------------------------------------------- statistics


def test_paired_difference_matches_problems_by_index():
    a = [{"index": i, "correct": c} for i, c in enumerate([1, 1, 0, 1])]
    b = [{"index": i, "correct": c} for i, c in enumerate([0, 1, 0, 0])]
    mean, se, n = paired_difference(a, b)
    diffs = [1, 0, 0, 1]
    sd = math.sqrt(sum((d - 0.5) ** 2 for d in diffs) / 3)
    assert (mean, n) == (0.5, 4) and se == pytest.approx(sd / 2)
    # Only shared problems count.
    assert paired_difference(a, b[:2])[2] == 2
    assert math.isnan(paired_difference(a, [])[0])


# --------------------------------------------------------------------------------------------- the report


def _write_eval(root: Path, name: str, acc: dict[str, float], seeds: list[int] | None = None, n: int = 20):
    """An rl_eval output: `round(acc * n)` correct problems per task (per seed: acc shifted by seed/100)."""
    folder = root / "eval_rl" / name
    per_seed = {}
    for seed in seeds or [0]:
        sub = folder if not seeds or len(seeds) == 1 else folder / f"seed{seed}"
        sub.mkdir(parents=True, exist_ok=True)
        flat = {}
        for task, p in acc.items():
            p = min(1.0, p + seed / 100) if seeds and len(seeds) > 1 else p
            k = round(p * n)
            records = [{"index": i, "correct": i < k} for i in range(n)]
            (sub / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            flat[f"{task}_acc"] = k / n
            flat[f"{task}_stderr"] = math.sqrt(k / n * (1 - k / n) / n)
        flat.update(val_ppl=2.5, val_loss=math.log(2.5), arith_qd=1.5, countdown_qd=1.2,
                    arith_sampled_acc=0.1, countdown_sampled_acc=0.05, arith_qd_stderr=0.25,
                    countdown_qd_stderr=0.5, arith_sampled_stderr=0.02, countdown_sampled_stderr=0.01)
        per_seed[seed] = flat
    summary = {"model": name, "kind": "cola", "metrics": aggregate(per_seed),
               "seeds": {str(s): m for s, m in per_seed.items()}}
    (folder / "summary.json").write_text(json.dumps(summary))


def _pipeline(root: Path, seeds: list[int] | None = None, skip: tuple[str, ...] = ()) -> None:
    start = {"arith": 0.10, "countdown": 0.05, "spell": 0.45, "wrev": 0.80}
    for row in rows():
        if row.name in skip:
            continue
        acc = dict(start)
        if row.method == "cola":
            acc[row.split] += 0.10  # a gain on the RL task
        if row.method == "token":
            acc["spell"] -= 0.10  # a retention loss
        _write_eval(root, row.name, acc, seeds if row.method else None)
        if row.method:
            (root / "metrics" / "rl").mkdir(parents=True, exist_ok=True)
            (root / "plots" / "rl").mkdir(parents=True, exist_ok=True)
            (root / "metrics" / "rl" / f"{row.name}.json").write_text(json.dumps({
                "reward_start": 0.1, "reward_end": 0.2, "kl": 0.3, "entropy": 2.0, "response_length": 9.0,
                "seconds_per_step": 0.3, "tokens_per_second": 4000.0, "steps": 300, "train_seconds": 95.0,
                "threshold_reached": 1.0, "threshold_step": 120.0, "threshold_seconds": 40.0,
                "wall_clock_seconds": 110.0, "groups_with_signal": 0.25, "distinct_answers": 3.5,
                "advantage_abs": 0.7, "clip_fraction": 0.0, "grad_norm": 0.123, "val_greedy_acc": 0.145}))
            curve = [{"step": s, "seed": seed, "reward_mean": 0.1 + s / 1000, "kl": s / 100, "entropy": 2.0,
                      "response_length": 9.0} for seed in (seeds or [0]) for s in (10, 20, 30)]
            (root / "plots" / "rl" / f"{row.name}.json").write_text(json.dumps(curve))
    for stage in ("prepare", "base", "latent", "bc", "evaluate", "fta", "sft"):
        (root / "metrics" / f"{stage}.json").write_text(json.dumps({"wall_clock_seconds": 60.0,
                                                                     "process_seconds": 70.0}))


def _report(root: Path, cfg: ReportConfig, **kwargs):
    """`build_report` on the folders `_pipeline(root)` wrote (the stage's --evals, --rl-metrics, ...)."""
    return build_report(cfg, evals_dir=root / "eval_rl", rl_metrics_dir=root / "metrics" / "rl",
                        rl_curves_dir=root / "plots" / "rl", stage_metrics_dir=root / "metrics", **kwargs)


def _section(markdown: str, number: int) -> str:
    return markdown.split(f"## {number}.")[1].split("\n## ")[0]


def test_every_row_and_metric_with_standard_errors(tmp_path):
    _pipeline(tmp_path)
    report = _report(tmp_path, ReportConfig(), profile="tiny")
    assert not report.missing and "Incomplete" not in report.markdown
    table = _section(report.markdown, 1)
    for row in rows():
        line = next(line for line in table.splitlines() if line.startswith(f"| {row.label} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert all(" ± " in c for c in cells[1 : 1 + len(TASKS)]), line  # every accuracy has its SE
    assert "| CoLA-RL (math) | 20.0 ± 8.9 |" in table  # 4/20 correct: sqrt(.2 * .8 / 20) = 8.9 points
    assert "| 1.50 ± 0.25 | 1.20 ± 0.50 | 10.0 ± 2.0 | 5.0 ± 1.0 |" in table  # QD and sampled acc, ± SE
    assert report.metrics["cola-math/arith_acc"] == pytest.approx(0.2)
    # RL gain against the start model, with the paired SE: 2 more of 20 problems right, none lost.
    deltas = _section(report.markdown, 3)
    assert "| CoLA-RL (math) vs fta | arith: +10.0 ± 6.9 |" in deltas
    assert report.metrics["token-math/delta_spell_acc"] == pytest.approx(-0.10)
    assert report.metrics["cola_minus_token/countdown"] == pytest.approx(0.10)
    runs = _section(report.markdown, 2)
    assert "0.100 → 0.200" in runs and "120 / 40" in runs
    assert "| CoLA-RL (math) | 0.25 | 3.50 | 0.700 | 0.000 | 0.123 | 0.145 |" in runs  # the diagnostics
    wall = _section(report.markdown, 6)
    assert "| rl@cola-math | 110 | — |" in wall and "| prepare | 60 | 70 |" in wall and "**total**" in wall
    assert "| rl_eval | — | — |" in wall
    assert set(report.figures) == {"accuracy.png", "rl_curves.png", "rl_deltas.png", "gain_vs_retention.png"}
    for figure in report.figures.values():
        figure.savefig(tmp_path / "check.png")  # renders


def test_a_zero_standard_error_is_shown_not_dropped(tmp_path):
    _pipeline(tmp_path)
    _write_eval(tmp_path, "base", {"arith": 0.0, "countdown": 0.0, "spell": 0.45, "wrev": 0.8})
    table = _section(_report(tmp_path, ReportConfig()).markdown, 1)
    assert "| Base | 0.0 ± 0.0 |" in table


def test_several_seeds_show_mean_and_spread(tmp_path):
    _pipeline(tmp_path, seeds=[0, 1, 2])
    report = _report(tmp_path, ReportConfig(seed_spread="range"))
    assert "3 RL seeds" in report.markdown and "mean ± range over 3 seeds" in report.markdown
    # cola-math arith per seed: 0.20, 0.20 (0.21 * 20 rounds to 4), 0.20 + 0.02 rounds to 0.20 -> spread 0
    table = _section(report.markdown, 1)
    line = next(line for line in table.splitlines() if line.startswith("| CoLA-RL (math) |"))
    assert " ± " in line
    # Single models keep their binomial SE.
    assert "| Base | 10.0 ± 6.7 |" in table


def test_missing_inputs_are_listed_not_fatal(tmp_path):
    _pipeline(tmp_path, skip=("token-countdown",))
    report = _report(tmp_path, ReportConfig())
    assert str(tmp_path / "eval_rl" / "token-countdown") in report.missing and "Incomplete" in report.markdown
    line = next(line for line in _section(report.markdown, 1).splitlines() if "Token-RL (countdown)" in line)
    assert "—" in line


def test_the_grid_matches_dvc_yaml():
    import yaml

    from cola.comparison import RL_TASKS, START_MODELS

    stages = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]
    rl_entries = stages["rl"]["foreach"]
    assert set(rl_entries) == {row.name for row in rows() if row.method}
    starts = {"cola": "${rl.cola_start}", "token": START_MODELS["token"]}  # CoLA's start is a param
    for name, item in rl_entries.items():
        assert name == f"{item['method']}-{item['task']}" and item["start"] == starts[item["method"]]
        assert item["task"] in RL_TASKS
    assert {row.start for row in rows("bc") if row.method == "cola"} == {"bc"}  # its gains measured from bc
    # rl_eval reads every row's model folder (relative to its --models folder): all of them must be its deps.
    folders = {f"models/{row.folder}" for row in rows() if not row.method} | {"models/rl"}
    assert folders <= set(stages["rl_eval"]["deps"])
    assert Row("cola-math", "x", "cola", "math", "fta").split == "arith"
    assert Row("cola-math", "x", "cola", "math", "fta").folder == Path("rl/cola-math")


def test_time_to_threshold_ratio_pairs_seeds_and_bounds_a_run_that_never_got_there():
    one = {"threshold_reached": 1.0, "threshold_step": 40.0, "threshold_seconds": 12.0, "steps": 300,
           "train_seconds": 90.0}
    other = {"threshold_reached": 1.0, "threshold_step": 100.0, "threshold_seconds": 30.0, "steps": 300,
             "train_seconds": 90.0}
    assert time_to_threshold_ratio(one, other, "seconds").value == pytest.approx(0.4)
    assert time_to_threshold_ratio(one, other, "step").value == pytest.approx(0.4)
    never = {"threshold_reached": 0.0, "steps": 300, "train_seconds": 80.0}
    below = time_to_threshold_ratio(one, never, "seconds")  # token-RL would need more than its 80 s
    assert below.value == pytest.approx(12 / 80) and below.fmt(1, 2) == "< 0.15"
    assert time_to_threshold_ratio(never, other, "step").fmt(1, 2) == "> 3.00"  # 300 / 100
    assert math.isnan(time_to_threshold_ratio(never, never, "step").value)
    # A start model already above the threshold measured no learning: no ratio, and no bound either.
    at_start = {**one, "threshold_step": 10.0, "threshold_at_start": 1.0}
    assert math.isnan(time_to_threshold_ratio(at_start, other, "seconds").value)
    assert math.isnan(time_to_threshold_ratio(one, at_start, "seconds").value)
    assert threshold_cell(at_start).startswith("at the start")
    assert threshold_cell(never) == "not reached in 80 s"
    assert threshold_cell(one) == "40 / 12"
    # Several seeds: paired by seed, only where both reached; mean ± sd.
    three = aggregate({0: one, 1: {**one, "threshold_seconds": 18.0}, 2: never})
    three_token = aggregate({0: other, 1: other, 2: other})
    est = time_to_threshold_ratio(three, three_token, "seconds")
    assert est.value == pytest.approx(0.5) and est.n_seeds == 2
    assert est.error == pytest.approx(statistics.stdev([0.4, 0.6]))
    assert time_to_threshold_ratio(three, three_token, "seconds", "range").error == pytest.approx(0.2)


def test_the_report_states_the_time_to_threshold_ratio(tmp_path):
    _pipeline(tmp_path)
    metrics = tmp_path / "metrics" / "rl" / "cola-countdown.json"
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "threshold_seconds": 10.0,
                                   "threshold_step": 30.0, "reward_threshold": 0.2}))
    report = _report(tmp_path, ReportConfig())
    section = _section(report.markdown, 5)
    assert "| countdown | 0.20 | 30 / 10 | 120 / 40 | 0.25 | 0.25 |" in section
    assert report.metrics["cola_over_token_threshold_seconds/countdown"] == pytest.approx(0.25)
    assert report.metrics["cola_over_token_threshold_steps/math"] == pytest.approx(1.0)
    # A gain threshold is a rise over each run's own start; each run's target is in the RL-runs table.
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "threshold_is_gain": 1.0,
                                   "reward_threshold": 0.03, "threshold_target": 0.19}))
    report = _report(tmp_path, ReportConfig())
    assert "| countdown | start + 0.03 | 30 / 10 | 120 / 40 |" in _section(report.markdown, 5)
    assert "| 0.190 | 30 / 10 |" in _section(report.markdown, 2)
