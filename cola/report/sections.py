"""The report's markdown, one function per section: each returns its markdown and the headline metrics it
contributes (flat ``row/metric`` keys, written to the report's metrics file)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cola.comparison import RL_TASKS
from cola.report.inputs import ReportInputs, _read_json
from cola.report.markdown import _num, _seconds, _table
from cola.report.statistics import (
    accuracy,
    accuracy_difference,
    metric,
    metric_difference,
    threshold_cell,
    threshold_label,
    time_to_threshold_ratio,
)

PIPELINE_STAGES = ("prepare", "base", "latent", "bc", "evaluate", "fta", "sft")


@dataclass
class Section:
    """A section's markdown (its paragraphs joined by newlines) and its headline metrics."""

    markdown: str
    metrics: dict[str, float] = field(default_factory=dict)


def _section(*parts: str, metrics: dict[str, float] | None = None) -> Section:
    return Section("\n".join(parts), metrics or {})


def introduction(inputs: ReportInputs, profile: str) -> Section:
    """Title, profile, seeds and how uncertainty is shown; which inputs were not found."""
    n_seeds, spread_kind = inputs.n_seeds, inputs.spread_kind
    parts = [
        "# CoLA vs token-level RL: comparison report\n",
        f"Profile `{profile}` · {n_seeds} RL seed{'s' if n_seeds > 1 else ''} · accuracies in % "
        "(greedy decoding). "
        + ("Each accuracy is ± its binomial standard error (one seed)."
           if n_seeds == 1 else
           f"RL rows are mean ± {spread_kind} over {n_seeds} seeds; single models ± binomial standard "
           "error.")
        + "\n",
    ]
    if inputs.missing:
        parts.append(f"**Incomplete:** not found: {', '.join(inputs.missing)}.\n")
    return _section(*parts)


def every_model(inputs: ReportInputs) -> Section:
    """1. Every model on every metric."""
    tasks, qd_tasks, spread_kind = inputs.tasks, inputs.qd_tasks, inputs.spread_kind
    header = ["model", *tasks, "val ppl", *[f"QD {t}" for t in qd_tasks],
              *[f"sampled acc {t}" for t in qd_tasks]]
    body, headline = [], {}
    for row in inputs.table_rows:
        ev = inputs.evals[row.name]
        cells = [row.label]
        cells += [accuracy(ev, t, spread_kind).fmt(100) for t in tasks]
        cells.append(metric(ev, "val_ppl", spread_kind).fmt(1, 3))
        cells += [metric(ev, f"{t}_qd", spread_kind, stderr=f"{t}_qd_stderr").fmt(1, 2) for t in qd_tasks]
        cells += [metric(ev, f"{t}_sampled_acc", spread_kind, stderr=f"{t}_sampled_stderr").fmt(100)
                  for t in qd_tasks]
        body.append(cells)
        for t in tasks:
            if ev is not None and ev.metrics.get(f"{t}_acc") is not None:
                headline[f"{row.name}/{t}_acc"] = ev.metrics[f"{t}_acc"]
    return _section(
        "## 1. Every model on every metric\n",
        _table(header, body) + "\n",
        "Val ppl: held-out corpus perplexity (a CoLA model's is the policy-marginal likelihood). QD: "
        "semantic diversity of M sampled solutions per test prompt (1 / mean pairwise cosine "
        "similarity; higher is more diverse); sampled acc: accuracy of those samples. Both ± the standard "
        "error over prompts (one seed) or the spread over seeds.\n",
        metrics=headline,
    )


# The RL diagnostics of section 2 and their digits (issue: why latent RL learns less than token RL).
DIAGNOSTICS = (("groups_with_signal", 2), ("distinct_answers", 2), ("advantage_abs", 3),
               ("clip_fraction", 3), ("grad_norm", 3), ("val_greedy_acc", 3))


