"""The GRPO trainer on tiny random models: what trains, what stays frozen, log-prob reuse, learning, resuming.

A 12-word word-level tokenizer keeps the vocabulary tiny so a toy reward ("the first generated word is X")
has signal at initialisation, for sampled tokens and for sampled latent actions alike. The CoLA model's
codebook is scaled up so that different actions already lead the (random) world model to different tokens.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from cola.config import ParamsError, RLConfig, from_dict, missing_help
from cola.model import CoLAForCausalLM
from cola.model.inputs import left_padded_positions
from cola.rl.grpo import GRPOTrainer, build_policy
from cola.rl.policies import LatentActionPolicy, LatentReference, Rollout, TokenPolicy

WORDS = ["<pad>", "<eos>", *"abcdefghij"]
# Prompts of different lengths, so left padding and per-row positions are exercised.
PROMPTS = [{"prompt": " ".join("abcdefghij"[(i * k) % 10] for i in range(1, 2 + k % 3))} for k in range(10)]
TARGET = "h"


def toy_reward(completion: str, example: dict) -> float:
    """1 when the first generated word is TARGET: learnable by moving a single early decision."""
    return 1.0 if completion.split()[:1] == [TARGET] else 0.0


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS (left padding, EOS as BOS)."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<eos>", padding_side="left")


def tiny_base(seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_cola(seed: int = 0) -> CoLAForCausalLM:
    model = CoLAForCausalLM.from_base(tiny_base(seed), num_actions=8, merge_intermediate_size=64).eval()
    with torch.no_grad():  # large action embeddings: distinct actions give distinct greedy tokens
        model.action_codebook.weight.normal_(0, 5.0, generator=torch.Generator().manual_seed(seed))
    return model


def make_model(method: str, seed: int = 0):
    return tiny_cola(seed) if method == "cola" else tiny_base(seed)


RUNTIME = ("max_new_tokens", "reward_threshold", "seed", "on_log", "checkpoint_dir", "keep_final")


def config(**overrides) -> RLConfig:
    values = dict(steps=30, prompts_per_step=4, group_size=8, lr=1e-2, warmup_steps=0)
    values.update(overrides)
    return RLConfig(**values)


def make_trainer(method: str, tokenizer, model=None, **overrides) -> GRPOTrainer:
    """A trainer on `model` (a fresh tiny one by default): RLConfig fields and runtime arguments mixed."""
    runtime = {"max_new_tokens": 3, "seed": 0, **{k: overrides.pop(k) for k in RUNTIME if k in overrides}}
    cfg = config(**overrides)
    model = make_model(method) if model is None else model
    return GRPOTrainer(build_policy(model, tokenizer, method, cfg), cfg, PROMPTS, toy_reward, **runtime)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------- what trains


def test_cola_rl_changes_only_the_policy_and_never_the_reference(tokenizer) -> None:
    model = tiny_cola()
    before = {g: [p.detach().clone() for _, p in named] for g, named in model.group_parameters().items()}
    trainer = make_trainer("cola", tokenizer, model, steps=3)
    ref_before = snapshot(trainer.ref)
    trainer.train()

    after = {g: [p.detach() for _, p in named] for g, named in model.group_parameters().items()}
    for group in ("base", "head", "idm", "codebook", "merge"):
        assert all(torch.equal(a, b) for a, b in zip(before[group], after[group], strict=True)), group
    assert not all(torch.equal(a, b) for a, b in zip(before["policy"], after["policy"], strict=True))
    assert {id(p) for p in trainer.params} == {id(p) for _, p in model.group_parameters()["policy"]}
    # The reference is the step-0 policy (stack + head only, no base), and it never moves.
    assert same(snapshot(trainer.ref), ref_before)
    assert isinstance(trainer.ref, LatentReference)
    n_ref = sum(p.numel() for p in trainer.ref.parameters())
    assert n_ref == sum(p.numel() for p in before["policy"])
    ref_policy = [*trainer.ref.stack.parameters(), *trainer.ref.head.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(ref_policy, before["policy"], strict=True))
    assert not any(p.requires_grad for p in trainer.ref.parameters())


def test_token_rl_changes_every_base_tensor_and_never_the_reference(tokenizer) -> None:
    model = tiny_base()
    before = snapshot(model)
    trainer = make_trainer("token", tokenizer, model, steps=3)
    ref_before = snapshot(trainer.ref)
    assert same(ref_before, {f"model.{k}": v for k, v in before.items()})
    trainer.train()
    after = snapshot(model)
    unchanged = [k for k in before if torch.equal(before[k], after[k]) and "rotary" not in k]
    assert unchanged == []
    assert same(snapshot(trainer.ref), ref_before)


def test_the_method_picks_the_policy(tokenizer) -> None:
    assert isinstance(build_policy(tiny_cola(), tokenizer, "cola", config()), LatentActionPolicy)
    assert isinstance(build_policy(tiny_base(), tokenizer, "token", config()), TokenPolicy)
    with pytest.raises(ValueError, match="unknown RL method 'tokens'"):
        build_policy(tiny_base(), tokenizer, "tokens", config())


# --------------------------------------------------------------------------------------------- log-probs


def test_latent_logprobs_reuse_the_rollout_hidden_states(tokenizer) -> None:
    model = tiny_cola()
    policy = LatentActionPolicy(model, tokenizer, top_k=5)
    prompts = [ex["prompt"] for ex in PROMPTS[:3]]
    rollout = policy.rollout(prompts, group_size=4, max_new_tokens=6,
                             generator=torch.Generator().manual_seed(1))
    assert rollout.hidden is not None and rollout.hidden.shape[1] == rollout.sequences.shape[1] - 1
    assert rollout.prompts == [p for p in prompts for _ in range(4)] and rollout.group_size == 4
    mask = rollout.response_mask

    # Re-scoring must not run the base at all.
    calls = []
    hook = model.base.get_decoder().register_forward_hook(lambda *args: calls.append(1))
    reused = policy.logprobs(rollout)
    hook.remove()
    assert calls == []
    assert reused.requires_grad

    # A fresh full forward (base + policy on the whole sequence) gives the same log-probs ...
    with torch.no_grad():
        ids, attn = rollout.sequences[:, :-1], rollout.attention_mask[:, :-1]
        positions = left_padded_positions(attn)
        h, _ = model.base_hidden(ids, attn, positions)
        w, _ = model.policy_logits(h, attn, positions)
        p = rollout.prompt_length
        fresh = torch.log_softmax(w[:, p - 1 :], -1).gather(
            -1, rollout.actions.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(reused.detach()[mask], fresh[mask], atol=1e-5, rtol=0)
    # ... and so do the log-probs recorded while sampling (KV-cached, step by step).
    torch.testing.assert_close(reused.detach()[mask], rollout.old_logprobs[mask], atol=1e-5, rtol=0)
    assert (reused.detach()[~mask] == 0).all()


def test_token_logprobs_match_the_sampled_ones_and_rollouts_are_seeded(tokenizer) -> None:
    policy = TokenPolicy(tiny_base(), tokenizer, temperature=0.7)
    prompts = [ex["prompt"] for ex in PROMPTS[:3]]

    def roll() -> Rollout:
        return policy.rollout(prompts, group_size=4, max_new_tokens=6,
                              generator=torch.Generator().manual_seed(3))

    rollout, again = roll(), roll()
    assert torch.equal(rollout.sequences, again.sequences) and rollout.completions == again.completions
    mask = rollout.response_mask
    logp, entropy = policy.logprobs(rollout, with_entropy=True)
    torch.testing.assert_close(logp.detach()[mask], rollout.old_logprobs[mask], atol=1e-5, rtol=0)
    assert (entropy[mask] > 0).all() and (entropy[~mask] == 0).all()
    # The response mask covers tokens up to and including EOS, and completions are the decoded valid tokens.
    for row, m, text in zip(rollout.response_tokens, mask, rollout.completions, strict=True):
        valid = row[m].tolist()
        assert 1 not in valid[:-1]
        assert text == tokenizer.decode(valid, skip_special_tokens=True)


def test_token_sampler_follows_the_softmax_and_respects_top_k() -> None:
    from cola.model.sampling import sample_top_k

    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).repeat(50_000, 1)
    counts = torch.bincount(sample_top_k(logits, None, 1.0, torch.Generator().manual_seed(0)), minlength=4)
    torch.testing.assert_close(counts / counts.sum(), torch.softmax(logits[0], -1), atol=0.01, rtol=0)
    counts = torch.bincount(sample_top_k(logits, 2, 1.0, torch.Generator().manual_seed(0)), minlength=4)
    assert counts[0] == 0 and counts[3] == 0
    torch.testing.assert_close(counts[1:3] / counts.sum(), torch.softmax(logits[0, 1:3], -1), atol=0.01,
                               rtol=0)


@pytest.mark.parametrize("method", ["cola", "token"])
def test_shared_prompt_scoring_gives_the_full_forward_values_and_gradients(tokenizer, method: str) -> None:
    """One prompt pass per group (KV cache repeated G times) changes neither the log-probs nor the
    gradient."""
    model = make_model(method)
    shared = build_policy(model, tokenizer, method, config())
    full = (LatentActionPolicy(model, tokenizer, share_prompt=False) if method == "cola"
            else TokenPolicy(model, tokenizer, share_prompt=False))
    params = shared.trainable_parameters()
    prompts = [ex["prompt"] for ex in PROMPTS[:3]]
    rollout = shared.rollout(prompts, group_size=4, max_new_tokens=5,
                             generator=torch.Generator().manual_seed(2))
    unshared = full.rollout(prompts, group_size=4, max_new_tokens=5,
                            generator=torch.Generator().manual_seed(2))
    assert torch.equal(rollout.sequences, unshared.sequences)  # the shared prefill samples the same tokens

    grads = []
    for policy in (shared, full):
        logp = policy.logprobs(rollout)
        grad = torch.autograd.grad(logp.sum(), params, allow_unused=True)
        grads.append((logp.detach(), grad))
    (logp_a, grad_a), (logp_b, grad_b) = grads
    assert sum(a is not None for a in grad_a) == len(params)
    torch.testing.assert_close(logp_a, logp_b, atol=1e-5, rtol=0)
    for a, b in zip(grad_a, grad_b, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("method", ["cola", "token"])
def test_grpo_learns_a_toy_reward_deterministically(tokenizer, method: str) -> None:
    def run() -> GRPOTrainer:
        trainer = make_trainer(method, tokenizer, steps=30)
        trainer.train()
        return trainer

    trainer = run()
    summary = trainer.summary()
    assert summary["reward_end"] > summary["reward_start"] + 0.3, summary
    assert run().reward_history == trainer.reward_history  # same seed, same run


def test_stats_and_time_to_threshold(tokenizer) -> None:
    logs: list[tuple[int, dict]] = []
    trainer = make_trainer("token", tokenizer, steps=15, reward_threshold=0.5, threshold_kind="absolute",
                           threshold_hold=0, log_every=5,
                           on_log=lambda step, stats: logs.append((step, stats)))
    trainer.train()
    summary = trainer.summary()
    assert [step for step, _ in logs] == [5, 10, 15]
    keys = {"reward_mean", "reward_std", "groups_with_signal", "kl", "entropy", "clip_fraction",
            "response_length", "tokens_per_second", "seconds_generation", "seconds_update",
            "seconds_per_step", "lr", "grad_norm"}
    assert keys <= logs[-1][1].keys()
    history = trainer.reward_history
    first = next(i + 1 for i in range(9, len(history)) if sum(history[i - 9 : i + 1]) / 10 >= 0.5)
    assert summary["threshold_reached"] == 1.0 and summary["threshold_step"] == first
    assert 0 < summary["threshold_seconds"] <= summary["train_seconds"]
    assert summary["threshold_at_start"] == float(first == 10) and summary["reward_threshold"] == 0.5

    # A threshold the start model already meets is flagged: that run measured no learning speed.
    low = make_trainer("token", tokenizer, steps=10, reward_threshold=-1.0, threshold_kind="absolute",
                       threshold_hold=0)
    low.train()
    summary = low.summary()
    assert summary["threshold_step"] == 10 and summary["threshold_at_start"] == 1.0


def test_gain_threshold_counts_a_rise_over_the_runs_own_start(tokenizer) -> None:
    trainer = make_trainer("token", tokenizer, steps=20, reward_threshold=0.1, threshold_kind="gain",
                           threshold_hold=0)
    trainer.train()
    summary = trainer.summary()
    history = trainer.reward_history
    start = sum(history[:10]) / 10
    windows = {i + 1: sum(history[i - 9 : i + 1]) / 10 for i in range(10, len(history))}
    first = next(step for step, mean in windows.items() if mean >= start + 0.1)  # the toy reward rises fast
    assert summary["threshold_target"] == pytest.approx(start + 0.1)
    assert summary["threshold_step"] == first > 10 and summary["threshold_at_start"] == 0.0
    # Even a zero rise is not "reached at the start": the first window only fixes the start.
    flat = make_trainer("token", tokenizer, steps=10, reward_threshold=0.0, threshold_kind="gain")
    flat.train()
    summary = flat.summary()
    assert summary["threshold_reached"] == 0.0 and "threshold_step" not in summary


class ToyTask:
    """The toy reward's task: the answer is the first generated word, correct when it is TARGET."""

    def vote_key(self, completion: str) -> str | None:
        return (completion.split() or [None])[0]

    def score(self, example: dict, completion: str) -> bool:
        return toy_reward(completion, example) == 1.0


