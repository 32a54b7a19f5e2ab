"""The project's MLflow experiment and the parent run of each pipeline execution.

- The experiment is a model-training one (``mlflow.experimentKind = custom_model_development``, so MLflow 3's
  UI opens on runs, not on GenAI traces) with a description; with a SQLite store its artifacts live beside the
  store, also when the store was copied from another project.
- A pipeline execution's parent run carries the effective params of the whole ``params.yaml`` (flattened, as
  the stage runs carry their own section) and the metrics of every stage, those DVC took from its cache
  included (read from the metrics files dvc.yaml declares), so comparing two parents shows which param changed
  and what it did.
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from cola.errors import TrackingError
from cola.tracking.identity import RUN_TYPE_TAG

KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
DESCRIPTION = ("CoLA pipeline runs: one parent run per `dvc repro` / `dvc exp run` (all params, every "
               "stage's metrics) and one child run per stage execution; `cola eval` runs beside them.")


def experiment_id(client: Any, name: str, uri: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created as a model-training experiment if missing."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location,
                                            tags={KIND_TAG: KIND, "mlflow.note.content": DESCRIPTION})
        except MlflowException:
            # Another stage process created it first (mlflow#4123): use theirs.
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment '{name}' is deleted: restore it or set "
                            "COLA_MLFLOW_EXPERIMENT")
    if exp.tags.get(KIND_TAG) != KIND:  # made by an older version: the UI would guess GenAI
        client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
        client.set_experiment_tag(exp.experiment_id, "mlflow.note.content", DESCRIPTION)
    if artifact_location is not None and exp.artifact_location != artifact_location:
        _relocate(uri, exp.experiment_id, artifact_location)
    return exp.experiment_id


def _relocate(uri: str, experiment: str, artifact_location: str) -> None:
    """Point a SQLite store's experiment at the artifact folder beside it.

    A copied project (or a copied ``mlflow.db``) would otherwise keep writing artifacts into the original's
    folder, since MLflow stores the location as an absolute path and has no API to change it. Runs logged
    before keep theirs.
    """
    db = uri.removeprefix("sqlite:///").split("?", 1)[0]
    with sqlite3.connect(db, timeout=30) as connection:
        connection.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                           (artifact_location, int(experiment)))


def pipeline_parent(client: Any, experiment: str, pid: str, tags: Mapping[str, str],
                    not_before: int | None = None) -> str:
    """Find or create the parent run of pipeline execution ``pid`` (started at or after ``not_before`` ms)."""
    quoted = pid.replace("'", "_").replace('"', "_")  # the filter grammar has no escapes
    query = f"tags.`{RUN_TYPE_TAG}` = 'pipeline' AND tags.pipeline_id = '{quoted}'"
    if not_before is not None:
        # pid-starttime can repeat after a reboot; a parent older than the dvc process is someone else's.
        query += f" AND attributes.start_time >= {not_before - 5000}"
    runs = client.search_runs([experiment], filter_string=query, max_results=1,
                              order_by=["attributes.start_time DESC"])
    if runs:
        return runs[0].info.run_id
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    run = client.create_run(experiment, run_name=f"pipeline {tags.get('dvc_exp', 'workspace')} {stamp}",
                            tags={**tags, RUN_TYPE_TAG: "pipeline", "pipeline_id": pid,
                                  "mlflow.source.name": "dvc.yaml"})
    return run.info.run_id


def declared_metrics(root: Path = Path(".")) -> dict[str, float]:
    """Every number of every stage's metrics file (the ``--metrics`` path its cmd in dvc.yaml names) that
    exists under `root`, as ``<stage>/<key>`` (``rl@cola-math/reward_end``): what each stage measured, whether
    it ran now or DVC took it from cache. (The DVC metrics proper are the headline subsets.)"""
    dvc_yaml = root / "dvc.yaml"
    if not dvc_yaml.is_file():
        return {}
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})
    out: dict[str, float] = {}
    for stage, body in expanded_stages(stages).items():
        words = str(body.get("cmd", "")).split()
        if "--metrics" not in words[:-1]:
            continue
        path = root / words[words.index("--metrics") + 1]
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not there yet (the stage has not run) or unreadable
            continue
        out.update({f"{stage}/{k}": v for k, v in values.items() if isinstance(v, int | float)
                    and not isinstance(v, bool)})
    return out


def expanded_stages(stages: Mapping[str, Any], resolve: Callable[[str], str] = str) -> dict[str, Any]:
    """dvc.yaml's stages with every foreach entry as a stage of its own (``rl@cola-math``, ``mcts@math``):
    ``${key}``, ``${item}`` and ``${item.x}`` substituted, each value passed through `resolve` first (tests
    fill its ``${section.key}`` references from params.yaml as DVC does)."""
    out: dict[str, Any] = {}
    for name, spec in stages.items():
        if "foreach" not in spec:
            out[name] = spec
            continue
        entries = spec["foreach"]
        for key, item in entries.items() if isinstance(entries, Mapping) else ((e, e) for e in entries):
            text = yaml.safe_dump(spec["do"]).replace("${key}", str(key))
            if isinstance(item, Mapping):
                for field, value in item.items():
                    text = text.replace("${item." + field + "}", resolve(str(value)))
            else:
                text = text.replace("${item}", resolve(str(item)))
            out[f"{name}@{key}"] = yaml.safe_load(text)
    return out
