"""End to end: the real DVC pipeline with micro params in a temporary git repository, tracked in MLflow.

The project runs the `smoke` profile (configs/profiles/smoke.yaml: micro budgets, every stage in seconds). The
two DVC tests share one project and run in order. The first runs the DAG up to `evaluate`, then
`dvc exp run -S latent.lr=...` of it (only `latent` and what depends on it re-run; the new value is logged to
MLflow). The second runs the rest of the DAG, whose report must have every row filled; a second `dvc repro` is
a no-op; `dvc exp run -S rl.lr=...` re-runs only the RL runs, the evaluation (re-scoring only RL models) and
the report. That a latent change leaves the token side of the comparison cached is checked on dvc.yaml itself.
Each stage execution costs ~15 s of Python and MLflow start-up on 2 cores, so the tests run as few as show it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cola.config.profiles import merged_profile

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def micro_params() -> dict:
    """The smoke profile: the defaults with configs/profiles/smoke.yaml on top."""
    return merged_profile("smoke", REPO / "configs" / "profiles")


RL_RUNS = ("cola-math", "cola-countdown", "token-math", "token-countdown")
MODELS = ("base", "sft", "bc", "fta", *RL_RUNS)


def ran_stages(stdout: str) -> set[str]:
    return {line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")}


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, \
        f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def make_project(root: Path, params: dict) -> dict:
    """A git + DVC project at `root` with this checkout's code and `params`; returns the env to run it in."""
    for name in ("cola", "stages", "configs", "evals"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(root), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "COLA_OUTBOX": str(root / ".cola" / "outbox"),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("COLA_TRACKING", None)
    run(["git", "init", "-q"], root, env)
    run(["dvc", "init", "-q"], root, env)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")  # the offline `dvc plots` template
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n__pycache__/\n.cola/\n")
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "micro pipeline"], root, env)
    return env


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("project")
    return root, make_project(root, micro_params())


CORE_STAGES = ("prepare", "base", "latent", "bc", "evaluate")


def mlflow_runs(env: dict, stage: str):
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("cola")
    return client, experiment, client.search_runs([experiment.experiment_id], f"tags.stage = '{stage}'")


def test_core_dag_and_a_latent_experiment(project):
    """The DAG up to `evaluate`, then `dvc exp run -S latent.lr=3e-4` of it, then the MLflow runs
    (≤ 3 min)."""
    root, env = project
    first = run(["dvc", "repro", "evaluate"], root, env)
    assert ran_stages(first.stdout) == set(CORE_STAGES), first.stdout
    for stage in CORE_STAGES:
        metrics = json.loads((root / "metrics" / f"{stage}.json").read_text())
        assert metrics["wall_clock_seconds"] > 0, stage
    evaluation = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert 0 <= evaluation["cola_arith_acc"] <= 1 and "qd_latent_random" in evaluation
    assert (root / "models" / "bc" / "config.json").is_file()

    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "baseline run"], root, env)
    exp = run(["dvc", "exp", "run", "-S", "latent.lr=3e-4", "evaluate"], root, env)
    assert ran_stages(exp.stdout) == {"latent", "bc", "evaluate"}, exp.stdout

    show = run(["dvc", "exp", "show", "--json"], root, env)
    assert "cola_minus_base_arith" in show.stdout and "wm_idm_over_base" in show.stdout

    client, experiment, runs = mlflow_runs(env, "latent")
    assert sorted(r.data.params["latent.lr"] for r in runs) == ["0.0003", "0.002"]
    latest = max(runs, key=lambda r: r.info.start_time)
    assert latest.data.tags["dvc_exp"] != "workspace" and latest.data.tags["profile"] == "smoke"
    assert "mlflow.parentRunId" in latest.data.tags
    siblings = client.search_runs([experiment.experiment_id],
                                  f"tags.pipeline_id = '{latest.data.tags['pipeline_id']}'")
    # One run per stage execution, nested under the pipeline execution's parent run (which has no stage).
    assert sorted(r.data.tags.get("stage", "") for r in siblings) == ["", "bc", "evaluate", "latent"]
    parent = next(r for r in siblings if "stage" not in r.data.tags)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in siblings if r != parent)