@pytest.mark.parametrize("method", ["cola", "token"])
def test_diagnostics_distinct_answers_advantages_and_greedy_validation(tokenizer, method: str) -> None:
    logs: list[tuple[int, dict]] = []
    trainer = make_trainer(method, tokenizer, steps=4, log_every=2, val_every=2, val_prompts=6,
                           on_log=lambda step, stats: logs.append((step, stats)))
    trainer.task, trainer.val_examples = ToyTask(), PROMPTS[:6]
    trainer.train()
    stats = logs[-1][1]
    assert 1 <= stats["distinct_answers"] <= 8 and stats["advantage_abs"] > 0
    # The greedy accuracy is what scoring the greedy rollouts of the 6 prompts by hand gives.
    greedy = trainer.policy.rollout([p["prompt"] for p in PROMPTS[:6]], 1, 3, torch.Generator(), greedy=True)
    expected = sum(c.split()[:1] == [TARGET] for c in greedy.completions) / 6
    assert stats["val_greedy_acc"] == pytest.approx(expected) and stats["seconds_validation"] > 0
    assert trainer.summary()["val_greedy_acc"] == stats["val_greedy_acc"]
    again = trainer.policy.rollout([p["prompt"] for p in PROMPTS[:6]], 1, 3, torch.Generator().manual_seed(9),
                                   greedy=True)
    assert again.completions == greedy.completions  # greedy draws nothing from the generator


