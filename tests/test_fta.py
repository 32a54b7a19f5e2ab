"""SFT batches, FTA-P / FTA-I and the SFT baseline on a tiny base with a real tokenizer
(cola-spec.md §3, §7)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import random

import pytest
import torch

from cola.base.tiny import build_tiny_base
from cola.config import FTAConfig, SFTConfig, TinyBaseConfig, TrainConfig, from_dict, missing_help
from cola.errors import ColaError
from cola.model import CoLAForCausalLM
from cola.tasks import TASK_NAMES, TASKS
from cola.train.core import BatchTrainer
from cola.train.fta import (
    evaluate_response_ce,
    run_fta,
    run_sft,
)
from cola.train.sft_data import SFTBatches, load_task_examples


def _examples(n: int = 96, seed: int = 0) -> list[dict]:
    """Arith-shaped examples, plus some longer countdown-shaped ones to vary the lengths within a batch."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if i % 4 == 3:
            out.append({"task": "countdown", "prompt": f"Q: Make {a + b} from {a} and {b}. A:",
                        "completion": f" <think> {a} + {b} = {a + b} </think> <answer>{a}+{b}</answer>"})
        else:
            out.append({"task": "arith", "prompt": f"Q: Calculate {a} + {b}. A:",
                        "completion": f" \\boxed{{{a + b}}}"})
    return out


@functools.cache
def _tiny_base():
    examples = _examples()
    cfg = TinyBaseConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=64, max_position_embeddings=128)
    return build_tiny_base([ex["prompt"] + ex["completion"] for ex in examples], cfg, seed=0)


def _base():
    return copy.deepcopy(_tiny_base()[0])


def _tokenizer():
    return _tiny_base()[1]


def _cola(output_head: str = "paper") -> CoLAForCausalLM:
    torch.manual_seed(0)
    return CoLAForCausalLM.from_base(_base(), num_actions=8, merge_intermediate_size=64,
                                     output_head=output_head).eval()


_TEST_OPTIM = dict(steps=30, batch_size=8, seq_len=64, lr=1e-2, warmup_steps=3, log_every=10,
                   checkpoint_every=10, seed=0, threads=1)


def _cfg(variant: str = "fta_p", **overrides) -> FTAConfig:
    return FTAConfig(variant=variant, policy_rebc_steps=20, **{**_TEST_OPTIM, **overrides})


def _sft_cfg(**overrides) -> SFTConfig:
    return SFTConfig(**{**_TEST_OPTIM, **overrides})


def _snapshot(model: CoLAForCausalLM) -> dict[str, dict[str, torch.Tensor]]:
    return {g: {n: p.detach().clone() for n, p in named} for g, named in model.group_parameters().items()}


def _changed_groups(model: CoLAForCausalLM, before: dict[str, dict[str, torch.Tensor]]) -> set[str]:
    """Groups in which any parameter differs from `before` (the others are bit-identical)."""
    changed = set()
    for group, named in model.group_parameters().items():
        if any(not torch.equal(p, before[group][n]) for n, p in named):
            changed.add(group)
    return changed


# ----------------------------------------------------------------------------------------------- data


def test_sequences_and_loss_mask_cover_exactly_completion_and_eos():
    tok, examples = _tokenizer(), _examples()
    batches = SFTBatches(examples, tok, batch_size=6, max_len=64, seed=0)
    assert batches.n_truncated == batches.n_dropped == 0
    batch = next(batches)
    ids, attn, lm = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    assert ids.shape == attn.shape == lm.shape and lm.dtype == torch.bool
    eos = tok.eos_token_id
    for row in range(ids.shape[0]):
        n = int(attn[row].sum())
        assert attn[row, :n].all() and not attn[row, n:].any(), "padding must be on the right"
        assert (ids[row, n:] == tok.pad_token_id).all()
        real = ids[row, :n].tolist()
        assert real[0] == eos and real[-1] == eos
        text = tok.decode(real[1:-1])
        ex = next(e for e in examples if e["prompt"] + e["completion"] == text)
        prompt = tok(ex["prompt"], add_special_tokens=False)["input_ids"]
        completion = tok(ex["completion"], add_special_tokens=False)["input_ids"]
        assert real == [eos, *prompt, *completion, eos]
        assert ids[row][lm[row]].tolist() == [*completion, eos]
        assert lm[row].nonzero().flatten().tolist() == list(range(1 + len(prompt), n))


