"""The `cola` command line: evaluate and sample any model folder, compare pipeline runs, open the MLflow UI,
switch the params profile.

    cola eval MODEL --task arith --task perplexity --out results.json
    cola eval MODEL --task math500_local --math500-path test.jsonl --samples 16 --out math.json
    cola generate MODEL "Q: Calculate 3 + 4. A:" --greedy-actions
    cola compare -n 5 --format markdown
    cola ui --port 5000
    cola profile smollm2-135m

User errors (a bad path, an unknown task, an unreadable tracking store) print one `error: ...` line on stderr
and exit with code 2. Heavy imports (torch, transformers, mlflow) happen inside the commands, so `--help`
is fast.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import enum
import fnmatch
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cola.errors import ColaError, user_errors
from cola.io import atomic_write_json

app = typer.Typer(
    name="cola",
    help="CoLA (Controlling LLMs with Latent Actions): evaluate, sample and compare models and runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # bugs keep a plain traceback; user errors are one line (_user_errors)
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class CliError(ColaError):
    """A command line that cannot run as given."""


def _load(model: Path, threads: int | None):
    """(model, tokenizer, kind) of a model folder; torch imported only now."""
    import torch
    from transformers.utils import logging as hf_logging

    from cola.model.checkpoint import load_model_and_tokenizer

    hf_logging.disable_progress_bar()  # "Loading weights" bars would bury the one-line results and errors
    if threads:
        torch.set_num_threads(threads)
    try:
        return load_model_and_tokenizer(model)
    except (OSError, ValueError) as exc:  # transformers' own complaints about a folder that is no model
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise CliError(f"{model}: cannot load a model ({first})") from None


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically so a reader never sees half a results file."""
    atomic_write_json(path, data, indent=1, ensure_ascii=False, default=str)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --------------------------------------------------------------------------------------------- eval


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


def _standalone() -> bool:
    """Not inside a DVC stage (DVC sets DVC_ROOT for every stage command) nor a named pipeline run."""
    return not os.environ.get("DVC_ROOT") and not os.environ.get("COLA_PIPELINE_ID", "").strip()


@contextlib.contextmanager
def _eval_run(
    enabled: bool, model: Path, kind: str, tasks: list[str], settings: dict[str, Any]
) -> Iterator[Any]:
    """One MLflow run (`cola.tracking.StageRun`, stage ``eval``) around the evaluation; None with --no-mlflow.

    StageRun honours COLA_TRACKING=off and MLFLOW_TRACKING_URI, and never fails the evaluation: a broken
    store is one warning line. No DVC metrics file (metrics_path=None): the --out JSON is the output here.
    """
    if not enabled:
        yield None
        return
    from cola.tracking import RUN_TYPE_TAG, StageRun

    resolved = str(model.resolve())
    params = {"model_path": resolved, "kind": kind, "tasks": ",".join(tasks), **settings}
    tags = {"model_path": resolved, "eval.kind": kind, "eval.tasks": ",".join(tasks)}
    with StageRun("eval", params=params, profile=None, metrics_path=None, run_name=f"eval {model.name}",
                  tags=tags) as run:  # fmt: skip
        if run.run_id is not None and run.parent_run_id is not None and _standalone():
            # StageRun nests every run under a "pipeline" parent; for a hand-run `cola eval` that parent would
            # show up in `cola compare` as a pipeline execution. Retyped, it stays a plain container run.
            with contextlib.suppress(Exception):
                run.client.set_tag(run.parent_run_id, RUN_TYPE_TAG, "eval")
                run.client.set_tag(run.parent_run_id, "mlflow.runName", f"eval {model.name}")
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
        Path,
        typer.Argument(
            help="Model folder: a CoLA checkpoint or a plain HF causal LM, with its tokenizer.",
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
        from cola.eval.context import EvalContext
        from cola.eval.runner import check_tasks

        # Names are checked before loading the model (a typo fails in milliseconds), then again with the
        # model's kind (a plain base cannot run the probe), always before any task runs.
        options = {"math500_path": str(math500_path)} if math500_path is not None else {}
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
        )
        with _eval_run(mlflow, model, kind, task, settings) as run:
            results = {name: run_task(name, ctx) for name in task}
            _print_summary(results, f"{model} ({kind}), {split} split")
            payload = {"model": str(model), "kind": kind, "settings": settings, "results": results}
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
        Path, typer.Argument(help="Model folder (CoLA checkpoint or plain HF causal LM).", show_default=False)
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
        loaded, tokenizer, kind = _load(model, threads)
        if kind == "cola" and action is not None and action >= loaded.config.num_actions:
            raise CliError(
                f"--action {action} is out of range: {model} has {loaded.config.num_actions} actions"
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
            err.print(f"({model} is a plain base model: no latent actions)")
            return
        actions = record["actions"]
        out.print(
            Text(f"actions ({mode}, {len(actions)}): ", style="cyan") + Text(" ".join(map(str, actions)))
        )
        if show_tokens:
            out.print(_token_table(tokenizer, record["token_ids"], actions))


# --------------------------------------------------------------------------------------------- compare


class Format(enum.StrEnum):
    table = "table"
    markdown = "markdown"
    csv = "csv"


def _param_key(stage: str, key: str) -> str:
    """Stage params are usually logged with their section prefix already (`latent.lr`); add it otherwise."""
    return key if key.startswith(f"{stage}.") else f"{stage}.{key}"


def _pipeline_params(run: dict[str, Any]) -> dict[str, str]:
    return {
        _param_key(stage, k): v for stage, info in run["stages"].items() for k, v in info["params"].items()
    }


def _pipeline_metrics(run: dict[str, Any]) -> dict[str, float]:
    """Each stage's summary metrics as `stage/metric`: the parent run carries them; else the stage runs."""
    if run["metrics"]:
        return dict(run["metrics"])
    return {f"{stage}/{k}": v for stage, info in run["stages"].items() for k, v in info["metrics"].items()}


def comparison(
    runs: list[dict[str, Any]], metric_patterns: list[str] | None = None, all_params: bool = False
) -> tuple[list[str], list[list[str]]]:
    """(header, rows) comparing pipeline runs (newest first) as columns: identity rows, then the params whose
    values differ between the runs (all of them with `all_params`), then the headline metrics."""
    header = ["", *[f"#{i + 1} {run['dvc_exp'] or ''}".strip() for i, run in enumerate(runs)]]
    rows = [
        ["started (UTC)", *[(r["start_time"] or "-")[:19].replace("T", " ") for r in runs]],
        ["status", *[_fmt(r["status"]) for r in runs]],
        ["commit", *[(r["git_commit"] or "-")[:8] for r in runs]],
        ["profile", *[_fmt(r["profile"]) for r in runs]],
    ]
    params = [_pipeline_params(r) for r in runs]
    for key in sorted(set().union(*params)):
        values = [p.get(key) for p in params]
        if all_params or len({v for v in values if v is not None}) > 1:
            rows.append([f"param {key}", *map(_fmt, values)])
    metrics = [_pipeline_metrics(r) for r in runs]
    for key in sorted(set().union(*metrics)):
        if metric_patterns and not any(fnmatch.fnmatch(key, pat) for pat in metric_patterns):
            continue
        rows.append([key, *[_fmt(m.get(key)) for m in metrics]])
    return header, rows


def render(header: list[str], rows: list[list[str]], fmt: Format) -> str | Table:
    """The comparison as a rich table, a Markdown table or CSV text."""
    if fmt == Format.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([header[0] or "key", *header[1:]])
        writer.writerows(rows)
        return buffer.getvalue()
    if fmt == Format.markdown:

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])
    table = Table(show_lines=False)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


