"""`cola track sync`: replay the stage runs that could not reach MLflow, from their outbox records.

When a stage's tracking fails (server down, database locked), `StageRun` still writes the stage's metrics
file and keeps the run in ``.cola/outbox/<record id>.json`` (`cola.tracking.location.outbox_dir`): its
params, tags, every logged step, its final metrics, status and times. Once the store is back, `sync` puts each
record into MLflow under its pipeline's parent run:

- a run that was never created is created, with the recorded start and end times;
- a run that was created before the failure (it carries the record's id as a tag) is completed: the params,
  the steps it may have missed and the final metrics are logged, and it is closed with the recorded status.

Idempotent: a record leaves the outbox once its run is complete and tagged ``cola.synced``, and a run tagged
so is never written again, so running `sync` twice (or after a crash half-way) adds nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola.errors import TrackingError
from cola.tracking.experiment import experiment_id, pipeline_parent
from cola.tracking.failures import _check_server, _quiet_mlflow, _short
from cola.tracking.identity import PARENT_TAG
from cola.tracking.location import _artifact_location, outbox_dir, tracking_uri
from cola.tracking.models import log_model
from cola.tracking.stage_run import (
    RECORD_TAG,
    _clean_key,
    log_batch,
    metric_entities,
    param_entities,
)

SYNCED_TAG = "cola.synced"


@dataclass
class SyncResult:
    """What one `sync` did: runs created, runs completed, runs that were already complete."""

    created: list[str]
    completed: list[str]
    already: list[str]


def pending(folder: Path | None = None) -> list[Path]:
    """The outbox records waiting for a sync, oldest first."""
    folder = folder or outbox_dir()
    return sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []


def sync(folder: Path | None = None) -> SyncResult:
    """Replay every outbox record into the tracking store (see the module docstring); `TrackingError` if the
    store cannot be reached (the records stay for the next try)."""
    from mlflow import MlflowClient

    result = SyncResult([], [], [])
    records = pending(folder)
    if not records:
        return result
    uri = tracking_uri()
    try:
        with _quiet_mlflow():
            if uri.startswith(("http://", "https://")):
                _check_server(uri)
            client = MlflowClient(tracking_uri=uri)
            for path in records:
                outcome = _replay(client, uri, json.loads(path.read_text(encoding="utf-8")))
                getattr(result, outcome).append(path.stem)
                path.unlink()
    except TrackingError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported as one line; the records not yet replayed stay
        raise TrackingError(f"cannot sync to {uri}: {_short(exc)}") from None
    return result


def _replay(client: Any, uri: str, record: dict[str, Any]) -> str:
    """Put one record into the store; returns which kind of work it was (created, completed, already)."""
    experiment = experiment_id(client, record["experiment"], uri, _artifact_location(uri))
    found = client.search_runs([experiment], filter_string=f"tags.`{RECORD_TAG}` = '{record['record_id']}'",
                               max_results=1)
    if found and found[0].data.tags.get(SYNCED_TAG) == "1":
        return "already"
    tags = record["tags"]
    parent = pipeline_parent(client, experiment, tags["pipeline_id"], {
        k: tags[k] for k in ("git_commit", "dvc_exp", "profile", "pipeline_id", "mlflow.source.git.commit")
        if k in tags})
    if found:
        run_id, outcome = found[0].info.run_id, "completed"
        logged = set(found[0].data.params)
        params = {k: v for k, v in record["params"].items() if _clean_key(k) not in logged}
    else:
        run = client.create_run(experiment, run_name=record["run_name"], start_time=record["start_time"],
                                tags={**tags, PARENT_TAG: parent})
        run_id, outcome, params = run.info.run_id, "created", record["params"]
    last_logged = _last_logged_step(client, run_id, record) if found else -1
    final_step = max([step for step, _ in record["steps"]], default=0)
    metrics = [entity for step, values in record["steps"] if step > last_logged
               for entity in metric_entities(values, step)]
    metrics += metric_entities(record["summary"], final_step)
    log_batch(client, run_id, metrics=metrics, params=param_entities(params))
    headline = {f"{record['stage']}/{k}": v for k, v in record["summary"].items()}
    log_batch(client, parent, metrics=metric_entities(headline, final_step))
    logged_model = found and "model.stored" in found[0].data.tags
    for request in [] if logged_model else record.get("models", []):
        if Path(request["path"]).exists():  # the folder as it is now: its md5 tag says which one
            log_model(client, run_id, record["stage"], **request)
    client.set_tag(run_id, SYNCED_TAG, "1")
    client.set_terminated(run_id, record["status"], end_time=record["end_time"])
    client.set_terminated(parent, record["status"], end_time=record["end_time"])
    return outcome


def _last_logged_step(client: Any, run_id: str, record: dict[str, Any]) -> int:
    """The last step of the record's step metrics that the partial run already holds (-1 if none)."""
    keys = {k for _, values in record["steps"] for k in values}
    steps = [m.step for key in keys for m in client.get_metric_history(run_id, _clean_key(key))]
    return max(steps, default=-1)
