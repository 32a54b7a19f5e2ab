"""`cola compare` (the last pipeline executions logged to MLflow, side by side) and `cola ui` (the MLflow UI
on the project's tracking store)."""

from __future__ import annotations

import csv
import enum
import fnmatch
import io
import os
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from cola.cli.app import CliError, _fmt, app, err, out
from cola.errors import user_errors
from cola.tracking.headline import is_headline


class Format(enum.StrEnum):
    table = "table"
    markdown = "markdown"
    csv = "csv"


def _param_key(stage: str, key: str) -> str:
    """Stage params are usually logged with their section prefix already (`latent.lr`); add it otherwise."""
    return key if key.startswith(f"{stage}.") else f"{stage}.{key}"


def _pipeline_params(run: dict[str, Any]) -> dict[str, str]:
    """The whole params.yaml as the parent run carries it; else what its stage runs logged (older runs)."""
    if run.get("params"):
        return dict(run["params"])
    return {
        _param_key(stage, k): v for stage, info in run["stages"].items() for k, v in info["params"].items()
    }


def _pipeline_metrics(run: dict[str, Any]) -> dict[str, float]:
    """Each stage's summary metrics as `stage/metric`: the parent run carries them; else the stage runs."""
    if run["metrics"]:
        return dict(run["metrics"])
    return {f"{stage}/{k}": v for stage, info in run["stages"].items() for k, v in info["metrics"].items()}


def comparison(
    runs: list[dict[str, Any]], metric_patterns: list[str] | None = None, everything: bool = False
) -> tuple[list[str], list[list[str]]]:
    """(header, rows) comparing pipeline runs (newest first) as columns: identity rows, then the params
    whose values differ between the runs, then the headline metrics (`cola.tracking.headline`); `everything`
    shows every param and every metric, `metric_patterns` picks metrics by glob instead."""
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
        if everything or len({v for v in values if v is not None}) > 1:
            rows.append([f"param {key}", *map(_fmt, values)])
    metrics = [_pipeline_metrics(r) for r in runs]
    for key in sorted(set().union(*metrics)):
        if metric_patterns:
            if not any(fnmatch.fnmatch(key, pat) for pat in metric_patterns):
                continue
        elif not everything and not is_headline(key):
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
    everything: Annotated[
        bool, typer.Option("--all", help="Every param (not only those that differ) and every metric.")
    ] = False,
) -> None:
    """Compare the last N pipeline executions logged to MLflow: differing params and headline metrics."""
    with user_errors():
        from cola.tracking import recent_pipeline_runs, tracking_uri

        runs = recent_pipeline_runs(n)
        if not runs:
            err.print(f"no pipeline runs in {tracking_uri()}")
            return
        header, rows = comparison(runs, metric, everything)
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
