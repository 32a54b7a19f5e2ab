"""`cola eval` (a model folder on tasks: a summary table, a results JSON, an MLflow run) and `cola generate`
(continue one prompt, with its latent actions)."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from cola.cli.app import CliError, _fmt, _load, _model_folder, _write_json, app, err, out
from cola.errors import user_errors


class ActionMode(enum.StrEnum):
    greedy = "greedy"
    sample = "sample"
    random = "random"


def run_task(name: str, ctx) -> dict[str, Any]:
    """Dispatch one evaluation by name (see `cola.eval.runner.run_task` and its `RUNNERS` registry)."""
    from cola.eval.runner import run_task as runner_run_task

    return runner_run_task(name, ctx)


def _summary_rows(name: str, result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(task, metric, value) rows for the summary table: accuracy ± stderr first, then the other numbers."""
    from cola.eval.context import headline_metrics

    metrics = headline_metrics(result)
    rows = []
    if "accuracy" in metrics:
        acc, se = metrics.pop("accuracy"), metrics.pop("stderr", float("nan"))
        rows.append((name, "accuracy", f"{acc:.3f} ± {se:.3f}"))
    rows += [(name, key, _fmt(value)) for key, value in metrics.items()]
    return rows


def _print_summary(results: dict[str, dict[str, Any]], title: str) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("task", "metric", "value"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for name, result in results.items():
        for i, (task, metric, value) in enumerate(_summary_rows(name, result)):
            table.add_row(task if i == 0 else "", metric, value, end_section=False)
        table.add_section()
    out.print(table)


@contextlib.contextmanager
def _eval_run(
    enabled: bool, address: str, model: Path, kind: str, tasks: list[str], settings: dict[str, Any]
) -> Iterator[Any]:
    """One MLflow run (`cola.tracking.StageRun`, stage ``eval``) around the evaluation; None with --no-mlflow.

    StageRun honours COLA_TRACKING=off and MLFLOW_TRACKING_URI, and never fails the evaluation: a broken
    store is one warning line. No DVC metrics file (metrics_path=None): the --out JSON is the output here.
    """
    if not enabled:
        yield None
        return
    from cola.tracking import StageRun, tracking_uri
    from cola.tracking.models import is_model_uri

    resolved = str(model.resolve())
    params = {"model_path": resolved, "kind": kind, "tasks": ",".join(tasks), **settings}
    tags = {"model_path": resolved, "eval.kind": kind, "eval.tasks": ",".join(tasks)}
    if is_model_uri(address):  # the registered name and version say more than a download folder's name
        params["model_uri"] = tags["model_uri"] = address
    name = f"eval {address if is_model_uri(address) else model.name}: {', '.join(tasks)}"
    with StageRun("eval", params=params, profile=None, metrics_path=None, run_name=name, tags=tags,
                  nested=False, source="cola eval") as run:
        if run.run_id is not None:
            err.print(f"MLflow run {run.run_id} ({tracking_uri()}); `cola ui` shows it")
        yield run


def _log_eval(run: Any, results: dict[str, dict[str, Any]], payload: dict[str, Any]) -> None:
    """Headline numbers (`task/metric`) as final metrics and the whole results JSON as an artifact."""
    from cola.eval.context import headline_metrics

    metrics: dict[str, float] = {}
    for name, result in results.items():
        metrics.update(headline_metrics(result, prefix=name))
    run.summary(metrics)
    if run.run_id is None:  # tracking off or failed: nothing to upload
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "eval_results.json"
        _write_json(path, payload)
        run.log_artifact(path)


@app.command("eval")
def eval_command(
    model: Annotated[
        str,
        typer.Argument(
            help="Model folder (a CoLA checkpoint or a plain HF causal LM, with its tokenizer), or an MLflow "
            "address: models:/NAME/VERSION (cola-bc, cola-rl-cola-math, ...) or runs:/RUN_ID/model.",
            show_default=False,
        ),
    ],
    task: Annotated[
        list[str],
        typer.Option(
            "--task",
            "-t",
            help="Task to run (repeatable): a task file <data-dir>/tasks/<split>/<task>.jsonl; perplexity, "
            "diversity, probe; or through lm-eval: math500 (hub HuggingFaceH4/MATH-500), math500_local "
            "(--math500-path), any cola_* task of evals/ (cola_arith, cola_procedural, ...).",
            show_default=False,
        ),
    ],
    data_dir: Annotated[
        Path, typer.Option(help="Prepared data folder (output of the prepare stage).")
    ] = Path("data"),
    split: Annotated[str, typer.Option(help="Task split: train, val or test.")] = "test",
    limit: Annotated[
        int | None,
        typer.Option(
            help="Problems per task, lines for perplexity, prefixes for diversity/probe; default: all "
            "(16 diversity and 32 probe prefixes).",
            min=1,
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.", min=1)] = 64,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(help="Generation budget; default: the longest reference completion + 8.", min=1),
    ] = None,
    action_mode: Annotated[
        ActionMode, typer.Option(help="How a CoLA model picks latent actions (ignored for a plain base).")
    ] = ActionMode.greedy,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    out_path: Annotated[
        Path | None,
        typer.Option("--out", help="Write all results, per-sample records included, to this JSON file."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads (tiny models: 1 is fastest).", min=1)
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    math500_path: Annotated[
        Path | None,
        typer.Option(
            help="MATH-500 as a local JSONL (HuggingFaceH4/MATH-500 fields: problem, answer): the data of "
            "math500_local, and of math500 instead of the hub.",
        ),
    ] = None,
    diversity_embedder: Annotated[
        str,
        typer.Option(help="Sentence embedder of the diversity task: all-MiniLM-L6-v2 (offline), a "
                     "sentence-transformers folder or a hub id (BAAI/bge-m3, the paper's)."),
    ] = "all-MiniLM-L6-v2",
    samples: Annotated[
        int,
        typer.Option(
            help="Sampled answers per problem (task files, math500, math500_local): reports pass@k "
            "(k = 1, 2, 4, ... <= N), best-of-N with an oracle verifier (= pass@N) and majority vote. "
            "CoLA samples latent actions (top-40, temperature 1), a base samples tokens. Default 1: one "
            "greedy answer.",
            min=1,
        ),
    ] = 1,
    mlflow: Annotated[
        bool,
        typer.Option(
            help="Log the run to MLflow (MLFLOW_TRACKING_URI, else <repo>/mlflow.db): settings as params, "
            "headline numbers as metrics, the results JSON as an artifact. COLA_TRACKING=off also skips it.",
        ),
    ] = True,
) -> None:
    """Evaluate a model folder on tasks; print a summary table and optionally write JSON results."""
    with user_errors():
        address, model = model, _model_folder(model, out_path)
        from cola.eval.context import EvalContext
        from cola.eval.runner import check_tasks

        # Names are checked before loading the model (a typo fails in milliseconds), then again with the
        # model's kind (a plain base cannot run the probe), always before any task runs.
        options: dict[str, Any] = {"embedder": diversity_embedder}
        if math500_path is not None:
            options["math500_path"] = str(math500_path)
        ctx = EvalContext(
            model_path=str(model),
            model=None,
            tokenizer=None,
            kind="cola",
            data_dir=data_dir,
            split=split,
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            action_mode=action_mode.value,
            seed=seed,
            progress=progress,
            samples=samples,
            options=options,
        )
        check_tasks(task, ctx)
        loaded, tokenizer, kind = _load(model, threads)
        ctx = dataclasses.replace(ctx, model=loaded, tokenizer=tokenizer, kind=kind)
        check_tasks(task, ctx)
        settings = dict(
            data_dir=str(data_dir),
            split=split,
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            action_mode=action_mode.value,
            seed=seed,
            samples=samples,
            math500_path=str(math500_path) if math500_path is not None else None,
            diversity_embedder=diversity_embedder,
        )
        with _eval_run(mlflow, address, model, kind, task, settings) as run:
            results = {name: run_task(name, ctx) for name in task}
            _print_summary(results, f"{address} ({kind}), {split} split")
            payload = {"model": address, "kind": kind, "settings": settings, "results": results}
            if out_path is not None:
                _write_json(out_path, payload)
                err.print(f"wrote {out_path}")
            if run is not None:
                _log_eval(run, results, payload)


# --------------------------------------------------------------------------------------------- generate


def _action_mode(action: int | None, random_actions: bool, greedy_actions: bool) -> str:
    chosen = [
        name
        for name, on in (
            ("--action", action is not None),
            ("--random-actions", random_actions),
            ("--greedy-actions", greedy_actions),
        )
        if on
    ]
    if len(chosen) > 1:
        raise CliError(
            f"choose one of --action, --random-actions, --greedy-actions (got {' and '.join(chosen)})"
        )
    if action is not None:
        return "forced"
    return "random" if random_actions else "greedy" if greedy_actions else "sample"


def _token_table(tokenizer, ids: list[int], actions: list[int]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("step", "token", "action"):
        table.add_column(column, justify="left" if column == "token" else "right")
    for step, (token, action) in enumerate(zip(ids, actions, strict=True)):
        table.add_row(str(step), repr(tokenizer.decode([token])), str(action))
    return table


@app.command()
def generate(
    model: Annotated[
        str,
        typer.Argument(help="Model folder (CoLA checkpoint or plain HF causal LM) or an MLflow address "
                       "(models:/NAME/VERSION, runs:/RUN_ID/model).", show_default=False),
    ],
    prompt: Annotated[
        str, typer.Argument(help='Prompt text, e.g. "Q: Calculate 3 + 4. A:".', show_default=False)
    ],
    action: Annotated[int | None, typer.Option(help="Force latent action K at every step.", min=0)] = None,
    random_actions: Annotated[
        bool, typer.Option("--random-actions", help="Uniformly random latent actions.")
    ] = False,
    greedy_actions: Annotated[
        bool,
        typer.Option(
            "--greedy-actions", help="The policy's argmax action (default: sample the policy's top-k)."
        ),
    ] = False,
    action_top_k: Annotated[int, typer.Option(help="Top-k of policy sampling.", min=1)] = 40,
    action_temperature: Annotated[float, typer.Option(help="Temperature of policy sampling.", min=0.0)] = 1.0,
    token_sampling: Annotated[
        bool,
        typer.Option("--token-sampling", help="Sample tokens (temperature 1) instead of taking the argmax."),
    ] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.", min=1)] = 32,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    show_tokens: Annotated[
        bool, typer.Option("--tokens", help="Also print each token with its action.")
    ] = False,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.", min=1)] = None,
) -> None:
    """Continue PROMPT with a model folder; print the text and the latent action sequence."""
    with user_errors():
        mode = _action_mode(action, random_actions, greedy_actions)
        address, model = model, _model_folder(model)
        loaded, tokenizer, kind = _load(model, threads)
        if kind == "cola" and action is not None and action >= loaded.config.num_actions:
            raise CliError(
                f"--action {action} is out of range: {address} has {loaded.config.num_actions} actions"
            )
        from cola.eval.generate import generate_texts

        record = generate_texts(
            loaded,
            tokenizer,
            [prompt],
            kind=kind,
            max_new_tokens=max_new_tokens,
            batch_size=1,
            action_mode=mode,
            forced_action=action,
            token_sampling=token_sampling,
            seed=seed,
            action_top_k=action_top_k,
            action_temperature=action_temperature,
        )[0]
        out.print(Text(prompt, style="dim") + Text(record["completion"], style="bold"))
        if kind != "cola":
            err.print(f"({address} is a plain base model: no latent actions)")
            return
        actions = record["actions"]
        out.print(
            Text(f"actions ({mode}, {len(actions)}): ", style="cyan") + Text(" ".join(map(str, actions)))
        )
        if show_tokens:
            out.print(_token_table(tokenizer, record["token_ids"], actions))