def rl_runs(inputs: ReportInputs) -> Section:
    """2. The RL runs themselves."""
    header = ["run", "start", "reward start → end", "KL end", "entropy end", "response tokens", "s / step",
              "tokens / s", "steps", "threshold target", "threshold: step / s", "train s"]
    body, headline = [], {}
    for row in inputs.rl_rows:
        m = inputs.rl_metrics[row.name]
        body.append([row.label, row.start, f"{_num(m.get('reward_start'))} → {_num(m.get('reward_end'))}",
                     _num(m.get("kl")), _num(m.get("entropy")), _num(m.get("response_length"), 1),
                     _num(m.get("seconds_per_step"), 3), _seconds(m.get("tokens_per_second")),
                     _seconds(m.get("steps")), _num(m.get("threshold_target")), threshold_cell(m),
                     _seconds(m.get("train_seconds"))])
        for key in ("reward_start", "reward_end", "threshold_step", "threshold_seconds", "train_seconds"):
            if m.get(key) is not None:
                headline[f"{row.name}/{key}"] = m[key]
    diagnostics = [[row.label, *(_num(inputs.rl_metrics[row.name].get(key), digits)
                                 for key, digits in DIAGNOSTICS)] for row in inputs.rl_rows]
    return _section(
        "## 2. RL runs\n",
        _table(header, body) + "\n",
        _table(["run", "groups with signal", "distinct answers / group", "mean \\|advantage\\|",
                "clip fraction", "grad norm", "greedy val acc"], diagnostics) + "\n",
        "Diagnostics (the last logged interval; greedy val acc: the last `rl.val_every` measurement on the "
        "task's first `rl.val_prompts` validation prompts): a group has signal when its G samples did not "
        "all score alike; distinct answers counts the different final answers among them.\n",
        "Reward: mean sampled reward over the first and last 20 % of steps. KL, entropy (of the action "
        "or token distribution), response length, s/step and tokens/s: the last logged interval. "
        "Threshold: the first step (and training seconds) at which the 10-step moving average of the "
        "sampled reward reached the threshold target: the task's `rl.tasks.<task>.reward_threshold` "
        "itself (`rl.threshold_kind: absolute`) or that much above the run's first 10-step window "
        "(`gain`, the default: the two methods start from different models), counted only once the average "
        "has stayed there `rl.threshold_hold` more steps (a lucky window that falls back is not a "
        "crossing).\n",
        metrics=headline,
    )


def rl_changes(inputs: ReportInputs) -> Section:
    """3. What RL changed, against the model each run started from."""
    retention, qd_tasks, spread_kind = inputs.retention, inputs.qd_tasks, inputs.spread_kind
    header = ["run", "Δ RL task acc", *[f"Δ {t}" for t in retention], "Δ val ppl",
              *[f"Δ QD {t}" for t in qd_tasks]]
    body, headline = [], {}
    for row in inputs.rl_rows:
        ev, start = inputs.evals[row.name], inputs.evals[row.start]
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
    return _section(
        "## 3. What RL changed (RL model − the model it started from)\n",
        _table(header, body) + "\n",
        "Accuracy changes in points, ± paired standard error over the shared test problems (or mean ± "
        f"{spread_kind} over seeds). Retention tasks ({', '.join(retention) or 'none'}) are never "
        "trained on after pretraining: a change there is capability lost or gained.\n",
        metrics=headline,
    )


def cola_minus_token(inputs: ReportInputs) -> Section:
    """4. The paper's comparison: latent-action RL against token-level RL, per task."""
    retention, spread_kind = inputs.retention, inputs.spread_kind
    header = ["task", "CoLA-RL − Token-RL on the RL task", *[f"on {t}" for t in retention]]
    body, headline = [], {}
    for task, split in RL_TASKS.items():
        cola, token = inputs.evals.get(f"cola-{task}"), inputs.evals.get(f"token-{task}")
        diff = accuracy_difference(cola, token, split, spread_kind)
        body.append([f"{task} ({split})", diff.fmt(100, signed=True),
                     *[accuracy_difference(cola, token, t, spread_kind).fmt(100, signed=True)
                       for t in retention]])
        headline[f"cola_minus_token/{task}"] = diff.value
    starts = {row.method: row.start for row in inputs.rl_rows}
    labels = {"fta": "CoLA-FTA", "bc": "CoLA-BC", "sft": "SFT"}
    cola_start, token_start = (labels.get(starts.get(m), starts.get(m)) for m in ("cola", "token"))
    return _section(
        "## 4. CoLA-RL − Token-RL\n",
        _table(header, body) + "\n",
        f"Note the two arms start from different models ({cola_start} and {token_start}); section 3 "
        "separates the RL gain from the starting point.\n",
        metrics=headline,
    )