def test_full_dag_fills_the_report_and_an_rl_experiment_reruns_only_rl(project):
    """The rest of the DAG (fine-tuning, the four RL runs, their evaluation, the report); a no-op repro;
    `dvc exp run -S rl.lr=1e-6` re-runs exactly the RL runs, the evaluation (re-scoring only RL models) and
    the report."""
    root, env = project
    run(["dvc", "repro"], root, env)
    stages = ("prepare", "base", "latent", "bc", "evaluate", "fta", "sft", "rl_eval", "math500", "report")
    stage_metrics = [f"{stage}.json" for stage in stages]
    stage_metrics += [f"{kind}/{run_}.json" for run_ in RL_RUNS for kind in ("rl", "qlearn")]
    stage_metrics += [f"mcts/{task}.json" for task in ("math", "countdown")]
    stage_metrics += ["agent_data.json", "agent_eval.json"]
    stage_metrics += [f"agent_{kind}/{method}.json" for kind in ("ft", "rl") for method in ("cola", "token")]
    for name in stage_metrics:
        metrics = json.loads((root / "metrics" / name).read_text())
        assert metrics["wall_clock_seconds"] > 0, name
    for name in ("bc", "fta", "sft", *[f"{kind}/{r}" for r in RL_RUNS for kind in ("rl", "qnet")]):
        assert (root / "models" / name / "config.json").is_file(), name
    rl = json.loads((root / "metrics" / "rl" / "cola-math.json").read_text())
    assert rl["steps"] == 4 and {"reward_start", "reward_end", "kl", "entropy", "seconds_per_step"} <= set(rl)
    curve = json.loads((root / "plots" / "rl" / "token-countdown.json").read_text())
    assert [r["step"] for r in curve] == [2, 4]
    assert {"reward_mean", "kl", "tokens_per_second"} <= set(curve[0])
    assert not any(list((root / "checkpoints" / "rl" / r).iterdir()) for r in RL_RUNS)  # emptied once done

    # One `dvc repro` fills every row of the report, each accuracy with its standard error.
    report = (root / "report" / "report.md").read_text()
    headline = json.loads((root / "metrics" / "report.json").read_text())
    assert "Incomplete" not in report and all((root / "report" / f).is_file()
                                              for f in ("accuracy.png", "rl_curves.png", "rl_deltas.png",
                                                        "gain_vs_retention.png"))
    for model in MODELS:
        assert 0 <= headline[f"{model}/arith_acc"] <= 1 and f"{model}/spell_acc" in headline, model
    table = report.split("## 1.")[1].split("## 2.")[0]
    assert table.count(" ± ") >= len(MODELS) * 5 and "—" not in table, table
    search = report.split("## 7.")[1]  # MCTS-Q against best-of-n, both action spaces, both tasks
    assert "not run" not in search and search.count("MCTS-Q |") == 8 and search.count("best-of-n (n = ") >= 6
    assert {"cola_mcts_minus_bon_oracle/math", "token_mcts_minus_bon_oracle/countdown"} <= set(headline)
    assert json.loads((root / "metrics" / "headline" / "report.json").read_text()).keys() >= {
        "cola_mcts_minus_bon_oracle/math", "cola_mcts_minus_bon_oracle/countdown"}
    assert "Off in this profile (`math500.enabled: false`)" in report.split("## 8. MATH-500")[1]
    agents = report.split("## 9. Agent tasks (TextWorld)")[1]  # every agent model on seen and unseen games
    assert "Not run" not in agents and agents.count(" ± ") >= 14 and "CoLA-RL (agent)" in agents
    # the rates fine-tuning must rise above: a seeded random admissible agent and the models before it
    assert all(f"| {label} | " in agents for label in ("Random admissible agent", "Base (token, before SFT)",
                                                        "CoLA BC (before FTA)"))
    assert "agent/cola_minus_token/unseen_success" in headline
    budget = json.loads((root / "plots" / "mcts" / "math.json").read_text())
    assert [row["rounds"] for row in budget] == [1, 2] and "cola_bon_oracle_passes" in budget[0]

    second = run(["dvc", "repro"], root, env)
    assert "didn't change" in second.stdout or "up to date" in second.stdout, second.stdout
    assert "Running stage" not in second.stdout

    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "full run"], root, env)
    exp = run(["dvc", "exp", "run", "-S", "rl.lr=1e-6"], root, env)
    # the Q-networks learn from the RL models, and the search runs on both
    rerun = {*[f"{stage}@{r}" for r in RL_RUNS for stage in ("rl", "qlearn")], "mcts@math", "mcts@countdown",
             "rl_eval", "math500", "agent_rl@cola", "agent_rl@token", "agent_eval", "report"}
    assert ran_stages(exp.stdout) == rerun, exp.stdout
    reused = json.loads((root / "metrics" / "rl_eval.json").read_text())
    assert {m for m in MODELS if reused[f"{m}/reused"]} == {"base", "sft", "bc", "fta"}
    client, _, runs = mlflow_runs(env, "rl@token-math")
    assert sorted(r.data.params["rl.lr"] for r in runs) == ["0.0001", "1e-06"]
    latest = max(runs, key=lambda r: r.info.start_time)
    assert latest.data.tags["method"] == "token" and latest.data.tags["task"] == "math"
    history = client.get_metric_history(latest.info.run_id, "reward_mean")
    assert sorted({m.step for m in history}) == [2, 4]  # (the final value is logged again at the end)
    curves = {"kl", "entropy", "response_length", "tokens_per_second", "seconds_per_step"}
    assert curves <= set(latest.data.metrics)

    # Comparing the two pipeline executions in MLflow shows what changed and what it did.
    experiment = client.get_experiment_by_name("cola")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parents = client.search_runs([experiment.experiment_id], "tags.`cola.run_type` = 'pipeline'",
                                 order_by=["attributes.start_time DESC"], max_results=2)
    exp_parent, repro_parent = parents
    changed = {k for k in exp_parent.data.params.keys() | repro_parent.data.params.keys()
               if exp_parent.data.params.get(k) != repro_parent.data.params.get(k)}
    assert changed == {"rl.lr"} and len(exp_parent.data.params) > 150
    for parent in parents:  # every stage's numbers, those DVC took from cache included
        assert {"prepare/arith_train", "latent/wm_idm_over_base", "rl_cola-math/reward_end",
                "report/cola_minus_token/math"} <= set(parent.data.metrics), sorted(parent.data.metrics)[:20]
    assert exp_parent.data.metrics["prepare/arith_train"] == repro_parent.data.metrics["prepare/arith_train"]
    token, cola = (mlflow_runs(env, f"rl@{name}")[2][0] for name in ("token-math", "cola-math"))
    assert (token.data.params["rl.method"], cola.data.params["rl.method"]) == ("token", "cola")
    assert token.data.tags["mlflow.source.name"] == "stages/rl.py"

    # Each model is on its stage run (the smoke models are small: as files), with the md5 dvc.lock records,
    # and the BC and RL models are registered under stable names, one version per run.
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    bc_run = mlflow_runs(env, "bc")[2][0]
    bc_md5 = next(o["md5"] for o in lock["bc"]["outs"] if o["path"] == "models/bc")
    assert (bc_run.data.tags["model.stored"], bc_run.data.tags["model.md5"]) == ("files", bc_md5)
    assert "model/config.json" in {f.path for f in client.list_artifacts(bc_run.info.run_id, "model")}
    versions = {name: len(client.search_model_versions(f"name = '{name}'"))
                for name in ("cola-bc", "cola-rl-cola-math", "cola-rl-token-countdown")}
    assert versions == {"cola-bc": 2, "cola-rl-cola-math": 2, "cola-rl-token-countdown": 2}, versions

    # DVC's views fit a screen: `dvc metrics show` reads only the small headline files (the detail stays
    # in metrics/<stage>.json), `--only-changed` keeps the changed param and the metrics it moved, and
    # `dvc plots diff` overlays both experiments' curves in an HTML page that needs no network.
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], root, env).stdout)
    files = {name for rev in shown.values() for name in rev["data"]}
    assert files and all(name.startswith("metrics/headline/") for name in files), files
    headline_count = sum(len(json.loads((root / name).read_text())) for name in files)
    detail_count = sum(len(json.loads(path.read_text())) for path in (root / "metrics").glob("*.json"))
    assert 10 <= headline_count <= 40 < detail_count, (headline_count, detail_count)
    changed = run(["dvc", "exp", "show", "--only-changed", "--csv"], root, env).stdout
    header = changed.splitlines()[0].split(",")
    assert "rl.lr" in header and "latent.lr" not in header and len(header) <= 30, header
    # By default DVC adds every key of params.yaml and every dependency's hash; the metrics are the headline.
    full = run(["dvc", "exp", "show", "--csv"], root, env).stdout.splitlines()[0].split(",")
    metric_columns = full[full.index("parent") + 1:full.index("profile")]
    assert "metrics/headline/rl/cola-math.json:reward_end" in metric_columns and len(metric_columns) <= 40
    html = root / "plots_html"
    run(["dvc", "plots", "diff", "HEAD", "--targets", "plots/rl/cola-math.json", "plots/base_loss.json",
         "-o", str(html)], root, env)
    page = (html / "index.html").read_text()
    assert "cdn." not in page and "https://" not in page.split("<script")[0]
    assert "HEAD" in page and "workspace" in page
    assert "reward_mean" in page and "lm_loss" in page  # both plots rendered (a failed one leaves no spec)


