"""MLflow/DVC glue: every DVC stage execution is one MLflow run, nested under one run per pipeline execution.

Usage in a stage script::

    with StageRun(stage="latent", params=cfg, profile="tiny", metrics_path="metrics/latent.json") as run:
        for step in ...:
            if step % cfg.log_every == 0:
                run.log_metrics({"train/loss": loss}, step=step)
        run.log_figure(fig, "plots/loss.png")
        run.summary({"loss": final_loss})        # -> metrics/latent.json (DVC) + final MLflow metrics

Where runs go (design.md §6): ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo root>/mlflow.db`` with
artifacts in ``<repo root>/mlartifacts``. The repo root is found even inside ``dvc exp run --temp/--queue``
copies, so queued experiments log to the same store as workspace runs.

Reliability (design.md §9): MLflow is an observer. If it fails at any point (server down, database locked,
bad URI, mlflow not importable) the stage keeps running, the metrics JSON is still written, and one
``warning: MLflow tracking unavailable (...)`` line goes to stderr. ``COLA_TRACKING=off`` skips MLflow.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cola.config.validation import flatten
from cola.errors import TrackingError
from cola.io import atomic_write_json

__all__ = [
    "StageRun",
    "dvc_exp_name",
    "experiment_name",
    "git_commit",
    "pipeline_id",
    "recent_pipeline_runs",
    "repo_root",
    "tracking_uri",
    "write_metrics_json",
]

RUN_TYPE_TAG = "cola.run_type"  # "pipeline" (the parent) or "stage"
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI reads to nest runs
_EXPS_PARTS = (".dvc", "tmp", "exps")  # where dvc exp run --temp/--queue put their working copies
# MLflow limits (mlflow/utils/validation.py): per log_batch call, and the longest param value.
_MAX_PARAMS_PER_BATCH, _MAX_METRICS_PER_BATCH, _MAX_PARAM_LEN = 100, 1000, 6000


# --------------------------------------------------------------------------------------------- where


def _outside_exp_copy(path: Path) -> Path | None:
    """``<repo>/.dvc/tmp/exps/<...>`` -> ``<repo>``; None if ``path`` is not inside an experiment copy."""
    parts = path.parts
    for i in range(len(parts) - len(_EXPS_PARTS) + 1):
        if parts[i : i + len(_EXPS_PARTS)] == _EXPS_PARTS:
            return Path(*parts[:i])
    return None


def _git(*args: str, cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def repo_root(cwd: str | Path | None = None) -> Path:
    """The real repository root: exp-copy pattern, else ``DVC_ROOT``, else git toplevel, else cwd."""
    here = Path(cwd if cwd is not None else os.getcwd()).resolve()
    root = _outside_exp_copy(here)
    if root is not None:
        return root
    # DVC sets DVC_ROOT for every stage command (and points it at the parent repo for queued experiments).
    env_root = os.environ.get("DVC_ROOT")
    if env_root:
        env_path = Path(env_root).resolve()
        return _outside_exp_copy(env_path) or env_path
    top = _git("rev-parse", "--show-toplevel", cwd=here)
    if top:
        top_path = Path(top).resolve()
        return _outside_exp_copy(top_path) or top_path
    return here


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` (a relative ``sqlite:///x.db`` is anchored at the repo root), else the default."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return f"sqlite:///{repo_root() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # A relative path would resolve inside the temporary copy of a queued experiment and be lost.
        return f"sqlite:///{repo_root() / uri[len('sqlite:///') :]}"
    return uri


def _artifact_location(uri: str) -> str | None:
    """``mlartifacts`` beside a SQLite store; for servers the server decides (proxied artifacts)."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = Path(uri[len("sqlite:///") :].split("?", 1)[0])
    return (db_path.parent / "mlartifacts").as_uri()


def experiment_name() -> str:
    """The project's single MLflow experiment: ``cola`` unless ``COLA_MLFLOW_EXPERIMENT`` says otherwise."""
    return os.environ.get("COLA_MLFLOW_EXPERIMENT", "").strip() or "cola"