def time_to_threshold(inputs: ReportInputs) -> Section:
    """5. The paper's "half the computation" claim: time for each method's sampled reward to reach the
    threshold."""
    body, headline = [], {}
    for task in RL_TASKS:
        cola = inputs.rl_metrics.get(f"cola-{task}", {})
        token = inputs.rl_metrics.get(f"token-{task}", {})
        seconds, steps = (time_to_threshold_ratio(cola, token, unit, inputs.spread_kind)
                          for unit in ("seconds", "step"))
        body.append([task, threshold_label(cola, token),
                     threshold_cell(cola), threshold_cell(token), seconds.fmt(1, 2), steps.fmt(1, 2)])
        for name, est in (("seconds", seconds), ("steps", steps)):
            headline[f"cola_over_token_threshold_{name}/{task}"] = est.value
    return _section(
        "## 5. Time to the reward threshold: CoLA-RL / Token-RL\n",
        _table(["task", "threshold", "CoLA-RL: step / s", "Token-RL: step / s",
                "ratio of seconds", "ratio of steps"], body) + "\n",
        "The paper reports that latent-action RL reaches the reward in about half the computation of "
        "token-level RL (a ratio ≤ 0.5). Seconds are GRPO step time (rollout + update); ratios are over "
        "the seeds where both runs reached the threshold (mean ± spread with several seeds). `< x`: only "
        "CoLA reached it, so the ratio is below CoLA's time over token-RL's whole run; `> x`: the reverse.\n",
        metrics=headline,
    )


def wall_clock(inputs: ReportInputs) -> Section:
    """6. Wall-clock: each stage's own work, and its whole process (imports and MLflow set-up included)."""
    files = [(name, inputs.stage_metrics_dir / f"{name}.json") for name in PIPELINE_STAGES]
    files += [(f"rl@{row.name}", inputs.rl_metrics_dir / f"{row.name}.json") for row in inputs.rl_rows]
    files += [("rl_eval", inputs.stage_metrics_dir / "rl_eval.json"),
              ("math500", inputs.stage_metrics_dir / "math500.json")]
    files += [(f"qlearn@{row.name}", inputs.stage_metrics_dir / "qlearn" / f"{row.name}.json")
              for row in inputs.rl_rows]
    files += [(f"mcts@{task}", inputs.stage_metrics_dir / "mcts" / f"{task}.json") for task in RL_TASKS]
    body, totals = [], [0.0, 0.0]
    for name, path in files:
        m = _read_json(path) or {}
        times = [m.get("wall_clock_seconds"), m.get("process_seconds")]
        body.append([name, *map(_seconds, times)])
        totals = [t + (v if isinstance(v, int | float) else 0.0) for t, v in zip(totals, times, strict=True)]
    body.append(["**total**", *[f"**{t:.0f}**" for t in totals]])
    return _section(
        "## 6. Wall-clock per stage (seconds, last run of each)\n",
        _table(["stage", "work", "process"], body) + "\n",
        "Work: the stage's own computation; process: the whole stage process, Python start-up, imports "
        "and MLflow set-up included (DVC's own bookkeeping between stages is not counted).\n",
        metrics={"pipeline_seconds": totals[0], "pipeline_process_seconds": totals[1]},
    )


# The search table's rows: (label, metric prefix, selection) per action space, in reading order.
SEARCH_ROWS = (("RL model, greedy", "greedy", "—"), ("best-of-n", "bon_oracle", "oracle"),
               ("best-of-n", "bon_majority", "majority vote"), ("MCTS-Q", "mcts_oracle", "oracle"),
               ("MCTS-Q", "mcts_q_only", "Q only"))