def upstream(stages: dict, name: str) -> set[str]:
    """Every stage whose outputs `name` depends on, transitively (by dvc.yaml's deps and outs)."""
    producers = {}
    for stage, spec in stages.items():
        for out in spec.get("outs", []):
            producers[out if isinstance(out, str) else next(iter(out))] = stage
    found: set[str] = set()
    todo = [name]
    while todo:
        for dep in stages[todo.pop()].get("deps", []):
            for out, producer in producers.items():
                if (dep == out or dep.startswith(out + "/")) and producer not in found:
                    found.add(producer)
                    todo.append(producer)
    return found


def test_the_token_baseline_does_not_depend_on_latent_actions():
    """So `-S latent.lr=...` re-runs only the CoLA side of the comparison (the token side is cached)."""
    from tests.test_architecture import dvc_stages

    stages = dvc_stages()
    assert "latent" not in upstream(stages, "rl@token-math") | upstream(stages, "rl@token-countdown")
    assert "sft" in upstream(stages, "rl@token-math")
    assert {"latent", "bc"} <= upstream(stages, "rl@cola-math")  # and fta, with rl.cola_start: fta
    assert {"latent", "bc", "fta", "sft"} <= upstream(stages, "report")


def test_invalid_params_stop_the_stage_and_change_nothing(project):
    root, env = project
    params = micro_params()
    cases = [("latent", "lrr", 0.1, "latent.lrr is not a known key"),
             ("latent", "steps", "many", "latent.steps must be an integer"),
             ("latent", "lr", -0.001, "latent.lr must be > 0")]
    before = {p: p.read_bytes() for p in (root / "metrics").glob("*.json")}
    for section, key, value, message in cases:
        bad = copy.deepcopy(params)
        bad[section][key] = value
        (root / "bad.yaml").write_text(yaml.safe_dump(bad))
        env_bad = {**env, "COLA_PARAMS": str(root / "bad.yaml")}
        cmd = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["latent"]["cmd"].split()
        result = subprocess.run([sys.executable, *cmd[1:]], cwd=root, env=env_bad, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.strip().splitlines() if line]
        assert len(lines) == 1 and message in lines[0], result.stderr
    assert {p: p.read_bytes() for p in (root / "metrics").glob("*.json")} == before


