"""Parallel experiments on one embedded SQLite MLflow store: four queued experiments, two at a time.

`dvc exp run --queue` four times, then `dvc queue start --jobs 2`: two stage processes write to the project's
one `mlflow.db` at once. Every experiment finishes, every stage run of every experiment is in MLflow exactly
once with its params and metrics, and the store is intact afterwards.
"""

from __future__ import annotations

import collections
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_pipeline_e2e import make_project, micro_params, run

pytestmark = pytest.mark.slow
SEEDS = (1, 2, 3, 4)


def test_four_queued_experiments_two_at_a_time_all_tracked_once(tmp_path):
    import mlflow

    root = tmp_path / "project"
    root.mkdir()
    env = make_project(root, micro_params())
    run(["dvc", "repro", "base"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "baseline"], root, env)
    for seed in SEEDS:  # each experiment re-runs base and latent: two training stages per worker
        run(["dvc", "exp", "run", "--queue", "-S", f"base.seed={seed}", "latent"], root, env)
    try:
        run(["dvc", "queue", "start", "--jobs", "2"], root, env)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = run(["dvc", "queue", "status"], root, env).stdout
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(2)
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=root, env=env, capture_output=True,
                       timeout=120)
    rows = [line.split() for line in status.splitlines()
            if line[:1].isalnum() and not line.startswith(("Task", "Worker"))]
    assert len(rows) == len(SEEDS) and all(row[-1] == "Success" for row in rows), status

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("cola").experiment_id])
    stage_runs = [r for r in runs if r.data.tags.get("cola.run_type") == "stage"]
    experiments = {r.data.tags["dvc_exp"] for r in stage_runs} - {"workspace"}
    assert len(experiments) == len(SEEDS)
    count = collections.Counter((r.data.tags["stage"], r.data.tags["dvc_exp"]) for r in stage_runs)
    assert all(n == 1 for n in count.values()), count  # nothing logged twice
    for name in experiments:
        assert count[("base", name)] == 1 and count[("latent", name)] == 1, (name, count)
    seeds = sorted(int(r.data.params["base.seed"]) for r in stage_runs
                   if r.data.tags["stage"] == "base" and r.data.tags["dvc_exp"] != "workspace")
    assert seeds == list(SEEDS)
    for r in stage_runs:
        assert r.info.status == "FINISHED" and r.data.params and r.data.metrics, r.data.tags["stage"]
        assert "wall_clock_seconds" in r.data.metrics
    latent = [r for r in stage_runs if r.data.tags["stage"] == "latent"]
    assert all("wm_idm_over_base" in r.data.metrics
               and client.get_metric_history(r.info.run_id, "latent_loss") for r in latent)
    parents = [r for r in runs if r.data.tags.get("cola.run_type") == "pipeline"]
    assert len(parents) == len(SEEDS) + 1  # one per experiment, one for the workspace's repro
    assert not list((root / ".cola" / "outbox").glob("*.json"))  # no stage lost its store
    with sqlite3.connect(Path(env["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