SPACE_LABELS = {"cola": "CoLA", "token": "Token"}


def search(inputs: ReportInputs) -> Section:
    """7. MCTS-Q against best-of-n sampling at the same budget, for both action spaces (the `mcts` stage)."""
    parts, headline = ["## 7. Search: MCTS-Q against best-of-n at the same budget\n"], {}
    for task in RL_TASKS:
        m = _read_json(inputs.stage_metrics_dir / "mcts" / f"{task}.json")
        if not m:
            parts.append(f"**{task}**: not run (`dvc repro mcts@{task}`).\n")
            continue
        body = []
        for space, label in SPACE_LABELS.items():
            for name, key, selection in SEARCH_ROWS:
                acc = m.get(f"{space}_{key}_acc")
                if acc is None:
                    continue
                method = key.split("_")[0]
                n = f" (n = {m[f'{space}_bon_n']})" if method == "bon" else ""
                passes = m.get(f"{space}_{key}_passes", m.get(f"{space}_{method}_passes"))
                seconds = m.get(f"{space}_{key}_seconds", m.get(f"{space}_{method}_seconds"))
                body.append([f"{label} {name}{n}", selection,
                             f"{100 * acc:.1f} ± {100 * m.get(f'{space}_{key}_se', float('nan')):.1f}",
                             _num(passes, 1), _num(seconds, 3)])
            searched, sampled = m.get(f"{space}_mcts_oracle_acc"), m.get(f"{space}_bon_oracle_acc")
            if searched is not None and sampled is not None:
                headline[f"{space}_mcts_minus_bon_oracle/{task}"] = searched - sampled
        parts += [f"**{task}** ({m['problems']} test problems, {m['rounds']} search rounds):\n",
                  _table(["method", "answer chosen by", "accuracy % ± SE", "forward passes / problem",
                          "seconds / problem"], body) + "\n"]
    parts.append(
        "Oracle rows check candidates against the gold answer (search with a verifier, like pass@n: an "
        "upper bound, which is how the paper's MCTS-Q number reads); Q-only and majority-vote rows use no "
        "gold answer. Best-of-n draws as many samples as fit in the larger of the two searches' mean "
        "forward passes, so a search row beats its best-of-n row only if searching beats sampling more. "
        "The budget curves are `plots/mcts/<task>.png` (`dvc plots show`).\n")
    return _section(*parts, metrics=headline)


def math500(inputs: ReportInputs) -> Section:
    """8. MATH-500 accuracy of every model (the `math500` stage), or why it was not measured."""
    m = _read_json(inputs.stage_metrics_dir / "math500.json")
    title = "## 8. MATH-500\n"
    if not m:
        return _section(title, "Not run (`dvc repro math500`).\n")
    if not m.get("enabled"):
        return _section(title, "Off in this profile (`math500.enabled: false`): MATH-500's competition "
                        "problems need a pretrained LLM; a model of the tiny profile's size, trained on "
                        "procedural arithmetic, solves none of them. The smollm2-135m and llama-3.1-8b "
                        "profiles turn it on (`math500.source`: the hub dataset or a local JSONL).\n")
    body, headline = [], {}
    for row in inputs.table_rows:
        acc, se = m.get(f"{row.name}/math500_acc"), m.get(f"{row.name}/math500_se")
        if acc is None:
            continue
        spread = m.get(f"{row.name}/math500_acc_sd")
        seeds = f" (sd over seeds {100 * spread:.1f})" if spread is not None else ""
        n = _num(m.get(f"{row.name}/math500_n"), 0)
        body.append([row.label, f"{100 * acc:.1f} ± {100 * se:.1f}{seeds}", n])
    for task in RL_TASKS:
        cola, token = m.get(f"cola-{task}/math500_acc"), m.get(f"token-{task}/math500_acc")
        if cola is not None and token is not None:
            headline[f"cola_minus_token_math500/{task}"] = cola - token
    return _section(title, _table(["model", "accuracy % ± SE", "problems"], body) + "\n",
                    "Greedy answers graded as `cola eval --task math500` does (the same lm-eval task, prompt "
                    "and grader).\n", metrics=headline)


