"""A tracking server that goes down mid-stage, then comes back: nothing is lost, and `cola track sync`
replays the missing runs into it, idempotently. A real `mlflow server` process, real stage runs, a real stage
script."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cola.cli import app
from cola.config.profiles import merged_profile
from cola.tracking import StageRun

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


class Server:
    """`mlflow server` on a free local port over a SQLite store that outlives restarts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'store.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        self.process = subprocess.Popen(
            cmd, cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.uri + "/health", timeout=1).close()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture
def server(tmp_path, monkeypatch):
    server = Server(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("COLA_OUTBOX", str(tmp_path / "outbox"))
    monkeypatch.setenv("COLA_PIPELINE_ID", "outage-test")
    monkeypatch.delenv("COLA_TRACKING", raising=False)
    monkeypatch.chdir(tmp_path)
    server.start()
    yield server
    server.stop()


def test_an_outage_loses_nothing_and_sync_replays_it_once(server, tmp_path, capfd):
    import mlflow

    # 1. A stage run whose server stops half-way: it finishes, writes its metrics, warns once.
    with StageRun(
        "latent", params={"lr": 1e-3, "steps": 6}, metrics_path="metrics/latent.json", flush_interval=0
    ) as run:
        for step in (1, 2, 3):
            run.log_metrics({"loss": 1.0 / step}, step)
        server.stop()
        for step in (4, 5, 6):
            run.log_metrics({"loss": 1.0 / step}, step)
        run.summary({"val_loss": 0.25})
        model = tmp_path / "models" / "latent"
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")
        run.log_model(model, attach_up_to_mb=1, registry_name="cola-latent")  # kept for the sync too
    assert json.loads((tmp_path / "metrics" / "latent.json").read_text())["val_loss"] == 0.25
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "`cola track sync` replays the run" in warnings[0], warnings
    partial_id = run.run_id
    assert partial_id is not None  # created before the outage: the replay must complete it, not duplicate it

    # 2. A whole stage script while the server is down: its outputs and metrics are written, one warning.
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(merged_profile("smoke", REPO / "configs" / "profiles"), sort_keys=False))
    env = {**os.environ, "COLA_PARAMS": str(params)}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "stages" / "prepare.py"),
            "--out",
            "data",
            "--metrics",
            "metrics/prepare.json",
            "--headline",
            "metrics/headline/prepare.json",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "data" / "tasks" / "test" / "arith.jsonl").is_file()
    assert json.loads((tmp_path / "metrics" / "prepare.json").read_text())["arith_test"] == 30
    assert [line for line in result.stderr.splitlines() if line.startswith("warning:")].__len__() == 1
    assert len(list((tmp_path / "outbox").glob("*.json"))) == 2

    # 3. The server is back: one sync puts both runs in, complete; a second adds nothing.
    server.start()
    runner = CliRunner()
    synced = runner.invoke(app, ["track", "sync"])
    assert synced.exit_code == 0, synced.output
    assert "synced 2 run(s)" in synced.output and "1 created, 1 completed" in synced.output
    client = mlflow.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("cola").experiment_id

    def snapshot():
        runs = client.search_runs([experiment])
        return {
            r.info.run_id: (
                r.info.status,
                dict(r.data.params),
                dict(r.data.metrics),
                len(client.get_metric_history(r.info.run_id, "loss")),
            )
            for r in runs
        }

    before = snapshot()
    stages = {
        r.data.tags.get("stage"): r
        for r in client.search_runs([experiment], "tags.`cola.run_type` = 'stage'")
    }
    assert set(stages) == {"latent", "prepare"}
    latent = stages["latent"]
    assert latent.info.run_id == partial_id and latent.info.status == "FINISHED"
    assert latent.data.params == {"lr": "0.001", "steps": "6"} and latent.data.metrics["val_loss"] == 0.25
    history = sorted((m.step, m.value) for m in client.get_metric_history(partial_id, "loss"))
    assert [step for step, _ in history if step <= 6] == [1, 2, 3, 4, 5, 6]  # each step once, none lost
    tags = latent.data.tags
    assert (tags["model.stored"], tags["model.registered"]) == ("files", "models:/cola-latent/1")
    assert [f.path for f in client.list_artifacts(partial_id, "model")] == ["model/config.json"]
    prepare = stages["prepare"]
    assert prepare.info.status == "FINISHED" and prepare.data.metrics["arith_test"] == 30
    assert prepare.data.params["prepare.n_test"] == "30"
    assert prepare.data.tags["mlflow.parentRunId"] == latent.data.tags["mlflow.parentRunId"]  # one pipeline

    again = runner.invoke(app, ["track", "sync"])
    assert again.exit_code == 0 and "nothing to sync" in again.output
    assert snapshot() == before