def test_sampling_is_seeded_and_with_replacement():
    tok, examples = _tokenizer(), _examples(8)
    a = SFTBatches(examples, tok, batch_size=32, max_len=64, seed=3)
    b = SFTBatches(examples, tok, batch_size=32, max_len=64, seed=3)
    first, second = next(a), next(b)
    assert torch.equal(first["input_ids"], second["input_ids"])
    # 32 draws from 8 examples: duplicates are certain with replacement.
    assert len({tuple(r.tolist()) for r in first["input_ids"]}) < 32


def test_long_examples_are_cut_and_prompts_that_do_not_fit_dropped():
    tok = _tokenizer()
    examples = [{"prompt": "Q: Calculate 1 + 2. A:", "completion": " \\boxed{3}"},
                {"prompt": "Q: Calculate 12 + 34 + 56 + 78 + 90 + 12 + 34. A:",
                 "completion": " \\boxed{316}"}]
    short_len = len(tok(examples[0]["prompt"], add_special_tokens=False)["input_ids"]) + 3
    batches = SFTBatches(examples, tok, batch_size=4, max_len=short_len, seed=0)
    assert (len(batches), batches.n_truncated, batches.n_dropped) == (1, 1, 1)
    batch = next(batches)
    assert batch["input_ids"].shape[1] == short_len and batch["loss_mask"][0].sum() == 2
    with pytest.raises(ColaError, match="no SFT example fits"):
        SFTBatches(examples[1:], tok, batch_size=4, max_len=short_len, seed=0)