# --------------------------------------------------------------------------------------------- identity


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` (the baseline commit inside an exp copy), or ``"unknown"``."""
    return _git("rev-parse", "HEAD", cwd=Path(cwd) if cwd else None) or "unknown"


def dvc_exp_name() -> str:
    """The DVC experiment name (DVC exports ``DVC_EXP_NAME`` under ``dvc exp run``), else ``"workspace"``."""
    return os.environ.get("DVC_EXP_NAME", "").strip() or "workspace"


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """``(comm, ppid, starttime)`` from /proc/<pid>/stat; comm may hold spaces and parens, so split at the last ')'."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
        comm = data[data.index("(") + 1 : data.rindex(")")]
        fields = data[data.rindex(")") + 2 :].split()
        return comm, int(fields[1]), int(fields[19])  # fields 4 (ppid) and 22 (starttime) of proc(5)
    except (OSError, ValueError, IndexError):
        return None


def _looks_like_dvc(comm: str, argv: list[str]) -> bool:
    names = [os.path.basename(a) for a in argv[:3]]
    if comm == "dvc" or (names and names[0] == "dvc"):
        return True
    # `python /venv/bin/dvc ...` or `python -m dvc ...`
    return (
        bool(names)
        and names[0].startswith("python")
        and (names[1:2] == ["dvc"] or argv[1:3] == ["-m", "dvc"])
    )


def _dvc_ancestor(start: int | None = None) -> tuple[int, int] | None:
    """``(pid, starttime)`` of the nearest ``dvc`` process above us, or None (not run by DVC, or no /proc)."""
    pid = os.getppid() if start is None else start
    for _ in range(64):  # bounded: a corrupted parent chain must not loop forever
        if pid <= 1:
            return None
        stat = _proc_stat(pid)
        if stat is None:
            return None
        comm, ppid, starttime = stat
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            argv = []
        if _looks_like_dvc(comm, argv):
            return pid, starttime
        pid = ppid
    return None


def _process_start_ms(starttime_ticks: int) -> int | None:
    """Wall-clock start (ms) of a process from its /proc starttime, via the boot time in /proc/stat."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int((int(line.split()[1]) + starttime_ticks / os.sysconf("SC_CLK_TCK")) * 1000)
    except (OSError, ValueError):
        pass
    return None


def _pipeline_identity() -> tuple[str, int | None]:
    """``(pipeline id, earliest plausible parent start in ms or None)``; see :func:`pipeline_id`."""
    env = os.environ.get("COLA_PIPELINE_ID", "").strip()
    if env:
        return env, None
    found = _dvc_ancestor()
    if found is None:
        return uuid.uuid4().hex, None
    return f"{found[0]}-{found[1]}", _process_start_ms(found[1])


def pipeline_id() -> str:
    """Id shared by the stages of one ``dvc repro``/``dvc exp run``: ``COLA_PIPELINE_ID``, else
    ``<pid>-<starttime>`` of the ``dvc`` ancestor process (unique while the machine is up), else a new uuid."""
    return _pipeline_identity()[0]


# --------------------------------------------------------------------------------------------- metrics file


def _number(key: str, value: Any) -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if hasattr(value, "item"):  # numpy / torch 0-d values
        return _number(key, value.item())
    raise TypeError(f"metric {key!r} must be a number (got {type(value).__name__})")


def write_metrics_json(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write flat numeric ``metrics`` atomically (temp file + rename), so DVC never reads half a file.

    Non-finite values become ``null``: JSON has no NaN and ``dvc metrics`` would fail to parse it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {}
    for key, value in metrics.items():
        num = _number(key, value)
        data[key] = num if math.isfinite(num) else None
    return atomic_write_json(path, data, indent=2, allow_nan=False)


def _clean_key(key: str) -> str:
    """MLflow metric/param names allow only ``[/\\w.\\- :]`` (``evaluate@math500`` would be rejected)."""
    cleaned = "".join(c if c.isalnum() or c in "/_.- :" else "_" for c in str(key)).strip("/")
    return cleaned.replace("//", "/") or "_"


def _short(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (SQLAlchemy errors append the whole SQL statement)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # SQLAlchemy sometimes leads with "(raised as a result of Query-invoked autoflush; ...)".
    lines = [line for line in lines if not line.startswith("(raised as a result")] or lines
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------- StageRun


class StageRun:
    """One MLflow run for one stage execution, plus the stage's DVC metrics file.

    Args:
        stage: stage name (``latent``, ``evaluate@math500``); tag ``stage`` and the run name.
        params: the stage's effective config (dataclass or mapping); logged flattened as MLflow params.
        profile: the scale profile (``tiny``, ...); defaults to ``COLA_PROFILE`` or ``"unknown"``.
        metrics_path: where :meth:`summary` is written on success (DVC metrics); None to skip.
        run_name: MLflow run name (default: the stage name).
        tags: extra tags for the stage run.
        flush_interval: seconds between step-metric writes; calls in between are buffered (cheap).
    """

    def __init__(
        self,
        stage: str,
        params: Any = None,
        profile: str | None = None,
        metrics_path: str | Path | None = None,
        *,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        flush_interval: float = 2.0,
    ) -> None:
        self.stage = stage
        self.params = flatten(params) if params is not None else {}
        self.profile = profile or os.environ.get("COLA_PROFILE") or "unknown"
        self.metrics_path = Path(metrics_path) if metrics_path is not None else None
        self.run_name = run_name or stage
        self.extra_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.flush_interval = flush_interval
        self.run_id: str | None = None
        self.parent_run_id: str | None = None
        self.pipeline_id: str | None = None
        self.experiment_id: str | None = None
        self.client: Any = None  # mlflow.MlflowClient once started
        self.enabled = os.environ.get("COLA_TRACKING", "").strip().lower() not in {"0", "off", "false", "no"}
        self.warning: str | None = None  # the warning printed when tracking failed, for callers and tests
        self._summary: dict[str, int | float] = {}
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
        except BaseException:
            status = "FAILED"
            raise
        finally:
            if self.enabled:
                self._guard(self._finish, status, wall, exc)
            else:
                self._recover(status)
        return False  # re-raise the body's exception

    def _start(self) -> None:
        from mlflow import MlflowClient  # lazy: importing mlflow costs ~1 s and must not break the stage

        uri = tracking_uri()
        if uri.startswith(("http://", "https://")):
            _check_server(uri)
        client = self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = _experiment_id(client, experiment_name(), _artifact_location(uri))
        self.pipeline_id, not_before = _pipeline_identity()
        common = {
            "git_commit": git_commit(),
            "dvc_exp": dvc_exp_name(),
            "profile": self.profile,
            "pipeline_id": self.pipeline_id,
        }
        common["mlflow.source.git.commit"] = common["git_commit"]
        self.parent_run_id = _pipeline_parent(
            client, self.experiment_id, self.pipeline_id, common, not_before
        )
        tags = {**common, RUN_TYPE_TAG: "stage", "stage": self.stage, PARENT_TAG: self.parent_run_id}
        if os.environ.get("DVC_STAGE"):
            tags["dvc_stage"] = os.environ["DVC_STAGE"]
        tags.update(self.extra_tags)
        self.run_id = client.create_run(self.experiment_id, run_name=self.run_name, tags=tags).info.run_id
        self._log_params(self.params)
        client.update_run(self.parent_run_id, status="RUNNING")

    def _finish(self, status: str, wall: float, exc: BaseException | None) -> None:
        if self.run_id is None:
            return
        final = {**self._summary, "wall_clock_seconds": wall}
        self._queue(final, self._last_step)
        self._flush()
        if exc is not None:
            self.client.set_tag(self.run_id, "cola.error", _short(exc, 500))
        self.client.set_terminated(self.run_id, status)
        # Headline numbers on the parent too, so pipelines compare side by side in the UI.
        self._log_batch(
            self.parent_run_id,
            metrics=self._metric_entities(
                {f"{self.stage}/{k}": v for k, v in final.items()}, self._last_step
            ),
        )
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
                f"metrics written to {where} only"
            )
            print(self.warning, file=sys.stderr, flush=True)
            return None

    # ----------------------------------------------------------------------------- logging API

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log step metrics (``None`` values are skipped). Buffered; written every ``flush_interval`` s."""
        # Validate even when tracking is off, so a bad value fails the same way with or without MLflow.
        values = {k: float(_number(k, v)) for k, v in metrics.items() if v is not None}
        self._last_step = max(self._last_step, int(step))
        if not self.enabled or self.run_id is None:
            return
        self._queue(values, int(step))
        if (
            len(self._buffer) >= _MAX_METRICS_PER_BATCH
            or time.monotonic() - self._last_flush >= self.flush_interval
        ):
            self._call(self._flush)

    def log_params(self, params: Any) -> None:
        """Log more params (e.g. derived sizes). MLflow params are write-once: re-logging a key must not change it."""
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
        """Record a DVC output (e.g. model weights) by pointer: path and size as tags, no copy."""
        path = Path(path)
        files = (
            [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path] if path.exists() else []
        )
        label = _clean_key(name or path.name)
        self.set_tags(
            {f"output.{label}.path": str(path), f"output.{label}.bytes": sum(f.stat().st_size for f in files)}
        )

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Merge final headline metrics (flat keys, numbers): written to ``metrics_path`` and logged on exit."""
        for key, value in metrics.items():
            self._summary[str(key)] = _number(str(key), value)

    # ----------------------------------------------------------------------------- internals

    def _metric_entities(self, metrics: Mapping[str, Any], step: int) -> list[Any]:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        return [Metric(_clean_key(k), float(_number(k, v)), now, step) for k, v in metrics.items()]

    def _queue(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.run_id is not None:
            self._buffer.extend(self._metric_entities(metrics, step))

    def _flush(self) -> None:
        self._last_flush = time.monotonic()
        buffer, self._buffer = self._buffer, []
        self._log_batch(self.run_id, metrics=buffer)

    def _log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        entities = [Param(_clean_key(k), str(v)[:_MAX_PARAM_LEN]) for k, v in params.items()]
        self._log_batch(self.run_id, params=entities)

    def _log_batch(
        self,
        run_id: str | None,
        metrics: list | None = None,
        params: list | None = None,
        tags: list | None = None,
    ) -> None:
        """log_batch in chunks that respect MLflow's per-call limits."""
        if run_id is None:
            return
        for i in range(0, len(metrics or []), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + _MAX_METRICS_PER_BATCH])
        for entities, kind in ((params, "params"), (tags, "tags")):
            for i in range(0, len(entities or []), _MAX_PARAMS_PER_BATCH):
                self.client.log_batch(run_id, **{kind: entities[i : i + _MAX_PARAMS_PER_BATCH]})


def _tracking_uri_safe() -> str:
    """The tracking URI for messages, without raising (repo-root detection runs git)."""
    try:
        return tracking_uri()
    except Exception:  # noqa: BLE001
        return os.environ.get("MLFLOW_TRACKING_URI", "<default>")


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's SQL-store logger, which prints a full traceback for every database error (and
    schema-creation chatter) before raising; we report the failure ourselves in one line."""
    logger = logging.getLogger("mlflow.store.db.utils")
    previous, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = previous


def _tag_entities(tags: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(str(k), str(v)[:_MAX_PARAM_LEN]) for k, v in tags.items()]


def _check_server(uri: str) -> None:
    """Fail fast on a dead server: MLflow's HTTP client retries for ~4 minutes by default."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=3).close()
    except urllib.error.HTTPError:
        pass  # the server answered (auth, proxies without /health): reachable
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"cannot reach {uri}: {reason}") from None
    # Mid-run outages should cost seconds, not minutes; users who set these keep their values.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def _experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:
            # Another stage process created it first (mlflow#4123): use theirs.
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment '{name}' is deleted: restore it or set COLA_MLFLOW_EXPERIMENT"
        )
    return exp.experiment_id


def _pipeline_parent(
    client: Any, experiment_id: str, pid: str, tags: Mapping[str, str], not_before: int | None = None
) -> str:
    """Find or create the parent run of pipeline execution ``pid`` (started at or after ``not_before`` ms)."""
    quoted = pid.replace("'", "_").replace('"', "_")  # the filter grammar has no escapes
    query = f"tags.`{RUN_TYPE_TAG}` = 'pipeline' AND tags.pipeline_id = '{quoted}'"
    if not_before is not None:
        # pid-starttime can repeat after a reboot; a parent older than the dvc process is someone else's.
        query += f" AND attributes.start_time >= {not_before - 5000}"
    runs = client.search_runs(
        [experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"]
    )
    if runs:
        return runs[0].info.run_id
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    run = client.create_run(
        experiment_id,
        run_name=f"pipeline {tags.get('dvc_exp', 'workspace')} {stamp}",
        tags={**tags, RUN_TYPE_TAG: "pipeline", "pipeline_id": pid},
    )
    return run.info.run_id


# --------------------------------------------------------------------------------------------- queries


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

    Each item: ``run_id, pipeline_id, name, status, start_time, dvc_exp, git_commit, profile, metrics`` and
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
            "metrics": dict(p.data.metrics),
            "stages": stages[p.info.run_id],
        }
        for p in parents
    ]
