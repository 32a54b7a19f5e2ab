"""A killed `dvc repro` and pipeline-level determinism, on real DVC projects with the smoke profile.

Two fresh projects with the same params: one runs `dvc repro bc` straight; the other is killed with SIGKILL
(its whole process group: DVC and the stage process) in the middle of `base`'s training, then runs `dvc repro
bc` again. The second run must start without a stale-lock error, resume `base` from its last checkpoint, and
write the same `metrics/*.json` as the uninterrupted project (timings aside): resumption and determinism at
once. Another seed must give other numbers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_pipeline_e2e import make_project, micro_params, ran_stages, run

pytestmark = pytest.mark.slow
STAGES = ("prepare", "base", "latent", "bc")
TIMING = ("seconds", "tokens_per_second")


def params() -> dict:
    """Smoke, with a base that trains long enough (a few seconds) to be killed after its first checkpoint."""
    p = micro_params()
    p["base"].update(steps=300, checkpoint_every=50, log_every=25)
    return p


def untimed_metrics(root: Path) -> dict[str, dict]:
    out = {}
    for stage in STAGES:
        metrics = json.loads((root / "metrics" / f"{stage}.json").read_text())
        out[stage] = {k: v for k, v in metrics.items() if not any(t in k for t in TIMING)}
    return out


def test_a_killed_repro_resumes_to_the_uninterrupted_result(tmp_path):
    straight = tmp_path / "straight"
    straight.mkdir()
    run(["dvc", "repro", "bc"], straight, make_project(straight, params()))

    killed = tmp_path / "killed"
    killed.mkdir()
    env = make_project(killed, params())
    process = subprocess.Popen(["dvc", "repro", "bc"], cwd=killed, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = killed / "checkpoints" / "base" / "meta.json"
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.is_file() and process.poll() is None, "base finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not (killed / "metrics" / "base.json").exists()  # killed mid-stage: no metrics written

    again = run(["dvc", "repro", "bc"], killed, env)
    assert ran_stages(again.stdout) == {"base", "latent", "bc"}, again.stdout  # prepare had finished
    output = (again.stdout + again.stderr).splitlines()
    resumed = [line for line in output if "base: resuming from step" in line]
    assert resumed and "resuming from step 0" not in resumed[0], again.stdout[-3000:]
    assert untimed_metrics(killed) == untimed_metrics(straight)

    # Another seed changes the numbers: the equality above is not a constant.
    run(["git", "add", "-A"], killed, env)
    run(["git", "commit", "-qm", "resumed run"], killed, env)
    other = run(["dvc", "exp", "run", "-S", "base.seed=1", "base"], killed, env)
    assert ran_stages(other.stdout) == {"base"}
    base = json.loads((killed / "metrics" / "base.json").read_text())
    assert base["val_loss"] != untimed_metrics(straight)["base"]["val_loss"]