AGENT_RL_ROWS = (("rl-token", "Token-RL (agent)"), ("rl-cola", "CoLA-RL (agent)"))
AGENT_ROWS = (("random", "Random admissible agent"), ("base", "Base (token, before SFT)"),
              ("bc", "CoLA BC (before FTA)"), ("sft", "Token SFT (walkthroughs)"),
              ("fta", "CoLA FTA (walkthroughs)"), *AGENT_RL_ROWS)


def agent(inputs: ReportInputs) -> Section:
    """9. Agent tasks: TextWorld success on seen and unseen games, and what agent RL cost (`agent_eval`)."""
    m = _read_json(inputs.stage_metrics_dir / "agent_eval.json")
    title = "## 9. Agent tasks (TextWorld)\n"
    if not m:
        return _section(title, "Not run (`dvc repro agent_eval`).\n")

    def pct(name: str, key: str) -> str:
        value, se = m.get(f"{name}/{key}"), m.get(f"{name}/{key}_se")
        if value is None:
            return "—"
        return f"{100 * value:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")

    def delta(name: str, key: str) -> str:
        value = m.get(f"{name}/delta_{key}")
        return _num(value, 3) if key == "perplexity" else _num(None if value is None else 100 * value, 1)

    body = [[label, pct(name, "seen_success"), pct(name, "unseen_success"),
             _num(m.get(f"{name}/seen_score"), 2), _num(m.get(f"{name}/seen_steps"), 1),
             pct(name, "seen_invalid_rate"), pct(name, "spell_acc"), pct(name, "wrev_acc"),
             _num(m.get(f"{name}/perplexity"), 3)] for name, label in AGENT_ROWS]
    deltas = [[label, *[delta(name, key) for key in
                        ("seen_success", "unseen_success", "spell_acc", "wrev_acc", "perplexity")]]
              for name, label in AGENT_RL_ROWS]
    cola, token = m.get("rl-cola/unseen_success"), m.get("rl-token/unseen_success")
    headline = {"cola_minus_token/unseen_success": cola - token} if None not in (cola, token) else {}
    return _section(
        title,
        _table(["model", "seen success %", "unseen success %", "seen score", "seen steps", "invalid %",
                "spell", "wrev", "val ppl"], body) + "\n",
        _table(["RL run − its start", "Δ seen success", "Δ unseen success", "Δ spell", "Δ wrev", "Δ val ppl"],
               deltas) + "\n",
        "Greedy episodes, one per game (± binomial standard error); the random agent plays "
        f"{_num(m.get('random/seen_games'), 0)} seeded episodes per split, each command drawn from the "
        "admissible ones. Seen games share the training games' settings, unseen games have more rooms and "
        "objects. Spell and wrev are retention tasks no agent stage trains on.\n",
        metrics={f"agent/{k}": v for k, v in headline.items()})


def plots(names: Iterable[str]) -> Section:
    """The figures, by file name (``accuracy.png`` -> ``![accuracy](accuracy.png)``)."""
    return _section("## Plots\n", *[f"![{name[:-4]}]({name})\n" for name in names])


def seeds(inputs: ReportInputs) -> Section:
    """How many seeds the RL numbers come from, and how to run more."""
    source = f"{inputs.n_seeds} seeds" if inputs.n_seeds > 1 else "one seed"
    return _section(
        "## Seeds\n",
        f"The RL numbers above come from {source}. To repeat the comparison over several seeds: "
        "`dvc exp run -S 'rl.seeds=[0,1,2]'` (every RL run trains one model per seed from the same "
        "start model; `rl_eval` scores each; this report then shows mean ± spread over seeds, "
        "`report.seed_spread` choosing sd, se or range).\n",
    )