@app.command()
def compare(
    n: Annotated[int, typer.Option("-n", "--last", help="How many recent pipeline executions.", min=1)] = 5,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric", "-m", help="Only metrics matching this glob (repeatable), e.g. 'evaluate/*'."
        ),
    ] = None,
    all_params: Annotated[
        bool, typer.Option("--all-params", help="Show every param, not only those that differ.")
    ] = False,
) -> None:
    """Compare the last N pipeline executions logged to MLflow: differing params and headline metrics."""
    with user_errors():
        from cola.tracking import recent_pipeline_runs, tracking_uri

        runs = recent_pipeline_runs(n)
        if not runs:
            err.print(f"no pipeline runs in {tracking_uri()}")
            return
        header, rows = comparison(runs, metric, all_params)
        rendered = render(header, rows, fmt)
        if isinstance(rendered, str):
            typer.echo(rendered.rstrip("\n"))
        else:
            out.print(rendered)


# --------------------------------------------------------------------------------------------- ui


def ui_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """The `mlflow ui` command line on the project's tracking store (the venv's mlflow, via this Python)."""
    from cola.tracking import tracking_uri

    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri(),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1 keeps it local).")] = "127.0.0.1",
) -> None:
    """Open the MLflow UI on the project's tracking store (MLFLOW_TRACKING_URI, else <repo>/mlflow.db)."""
    with user_errors():
        argv = ui_command(port, host)
        err.print(f"MLflow UI on http://{host}:{port} (store {argv[argv.index('--backend-store-uri') + 1]})")
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execv(argv[0], argv)  # replace this process: Ctrl-C goes straight to the server
        except OSError as exc:
            raise CliError(f"cannot start mlflow ui ({exc.strerror or exc})") from None


# --------------------------------------------------------------------------------------------- profile


@app.command()
def profile(
    name: Annotated[
        str | None,
        typer.Argument(
            help="Profile name, e.g. tiny, smoke, smollm2-135m, llama-3.1-8b; omit to list them.", show_default=False
        ),
    ] = None,
    profiles_dir: Annotated[Path, typer.Option(help="Folder of profile override files.")] = Path("configs/profiles"),
    params: Annotated[Path, typer.Option(help="The params file to write.")] = Path("params.yaml"),
) -> None:
    """Switch params.yaml to a scale profile: the defaults with configs/profiles/NAME.yaml's overrides on top."""
    from cola.config.profiles import available_profiles, write_profile

    with user_errors():
        if name is None:
            names = available_profiles(profiles_dir)
            for item in names:
                out.print(item)
            if not names:
                err.print(f"no profiles in {profiles_dir}")
            return
        write_profile(name, profiles_dir, params)  # validated first, then atomic: a bad profile changes nothing
        out.print(f"{params} <- defaults + {profiles_dir / (name + '.yaml')} (profile {name}); run `dvc repro`")


def main() -> None:  # pragma: no cover - `python -m cola.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
