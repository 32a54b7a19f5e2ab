"""`StageRun`: one MLflow run for one stage execution, nested under its pipeline's run, plus the stage's DVC
metrics file. MLflow is an observer: any failure turns tracking off for the stage with one warning line."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cola.config.describe import flatten
from cola.io import atomic_write_json
from cola.tracking.experiment import declared_metrics, experiment_id, pipeline_parent
from cola.tracking.failures import _check_server, _quiet_mlflow, _short, _tracking_uri_safe
from cola.tracking.headline import is_headline
from cola.tracking.identity import PARENT_TAG, RUN_TYPE_TAG, _pipeline_identity, dvc_exp_name, git_commit
from cola.tracking.location import _artifact_location, experiment_name, outbox_dir, tracking_uri
from cola.tracking.metrics_file import _number, write_metrics_json
from cola.tracking.models import folder_bytes, log_model

# MLflow limits (mlflow/utils/validation.py): per log_batch call, and the longest param value.
_MAX_PARAMS_PER_BATCH, _MAX_METRICS_PER_BATCH, _MAX_PARAM_LEN = 100, 1000, 6000
RECORD_TAG = "cola.record_id"  # ties an MLflow run to its outbox record, so a replay never duplicates it


class StageRun:
    """One MLflow run for one stage execution, plus the stage's DVC metrics file.

    Args:
        stage: stage name (``latent``, ``evaluate@math500``); tag ``stage`` and the run name.
        params: the stage's effective config (dataclass or mapping); logged flattened as MLflow params.
        profile: the scale profile (``tiny``, ...); defaults to ``COLA_PROFILE`` or ``"unknown"``.
        metrics_path: where :meth:`summary` is written on success (every number); None to skip.
        headline_path: where its headline numbers (`cola.tracking.headline`) are written on success: the
            stage's DVC metrics file, the columns of ``dvc exp show``; None to skip.
        run_name: MLflow run name (default: the stage name).
        tags: extra tags for the stage run.
        flush_interval: seconds between step-metric writes; calls in between are buffered (cheap).
        pipeline_params: the whole pipeline's flat params, logged once on the pipeline's parent run.
        source: what ran (``stages/latent.py``): MLflow's source name.
        nested: under the pipeline execution's parent run (stages); False for a run of its own (`cola eval`).
    """

    def __init__(
        self,
        stage: str,
        params: Any = None,
        profile: str | None = None,
        metrics_path: str | Path | None = None,
        *,
        headline_path: str | Path | None = None,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        flush_interval: float = 2.0,
        pipeline_params: Mapping[str, Any] | None = None,
        source: str | None = None,
        nested: bool = True,
    ) -> None:
        self.stage = stage
        self.params = flatten(params) if params is not None else {}
        self.profile = profile or os.environ.get("COLA_PROFILE") or "unknown"
        self.metrics_path = Path(metrics_path) if metrics_path is not None else None
        self.headline_path = Path(headline_path) if headline_path is not None else None
        self.run_name = run_name or stage
        self.extra_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.flush_interval = flush_interval
        self.pipeline_params = dict(pipeline_params or {})
        self.source, self.nested = source, nested
        self.run_id: str | None = None
        self.parent_run_id: str | None = None
        self.pipeline_id: str | None = None
        self.experiment_id: str | None = None
        self.client: Any = None  # mlflow.MlflowClient once started
        self.enabled = os.environ.get("COLA_TRACKING", "").strip().lower() not in {"0", "off", "false", "no"}
        self.warning: str | None = None  # the warning printed when tracking failed, for callers and tests
        self._summary: dict[str, int | float] = {}
        # What an outbox record needs if MLflow fails: every logged step and the run's identity.
        self.record_id = uuid.uuid4().hex
        self._steps: list[tuple[int, dict[str, float]]] = []
        self._models: list[dict[str, Any]] = []
        self._tags: dict[str, str] = {}
        self._start_ms = int(time.time() * 1000)
        self._buffer: list[Any] = []
        self._last_flush = 0.0
        self._last_step = 0
        self._t0 = time.monotonic()

    # ----------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> StageRun:
        self._guard(self._start)
        # The clock starts after MLflow setup (~1-3 s) so wall_clock_seconds measures the stage, not tracking.
        self._t0 = time.monotonic()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        wall = round(time.monotonic() - self._t0, 3)
        if exc_type is None:
            status = "FINISHED"
            self._summary["wall_clock_seconds"] = wall
        else:
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        try:
            # The DVC metrics file comes first and never depends on MLflow. A failed stage writes none:
            # DVC discards its outputs anyway, and a stale-looking file would mislead.
            if exc_type is None and self.metrics_path is not None:
                write_metrics_json(self.metrics_path, self._summary)
            if exc_type is None and self.headline_path is not None:
                write_metrics_json(self.headline_path, {k: v for k, v in self._summary.items()
                                                        if is_headline(f"{self.stage}/{k}")})
        except BaseException:
            status = "FAILED"
            raise
        finally:
            if self.enabled:
                self._guard(self._finish, status, wall, exc)
            else:
                self._recover(status)
            if self.warning is not None:  # tracking was wanted and failed: keep the run for `cola track sync`
                self._write_record(status, wall)
        return False  # re-raise the body's exception

    def _start(self) -> None:
        from mlflow import MlflowClient  # lazy: importing mlflow costs ~1 s and must not break the stage

        uri = tracking_uri()
        if uri.startswith(("http://", "https://")):
            _check_server(uri)
        client = self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = experiment_id(client, experiment_name(), uri, _artifact_location(uri))
        self.pipeline_id, not_before = _pipeline_identity()
        common = {
            "git_commit": git_commit(),
            "dvc_exp": dvc_exp_name(),
            "profile": self.profile,
            "pipeline_id": self.pipeline_id,
        }
        common["mlflow.source.git.commit"] = common["git_commit"]
        self._tags = self._stage_tags(common)
        tags = dict(self._tags)
        if self.nested:
            self.parent_run_id = pipeline_parent(client, self.experiment_id, self.pipeline_id, common,
                                                 not_before)
            tags[PARENT_TAG] = self.parent_run_id
        self.run_id = client.create_run(self.experiment_id, run_name=self.run_name, tags=tags).info.run_id
        self._log_params(self.params)
        if self.parent_run_id is None:
            return
        if self.pipeline_params and not client.get_run(self.parent_run_id).data.params:
            # The whole params.yaml on the parent, once: comparing two parents shows the param that changed.
            log_batch(client, self.parent_run_id, params=param_entities(self.pipeline_params))
        client.update_run(self.parent_run_id, status="RUNNING")

    def _stage_tags(self, common: Mapping[str, str]) -> dict[str, str]:
        """The stage run's tags, the parent's id aside (a replay finds or creates the parent itself)."""
        tags = {**common, RUN_TYPE_TAG: "stage", "stage": self.stage, RECORD_TAG: self.record_id}
        if self.source:
            tags["mlflow.source.name"] = self.source
        if os.environ.get("DVC_STAGE"):
            tags["dvc_stage"] = os.environ["DVC_STAGE"]
        tags.update(self.extra_tags)
        return tags

    def _write_record(self, status: str, wall: float) -> None:
        """Everything `cola track sync` needs to replay this run (no MLflow involved: the store is down)."""
        if not self._tags:  # MLflow failed before the run was set up: the identity without MLflow
            pid, _ = _pipeline_identity()
            common = {"git_commit": git_commit(), "dvc_exp": dvc_exp_name(), "profile": self.profile,
                      "pipeline_id": pid}
            common["mlflow.source.git.commit"] = common["git_commit"]
            self._tags = self._stage_tags(common)
        record = {
            "record_id": self.record_id, "experiment": experiment_name(), "run_name": self.run_name,
            "stage": self.stage, "status": status, "start_time": self._start_ms,
            "end_time": int(time.time() * 1000), "tags": self._tags, "params": self.params,
            "steps": self._steps, "summary": {**self._summary, "wall_clock_seconds": wall},
            "metrics_path": str(self.metrics_path) if self.metrics_path is not None else None,
            "models": self._models,
        }
        try:
            atomic_write_json(outbox_dir() / f"{self.record_id}.json", record, indent=1)
        except Exception as exc:  # noqa: BLE001 - the stage's own outputs are written; say what is lost
            print(f"warning: could not keep the run for `cola track sync` ({exc})", file=sys.stderr)

    def _finish(self, status: str, wall: float, exc: BaseException | None) -> None:
        if self.run_id is None:
            return
        final = {**self._summary, "wall_clock_seconds": wall}
        self._queue(final, self._last_step)
        self._flush()
        if exc is not None:
            self.client.set_tag(self.run_id, "cola.error", _short(exc, 500))
        self.client.set_terminated(self.run_id, status)
        if self.parent_run_id is None:
            return
        # Every stage's numbers on the parent, so pipelines compare side by side in the UI: this stage's, and
        # those of the stages DVC took from cache (their metrics files). Only values that changed are logged.
        numbers = {**declared_metrics(), **{f"{self.stage}/{k}": v for k, v in final.items()}}
        current = self.client.get_run(self.parent_run_id).data.metrics
        changed = {k: v for k, v in numbers.items() if current.get(_clean_key(k)) != float(v)}
        self._log_batch(self.parent_run_id, metrics=self._metric_entities(changed, self._last_step))
        self.client.set_terminated(self.parent_run_id, status)

    def _recover(self, status: str) -> None:
        """Tracking failed mid-run: try once, silently, to close the runs so they do not stay RUNNING."""
        runs = [r for r in (self.run_id, self.parent_run_id) if r is not None]
        if not runs or self.client is None:
            return
        try:
            with _quiet_mlflow():
                uri = tracking_uri()
                if uri.startswith(("http://", "https://")):
                    _check_server(uri)  # a dead server would otherwise cost MLflow's retries again
                for run_id in runs:
                    self.client.set_terminated(run_id, status)
        except Exception:  # noqa: BLE001 - already warned; the runs stay RUNNING in the UI
            pass

    def _call(self, fn: Any) -> None:
        """A logging call: only inside an active run (a no-op before ``with`` or after tracking failed)."""
        if self.run_id is not None:
            self._guard(fn)

    def _guard(self, fn: Any, *args: Any) -> Any:
        """Run an MLflow call; on any failure, turn tracking off for this stage and warn once."""
        if not self.enabled:
            return None
        try:
            with _quiet_mlflow():
                return fn(*args)
        except Exception as exc:  # noqa: BLE001 - tracking must never take the stage down
            self.enabled = False
            where = self.metrics_path if self.metrics_path is not None else "no metrics file"
            self.warning = (
                f"warning: MLflow tracking unavailable ({_tracking_uri_safe()}: {_short(exc)}): "
                f"metrics written to {where}; `cola track sync` replays the run into MLflow once it is back"
            )
            print(self.warning, file=sys.stderr, flush=True)
            return None

    # ----------------------------------------------------------------------------- logging API

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log step metrics (``None`` values are skipped). Buffered; written every ``flush_interval`` s."""
        # Validate even when tracking is off, so a bad value fails the same way with or without MLflow.
        values = {k: float(_number(k, v)) for k, v in metrics.items() if v is not None}
        self._last_step = max(self._last_step, int(step))
        self._steps.append((int(step), values))
        if not self.enabled or self.run_id is None:
            return
        self._queue(values, int(step))
        if (
            len(self._buffer) >= _MAX_METRICS_PER_BATCH
            or time.monotonic() - self._last_flush >= self.flush_interval
        ):
            self._call(self._flush)

    def log_params(self, params: Any) -> None:
        """Log more params (e.g. derived sizes). MLflow params are write-once: re-logging a key must not
        change it."""
        flat = flatten(params)
        self.params.update(flat)
        self._call(lambda: self._log_params(flat))

    def set_tags(self, tags: Mapping[str, Any] | None = None, **more: Any) -> None:
        """Set tags on the stage run (values are stringified)."""
        from_kw = {**(tags or {}), **more}
        self._call(lambda: self._log_batch(self.run_id, tags=_tag_entities(from_kw)))

    def log_figure(self, figure: Any, artifact_file: str, save_to: str | Path | None = None) -> None:
        """Log a matplotlib figure as an artifact; ``save_to`` also saves it locally (e.g. a DVC plot)."""
        if save_to is not None:
            Path(save_to).parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(save_to)
        self._call(lambda: self.client.log_figure(self.run_id, figure, artifact_file))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file or directory into the run's artifacts (not model weights: those stay DVC outputs)."""
        path = Path(path)
        if path.is_dir():
            self._call(lambda: self.client.log_artifacts(self.run_id, str(path), artifact_path))
        else:
            self._call(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_dict(self, data: Mapping[str, Any] | list, artifact_file: str) -> None:
        """Log a JSON/YAML-serialisable object as an artifact file (format from the extension)."""
        self._call(lambda: self.client.log_dict(self.run_id, data, artifact_file))

    def log_output(self, path: str | Path, name: str | None = None) -> None:
        """Record a DVC output that is not a model (the data folder) by pointer: path and size as tags."""
        path = Path(path)
        label = _clean_key(name or path.name)
        self.set_tags({f"output.{label}.path": str(path), f"output.{label}.bytes": folder_bytes(path)})

    def log_model(self, path: str | Path, *, attach_up_to_mb: float,
                  registry_name: str | None = None) -> None:
        """A model folder on the run: its files under ``model/`` up to `attach_up_to_mb` MiB, else a
        reference to the DVC output; with `registry_name`, a new version of that registered model
        (`cola.tracking.models.log_model`). Kept for `cola track sync` if MLflow is down."""
        request = {"path": str(path), "attach_up_to_mb": attach_up_to_mb, "registry_name": registry_name}
        self._models.append(request)
        self._call(lambda: log_model(self.client, self.run_id, self.stage, **request))

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Merge final headline metrics (flat keys, numbers): written to ``metrics_path`` and logged on
        exit."""
        for key, value in metrics.items():
            self._summary[str(key)] = _number(str(key), value)

    # ----------------------------------------------------------------------------- internals

    def _metric_entities(self, metrics: Mapping[str, Any], step: int) -> list[Any]:
        return metric_entities(metrics, step)

    def _queue(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.run_id is not None:
            self._buffer.extend(self._metric_entities(metrics, step))

    def _flush(self) -> None:
        self._last_flush = time.monotonic()
        buffer, self._buffer = self._buffer, []
        self._log_batch(self.run_id, metrics=buffer)

    def _log_params(self, params: Mapping[str, Any]) -> None:
        log_batch(self.client, self.run_id, params=param_entities(params))

    def _log_batch(self, run_id: str | None, metrics: list | None = None, params: list | None = None,
                   tags: list | None = None) -> None:
        log_batch(self.client, run_id, metrics=metrics, params=params, tags=tags)


def metric_entities(metrics: Mapping[str, Any], step: int) -> list[Any]:
    """MLflow `Metric`s of flat numeric metrics at one step (names cleaned for MLflow)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(_clean_key(k), float(_number(k, v)), now, step) for k, v in metrics.items()]


