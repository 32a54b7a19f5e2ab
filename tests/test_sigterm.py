"""A stage stopped with SIGTERM (`kill`, a scheduler's preemption) leaves no half-written output behind:
the temporary folder it was writing is removed, the output is not created, and the exit code says so."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_pipeline_e2e import make_project, micro_params

pytest.importorskip("textworld")


def test_sigterm_mid_write_removes_the_temporary_output(tmp_path: Path) -> None:
    params = micro_params()
    params["agent"].update(train_games=30)  # tw-make makes a game in seconds: a stage long enough to stop
    env = make_project(tmp_path, params)
    stage = subprocess.Popen([sys.executable, "stages/agent_data.py", "--out", "agent_data", "--metrics",
                              "metrics/agent_data.json", "--headline", "metrics/headline/agent_data.json"],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".agent_data.tmp-*/games/train/*.z8")) and time.monotonic() < deadline:
        assert stage.poll() is None, stage.stderr.read()
        time.sleep(0.1)
    assert list(tmp_path.glob(".agent_data.tmp-*")), "the stage never started writing"
    stage.send_signal(signal.SIGTERM)
    assert stage.wait(timeout=60) == 128 + signal.SIGTERM
    assert not list(tmp_path.glob(".agent_data*")) and not (tmp_path / "agent_data").exists()
    assert not (tmp_path / "metrics" / "agent_data.json").exists()
