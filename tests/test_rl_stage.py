"""The `rl` section and stage library: per-task settings, several seeds, resuming after a kill; the
comparison's evaluation of a multi-seed RL folder, and its reuse."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from cola.comparison import model_variants
from cola.config import ParamsError, RLConfig, RLEvalConfig, from_dict, missing_help
from cola.model import CoLAForCausalLM
from cola.model.checkpoint import save_hf_folder
from cola.rl.stage import run_rl, seed_model_dir

WORDS = ["<pad>", "<eos>", *"abcdefghij", "Q:", "A:", "\\boxed{h}"]


def test_rl_section_per_task_settings():
    assert not missing_help(RLConfig)
    cfg = from_dict(RLConfig, {"lr": "1e-6", "tasks": {"countdown": {"max_new_tokens": 50}}}, "rl")
    assert (cfg.lr, cfg.task("countdown").max_new_tokens) == (1e-6, 50)
    # A partial override of a task keeps that task's other defaults.
    assert cfg.task("countdown").reward_threshold == RLConfig().tasks.countdown.reward_threshold
    assert cfg.task("math").max_new_tokens == 12
    # Per-task steps override rl.steps (the schedule's length too); null keeps it.
    steps = from_dict(RLConfig, {"steps": 50, "tasks": {"countdown": {"steps": 20}, "math": {"steps": None}}},
                      "rl")
    assert (steps.for_task("countdown").steps, steps.for_task("math").steps) == (20, 50)
    assert steps.for_task("countdown").lr == steps.lr
    with pytest.raises(ValueError, match="unknown RL task 'maths'"):
        steps.task("maths")


@pytest.mark.parametrize(("values", "message"), [
    ({"seeds": []}, "at least one seed"),
    ({"seeds": [1, 1]}, "distinct"),
    ({"steps": 5, "warmup_steps": 10}, "warmup_steps"),
    ({"tasks": {"countdown": {"steps": 5}}}, "warmup_steps"),
    ({"advantage_mode": "group"}, "kl_in='reward' needs advantage_mode='gae'"),
    ({"method": "cola"}, "rl.method is not a known key"),
    ({"seed": 3}, "rl.seed is not a known key.*did you mean 'seeds'"),
])
def test_bad_rl_params_are_one_line_errors(values, message):
    with pytest.raises(ParamsError, match=message):
        from_dict(RLConfig, values, "rl")


def _project(tmp_path):
    """models/fta (a tiny CoLA model), models/sft (a tiny LM) and an arith train split; a toy vocabulary."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<eos>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    base = AutoModelForCausalLM.from_config(config)
    save_hf_folder(base, tokenizer, tmp_path / "models" / "sft")
    cola = CoLAForCausalLM.from_base(base, num_actions=8, merge_intermediate_size=64)
    save_hf_folder(cola, tokenizer, tmp_path / "models" / "fta")
    rows = [{"prompt": f"Q: {' '.join('abcdefghij'[(i * k) % 10] for i in range(1, 3))} A:", "answer": "h",
             "completion": " \\\\boxed{h}"}
            for k in range(12)]
    for name, part in (("train", rows), ("val", rows[:4])):
        split = tmp_path / "data" / "tasks" / name
        split.mkdir(parents=True)
        (split / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return tmp_path


def _cfg(**overrides) -> RLConfig:
    values = dict(steps=4, prompts_per_step=2, group_size=2, warmup_steps=1, log_every=1, checkpoint_every=2,
                  seeds=[0, 1], threads=1, lr=1e-2, tasks={"math": {"max_new_tokens": 3}}, val_every=2,
                  val_prompts=4)
    return from_dict(RLConfig, {**values, **overrides}, "rl")


class Killed(Exception):
    pass


def _untimed(stats: dict[str, float]) -> dict[str, float]:
    """Everything but wall-clock figures, which differ between any two runs."""
    return {k: v for k, v in stats.items() if "seconds" not in k and "tokens_per_second" not in k}


@pytest.mark.parametrize("method", ["cola", "token"])
def test_seeds_and_resume_after_a_kill_equal_an_uninterrupted_run(tmp_path, method):
    root = _project(tmp_path)
    cfg = _cfg()

    start = root / "models" / ("fta" if method == "cola" else "sft")

    def go(name: str, on_log=None):
        return run_rl(cfg, method, "math", tasks_dir=root / "data" / "tasks", start_dir=start,
                      out_dir=root / name, checkpoint_dir=root / "checkpoints" / name, on_log=on_log)

    clean = go("clean")
    curves = clean.records["curves"]
    assert sorted({r["seed"] for r in curves}) == [0, 1]
    assert [r["step"] for r in curves if r["seed"] == 1] == [1, 2, 3, 4]
    assert (clean.metrics["n_seeds"] == 2 and clean.metrics["seed0/steps"] == 4
            and "reward_end" in clean.metrics)
    variants = model_variants(root / "clean")
    assert variants == [(0, root / "clean"), (1, root / "clean" / "seeds" / "1")]
    assert not any((root / "checkpoints" / "clean").iterdir())  # emptied, but kept for DVC

    # Killed at step 3 of the second seed: its step-2 checkpoint and seed 0's finished state are on disk.
    def kill(step, stats):
        if "seed1/grpo_loss" in stats and step == 3:
            raise Killed

    with pytest.raises(Killed):
        go("resumed", kill)
    assert sorted(p.name for p in (root / "checkpoints" / "resumed").iterdir()) == ["seed-0", "seed-1"]
    logged = []
    resumed = go("resumed", lambda step, stats: logged.append((step, sorted(stats))))
    # The restored curves are replayed (MLflow gets the whole run again), then seed 1 continues from step 2.
    assert [step for step, _ in logged] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert [_untimed(r) for r in clean.records["curves"]] == [_untimed(r) for r in resumed.records["curves"]]
    assert _untimed(clean.metrics) == _untimed(resumed.metrics)
    for seed in cfg.seeds:
        weights_a = load_file(str(seed_model_dir(root / "clean", cfg.seeds, seed) / "model.safetensors"))
        weights_b = load_file(str(seed_model_dir(root / "resumed", cfg.seeds, seed) / "model.safetensors"))
        assert weights_a.keys() == weights_b.keys()
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_evaluate_folder_scores_every_seed_and_reuses_an_unchanged_result(tmp_path):
    from cola.rl.evaluation import evaluate_folder, headline

    root = _project(tmp_path)
    run_rl(_cfg(steps=2, checkpoint_every=10), "cola", "math", tasks_dir=root / "data" / "tasks",
           start_dir=root / "models" / "fta", out_dir=root / "models" / "rl" / "cola-math")
    test = root / "data" / "tasks" / "test"
    test.mkdir(parents=True)
    for task in ("arith", "spell"):
        rows = [{"task": task, "prompt": f"Q: {w} A:", "answer": "h", "completion": " \\boxed{h}"}
                for w in "abcdef"]
        (test / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "data" / "corpus").mkdir(parents=True)
    val = "".join(f"Q: {w} A: \\boxed{{h}}\n" for w in "abcdefgh")
    (root / "data" / "corpus" / "val.txt").write_text(val)
    cfg = RLEvalConfig(tasks=["arith", "spell"], limit=4, max_new_tokens=3, batch_size=4,
                       perplexity_tokens=128, diversity_tasks=["arith"], diversity_prompts=2,
                       diversity_samples=2, threads=1)

    def go(config, name="cola-math"):
        return evaluate_folder(root / "models" / "rl" / name, config,
                               test_dir=root / "data" / "tasks" / "test",
                               heldout=root / "data" / "corpus" / "val.txt", out_dir=root / "eval_rl" / name,
                               cache_dir=root / "cache" / name)

    summary, reused = go(cfg)
    metrics = summary["metrics"]
    assert not reused and metrics["n_seeds"] == 2 and summary["kind"] == "cola"
    assert {"arith_acc", "arith_acc_sd", "seed1/spell_acc", "val_ppl", "arith_qd",
            "arith_sampled_acc"} <= set(metrics)
    assert (root / "eval_rl" / "cola-math" / "seed1" / "spell.jsonl").is_file()
    assert set(headline(metrics)) >= {"arith_acc", "spell_acc_sd", "val_ppl", "arith_qd"}
    assert not any("/" in k for k in headline(metrics))
    again, reused = go(cfg)
    assert reused and again == summary
    _, reused = go(dataclasses.replace(cfg, limit=3))
    assert not reused


def test_curve_records_keep_only_the_fields_every_row_has() -> None:
    """DVC's plot renderer fails on a row that lacks a field; the validation accuracy is logged every
    `rl.val_every` steps only, so it stays out of the plot file."""
    from cola.rl.stage import curve_records

    histories = {0: [(10, {"reward_mean": 0.5, "kl": 0.1}), (20, {"reward_mean": 0.6, "kl": 0.2,
                                                                   "val_greedy_acc": 0.3})]}
    assert curve_records(histories) == [{"step": 10, "seed": 0, "reward_mean": 0.5, "kl": 0.1},
                                        {"step": 20, "seed": 0, "reward_mean": 0.6, "kl": 0.2}]
    assert curve_records({}) == []
