"""The `cola` CLI through typer's CliRunner on real saved tiny model folders and a real SQLite MLflow
store."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cola.cli import app, ui_command
from cola.config import PROFILES, PipelineParams, flatten, load_pipeline_params
from tests.test_harness import NUM_ACTIONS, build_assets

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")
runner = CliRunner()


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_assets(tmp_path_factory.mktemp("cli"))


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [[], ["eval"], ["generate"], ["search"], ["compare"], ["ui"], ["profile"],
                                     ["params"]])
def test_help_everywhere(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_cola_alone_shows_the_help() -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == 0 and "Usage" in result.output and "eval" in result.output


# --------------------------------------------------------------------------------------------- eval


def test_eval_writes_json_with_records(assets: dict, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    args = [
        "eval",
        str(assets["root"] / "cola"),
        "--task",
        "arith",
        "-t",
        "perplexity",
        "--data-dir",
        str(assets["root"] / "data"),
        "--limit",
        "3",
        "--max-new-tokens",
        "4",
        "--no-progress",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "wm_loss_policy_marginal" in result.stdout
    data = json.loads(out.read_text())
    assert data["kind"] == "cola" and data["settings"]["limit"] == 3
    arith = data["results"]["arith"]
    assert arith["n"] == 3 and len(arith["records"]) == 3
    assert {"prompt", "answer", "completion", "correct", "actions"} <= set(arith["records"][0])
    assert len(data["results"]["perplexity"]["usage_histogram"]) == NUM_ACTIONS


def test_eval_base_folder(assets: dict) -> None:
    args = [
        "eval",
        str(assets["root"] / "base"),
        "--task",
        "spell",
        "--data-dir",
        str(assets["root"] / "data"),
        "--limit",
        "2",
        "--max-new-tokens",
        "3",
        "--no-progress",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "base" in result.stdout and "spell" in result.stdout


def test_eval_errors_are_one_line(assets: dict, tmp_path: Path) -> None:
    data = ["--data-dir", str(assets["root"] / "data")]
    line = _one_line_error(runner.invoke(app, ["eval", str(tmp_path / "missing"), "--task", "arith", *data]))
    assert "no such model folder" in line
    line = _one_line_error(
        runner.invoke(app, ["eval", str(assets["root"] / "cola"), "--task", "math5", *data])
    )
    assert "unknown task 'math5'" in line and "perplexity" in line
    base_probe = [
        "eval",
        str(assets["root"] / "base"),
        "-t",
        "spell",
        "-t",
        "probe",
        "--out",
        str(tmp_path / "r.json"),
    ]
    assert "needs a CoLA model" in _one_line_error(runner.invoke(app, [*base_probe, *data]))
    assert not (tmp_path / "r.json").exists()  # refused before any task ran
    (tmp_path / "config.json").write_text("{}")
    _one_line_error(runner.invoke(app, ["eval", str(tmp_path), "--task", "arith", *data]))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["eval", "models/x"], "Missing option '--task'"),
        (["evaluate"], "No such command 'evaluate'"),
        (["compare", "--last", "0"], "--last"),
        (["eval", "models/x", "-t", "arith", "--action-mode", "argmax"], "--action-mode"),
        (["generate", "models/x"], "Missing argument"),
    ],
)
def test_command_line_mistakes_are_one_line(args: list[str], expected: str) -> None:
    """Click's usage errors follow the commands' own rule: one `error:` line naming the mistake, exit 2."""
    line = _one_line_error(runner.invoke(app, args))
    assert expected in line and "--help" in line


def test_out_in_a_missing_folder_is_refused_before_loading(assets: dict, tmp_path: Path) -> None:
    model = str(assets["root"] / "cola")
    line = _one_line_error(runner.invoke(app, ["eval", model, "-t", "arith", "--out", str(tmp_path)]))
    assert "is a folder" in line
    missing = tmp_path / "no" / "such" / "r.json"
    line = _one_line_error(runner.invoke(app, ["eval", model, "-t", "arith", "--out", str(missing)]))
    assert "no folder" in line and not (tmp_path / "no").exists()


# --------------------------------------------------------------------------------------------- generate


def test_generate_prints_text_and_actions(assets: dict) -> None:
    model = str(assets["root"] / "cola")
    result = runner.invoke(
        app,
        ["generate", model, "Q: Calculate 1 + 2. A:", "--action", "3", "--max-new-tokens", "5", "--tokens"],
    )
    assert result.exit_code == 0, result.output
    assert "Q: Calculate 1 + 2. A:" in result.stdout
    actions_line = next(line for line in result.stdout.splitlines() if line.startswith("actions"))
    assert actions_line.endswith("3 3 3 3 3") and "(forced, 5)" in actions_line
    assert "step" in result.stdout  # the token table
    sampled = [
        runner.invoke(app, ["generate", model, "Q:", "--seed", "5", "--max-new-tokens", "6"]).stdout
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1] and "(sample, " in sampled[0]


def test_generate_base_and_bad_options(assets: dict) -> None:
    result = runner.invoke(app, ["generate", str(assets["root"] / "base"), "Q:", "--max-new-tokens", "3"])
    assert result.exit_code == 0 and "no latent actions" in result.stderr
    model = str(assets["root"] / "cola")
    line = _one_line_error(runner.invoke(app, ["generate", model, "Q:", "--action", "1", "--random-actions"]))
    assert "choose one of" in line
    line = _one_line_error(runner.invoke(app, ["generate", model, "Q:", "--action", str(NUM_ACTIONS)]))
    assert "out of range" in line


# ----------------------------------------------------------------------------------- models in MLflow


def test_stage_runs_carry_their_models_and_eval_takes_registered_versions(
        assets: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A small model is attached as files, a large one (here: threshold 0) by reference with DVC's md5; both
    registered; `cola eval models:/NAME/VERSION` evaluates them; a reference to a changed folder names the
    command that fetches the right one."""
    import mlflow

    from cola.tracking import StageRun
    from cola.tracking.models import dvc_md5

    for name in ("COLA_TRACKING", "DVC_EXP_NAME", "DVC_ROOT", "DVC_STAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("COLA_MLFLOW_EXPERIMENT", "cli-models")
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "models" / "bc"
    shutil.copytree(assets["root"] / "cola", model)
    with StageRun("bc", nested=False) as small:
        small.log_model(Path("models/bc"), attach_up_to_mb=100, registry_name="cola-bc")
    with StageRun("rl@cola-math", nested=False) as large:
        large.log_model(Path("models/bc"), attach_up_to_mb=0, registry_name="cola-rl-cola-math")

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    small_tags, large_tags = (client.get_run(r.run_id).data.tags for r in (small, large))
    assert (small_tags["model.stored"], large_tags["model.stored"]) == ("files", "reference")
    assert small_tags["model.registered"] == "models:/cola-bc/1"
    assert small_tags["model.md5"] == large_tags["model.md5"] == dvc_md5(model)
    attached = {f.path for f in client.list_artifacts(small.run_id, "model")}
    assert {"model/config.json", "model/model.safetensors"} <= attached
    assert {f.path for f in client.list_artifacts(large.run_id, "model")} == {"model/reference.json"}

    eval_args = ["--task", "arith", "--data-dir", str(assets["root"] / "data"), "--limit", "2",
                 "--max-new-tokens", "3", "--no-progress"]
    result = runner.invoke(app, ["eval", "models:/cola-bc/1", *eval_args])
    assert result.exit_code == 0, result.output
    assert "models:/cola-bc/1 (cola)" in result.stdout
    evals = client.search_runs([client.get_experiment_by_name("cli-models").experiment_id],
                               "tags.stage = 'eval'")
    assert [r.data.params["model_uri"] for r in evals] == ["models:/cola-bc/1"]
    assert evals[0].info.run_name == "eval models:/cola-bc/1: arith"
    assert (tmp_path / ".cola" / "models" / "models__cola-bc_1" / "config.json").is_file()  # fetched once
    assert runner.invoke(app, ["eval", "models:/cola-rl-cola-math/1", *eval_args]).exit_code == 0

    (model / "generation_config.json").write_text("{}")  # the DVC output moved on since the run
    line = _one_line_error(runner.invoke(app, ["generate", "models:/cola-rl-cola-math/1", "Q: 1 + 1. A:"]))
    assert "stored by reference" in line and "dvc pull models/bc" in line and large_tags["model.md5"] in line
    assert "cola-nope" in _one_line_error(runner.invoke(app, ["eval", "models:/cola-nope/1", *eval_args]))


# --------------------------------------------------------------------------------------------- compare


def test_compare_shows_differing_params_and_metrics(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cola.tracking import StageRun

    for name in ("COLA_TRACKING", "DVC_EXP_NAME", "DVC_ROOT", "DVC_STAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("COLA_MLFLOW_EXPERIMENT", "cli-compare")
    monkeypatch.chdir(tmp_path)
    assert "no pipeline runs" in runner.invoke(app, ["compare"]).stderr
    for i, lr in enumerate((0.001, 0.002)):
        monkeypatch.setenv("COLA_PIPELINE_ID", f"pipeline-{i}")
        with StageRun("latent", params={"latent": {"lr": lr, "steps": 10}}, profile="tiny",
                      pipeline_params={"latent.lr": lr, "latent.steps": 10, "bc.lr": 0.002}) as run:
            run.summary({"latent_loss": 2.0 - i, "wm_idm_over_base": 0.5 - i / 10})

    result = runner.invoke(app, ["compare", "-n", "5", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = {row[0]: row[1:] for row in csv.reader(io.StringIO(result.stdout))}
    assert rows["param latent.lr"] == ["0.002", "0.001"]  # newest first
    assert "param latent.steps" not in rows and "param bc.lr" not in rows  # identical values are not shown
    assert rows["latent/wm_idm_over_base"] == ["0.4", "0.5"]  # a headline metric
    assert "latent/latent_loss" not in rows and "latent/wall_clock_seconds" not in rows  # detail: --all
    assert rows["profile"] == ["tiny", "tiny"]

    every = {row[0]: row[1:] for row in csv.reader(io.StringIO(
        runner.invoke(app, ["compare", "--all", "--format", "csv"]).stdout))}
    assert every["param bc.lr"] == ["0.002", "0.002"] and every["latent/latent_loss"] == ["1", "2"]
    markdown = runner.invoke(app, ["compare", "-f", "markdown", "--metric", "latent/latent_loss"]).stdout
    assert "| latent/latent_loss | 1 | 2 |" in markdown and "wall_clock" not in markdown


def test_compare_unreadable_store_is_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db.db"
    bad.write_text("this is not sqlite")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{bad}")
    assert "cannot read MLflow runs" in _one_line_error(runner.invoke(app, ["compare"]))


# --------------------------------------------------------------------------------------------- ui, profile


def test_ui_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    assert ui_command(5001) == [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--host",
        "127.0.0.1",
        "--port",
        "5001",
        "--workers",
        "1",
    ]


REPO = Path(__file__).resolve().parents[1]


def _repo_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped profiles and params.yaml in a scratch folder, which becomes the working directory."""
    shutil.copytree(REPO / "configs" / "profiles", tmp_path / "configs" / "profiles")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "params.yaml"


def test_profile_tiny_reproduces_params_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The README's main command runs params.yaml; `cola profile tiny` must give back exactly that default.
    params = _repo_copy(tmp_path, monkeypatch)
    result = runner.invoke(app, ["profile", "smoke"])
    assert result.exit_code == 0, result.output
    assert params.read_text() != (REPO / "params.yaml").read_text()
    result = runner.invoke(app, ["profile", "tiny"])
    assert result.exit_code == 0, result.output
    assert params.read_text() == (REPO / "params.yaml").read_text()
    assert runner.invoke(app, ["profile"]).stdout.split() == sorted(PROFILES)


def test_a_bad_profile_changes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    params = _repo_copy(tmp_path, monkeypatch)
    before = params.read_text()
    profiles = tmp_path / "configs" / "profiles"
    (profiles / "broken.yaml").write_text("profile: broken\nbogus_section: 1\n")
    (profiles / "misnamed.yaml").write_text("profile: tiny\n")
    (profiles / "smoke.yaml").write_text("profile: smoke\nlatent:\n  lrr: 0.1\n")  # a typo in a known profile

    line = _one_line_error(runner.invoke(app, ["profile", "huge"]))
    assert "unknown profile 'huge'" in line and "broken" in line and "tiny" in line
    assert "bogus_section" in _one_line_error(runner.invoke(app, ["profile", "broken"]))
    assert "expected 'misnamed'" in _one_line_error(runner.invoke(app, ["profile", "misnamed"]))
    assert "latent.lrr is not a known key" in _one_line_error(runner.invoke(app, ["profile", "smoke"]))
    assert params.read_text() == before  # nothing changed on a bad profile
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs", "params.yaml"]  # no temp file left


def test_the_shipped_profiles_are_the_known_ones() -> None:
    assert sorted(p.stem for p in (REPO / "configs" / "profiles").glob("*.yaml")) == sorted(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_every_shipped_profile_validates_and_names_itself(name: str, tmp_path: Path) -> None:
    out = tmp_path / "params.yaml"
    args = ["profile", name, "--profiles-dir", str(REPO / "configs" / "profiles"), "--params", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert load_pipeline_params(out).profile == name


def test_schema_defaults_are_the_default_profile() -> None:
    # A params file that leaves a key out gets the schema's default; it must be the shipped default's value,
    # not a stale calibration (bc.steps once said 490 while params.yaml ran 300), except where tiny.yaml
    # says otherwise: the RL ablation's choice, and the agent budgets a 1.25M base needs (the other profiles
    # keep the schema's).
    import yaml

    defaults, shipped = flatten(PipelineParams()), flatten(load_pipeline_params(REPO / "params.yaml"))
    overrides = flatten(yaml.safe_load((REPO / "configs" / "profiles" / "tiny.yaml").read_text()))
    overrides.pop("profile")
    assert {k: shipped.get(k) for k in defaults.keys() | shipped.keys()
            if defaults.get(k) != shipped.get(k)} == overrides
    assert overrides == {"rl.cola_start": "bc", "agent.train_games": 400, "agent.eval_games": 24,
                         "agent.ft_steps": 1000, "agent.ft_lr": 1e-3}


def test_params_documents_every_key_with_its_value(tmp_path: Path) -> None:
    smoke = tmp_path / "params.yaml"
    assert runner.invoke(app, ["profile", "smoke", "--profiles-dir", str(REPO / "configs" / "profiles"),
                               "--params", str(smoke)]).exit_code == 0
    result = runner.invoke(app, ["params", "rl.tasks.math", "--params", str(smoke)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in result.output.splitlines() if line.startswith("│ rl.")}
    # key: type, default, value in the file (blank when it is the default), help
    assert rows["rl.tasks.math.max_new_tokens"][:3] == ["int", "12", "4"]
    assert rows["rl.tasks.math.reward_threshold"][:3] == ["float | None", "0.04", ""]
    assert all(row[3] for row in rows.values())  # every key has its help
    bad = runner.invoke(app, ["params", "rl.bogus", "--params", str(smoke)])
    assert bad.exit_code == 2 and "no params key starts with 'rl.bogus'" in bad.output


# --------------------------------------------------------------------------------------------- search


def test_search_prints_the_tree_and_the_budget(assets: dict, tmp_path: Path) -> None:
    from cola.model.checkpoint import load_model_and_tokenizer
    from cola.search.qnetwork import QNetwork

    model, _, _ = load_model_and_tokenizer(assets["root"] / "cola")
    QNetwork.from_base(model.base, model.config.num_actions).save_pretrained(tmp_path / "qnet")
    args = ["search", str(assets["root"] / "cola"), "Q: Calculate 1 + 1. A:", "--q", str(tmp_path / "qnet"),
            "--rounds", "3", "--root-children", "2", "--rollout-tokens", "4", "--max-depth", "4",
            "--chunk-tokens", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "actions [" in result.stdout and "answer (q_only):" in result.stdout
    assert result.stdout.count("N=") == 4  # the root and one new node per round
    assert "model passes" in result.stderr
    oracle = runner.invoke(app, [*args, "--answer", "2"])
    assert oracle.exit_code == 0 and "answer (oracle):" in oracle.stdout
    assert "no Q-network folder" in _one_line_error(runner.invoke(app, [*args[:3], "--q", str(tmp_path)]))
    base = ["search", str(assets["root"] / "base"), "x", "--q", str(tmp_path / "qnet")]
    assert "the Q-network scores 8 actions, the model has" in _one_line_error(runner.invoke(app, base))
    wide = [*args, "--root-children", "9"]
    assert "root_children = 9: more children than the 8 actions" in _one_line_error(runner.invoke(app, wide))
    assert result.exit_code == 0 and runner.invoke(app, [*args, "--rounds", "0"]).exit_code == 2


def test_search_over_tokens_with_a_token_q_network(assets: dict, tmp_path: Path) -> None:
    """The token baseline's search: a plain LM and a Q-network with one output per vocabulary entry."""
    from cola.model.checkpoint import load_model_and_tokenizer
    from cola.search.qnetwork import QNetwork

    model, _, _ = load_model_and_tokenizer(assets["root"] / "base")
    QNetwork.from_base(model, model.config.vocab_size).save_pretrained(tmp_path / "token_qnet")
    result = runner.invoke(app, ["search", str(assets["root"] / "base"), "Q: Calculate 1 + 1. A:", "--q",
                                 str(tmp_path / "token_qnet"), "--rounds", "2", "--rollout-tokens", "4"])
    assert result.exit_code == 0, result.output
    # the root and one node per round, or fewer when a child ends in EOS (the search stops there)
    assert 2 <= result.stdout.count("N=") <= 3 and "answer (q_only):" in result.stdout