def test_load_task_examples(tmp_path):
    folder = tmp_path / "tasks" / "train"
    folder.mkdir(parents=True)
    examples = _examples(6)
    (folder / "arith.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples[:4]))
    (folder / "wrev.jsonl").write_text(json.dumps(examples[4]) + "\n\n")
    assert load_task_examples(tmp_path / "tasks", "train", ["wrev", "arith"]) == [examples[4], *examples[:4]]
    with pytest.raises(FileNotFoundError, match="spell.jsonl"):
        load_task_examples(tmp_path / "tasks", "train", ["spell"])
    (folder / "spell.jsonl").write_text('{"prompt": "Q: x A:"}\n')
    with pytest.raises(ColaError, match="spell.jsonl:1"):
        load_task_examples(tmp_path / "tasks", "train", ["spell"])


def test_right_padding_gives_the_unpadded_logits():
    """Positions cumsum − 1 are the unpadded ones on a right-padded row, so real positions match exactly."""
    tok, model = _tokenizer(), _cola()
    batches = SFTBatches(_examples(), tok, batch_size=8, max_len=64, seed=1)
    batch = next(batches)
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max(), "the batch should mix lengths"
    with torch.no_grad():
        padded = model(batch["input_ids"], batch["attention_mask"])
        base_logits = model.base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        idm = model.idm_actions(batch["input_ids"], batch["attention_mask"])
        for row, n in enumerate(lengths.tolist()):
            ids = batch["input_ids"][row : row + 1, :n]
            alone = model(ids)
            torch.testing.assert_close(padded.logits[row, :n], alone.logits[0], atol=1e-5, rtol=1e-5)
            assert torch.equal(padded.actions[row, :n], alone.actions[0])
            torch.testing.assert_close(base_logits[row, :n], model.base(ids).logits[0], atol=1e-5, rtol=1e-5)
            # IDM labels agree on every slot that has a real target; the last real slot reads a pad's IDM
            # output when padded (its own when not), but its target is padding and never scored.
            assert torch.equal(idm[row, : n - 1], model.idm_actions(ids)[0, : n - 1])


# ----------------------------------------------------------------------------------------------- configs


def test_configs_are_documented_and_validated():
    assert not missing_help(FTAConfig) and not missing_help(SFTConfig)
    # Fine-tuning trains on the tasks RL targets, never on the retention tasks (their roles say which).
    assert set(SFTConfig().tasks) == {n for n in TASK_NAMES if TASKS[n].role != "retention"}
    cfg = from_dict(FTAConfig, {"variant": "fta_i", "tasks": ["arith"], "steps": 5}, "fta")
    # Flat optimisation keys with the fine-tuning defaults, not OptimConfig's pretraining ones.
    assert cfg.variant == "fta_i" and cfg.steps == 5
    assert (cfg.lr, cfg.weight_decay) == (3e-4, 0.0) != (TrainConfig().lr, TrainConfig().weight_decay)
    with pytest.raises(ColaError, match="fta.variant"):
        from_dict(FTAConfig, {"variant": "fta_x"}, "fta")
    with pytest.raises(ColaError, match=r"fta.tasks\[1\]"):
        from_dict(FTAConfig, {"tasks": ["arith", "algebra"]}, "fta")
    with pytest.raises(ColaError, match="at least one task"):
        from_dict(FTAConfig, {"tasks": []}, "fta")
    with pytest.raises(ColaError, match="seq_len must be >= 3"):
        from_dict(FTAConfig, {"seq_len": 2}, "fta")  # one line naming the key, from __post_init__
    # Same budget and batch shape for CoLA's FTA and the token baseline's SFT by default.
    shared = dataclasses.asdict(SFTConfig())
    assert {k: v for k, v in dataclasses.asdict(FTAConfig()).items() if k in shared} == shared


# ----------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("head", ["residual", "paper"])
def test_fta_p_trains_only_base_and_head_and_lowers_the_response_loss(head):
    """The paper head lets gradient reach the base only via −h and learns slowly at tiny width (calibration.md
    §3), so only the residual head (the tiny default) is held to a large drop."""
    tok, examples, model = _tokenizer(), _examples(), _cola(head)
    before_ce = evaluate_response_ce(model, tok, examples, max_len=64)
    before = _snapshot(model)
    metrics, history = run_fta(model, tok, examples, _cfg("fta_p"))
    assert [step for step, _ in history] == [10, 20, 30] and history[-1][1] == metrics
    after_ce = evaluate_response_ce(model, tok, examples, max_len=64)
    print(f"FTA-P ({head} head) response CE under policy actions {before_ce:.3f} -> {after_ce:.3f}")
    assert _changed_groups(model, before) == {"base", "head"}
    assert after_ce < (0.5 if head == "residual" else 0.99) * before_ce
    assert metrics["tokens_per_second"] > 0 and "response_ce" in metrics
    assert 1 <= metrics["action_usage_perplexity"] <= model.config.num_actions
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_fta_i_trains_the_base_then_only_the_policy():
    tok, examples, model = _tokenizer(), _examples(), _cola("residual")
    cfg = _cfg("fta_i")
    start = _snapshot(model)
    states: dict[str, dict] = {}
    logged: list[tuple[int, set[str]]] = []

    def on_log(step: int, values: dict[str, float]) -> None:
        logged.append((step, set(values)))
        if step == cfg.steps:  # last step of sub-stage (a): the weights (b) starts from
            states["a"] = _snapshot(model)

    before_ce = evaluate_response_ce(model, tok, examples, max_len=64, action_source="idm")
    metrics, history = run_fta(model, tok, examples, cfg, on_log=on_log)
    assert [(step, set(values)) for step, values in history] == logged
    assert _changed_groups(model, start) == {"base", "head", "policy"}
    after_a = states["a"]
    for group in ("idm", "codebook", "merge", "policy"):
        assert all(torch.equal(after_a[group][n], start[group][n]) for n in start[group]), group
    assert all(not torch.equal(after_a["base"][n], start["base"][n]) for n in list(start["base"])[:3])
    assert _changed_groups(model, after_a) == {"policy"}
    after_ce = evaluate_response_ce(model, tok, examples, max_len=64, action_source="idm")
    print(f"FTA-I world-model response CE (IDM actions) {before_ce:.3f} -> {after_ce:.3f}")
    assert after_ce < before_ce
    steps = [s for s, _ in logged]
    assert steps == [10, 20, 30, 40, 50]  # re-BC steps continue after the world-model steps
    assert all(k.startswith("rebc_") for k in logged[-1][1])
    assert "rebc_train_top1" in metrics and "response_ce" in metrics


def test_sft_trains_the_whole_base_and_lowers_its_response_loss():
    tok, examples, base = _tokenizer(), _examples(), _base()
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    before_ce = evaluate_response_ce(base, tok, examples, max_len=64)
    metrics, _ = run_sft(base, tok, examples, _sft_cfg())
    after_ce = evaluate_response_ce(base, tok, examples, max_len=64)
    print(f"SFT response CE {before_ce:.3f} -> {after_ce:.3f}")
    assert all(not torch.equal(p, before[n]) for n, p in base.named_parameters())
    assert after_ce < 0.5 * before_ce and metrics["tokens_per_second"] > 0 and not base.training


class _Stop(Exception):
    pass


def _stop_at(step_to_stop: int):
    def on_log(step: int, _values: dict[str, float]) -> None:
        if step >= step_to_stop:
            raise _Stop
    return on_log


# Logged every 5 steps, checkpointed every 10: a kill at a log step 15 leaves the step-10 checkpoint behind
# (the core logs before it checkpoints, so a kill at step 10 itself would leave none).
_RESUME = dict(steps=20, log_every=5, checkpoint_every=10)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("case", ["killed-in-world", "killed-in-rebc", "stale-world-result"])
def test_killed_fta_i_resumes_to_the_same_weights(tmp_path, case, capsys, monkeypatch):
    tok, examples = _tokenizer(), _examples()
    cfg = _cfg("fta_i", **_RESUME)
    reference = _cola("residual")
    run_fta(reference, tok, examples, cfg)
    stop_at = 15 if case == "killed-in-world" else 35
    with pytest.raises(_Stop):
        run_fta(_cola("residual"), tok, examples, cfg, checkpoint_dir=tmp_path, on_log=_stop_at(stop_at))
    in_rebc = stop_at > cfg.steps
    assert (tmp_path / "fta_i_world" / "meta.json").is_file()  # (a)'s checkpoint: mid-run, or its kept end
    assert (tmp_path / "fta_i_policy" / "meta.json").is_file() == in_rebc
    if case == "stale-world-result":  # as if (a) had finished under other params: it must be redone
        meta = tmp_path / "fta_i_world" / "meta.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "fingerprint": "other"}))
    trained: dict[str, int] = {}
    step = BatchTrainer.training_step

    def counted(self):
        trained[self.description] = trained.get(self.description, 0) + 1
        return step(self)

    monkeypatch.setattr(BatchTrainer, "training_step", counted)
    resumed, steps = _cola("residual"), []
    run_fta(resumed, tok, examples, cfg, checkpoint_dir=tmp_path, on_log=lambda step, _: steps.append(step))
    assert ("ignoring" in capsys.readouterr().out) == (case == "stale-world-result")
    # Killed in (a): (a) continues from its step-10 checkpoint. Killed in (b): the finished (a) is restored,
    # not redone, and (b) continues from its own step 10. A stale (a) result: (a) is redone, (b) still
    # resumes.
    assert trained == {"killed-in-world": {"fta_i_world": 10, "fta_i_policy": 20},
                       "killed-in-rebc": {"fta_i_policy": 10},
                       "stale-world-result": {"fta_i_world": 20, "fta_i_policy": 10}}[case]
    assert steps == [5, 10, 15, 20, 25, 30, 35, 40]  # restored curves are replayed: the run's log is whole
    _assert_same_weights(reference, resumed)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "a finished run leaves no checkpoint behind"


def test_killed_fta_p_and_sft_resume_to_the_same_weights(tmp_path):
    tok, examples = _tokenizer(), _examples()
    cfg = _cfg("fta_p", **_RESUME)
    reference = _cola("paper")
    run_fta(reference, tok, examples, cfg)
    with pytest.raises(_Stop):
        run_fta(_cola("paper"), tok, examples, cfg, checkpoint_dir=tmp_path, on_log=_stop_at(15))
    assert (tmp_path / "fta_p" / "meta.json").is_file()
    resumed = _cola("paper")
    run_fta(resumed, tok, examples, cfg, checkpoint_dir=tmp_path)
    _assert_same_weights(reference, resumed)

    sft_cfg = _sft_cfg(**_RESUME)
    reference_base = _base()
    run_sft(reference_base, tok, examples, sft_cfg)
    with pytest.raises(_Stop):
        run_sft(_base(), tok, examples, sft_cfg, checkpoint_dir=tmp_path, on_log=_stop_at(15))
    assert (tmp_path / "sft" / "meta.json").is_file()
    resumed_base = _base()
    run_sft(resumed_base, tok, examples, sft_cfg, checkpoint_dir=tmp_path)
    _assert_same_weights(reference_base, resumed_base)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
