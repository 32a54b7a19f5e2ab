"""Evaluation loops on real tiny models saved as pipeline folders: scoring, accuracy, perplexity, diversity,
probe."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from cola.base.tiny import build_tiny_base
from cola.config import TinyBaseConfig
from cola.eval.context import EvalContext, EvalError, headline_metrics
from cola.eval.generate import generate_texts
from cola.eval.perplexity import perplexity
from cola.eval.probes import action_following_probe, semantic_diversity_eval
from cola.eval.runner import known_tasks, run_task
from cola.eval.scoring import binomial_stderr, task_accuracy
from cola.model import CoLAForCausalLM
from cola.model.checkpoint import load_model_and_tokenizer, save_hf_folder
from cola.tasks import scorer
from cola.tasks.procedural import make_examples

TASKS = ("arith", "wordprob", "countdown", "spell", "wrev")
NUM_ACTIONS = 8


def build_assets(root: Path) -> dict:
    """A tiny base and its CoLA wrapper saved as model folders, plus `data/tasks/test/<task>.jsonl` files."""
    examples = {task: make_examples(task, 6, seed=0) for task in TASKS}
    lines = [ex["text"] for exs in examples.values() for ex in exs]
    shape = TinyBaseConfig(
        vocab_size=300,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    base, tokenizer = build_tiny_base(lines, shape, seed=0)
    torch.manual_seed(0)
    cola = CoLAForCausalLM.from_base(base, num_actions=NUM_ACTIONS, merge_intermediate_size=64)
    save_hf_folder(base, tokenizer, root / "base")
    save_hf_folder(cola, tokenizer, root / "cola")
    task_dir = root / "data" / "tasks" / "test"
    task_dir.mkdir(parents=True)
    for task, exs in examples.items():
        (task_dir / f"{task}.jsonl").write_text("".join(json.dumps(ex) + "\n" for ex in exs))
    return {"root": root, "examples": examples, "lines": lines}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    found = build_assets(tmp_path_factory.mktemp("harness"))
    for kind in ("cola", "base"):
        model, tokenizer, loaded_kind = load_model_and_tokenizer(found["root"] / kind)
        assert loaded_kind == kind
        found[kind] = model
    found["tokenizer"] = tokenizer
    return found


# --------------------------------------------------------------------------------------------- scoring


def _example(task: str) -> dict:
    return make_examples(task, 1, seed=3)[0]


@pytest.mark.parametrize("task", ["arith", "wordprob"])
def test_math_tasks_grade_the_last_box(task: str) -> None:
    ex = _example(task)
    assert scorer(task).score(ex, ex["completion"])
    assert scorer(task).score(ex, f" \\boxed{{0}} so \\boxed{{{ex['answer']}}}")  # the last box counts
    assert not scorer(task).score(ex, f" \\boxed{{{int(ex['answer']) + 1}}}")  # wrong
    assert not scorer(task).score(ex, f" \\boxed{{{ex['answer']}")  # malformed: unbalanced box
    assert not scorer(task).score(ex, f" {ex['answer']}")  # missing box
    assert scorer(task).format_ok(ex["completion"]) and not scorer(task).format_ok(f" {ex['answer']}")


def test_any_example_with_a_math_answer_is_graded_by_equivalence() -> None:
    example = {"problem": "What is 1/2?", "answer": "\\frac{1}{2}"}
    assert scorer("math500").score(example, "so \\boxed{0.5}")
    assert not scorer("math500").score(example, "so \\boxed{0.6}")


@pytest.mark.parametrize("task", ["spell", "wrev"])
def test_copy_tasks_need_an_exact_boxed_copy(task: str) -> None:
    ex = _example(task)
    answer = ex["answer"]
    assert scorer(task).score(ex, ex["completion"])
    assert scorer(task).score(ex, f" \\boxed{{  {answer} }}")  # surrounding whitespace is stripped
    assert not scorer(task).score(ex, f" \\boxed{{{answer.upper()}x}}")  # wrong
    assert not scorer(task).score(ex, f" \\boxed{{{answer}")  # malformed
    assert not scorer(task).score(ex, f" {answer}")  # missing box


def test_countdown_checks_numbers_target_and_format() -> None:
    ex = _example("countdown")
    a, b, c = ex["numbers"]
    countdown = scorer("countdown")
    assert countdown.score(ex, ex["completion"])
    assert countdown.format_ok(ex["completion"])
    assert not countdown.score(ex, f" <think> x </think> <answer>{a}+{b}</answer>")  # misses a number
    assert not countdown.score(ex, f" <answer>{a}+{b}+</answer>")  # malformed expression
    assert not countdown.score(ex, f" {ex['answer']}")  # no answer tag
    assert not countdown.format_ok(f" <answer>{ex['answer']}</answer>")  # no think block
    assert not countdown.format_ok(ex["completion"] + " and more")  # trailing text


def test_binomial_stderr() -> None:
    assert binomial_stderr(0.25, 300) == pytest.approx(math.sqrt(0.25 * 0.75 / 300))
    assert binomial_stderr(0.0, 10) == 0.0


# --------------------------------------------------------------------------------------------- generation


@pytest.mark.parametrize("kind", ["cola", "base"])
def test_batched_generation_matches_one_prompt_at_a_time(assets: dict, kind: str) -> None:
    prompts = [ex["prompt"] for ex in assets["examples"]["countdown"][:2] + assets["examples"]["arith"][:2]]
    opts = dict(kind=kind, max_new_tokens=6, stop_at_eos=False)
    batched = generate_texts(assets[kind], assets["tokenizer"], prompts, batch_size=4, **opts)
    single = generate_texts(assets[kind], assets["tokenizer"], prompts, batch_size=1, **opts)
    assert [r["token_ids"] for r in batched] == [r["token_ids"] for r in single]
    assert [r["prompt"] for r in batched] == prompts
    for record in batched:
        assert len(record["token_ids"]) == 6
        if kind == "cola":
            assert len(record["actions"]) == 6 and all(0 <= a < NUM_ACTIONS for a in record["actions"])
        else:
            assert record["actions"] is None


def test_seeded_sampling_is_reproducible(assets: dict) -> None:
    prompts = [ex["prompt"] for ex in assets["examples"]["spell"][:3]]
    for kind, opts in (("cola", dict(action_mode="sample")), ("base", dict(token_sampling=True))):
        runs = [
            generate_texts(
                assets[kind],
                assets["tokenizer"],
                prompts,
                kind=kind,
                max_new_tokens=5,
                batch_size=2,
                seed=7,
                **opts,
            )
            for _ in range(2)
        ]
        assert runs[0] == runs[1]


def test_task_accuracy_records_and_stderr(assets: dict) -> None:
    examples = assets["examples"]["arith"]
    result = task_accuracy(
        assets["cola"],
        assets["tokenizer"],
        "cola",
        examples,
        max_new_tokens=4,
        batch_size=4,
        limit=5,
        progress=False,
    )
    assert result["n"] == 5 and len(result["records"]) == 5
    assert result["stderr"] == pytest.approx(binomial_stderr(result["accuracy"], 5))
    assert 0.0 <= result["format_rate"] <= 1.0
    for i, record in enumerate(result["records"]):
        assert record["index"] == i and record["answer"] == examples[i]["answer"]
        assert record["correct"] == scorer("arith").score(examples[i], record["completion"])
        assert len(record["actions"]) <= 4
    assert result["accuracy"] == sum(r["correct"] for r in result["records"]) / 5


# --------------------------------------------------------------------------------------------- perplexity


def test_perplexity_keys_and_usage(assets: dict) -> None:
    tok, lines = assets["tokenizer"], assets["lines"]
    cola = perplexity(assets["cola"], tok, "cola", lines, seq_len=64, batch_size=4)
    base = perplexity(assets["base"], tok, "base", lines, seq_len=64, batch_size=4)
    for key in (
        "base_loss",
        "wm_loss_idm",
        "wm_loss_policy_argmax",
        "wm_loss_policy_marginal",
        "loss",
        "perplexity",
        "n_tokens",
        "codes_alive",
        "max_code_share",
        "usage_entropy",
        "usage_histogram",
    ):
        assert key in cola, key
    assert set(base) == {"base_loss", "loss", "perplexity", "n_tokens"}
    assert cola["base_loss"] == pytest.approx(base["base_loss"], abs=1e-5)  # the same frozen base
    assert cola["n_tokens"] == base["n_tokens"] == sum(cola["usage_histogram"])
    assert len(cola["usage_histogram"]) == NUM_ACTIONS and 0 < cola["max_code_share"] <= 1
    assert cola["usage_entropy"] <= math.log(NUM_ACTIONS) + 1e-9
    assert cola["loss"] == cola["wm_loss_policy_marginal"] and cola["perplexity"] == math.exp(cola["loss"])


def test_policy_marginal_loss_equals_a_direct_sum_over_actions(assets: dict) -> None:
    model, tok = assets["cola"], assets["tokenizer"]
    line = assets["lines"][0]
    result = perplexity(model, tok, "cola", [line], seq_len=256)
    ids = torch.tensor([[tok.eos_token_id, *tok(line, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        h, _ = model.base_hidden(ids)
        pi = torch.softmax(model.policy_logits(h)[0][0, :-1].double(), -1)  # (T-1, K)
        # p(x_{t+1}) = Σ_a π(a|s_t) p(x_{t+1}|s_t, a), in probability space, through the model's own forward
        p = torch.zeros(ids.shape[1] - 1, dtype=torch.float64)
        for a in range(NUM_ACTIONS):
            logits = model(ids, actions=torch.full_like(ids, a)).logits[0, :-1].double()
            p += pi[:, a] * torch.softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    assert result["n_tokens"] == ids.shape[1] - 1
    assert result["wm_loss_policy_marginal"] == pytest.approx(float(-p.log().mean()), rel=1e-5)
    # and at one position on its own: a 2-token stream ("EOS x") has exactly one target
    first = perplexity(model, tok, "cola", [line], max_tokens=2)
    assert first["n_tokens"] == 1
    assert first["wm_loss_policy_marginal"] == pytest.approx(float(-p[0].log()), rel=1e-5)


# ------------------------------------------------------------------------------------------- diversity, probe


def test_semantic_diversity_eval_methods(assets: dict) -> None:
    prefixes = [ex["prompt"] for ex in assets["examples"]["wrev"][:2]]
    result = semantic_diversity_eval(assets["cola"], assets["tokenizer"], "cola", prefixes, m=3, length=6)
    assert set(result) == {"latent_random", "token_sampling", "random_tokens"}
    for method in result.values():
        assert method["n_groups"] == 2 and method["group_size"] == 3 and len(method["examples"]) == 3
        assert 0 < method["qd"] and -1 <= method["mean_similarity"] <= 1
    base = semantic_diversity_eval(assets["base"], assets["tokenizer"], "base", prefixes, m=2, length=4)
    assert set(base) == {"token_sampling", "random_tokens"}


def test_action_following_probe(assets: dict) -> None:
    prefixes = [ex["prompt"] for ex in assets["examples"]["arith"][:3]]
    weak = action_following_probe(assets["cola"], assets["tokenizer"], prefixes, length=5)
    assert weak["actions"] == [0, 1, 2, 3] and weak["n_prefixes"] == 3
    assert 0 <= weak["distinct_rate"] <= 1 and 1 <= weak["mean_distinct"] <= 4
    # A codebook scaled up makes the action dominate the merged state: continuations must split apart.
    strong_model = copy.deepcopy(assets["cola"])
    with torch.no_grad():
        strong_model.action_codebook.weight.mul_(200.0)
    strong = action_following_probe(strong_model, assets["tokenizer"], prefixes, length=5)
    assert strong["next_token_tv"] > weak["next_token_tv"]
    assert strong["mean_distinct"] > 1


# --------------------------------------------------------------------------------------------- dispatch


def _ctx(assets: dict, kind: str, **kw) -> EvalContext:
    return EvalContext(
        model_path=str(assets["root"] / kind),
        model=assets[kind],
        tokenizer=assets["tokenizer"],
        kind=kind,
        data_dir=assets["root"] / "data",
        progress=False,
        **kw,
    )


def test_run_task_dispatch_and_errors(assets: dict) -> None:
    result = run_task("countdown", _ctx(assets, "base", limit=2))
    assert result["n"] == 2
    assert known_tasks(assets["root"] / "data", "test") == [
        *sorted(TASKS),
        "perplexity",
        "diversity",
        "probe",
    ]
    with pytest.raises(EvalError, match=r"unknown task 'nope'.*known: arith, countdown"):
        run_task("nope", _ctx(assets, "cola"))
    with pytest.raises(EvalError, match="needs a CoLA model"):
        run_task("probe", _ctx(assets, "base"))
    assert run_task("perplexity", _ctx(assets, "cola", limit=3))["n_tokens"] > 0


def test_headline_metrics_flattens_numbers_only() -> None:
    flat = headline_metrics({"a": {"qd": 1.5, "examples": ["x"]}, "n": 3, "records": [], "ok": True})
    assert flat == {"a/qd": 1.5, "n": 3}
