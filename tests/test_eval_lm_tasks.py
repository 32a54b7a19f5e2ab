"""`cola eval` on lm-eval-shaped tasks (MATH-500, evals/ cola_*), sampled pass@k runs and MLflow logging.

Real tiny CoLA and base folders (tests.test_harness.build_assets), a few MATH-500 problems copied into
tmp_path, a throwaway SQLite MLflow store; all offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cola.cli import app
from cola.eval import lm_tasks
from cola.eval import runner as eval_runner
from cola.eval.context import EvalContext
from tests.test_harness import build_assets

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

MATH500 = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500" / "test.jsonl"
PAPER_PROMPT = (
    "User: Please reason step by step, and put your final answer within \\boxed{{}}.\n\n{}\nAssistant: "
)
runner = CliRunner()


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_assets(tmp_path_factory.mktemp("lm_tasks"))


@pytest.fixture
def math500_file(tmp_path: Path) -> Path:
    """The first MATH-500 problems, copied to tmp (never into the repository)."""
    if not MATH500.is_file():
        pytest.skip(f"{MATH500} not available")
    path = tmp_path / "math500.jsonl"
    path.write_text(
        "".join(MATH500.read_text(encoding="utf-8").splitlines(keepends=True)[:3]), encoding="utf-8"
    )
    return path


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store with tracking on, outside any DVC stage or pipeline."""
    for name in ("COLA_TRACKING", "COLA_PIPELINE_ID", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _eval(assets: dict, kind: str, *args: str) -> object:
    common = ["--data-dir", str(assets["root"] / "data"), "--no-progress", "--max-new-tokens", "6"]
    return runner.invoke(app, ["eval", str(assets["root"] / kind), *args, *common])


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_registered_in_the_dispatch_point(assets: dict) -> None:
    names = {"math500", "math500_local", "cola_arith", "cola_procedural", "cola_math500_local"}
    assert names <= set(eval_runner.RUNNERS) and names <= set(eval_runner.PRECHECKS)
    assert eval_runner.LM_EVAL_TASKS == lm_tasks.task_names()  # the registry is built from lm_tasks' names
    data = assets["root"] / "data"
    assert names <= set(eval_runner.all_tasks(data, "test"))
    assert not names & set(eval_runner.known_tasks(data, "test"))  # the harness's own names, as before
    with_file = EvalContext(model_path="m", model=None, tokenizer=None, kind="cola",
                                    options={"math500_path": "/x.jsonl"})  # fmt: skip
    assert lm_tasks.resolve("math500", with_file) == "cola_math500_local"  # --math500-path replaces the hub
    line = _one_line_error(_eval(assets, "cola", "--task", "math5"))
    assert "known: arith" in line and "through lm-eval: math500, math500_local, cola_arith" in line


def test_math500_local_cola_writes_records_and_logs_mlflow(
    assets: dict, math500_file: Path, store: str, tmp_path: Path
) -> None:
    import mlflow

    out = tmp_path / "r.json"
    result = _eval(assets, "cola", "--task", "math500_local", "--math500-path", str(math500_file),
                   "--limit", "3", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    math = data["results"]["math500_local"]
    assert math["lm_eval_task"] == "cola_math500_local" and math["n"] == 3
    assert math["accuracy"] == 0.0 and "stderr" in math  # random weights
    docs = [json.loads(line) for line in math500_file.read_text().splitlines()]
    for record in math["records"]:
        doc = docs[record["index"]]
        assert record["prompt"] == PAPER_PROMPT.format(doc["problem"]) and record["problem"] == doc["problem"]
        assert record["answer"] == doc["answer"] and isinstance(record["completion"], str)
        assert record["correct"] is False

    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("cola")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on runs
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # one run per call, no parent
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "eval cola: math500_local"
    assert run.info.run_id in result.output and run.data.tags["mlflow.source.name"] == "cola eval"
    assert run.data.tags["model_path"] == str((assets["root"] / "cola").resolve())
    assert run.data.params["tasks"] == "math500_local" and run.data.params["limit"] == "3"
    assert run.data.metrics["math500_local/accuracy"] == 0.0 and run.data.metrics["math500_local/n"] == 3
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "eval_results.json" in artifacts
    # A hand-run `cola eval` is no pipeline execution: `cola compare` does not list it.
    from cola.tracking import recent_pipeline_runs

    assert recent_pipeline_runs() == []


def test_math500_local_base_through_hflm(
    assets: dict, math500_file: Path, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)  # outside any git repository, where `git describe` prints "fatal: ..."
    out = tmp_path / "r.json"
    result = _eval(assets, "base", "-t", "math500_local", "--math500-path", str(math500_file), "--limit", "3",
                   "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["kind"] == "base"
    math = data["results"]["math500_local"]
    assert math["n"] == 3 and len(math["records"]) == 3
    assert all(r["prompt"].startswith("User: Please reason step by step") for r in math["records"])
    assert {"problem", "answer", "completion", "correct"} <= set(math["records"][0])
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("cola").experiment_id], "tags.stage = 'eval'")
    assert run.data.tags["eval.kind"] == "base" and "math500_local/accuracy" in run.data.metrics
    assert "fatal" not in capfd.readouterr().err


def test_no_mlflow_and_tracking_off_log_nothing(
    assets: dict, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Path(store.removeprefix("sqlite:///"))
    assert _eval(assets, "cola", "-t", "arith", "--limit", "1", "--no-mlflow").exit_code == 0
    monkeypatch.setenv("COLA_TRACKING", "off")
    assert _eval(assets, "cola", "-t", "arith", "--limit", "1").exit_code == 0
    assert not db.exists()


def test_hflm_sees_what_colalm_sees(assets: dict) -> None:
    """The baseline's contexts start with EOS like ColaLM's, and a budget beyond the window is capped."""
    from cola.model.checkpoint import load_model_and_tokenizer

    model, tokenizer, kind = load_model_and_tokenizer(assets["root"] / "base")
    ctx = EvalContext(
        model_path=str(assets["root"] / "base"), model=model, tokenizer=tokenizer, kind=kind
    )
    lm = lm_tasks.build_lm(ctx)
    texts = ["Q: 1 + 2? A:", "Q:"]
    ids, mask = lm.tok_batch_encode(texts)
    for row, text in enumerate(texts):  # left-padded, each row EOS + the text's tokens
        expected = [tokenizer.eos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        assert ids[row, -len(expected) :].tolist() == expected and int(mask[row].sum()) == len(expected)
    from lm_eval.api.instance import Instance

    request = Instance("generate_until", {}, ("Q:", {"until": ["\n"], "max_gen_toks": 10_000}), 0)
    (text,) = lm.generate_until([request], disable_tqdm=True)
    assert request.arguments[1]["max_gen_toks"] == lm.max_length // 2 and isinstance(text, str)
    assert lm.model is model  # the loaded model is wrapped, not loaded a second time

    cola, cola_tokenizer, _ = load_model_and_tokenizer(assets["root"] / "cola")
    cola_dir = str(assets["root"] / "cola")
    cola_ctx = EvalContext(model_path=cola_dir, model=cola, tokenizer=cola_tokenizer, kind="cola")
    assert lm_tasks.build_lm(cola_ctx).model is cola


def test_sampled_arith_task_file_reports_pass_at_k(assets: dict, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = _eval(assets, "cola", "--task", "arith", "--samples", "4", "--limit", "3", "--out", str(out),
                   "--no-mlflow")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "pass_at_k/4" in result.stdout and "majority_vote" in result.stdout
    arith = json.loads(out.read_text())["results"]["arith"]
    assert arith["n"] == 3 and arith["n_samples"] == 4
    assert set(arith["pass_at_k"]) == {"1", "2", "4"}
    assert arith["best_of_n_oracle"] == arith["pass_at_k"]["4"]
    assert arith["accuracy"] == arith["pass_at_k"]["1"]
    record = arith["records"][0]
    assert len(record["samples"]) == 4 and {"majority_answer", "majority_correct", "n_correct"} <= set(record)
    assert all(len(s["actions"]) > 0 for s in record["samples"])  # CoLA: the sampled action sequences
    assert len({tuple(s["actions"]) for s in record["samples"]}) > 1  # sampled actions differ
    again = _eval(assets, "cola", "--task", "arith", "--samples", "4", "--limit", "3", "--out", str(out),
                  "--no-mlflow")  # fmt: skip
    assert json.loads(out.read_text())["results"]["arith"]["records"] == arith["records"]  # seeded
    assert again.exit_code == 0


@pytest.mark.parametrize("kind", ["cola", "base"])
def test_sampled_math500_local(assets: dict, math500_file: Path, tmp_path: Path, kind: str) -> None:
    out = tmp_path / "r.json"
    result = _eval(assets, kind, "--task", "math500_local", "--math500-path", str(math500_file), "--limit",
                   "2", "--samples", "2", "--out", str(out), "--no-mlflow")  # fmt: skip
    assert result.exit_code == 0, result.output
    math = json.loads(out.read_text())["results"]["math500_local"]
    assert math["n"] == 2 and math["n_samples"] == 2 and set(math["pass_at_k"]) == {"1", "2"}
    assert {"best_of_n_oracle", "majority_vote"} <= set(math)
    assert ("latent actions" in math["sampling"]) == (kind == "cola")
    record = math["records"][0]
    assert record["prompt"].startswith("User: Please reason") and len(record["samples"]) == 2


def test_procedural_task_through_lm_eval(assets: dict, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = _eval(assets, "cola", "-t", "cola_arith", "--limit", "2", "--out", str(out), "--no-mlflow")
    assert result.exit_code == 0, result.output
    arith = json.loads(out.read_text())["results"]["cola_arith"]
    examples = [
        json.loads(line) for line in (assets["root"] / "data/tasks/test/arith.jsonl").read_text().splitlines()
    ]
    assert arith["n"] == 2 and [r["prompt"] for r in arith["records"]] == [
        ex["prompt"] for ex in examples[:2]
    ]


def test_hub_math500_offline_error(assets: dict) -> None:
    lm_tasks.hub_math500_error.cache_clear()
    if lm_tasks.hub_math500_error() is None:
        pytest.skip("HuggingFaceH4/MATH-500 is in the local HF cache")
    line = _one_line_error(_eval(assets, "cola", "--task", "math500"))
    assert "not in the HF cache" in line and "pass --math500-path FILE to use a local JSONL" in line


def test_errors_are_one_line_and_come_before_loading(assets: dict, tmp_path: Path) -> None:
    assert "--math500-path" in _one_line_error(_eval(assets, "cola", "--task", "math500_local"))
    missing = tmp_path / "none.jsonl"
    assert "no such" in _one_line_error(
        _eval(assets, "cola", "-t", "math500_local", "--math500-path", str(missing))
    )
    line = _one_line_error(_eval(assets, "cola", "--task", "cola_arith", "--samples", "2"))
    assert "--task arith" in line
    # the model folder is checked first: a path test, before torch or lm-eval is imported
    result = runner.invoke(app, ["eval", str(tmp_path / "no-model"), "--task", "math500_local"])
    assert "no such model folder" in _one_line_error(result)


def test_the_math500_stage_scores_every_model_of_the_comparison(assets: dict, math500_file: Path,
                                                                  tmp_path: Path) -> None:
    """`run_math500` on a models folder laid out as the DAG's (plain LMs for base/SFT/token RL, CoLA for the
    rest): one greedy lm-eval run per model on the given JSONL, per-problem records, accuracy ± SE; off, it
    records that it did not run; unreadable data is one line before any model loads."""
    from cola.comparison import rows
    from cola.config import Math500Config
    from cola.errors import ColaError
    from cola.eval.math500 import run_math500

    models = tmp_path / "models"
    for row in rows():
        kind = "base" if row.name in ("base", "sft") or row.method == "token" else "cola"
        shutil.copytree(assets["root"] / kind, models / row.folder)
    cfg = Math500Config(enabled=True, source=str(math500_file), limit=2, max_new_tokens=6, threads=1)
    metrics = run_math500(cfg, models, tmp_path / "out").metrics
    assert metrics["enabled"] == 1
    for row in rows():
        assert metrics[f"{row.name}/math500_n"] == 2, row.name
        assert 0 <= metrics[f"{row.name}/math500_acc"] <= 1 and metrics[f"{row.name}/math500_se"] >= 0
        records = json.loads((tmp_path / "out" / f"{row.name}.json").read_text())["records"]
        assert [r["problem"] for r in records] == [json.loads(line)["problem"]
                                                   for line in math500_file.read_text().splitlines()[:2]]

    assert run_math500(Math500Config(), models, tmp_path / "off").metrics == {"enabled": 0}
    with pytest.raises(ColaError, match=r"^math500.source: no such file '/no/such.jsonl'; point math500"):
        run_math500(Math500Config(enabled=True, source="/no/such.jsonl"), models, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
