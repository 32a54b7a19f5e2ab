"""Reading runs back: the last pipeline executions with their stage runs' params and metrics
(`cola compare`)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from cola.errors import TrackingError
from cola.tracking.failures import _short, _tracking_uri_safe
from cola.tracking.identity import PARENT_TAG, RUN_TYPE_TAG
from cola.tracking.location import experiment_name, tracking_uri


def _iso(ms: int | None) -> str | None:
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.UTC).isoformat(timespec="seconds") if ms else None


def _search_all(client: Any, experiment_id: str, query: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=query,
            max_results=1000,
            page_token=token,
            order_by=["attributes.start_time ASC"],
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def recent_pipeline_runs(n: int = 10) -> list[dict[str, Any]]:
    """The last ``n`` pipeline executions, newest first, each with its stage runs' params and metrics.

    Each item: ``run_id, pipeline_id, name, status, start_time, dvc_exp, git_commit, profile, params,
    metrics`` (the parent's: the whole params.yaml, every stage's metrics) and
    ``stages``: ``{stage: {run_id, status, start_time, duration_seconds, params, metrics}}`` in run order.
    Raises :class:`TrackingError` if the store cannot be read.
    """
    try:
        from mlflow import MlflowClient

        uri = tracking_uri()
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :].split("?", 1)[0]).exists():
            return []  # nothing logged yet; don't create an empty database just by asking
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment_name())
        if exp is None:
            return []
        parents = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{RUN_TYPE_TAG}` = 'pipeline'",
            max_results=n,
            order_by=["attributes.start_time DESC"],
        )
        if not parents:
            return []
        # Tags cannot be matched with IN, so fetch every stage run since the oldest parent in one query.
        oldest = min(p.info.start_time for p in parents)
        children = _search_all(
            client,
            exp.experiment_id,
            f"tags.`{RUN_TYPE_TAG}` = 'stage' AND attributes.start_time >= {oldest}",
        )
    except TrackingError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported as one line by cli_main
        raise TrackingError(f"cannot read MLflow runs from {_tracking_uri_safe()}: {_short(exc)}") from None
    stages: dict[str, dict[str, Any]] = {p.info.run_id: {} for p in parents}
    for run in children:
        bucket = stages.get(run.data.tags.get(PARENT_TAG, ""))
        if bucket is None:
            continue
        end = run.info.end_time
        bucket[run.data.tags.get("stage", run.info.run_name)] = {
            "run_id": run.info.run_id,
            "status": run.info.status,
            "start_time": _iso(run.info.start_time),
            "duration_seconds": (end - run.info.start_time) / 1000 if end else None,
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
        }
    return [
        {
            "run_id": p.info.run_id,
            "pipeline_id": p.data.tags.get("pipeline_id"),
            "name": p.info.run_name,
            "status": p.info.status,
            "start_time": _iso(p.info.start_time),
            "dvc_exp": p.data.tags.get("dvc_exp"),
            "git_commit": p.data.tags.get("git_commit"),
            "profile": p.data.tags.get("profile"),
            "params": dict(p.data.params),
            "metrics": dict(p.data.metrics),
            "stages": stages[p.info.run_id],
        }
        for p in parents
    ]
