"""The `cola` CLI through typer's CliRunner on real saved tiny model folders and a real SQLite MLflow store."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cola.cli import app, ui_command
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


@pytest.mark.parametrize("command", [[], ["eval"], ["generate"], ["compare"], ["ui"], ["profile"]])
def test_help_everywhere(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


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
        with StageRun("latent", params={"latent": {"lr": lr, "steps": 10}}, profile="tiny") as run:
            run.summary({"loss": 2.0 - i})

    result = runner.invoke(app, ["compare", "-n", "5", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = {row[0]: row[1:] for row in csv.reader(io.StringIO(result.stdout))}
    assert rows["param latent.lr"] == ["0.002", "0.001"]  # newest first
    assert "param latent.steps" not in rows  # identical values are not shown
    assert rows["latent/loss"] == ["1", "2"]
    assert rows["profile"] == ["tiny", "tiny"]

    markdown = runner.invoke(app, ["compare", "--format", "markdown", "--metric", "latent/loss"]).stdout
    assert "| latent/loss | 1 | 2 |" in markdown and "wall_clock" not in markdown
    assert runner.invoke(app, ["compare", "--all-params"]).exit_code == 0


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


def test_profile_validates_then_copies(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cola.pipeline import PipelineParams

    monkeypatch.chdir(tmp_path)
    profiles = tmp_path / "configs" / "profiles"
    profiles.mkdir(parents=True)
    valid = yaml.safe_dump(dataclasses.asdict(PipelineParams()))
    (profiles / "tiny.yaml").write_text(valid)
    (profiles / "broken.yaml").write_text(valid.replace("profile: tiny", "profile: tiny\nbogus_section: 1"))
    Path("params.yaml").write_text("old: true\n")

    line = _one_line_error(runner.invoke(app, ["profile", "huge"]))
    assert "unknown profile 'huge'" in line and "broken, tiny" in line
    line = _one_line_error(runner.invoke(app, ["profile", "broken"]))
    assert "bogus_section" in line
    assert Path("params.yaml").read_text() == "old: true\n"  # nothing changed on a bad profile

    result = runner.invoke(app, ["profile", "tiny"])
    assert result.exit_code == 0, result.output
    assert Path("params.yaml").read_text() == valid
    assert runner.invoke(app, ["profile"]).stdout.split() == ["broken", "tiny"]


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "profiles").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_profile_validates_and_names_itself(path: Path) -> None:
    from cola.pipeline import PROFILES, load_pipeline_params

    params = load_pipeline_params(path)
    assert params.profile == path.stem and path.stem in PROFILES


def test_params_yaml_is_the_tiny_profile() -> None:
    # The README's main command runs params.yaml; `cola profile tiny` must give back exactly that default.
    assert (REPO / "params.yaml").read_text() == (REPO / "configs" / "profiles" / "tiny.yaml").read_text()


def test_schema_defaults_are_the_default_profile() -> None:
    # A params file that leaves a key out gets the schema's default; it must be the shipped default's value,
    # not a stale calibration (bc.steps once said 490 while params.yaml ran 300).
    from cola.params import flatten
    from cola.pipeline import PipelineParams, load_pipeline_params

    defaults, shipped = flatten(PipelineParams()), flatten(load_pipeline_params(REPO / "params.yaml"))
    assert {k: (defaults.get(k), shipped.get(k)) for k in defaults.keys() | shipped.keys()
            if defaults.get(k) != shipped.get(k)} == {}