@pytest.mark.parametrize("config", ["cpu-2proc.yaml", "fsdp.yaml"])
def test_a_training_stage_launched_on_two_processes_matches_its_single_process_run(project, tmp_path, config):
    """`launch.num_processes: 2` (configs/accelerate/cpu-2proc.yaml: data parallel; fsdp.yaml: the decoder
    layers sharded) makes the `bc` stage re-run itself under `accelerate launch`; it writes the same model
    (within float tolerance) and metrics as the DAG's single-process run, once (the worker process writes
    nothing). DeepSpeed's configs go through the same launcher in tests/test_distributed.py (the stage run
    with deepspeed-zero2/3.yaml was checked by hand: 12-13 s each, like these, but ~45 s inside the suite)."""
    import socket

    from safetensors.torch import load_file

    root, env = project
    params = yaml.safe_load((root / "params.yaml").read_text())  # the params models/bc was trained with
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params["launch"].update(num_processes=2, config_file=f"configs/accelerate/{config}",
                            main_process_port=port)
    params["agent"]["games_per_step"] = 2  # every global batch must split over the 2 processes
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "out"
    paths = {"corpus": root / "data" / "corpus", "latent": root / "models" / "latent", "out": out / "bc",
             "checkpoints": out / "checkpoints", "loss-plot": out / "loss.png",
             "loss-curve": out / "loss.json", "metrics": out / "metrics.json",
             "headline": out / "headline.json"}
    args = [arg for name, path in paths.items() for arg in (f"--{name}", str(path))]
    done = run([sys.executable, "stages/bc.py", *args], root,
               {**env, "COLA_PARAMS": str(tmp_path / "params.yaml"), "COLA_TRACKING": "off"})
    assert "launching 2 processes" in done.stdout
    launched = load_file(str(out / "bc" / "model.safetensors"))
    single = load_file(str(root / "models" / "bc" / "model.safetensors"))
    assert launched.keys() == single.keys()
    for key, weight in single.items():
        torch_close(launched[key], weight, key)
    ours, dags = (json.loads(p.read_text()) for p in (paths["metrics"], root / "metrics" / "bc.json"))
    for key in ("bc_top1", "marginal_over_base", "wm_loss_policy_marginal"):
        assert ours[key] == pytest.approx(dags[key], abs=1e-4), key


def torch_close(a, b, name: str) -> None:
    import torch

    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)