@pytest.mark.parametrize("baseline", ["rloo", "remax"])
def test_the_other_baselines_learn_the_toy_reward(tokenizer, baseline: str) -> None:
    trainer = make_trainer("token", tokenizer, steps=30, baseline=baseline)
    trainer.train()
    summary = trainer.summary()
    assert summary["reward_end"] > summary["reward_start"] + 0.3, summary


def test_kl_in_loss_with_group_advantages_and_several_epochs(tokenizer) -> None:
    trainer = make_trainer("cola", tokenizer, steps=3, kl_in="loss", kl_estimator="k3",
                           advantage_mode="group", ppo_epochs=2, kl_coef=0.1)
    stats = trainer.advance()
    assert stats["kl"] >= 0  # k3 is non-negative
    # The second epoch re-uses the rollout after one update: the ratio has moved away from 1.
    assert stats["ratio_mean"] != 1.0


# --------------------------------------------------------------------------------------------- resuming


@pytest.mark.parametrize("method", ["cola", "token"])
def test_resume_from_checkpoint_state_is_bit_exact(tokenizer, method: str) -> None:
    def trainer_for() -> GRPOTrainer:
        return make_trainer(method, tokenizer, steps=4, warmup_steps=1, reward_threshold=0.0)

    straight = trainer_for()
    straight.train()

    first = trainer_for()
    first.train(steps=2)
    tensors, meta = first.state()
    resumed = trainer_for()
    resumed.load_state(tensors, meta)
    resumed.train()
    assert resumed.reward_history == straight.reward_history
    assert all(torch.equal(a, b) for a, b in zip(resumed.params, straight.params, strict=True))
    assert resumed.summary() | {"train_seconds": 0} == straight.summary() | {"train_seconds": 0}


