"""StageRun against a real SQLite MLflow store (no mocks); tracking failures never lose the metrics file."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from mlflow import MlflowClient

from cola.tracking import (
    StageRun,
    experiment_name,
    pipeline_id,
    recent_pipeline_runs,
    repo_root,
    tracking_uri,
    write_metrics_json,
)

# MLflow's SQL store triggers a SQLAlchemy deprecation warning that is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")

_ENV = ("COLA_PIPELINE_ID", "COLA_TRACKING", "COLA_PROFILE", "DVC_EXP_NAME", "DVC_ROOT", "DVC_STAGE")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    # One database for the module: creating MLflow's schema costs ~1.5 s, so tests share it and
    # isolate themselves by experiment name instead.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def client(
    store: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest
) -> MlflowClient:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("COLA_MLFLOW_EXPERIMENT", f"test-{request.node.name}")
    monkeypatch.chdir(tmp_path)
    return MlflowClient(store)


def test_stage_run_logs_params_metrics_tags_figure_and_writes_json(
    client: MlflowClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "exp-lr3e4")
    params = {"lr": 3e-4, "layers": [2, 2], "optim": {"beta": 0.9}}
    with StageRun(
        "latent", params=params, profile="tiny", metrics_path="metrics/latent.json", flush_interval=0
    ) as run:
        for step in range(5):
            run.log_metrics({"train/loss": 1.0 / (step + 1), "kl": None}, step=step)
        fig = Figure()
        fig.add_subplot().plot([0, 1], [1, 0])
        run.log_figure(fig, "plots/loss.png", save_to="plots/loss.png")
        run.log_dict({"vocab": 64}, "config/extra.json")
        run.set_tags({"note": "smoke"}, seed=1)
        run.summary({"loss": 0.2, "usage": 7, "ok": True})

    data = json.loads((tmp_path / "metrics/latent.json").read_text())
    assert data["loss"] == 0.2 and data["usage"] == 7 and data["ok"] == 1
    assert data["wall_clock_seconds"] >= 0 and list(data)[-1] == "wall_clock_seconds"
    assert (tmp_path / "plots/loss.png").stat().st_size > 0

    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "latent"
    assert got.data.params == {"lr": "0.0003", "layers": "[2, 2]", "optim.beta": "0.9"}
    assert got.data.metrics["loss"] == 0.2 and "wall_clock_seconds" in got.data.metrics
    assert [m.step for m in client.get_metric_history(run.run_id, "train/loss")] == [0, 1, 2, 3, 4]
    tags = got.data.tags
    assert tags["stage"] == "latent" and tags["profile"] == "tiny" and tags["dvc_exp"] == "exp-lr3e4"
    assert tags["git_commit"] and tags["pipeline_id"] == run.pipeline_id
    assert tags["note"] == "smoke" and tags["seed"] == "1"
    assert tags["mlflow.parentRunId"] == run.parent_run_id
    artifacts = {a.path for a in client.list_artifacts(run.run_id, "plots")}
    assert artifacts == {"plots/loss.png"}
    assert client.list_artifacts(run.run_id, "config")[0].path == "config/extra.json"

    parent = client.get_run(run.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["cola.run_type"] == "pipeline"
    assert parent.data.metrics["latent/loss"] == 0.2


def test_runs_with_the_same_pipeline_id_share_one_parent(
    client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLA_PIPELINE_ID", "pipe-1")
    ids = []
    for stage in ("latent", "bc"):
        with StageRun(stage, params={"seed": 0}, profile="tiny", metrics_path=f"metrics/{stage}.json") as run:
            run.summary({f"{stage}_score": 1.0})
        ids.append(run.parent_run_id)
    assert ids[0] == ids[1]
    monkeypatch.setenv("COLA_PIPELINE_ID", "pipe-2")
    with StageRun("latent", params={"seed": 1}, metrics_path=None) as other:
        pass
    assert other.parent_run_id != ids[0]

    pipelines = recent_pipeline_runs(5)
    assert [p["pipeline_id"] for p in pipelines] == ["pipe-2", "pipe-1"]  # newest first
    assert list(pipelines[1]["stages"]) == ["latent", "bc"]
    assert pipelines[1]["stages"]["bc"]["metrics"]["bc_score"] == 1.0
    assert pipelines[1]["stages"]["latent"]["params"] == {"seed": "0"}
    assert pipelines[1]["metrics"]["bc/bc_score"] == 1.0 and pipelines[1]["status"] == "FINISHED"
    assert len(recent_pipeline_runs(1)) == 1


def test_failing_body_marks_run_failed_and_writes_no_metrics(client: MlflowClient, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="diverged"):
        with StageRun("rl", params={"lr": 1.0}, metrics_path="metrics/rl.json") as run:
            run.log_metrics({"reward": 0.5}, step=1)
            raise RuntimeError("loss diverged")
    got = client.get_run(run.run_id)
    assert got.info.status == "FAILED"
    assert got.data.tags["cola.error"] == "RuntimeError: loss diverged"
    assert client.get_run(run.parent_run_id).info.status == "FAILED"
    assert not (tmp_path / "metrics/rl.json").exists()


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "nosuchscheme://x"])
def test_unavailable_tracking_still_writes_metrics_and_warns_once(
    client: MlflowClient,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    uri: str,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    start = time.monotonic()
    with StageRun("latent", params={"lr": 1e-3}, metrics_path="metrics/latent.json") as run:
        run.log_metrics({"loss": 1.0}, step=0)
        run.log_figure(Figure(), "plots/x.png")
        run.summary({"loss": 0.5})
    assert time.monotonic() - start < 10
    assert json.loads((tmp_path / "metrics/latent.json").read_text())["loss"] == 0.5
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [run.warning]
    assert warnings[0].startswith(f"warning: MLflow tracking unavailable ({uri}")
    tail = ("): metrics written to metrics/latent.json; `cola track sync` replays the run into MLflow "
            "once it is back")
    assert warnings[0].endswith(tail)
    assert run.run_id is None
    # The run is kept for the replay: its params, steps and final metrics.
    record = json.loads((Path(os.environ["COLA_OUTBOX"]) / f"{run.record_id}.json").read_text())
    assert record["params"] == {"lr": 0.001} and record["steps"] == [[0, {"loss": 1.0}]]
    assert record["summary"]["loss"] == 0.5 and record["status"] == "FINISHED"


def test_store_failing_mid_run_warns_once_and_closes_the_runs(
    client: MlflowClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "broken.db"  # its own store, since the test breaks it; a copy skips schema creation
    client.search_experiments()  # make sure the shared store exists
    shutil.copy(client.tracking_uri.removeprefix("sqlite:///"), db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with StageRun("latent", metrics_path="metrics/latent.json", flush_interval=0) as run:
        run.log_metrics({"loss": 1.0}, step=0)
        with sqlite3.connect(db) as con:
            con.execute("DROP TABLE metrics")  # every later metric write now fails
        run.log_metrics({"loss": 0.5}, step=1)
        run.log_metrics({"loss": 0.4}, step=2)  # tracking is off by now: no second warning, no delay
        run.summary({"loss": 0.4})
    assert json.loads((tmp_path / "metrics/latent.json").read_text())["loss"] == 0.4
    err = capfd.readouterr().err
    assert err.count("warning:") == 1 and "no such table: metrics" in err and "Traceback" not in err
    broken = MlflowClient(f"sqlite:///{db}")
    assert broken.get_run(run.run_id).info.status == "FINISHED"  # closed by the best-effort recovery
    assert broken.get_run(run.parent_run_id).info.status == "FINISHED"


def test_tracking_off_is_silent(
    client: MlflowClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLA_TRACKING", "off")
    with StageRun("prepare", metrics_path="metrics/prepare.json") as run:
        run.summary({"n": 3})
    assert run.run_id is None and "warning" not in capfd.readouterr().err
    assert json.loads((tmp_path / "metrics/prepare.json").read_text())["n"] == 3


def test_write_metrics_json_is_atomic_and_strict(tmp_path: Path) -> None:
    path = write_metrics_json(tmp_path / "m/x.json", {"a": float("nan"), "b": 2})
    assert json.loads(path.read_text()) == {"a": None, "b": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]  # no temp file left behind
    with pytest.raises(TypeError, match="'c' must be a number"):
        write_metrics_json(path, {"c": "high"})
    assert json.loads(path.read_text()) == {"a": None, "b": 2}  # old file untouched
    with pytest.raises(TypeError):
        StageRun("x").summary({"c": [1]})


def test_repo_root_inside_dvc_experiment_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _ENV + ("MLFLOW_TRACKING_URI",):
        monkeypatch.delenv(name, raising=False)
    repo = tmp_path / "repo"
    copy = repo / ".dvc/tmp/exps/standalone/tmpa1b2c3/sub"
    copy.mkdir(parents=True)
    assert repo_root(copy) == repo
    monkeypatch.chdir(copy)
    assert tracking_uri() == f"sqlite:///{repo}/mlflow.db"
    # DVC_ROOT is trusted when cwd is not an experiment copy, but an exp-copy DVC_ROOT is mapped back too.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(repo / ".dvc/tmp/exps/tmpzz"))
    assert repo_root() == repo
    monkeypatch.setenv("DVC_ROOT", str(repo))
    assert repo_root() == repo
    # A relative SQLite URI would land inside the temporary copy: it is anchored at the root instead.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    assert tracking_uri() == f"sqlite:///{repo}/mlflow.db"


def test_pipeline_id_comes_from_the_dvc_ancestor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLA_PIPELINE_ID", raising=False)
    assert pipeline_id() != pipeline_id()  # not under dvc: a fresh id each time
    # A process named `dvc` (like DVC running `sh -c <stage cmd>`) that starts two "stages".
    fake = tmp_path / "dvc"
    probe = f"{sys.executable} -c 'from cola.tracking import pipeline_id; print(pipeline_id())'"
    fake.write_text(f"#!/bin/sh\n{probe}\n{probe}\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "COLA_PIPELINE_ID"}
    out = subprocess.run(
        [str(fake)], capture_output=True, text=True, timeout=60, env=env, check=True
    ).stdout.split()
    assert len(out) == 2 and out[0] == out[1] and re.fullmatch(r"\d+-\d+", out[0])
    env["COLA_PIPELINE_ID"] = "given"
    out = subprocess.run(
        [str(fake)], capture_output=True, text=True, timeout=60, env=env, check=True
    ).stdout.split()
    assert out == ["given", "given"]


def test_recent_pipeline_runs_on_a_missing_store_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none.db'}")
    assert recent_pipeline_runs(3) == []
    assert not (tmp_path / "none.db").exists()


def test_a_copied_store_writes_its_artifacts_beside_itself(
    client: MlflowClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """MLflow stores an experiment's artifact folder as an absolute path: a copied project (or mlflow.db)
    would keep writing into the original's folder; the location follows the store instead."""
    original = tmp_path / "original"
    original.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{original / 'mlflow.db'}")
    with StageRun("latent", params={"lr": 1e-3}) as run:
        run.log_dict({"a": 1}, "first.json")
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(original / "mlflow.db", copy / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copy / 'mlflow.db'}")
    with StageRun("latent", params={"lr": 1e-3}) as run:
        run.log_dict({"b": 2}, "second.json")
    assert [p.name for p in (copy / "mlartifacts").rglob("*.json")] == ["second.json"]
    assert [p.name for p in (original / "mlartifacts").rglob("*.json")] == ["first.json"]
    experiment = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}").get_experiment_by_name(experiment_name())
    assert experiment.artifact_location == (copy / "mlartifacts").as_uri()