def param_entities(params: Mapping[str, Any]) -> list[Any]:
    """MLflow `Param`s of flat params (names cleaned, values cut to MLflow's limit)."""
    from mlflow.entities import Param

    return [Param(_clean_key(k), str(v)[:_MAX_PARAM_LEN]) for k, v in params.items()]


def log_batch(client: Any, run_id: str | None, metrics: list | None = None, params: list | None = None,
              tags: list | None = None) -> None:
    """log_batch in chunks that respect MLflow's per-call limits."""
    if run_id is None:
        return
    for i in range(0, len(metrics or []), _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _MAX_METRICS_PER_BATCH])
    for entities, kind in ((params, "params"), (tags, "tags")):
        for i in range(0, len(entities or []), _MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, **{kind: entities[i : i + _MAX_PARAMS_PER_BATCH]})


def _clean_key(key: str) -> str:
    """MLflow metric/param names allow only ``[/\\w.\\- :]`` (``evaluate@math500`` would be rejected)."""
    cleaned = "".join(c if c.isalnum() or c in "/_.- :" else "_" for c in str(key)).strip("/")
    return cleaned.replace("//", "/") or "_"


def _tag_entities(tags: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(str(k), str(v)[:_MAX_PARAM_LEN]) for k, v in tags.items()]
