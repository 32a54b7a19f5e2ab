"""lm-evaluation-harness integration: the `cola` model, the task YAMLs in evals/, and the lm_eval CLI
(offline)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from cola.eval.lm_eval_model import EVALS_DIR, ColaLM, make_task_manager  # noqa: E402
from cola.model.checkpoint import CheckpointError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MATH500 = REPO.parent / "shared" / "data" / "math500" / "test.jsonl"
PAPER_PROMPT = ("User: Please reason step by step, and put your final answer within \\boxed{{}}.\n\n"
                "{}\nAssistant: ")


@pytest.fixture(scope="module")
def cola_dir(tmp_path_factory) -> Path:
    """A tiny CoLA checkpoint folder with its tokenizer (random weights; only the plumbing is under test)."""
    from cola.base.tiny import build_tiny_base
    from cola.config import TinyBaseConfig
    from cola.model import CoLAForCausalLM
    from cola.model.checkpoint import save_hf_folder

    lines = ["Q: Calculate 3 + 4. A: \\boxed{7}", "User: Please reason step by step.\nAssistant: ",
             "Convert the point $(0,3)$ to polar coordinates $(r,\\theta)$."] * 4
    cfg = TinyBaseConfig(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                         intermediate_size=64, max_position_embeddings=512)
    base, tokenizer = build_tiny_base(lines, cfg, seed=0)
    model = CoLAForCausalLM.from_base(base, num_actions=8, merge_intermediate_size=32, n_idm_layers=1,
                                      n_policy_layers=1)
    return save_hf_folder(model, tokenizer, tmp_path_factory.mktemp("ckpt") / "cola")


@pytest.fixture(scope="module")
def lm(cola_dir) -> ColaLM:
    return ColaLM(pretrained=str(cola_dir), batch_size=4)


@pytest.fixture
def math500_file(tmp_path) -> Path:
    """The first problems of the shared MATH-500 file, copied to tmp (never into the repository)."""
    if not MATH500.is_file():
        pytest.skip(f"{MATH500} not available")
    path = tmp_path / "math500.jsonl"
    path.write_text("".join(MATH500.read_text(encoding="utf-8").splitlines(keepends=True)[:5]),
                    encoding="utf-8")
    return path


def _evals_utils():
    spec = importlib.util.spec_from_file_location("cola_evals_utils", EVALS_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gen(context: str, **gen_kwargs) -> Instance:
    return Instance("generate_until", {}, (context, gen_kwargs), 0)


def test_registered_and_rejects_plain_models(tmp_path, cola_dir):
    assert get_model("cola") is ColaLM
    base_dir = tmp_path / "base"
    shutil.copytree(cola_dir, base_dir)
    config = json.loads((base_dir / "config.json").read_text())
    (base_dir / "config.json").write_text(json.dumps(config["base_config"]))  # now a plain Llama config
    with pytest.raises(CheckpointError, match="--model hf"):
        ColaLM(pretrained=str(base_dir))
    with pytest.raises(ValueError, match="action_mode"):
        ColaLM(pretrained=str(cola_dir), action_mode="forced")


def test_simple_evaluate_math500_local(lm, math500_file):
    docs = [json.loads(line) for line in math500_file.read_text().splitlines()]
    task_manager = make_task_manager(metadata={"math500_path": str(math500_file)})
    assert {"cola_math500", "cola_math500_local", "cola_procedural"} <= set(task_manager.all_tasks)
    res = lm_eval.simple_evaluate(model=lm, tasks=["cola_math500_local"], task_manager=task_manager, limit=3,
                                  gen_kwargs={"max_gen_toks": 8}, log_samples=True, bootstrap_iters=100)
    result = res["results"]["cola_math500_local"]
    assert result["sample_len"] == 3
    assert result["exact_match,none"] == 0.0  # random weights
    assert "exact_match_stderr,none" in result
    assert res["config"]["model_path"] == lm.pretrained and res["config"]["action_mode"] == "greedy"
    samples = res["samples"]["cola_math500_local"]
    assert [s["doc_id"] for s in samples] == [0, 1, 2]
    for s in samples:
        context, gen_kwargs = s["arguments"][0]
        assert context == PAPER_PROMPT.format(docs[s["doc_id"]]["problem"])
        assert gen_kwargs["max_gen_toks"] == 8 and gen_kwargs["do_sample"] is False
        assert s["target"] == docs[s["doc_id"]]["answer"]
        (response,) = s["filtered_resps"]
        assert isinstance(response, str) and "\nUser:" not in response
        assert s["exact_match"] in (0, 1)


def test_documented_override_of_the_hub_task(lm, math500_file, tmp_path):
    """README recipe: include cola_math500.yaml and point `dataset_path: json` at a local file."""
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    (folder / "my_math500.yaml").write_text(
        f"include: {EVALS_DIR / 'cola_math500.yaml'}\ntask: my_math500\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files: {{test: {math500_file}}}\n  cache_dir: {tmp_path / 'hf'}\n"
    )
    res = lm_eval.simple_evaluate(model=lm, tasks=["my_math500"], task_manager=make_task_manager(folder),
                                  limit=2, gen_kwargs={"max_gen_toks": 4}, bootstrap_iters=0)
    assert res["results"]["my_math500"]["sample_len"] == 2
    assert res["configs"]["my_math500"]["doc_to_text"].startswith("User: Please reason step by step")


def test_procedural_group_and_scorers(lm, tmp_path):
    pytest.importorskip("reasoning_gym")
    from cola.tasks import TASK_NAMES
    from cola.tasks.procedural import make_examples

    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    examples = {task: make_examples(task, 3, seed=0) for task in TASK_NAMES}
    for task, rows in examples.items():
        (tasks_dir / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    res = lm_eval.simple_evaluate(model=lm, tasks=["cola_procedural"], limit=2, bootstrap_iters=0,
                                  task_manager=make_task_manager(metadata={"tasks_dir": str(tasks_dir)}))
    results = res["results"]
    assert results["cola_procedural"]["sample_len"] == 10
    assert "exact_match,none" in results["cola_procedural"]
    for task in ("arith", "wordprob", "countdown", "spell", "wrev"):
        assert results[f"cola_{task}"]["sample_len"] == 2
    assert "format,none" in results["cola_countdown"]

    # The scorers accept every reference completion and reject a wrong one.
    utils = _evals_utils()
    scorer = {"arith": utils.process_math, "wordprob": utils.process_math, "spell": utils.process_exact_boxed,
              "wrev": utils.process_exact_boxed, "countdown": utils.process_countdown}
    for task, rows in examples.items():
        for row in rows:
            assert scorer[task](row, [row["completion"]])["exact_match"] == 1, (task, row)
            assert scorer[task](row, [" \\boxed{zz} <answer>1+1</answer>"])["exact_match"] == 0
    assert utils.process_countdown(examples["countdown"][0],
                                   [examples["countdown"][0]["completion"]])["format"]
    # Retention answers are strings, not algebra: an anagram is wrong (SymPy would call cat == act).
    # (the scorer finds the task's check by the doc's `task`, a field of every prepared example)
    anagram = {"task": "spell", "answer": "cat"}
    assert utils.process_exact_boxed(anagram, [" \\boxed{act}"])["exact_match"] == 0
    assert utils.process_math({"answer": "\\frac{1}{2}"}, ["so \\boxed{0.5}"])["exact_match"] == 1


def test_loglikelihood_off_by_one(lm):
    """Logits at position t score token t + 1: compare with one direct forward of context + continuation."""
    requests = [("Q: Calculate 3 + 4. A:", " \\boxed{7}"), ("Convert the point", " (0,3)"),
                ("", "hello there")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, args, i) for i, args in enumerate(requests)])
    eos = lm.tokenizer.eos_token_id
    for (context, continuation), (score, greedy) in zip(requests, got, strict=True):
        ctx = [eos, *lm.tokenizer(context, add_special_tokens=False)["input_ids"]] if context else [eos]
        whole = [*ctx[:1], *lm.tokenizer(context + continuation, add_special_tokens=False)["input_ids"]]
        ids = torch.tensor([whole])
        with torch.no_grad():
            logprobs = lm.model(ids, torch.ones_like(ids)).logits[0].float().log_softmax(-1)
        scored = range(len(ctx), len(whole))  # the continuation's token positions
        expected = sum(logprobs[t - 1, whole[t]].item() for t in scored)
        assert score == pytest.approx(expected, abs=1e-4)
        assert greedy == all(logprobs[t - 1].argmax().item() == whole[t] for t in scored)

    # is_greedy is exactly "greedy latent decoding produces it"; left padding in a batch changes nothing.
    context = lm.tok_encode("Q: Calculate 3 + 4. A:")
    ids = torch.tensor([context])
    generated = lm.model.generate_latent(ids, torch.ones_like(ids), max_new_tokens=5, action_mode="greedy")
    greedy_tokens = generated.sequences[0, len(context):].tolist()
    wrong = [*greedy_tokens[:-1], (greedy_tokens[-1] + 1) % len(lm.tokenizer)]
    batch = lm._loglikelihood_tokens([(None, context, greedy_tokens), (None, context, wrong),
                                      (None, lm.tok_encode("a much longer context to pad the others"), [5])])
    assert batch[0][1] is True and batch[1][1] is False
    alone = lm._loglikelihood_tokens([(None, context, greedy_tokens)])[0][0]
    assert batch[0][0] == pytest.approx(alone, abs=1e-4)

    # Rolling: a text within one window is scored after the EOS start marker, like an empty context.
    (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("hello there",), 0)])
    assert rolling == pytest.approx(got[2][0], abs=1e-4)


def test_loglikelihood_rolling_windows(lm, monkeypatch):
    """Over max_length, each window is scored separately; compare with direct forwards of the harness's
    windows."""
    from lm_eval.utils import get_rolling_token_windows

    text = " ".join(["Convert the point"] * 30)
    full = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])[0]
    monkeypatch.setattr(lm, "_max_length", 16)
    (windowed,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    tokens = lm.tok_encode(text, add_special_tokens=False)
    expected = 0.0
    for inputs, targets in get_rolling_token_windows(tokens, lm.tokenizer.eos_token_id, 16, 1):
        ids = torch.tensor([inputs])
        with torch.no_grad():
            logprobs = lm.model(ids, torch.ones_like(ids)).logits[0].float().log_softmax(-1)
        # The last len(targets) logits score the targets (logits at t score token t + 1).
        expected += logprobs[-len(targets):].gather(-1, torch.tensor(targets)[:, None]).sum().item()
    assert len(tokens) > 16 and windowed == pytest.approx(expected, abs=1e-3)
    assert windowed != pytest.approx(full, abs=1e-3)


def test_generate_until_stops_segments_and_sampling(lm, monkeypatch):
    prompts = ["Q: Calculate 3 + 4. A:", "Convert the point", "x"]
    free = lm.generate_until([_gen(p, until=["@@@"], max_gen_toks=12, do_sample=False) for p in prompts])
    # Segmented decoding (stop checks every 3 tokens) gives exactly the uninterrupted greedy output.
    monkeypatch.setattr(lm, "stop_check_every", 3)
    assert lm.generate_until([_gen(p, until=["@@@"], max_gen_toks=12, do_sample=False)
                              for p in prompts]) == free
    # A stop string cuts the text at its first occurrence.
    # A stop string taken from the output (no U+FFFD: random weights emit partial UTF-8 byte sequences).
    stop = next(free[0][i:i + 2] for i in range(2, len(free[0]) - 1) if "\ufffd" not in free[0][i:i + 2])
    (cut,) = lm.generate_until([_gen(prompts[0], until=[stop], max_gen_toks=12, do_sample=False)])
    assert cut == free[0][: free[0].find(stop)]

    calls = []
    original = lm.model.generate_latent

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append({**{k: kwargs[k] for k in ("action_mode", "action_top_k", "action_temperature")},
                      "new": out.sequences.shape[1] - out.prompt_length})
        return out

    monkeypatch.setattr(lm.model, "generate_latent", spy)
    lm.generate_until([_gen("x", until=[], max_gen_toks=4, do_sample=False)])
    assert calls[-1]["action_mode"] == "greedy"
    lm.generate_until([_gen("x", until=[], max_gen_toks=4, do_sample=True, temperature=2.0, top_k=3)])
    assert calls[-1] | {"new": 0} == {"action_mode": "sample", "action_top_k": 3, "action_temperature": 2.0,
                                      "new": 0}
    monkeypatch.setattr(lm, "action_mode", "random")
    lm.generate_until([_gen("x", until=[], max_gen_toks=4, do_sample=False)])
    assert calls[-1]["action_mode"] == "random"
    # A budget beyond the window is capped at half of it (math500 asks 1024 tokens of tiny models).
    monkeypatch.setattr(lm, "_max_length", 16)
    before = len(calls)
    lm.generate_until([_gen("x", until=[], max_gen_toks=100, do_sample=False)])
    assert 0 < sum(call["new"] for call in calls[before:]) <= 8


def test_lm_eval_cli_offline(cola_dir, math500_file, tmp_path):
    """Both shell forms, in parallel: task names via `python -m cola.eval.lm_eval_model`, a YAML path via the
    stock `lm_eval` (whose !function resolution imports evals/utils.py, which registers the model)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = ["--model", "cola", "--model_args", f"pretrained={cola_dir}", "--device", "cpu", "--limit", "2",
              "--gen_kwargs", "max_gen_toks=4", "--metadata", f"math500_path={math500_file}", "--log_samples"]
    by_name = [sys.executable, "-m", "cola.eval.lm_eval_model", "run", *common,
               "--tasks", "cola_math500_local", "--include_path", str(EVALS_DIR),
               "--output_path", str(tmp_path / "by_name")]
    lm_eval_bin = Path(sys.executable).with_name("lm_eval")
    by_path = [str(lm_eval_bin), "run", *common, "--tasks", str(EVALS_DIR / "cola_math500_local.yaml"),
               "--output_path", str(tmp_path / "by_path")]
    procs = {name: subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
             for name, cmd in (("by_name", by_name), ("by_path", by_path))}
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output[-3000:]
        assert "cola_math500_local" in output
        (result_file,) = (tmp_path / name).rglob("results_*.json")
        results = json.loads(result_file.read_text())["results"]["cola_math500_local"]
        assert results["exact_match,none"] == 0.0 and results["sample_len"] == 2
        assert len(list((tmp_path / name).rglob("samples_cola_math500_local_*.jsonl"))) == 1