@pytest.mark.parametrize("method", ["cola", "token"])
def test_a_killed_run_resumes_from_its_checkpoint_folder(tokenizer, method: str, tmp_path) -> None:
    """Through the training core's checkpoint files, as the rl stage resumes after a kill."""
    straight = make_trainer(method, tokenizer, steps=6, warmup_steps=1, log_every=2)
    straight.train()
    killed = make_trainer(method, tokenizer, steps=6, warmup_steps=1, log_every=2, checkpoint_dir=tmp_path)
    killed.cfg = dataclasses.replace(killed.cfg, checkpoint_every=3)
    killed.train(steps=4)  # checkpoint at step 3, then "killed"
    logs = []
    resumed = make_trainer(method, tokenizer, steps=6, warmup_steps=1, log_every=2, checkpoint_dir=tmp_path,
                           on_log=lambda step, stats: logs.append(step))
    resumed.train()
    assert logs == [2, 4, 6]  # the restored curve is replayed, then training goes on
    assert resumed.reward_history == straight.reward_history
    assert all(torch.equal(a, b) for a, b in zip(resumed.params, straight.params, strict=True))
    assert not list(tmp_path.iterdir())  # emptied once done


# --------------------------------------------------------------------------------------------- config


def test_config_is_documented_and_validated() -> None:
    assert missing_help(RLConfig) == []
    cfg = from_dict(RLConfig, {"lr": 5e-5, "tasks": {"math": {"reward_threshold": 0.3}}}, "rl")
    assert cfg.lr == 5e-5 and cfg.task("math").reward_threshold == 0.3 and cfg.group_size == 8
    with pytest.raises(ParamsError, match="kl_in='reward' needs advantage_mode='gae'"):
        from_dict(RLConfig, {"advantage_mode": "group"}, "rl")
    with pytest.raises(ParamsError, match="rl.group_size"):
        from_dict(RLConfig, {"group_size": 1}, "rl")
    with pytest.raises(ParamsError, match="rl.kl_estimator"):
        from_dict(RLConfig, {"kl_estimator": "k4"}, "rl")
