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

Modules: `location` (repo root, tracking URI, experiment), `identity` (commit, DVC experiment, pipeline id,
the nesting tags), `metrics_file` (the DVC metrics JSON), `failures` (one-line, fast, quiet failures),
`stage_run` (`StageRun`), `queries` (`recent_pipeline_runs`).
"""

from __future__ import annotations

from cola.tracking.identity import PARENT_TAG, RUN_TYPE_TAG, dvc_exp_name, git_commit, pipeline_id
from cola.tracking.location import experiment_name, repo_root, tracking_uri
from cola.tracking.metrics_file import write_metrics_json
from cola.tracking.queries import recent_pipeline_runs
from cola.tracking.stage_run import StageRun

__all__ = [
    "PARENT_TAG",
    "RUN_TYPE_TAG",
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
