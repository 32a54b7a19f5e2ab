"""The CoLA model: alignment, freezing, straight-through, save/load, two base architectures."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from cola.model import STAGES, CoLAForCausalLM
from cola.model.checkpoint import CheckpointError, load_cola
from cola.train.losses import (
    behaviour_cloning_loss,
    latent_pretraining_loss,
    world_model_loss,
)
from tests.conftest import VOCAB, tiny_cola

T = 10


def _ids(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, VOCAB, (batch, T), generator=torch.Generator().manual_seed(seed))


def _idm_and_policy(model: CoLAForCausalLM, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        h, _ = model.base_hidden(ids)
        return model.idm_logits(h), model.policy_logits(h)[0]


@pytest.mark.parametrize("t", [0, 3, 7])
def test_idm_action_at_t_sees_exactly_one_future_token(cola_model, t):
    ids = _ids()
    idm, policy = _idm_and_policy(cola_model, ids)

    later = ids.clone()
    later[:, t + 2 :] = (later[:, t + 2 :] + 7) % (VOCAB - 2) + 2  # change x_{t+2} and everything after
    idm_later, policy_later = _idm_and_policy(cola_model, later)
    torch.testing.assert_close(idm_later[:, : t + 1], idm[:, : t + 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(policy_later[:, : t + 2], policy[:, : t + 2], rtol=0, atol=1e-6)

    next_token = ids.clone()
    next_token[:, t + 1] = (next_token[:, t + 1] + 5) % (VOCAB - 2) + 2  # change x_{t+1} only
    idm_next, policy_next = _idm_and_policy(cola_model, next_token)
    assert (idm_next[:, t] - idm[:, t]).abs().max() > 1e-4, "the IDM action at t must see x_{t+1}"
    torch.testing.assert_close(idm_next[:, :t], idm[:, :t], rtol=0, atol=1e-6)
    # The policy's action at t depends only on x_{≤t}.
    torch.testing.assert_close(policy_next[:, : t + 1], policy[:, : t + 1], rtol=0, atol=1e-6)
    assert (policy_next[:, t + 1] - policy[:, t + 1]).abs().max() > 1e-4


EXPECTED_GROUPS = {
    "latent": {"idm", "codebook", "merge"},
    "bc": {"policy"},
    "fta_i_world": {"base", "head"},
    "fta_i_policy": {"policy"},
    "fta_p": {"base", "head"},
    "rl": {"policy"},
}


def _stage_loss(model: CoLAForCausalLM, stage: str, ids: torch.Tensor) -> torch.Tensor:
    if stage == "latent":
        return latent_pretraining_loss(model, ids, generator=torch.Generator().manual_seed(0)).loss
    if stage in ("bc", "fta_i_policy"):
        return behaviour_cloning_loss(model, ids).loss
    if stage == "fta_i_world":
        return world_model_loss(model, ids, action_source="idm").loss
    if stage == "fta_p":
        return world_model_loss(model, ids, action_source="policy").loss
    # rl: a policy-gradient surrogate on the policy's own log-probs
    h, _ = model.base_hidden(ids)
    w, _ = model.policy_logits(h)
    return -torch.log_softmax(w, -1)[..., 0].mean()


@pytest.mark.parametrize("stage", sorted(EXPECTED_GROUPS))
@pytest.mark.parametrize("head", ["paper", "residual"])
def test_each_stage_trains_exactly_its_groups(arch, stage, head):
    model = tiny_cola(arch, output_head=head).train()
    model.set_stage(stage)
    groups = model.group_parameters()
    for group, named in groups.items():
        for name, param in named:
            assert param.requires_grad == (group in EXPECTED_GROUPS[stage]), (stage, name)
    assert set(STAGES[stage][0]) == EXPECTED_GROUPS[stage]

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    # The optimiser sees every parameter, so only requires_grad decides what moves.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    _stage_loss(model, stage, _ids()).backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters()), f"{stage}: non-finite parameters"
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    for group, named in groups.items():
        names = {n for n, _ in named}
        if group in EXPECTED_GROUPS[stage]:
            assert names & changed, f"{stage}: trainable group {group} did not change"
        else:
            assert not names & changed, \
                f"{stage}: frozen group {group} changed: {sorted(names & changed)[:3]}"


def test_fta_p_paper_head_reaches_base_only_through_minus_h():
    """With o = sg(N_f(s²)) − h, the base gradient equals that of −W_lm h alone (cola-spec.md §3 stage 3)."""
    model = tiny_cola("llama", output_head="paper").train()
    model.set_stage("fta_p")
    ids = _ids()
    h, _ = model.base_hidden(ids)
    actions = torch.zeros_like(ids)
    logits = model.world_model_logits(h, actions)
    (grad_full,) = torch.autograd.grad(logits.square().sum(), h)
    h2 = h.detach().requires_grad_(True)
    with torch.no_grad():
        normed = model.final_norm(model.merge_blocks[1](
            model.merge_blocks[0](h2, model.action_embedding(actions)), model.action_embedding(actions)))
    (grad_minus_h,) = torch.autograd.grad(model.lm_head(normed - h2).square().sum(), h2)
    torch.testing.assert_close(grad_full, grad_minus_h)


def test_straight_through_reaches_idm_and_codebook(arch):
    model = tiny_cola(arch).train()
    model.set_stage("latent")
    out = latent_pretraining_loss(model, _ids(), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    groups = model.group_parameters()
    for group in ("idm", "codebook", "merge"):
        grad_norm = sum(p.grad.norm() for _, p in groups[group] if p.grad is not None)
        assert grad_norm > 0, f"no gradient reached {group}"
    # The forward pass used the hard one-hot: the loss equals the CE under the sampled action indices.
    with torch.no_grad():
        h, _ = model.base_hidden(_ids())
        logits = model.world_model_logits(h, out.actions)
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), _ids()[:, 1:].reshape(-1))
    assert out.metrics["wm_ce"] == pytest.approx(ce.item(), rel=1e-5)


def test_gumbel_max_samples_the_idm_distribution():
    from cola.model.modeling_cola import gumbel_straight_through

    logits = torch.log(torch.tensor([0.7, 0.2, 0.1])).expand(20000, 3)
    _, _, index = gumbel_straight_through(logits, 2.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(index, minlength=3).float() / len(index)
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.015, rtol=0)


def test_save_load_identical_logits(tmp_path, arch):
    model = tiny_cola(arch)
    ids = _ids()
    model.save_pretrained(tmp_path / "ckpt")
    for loaded in (load_cola(tmp_path / "ckpt"), AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")):
        assert isinstance(loaded, CoLAForCausalLM)
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, model(ids).logits)
            assert torch.equal(loaded.idm_actions(ids), model.idm_actions(ids))


def test_truncated_checkpoint_names_the_file(tmp_path):
    model = tiny_cola("llama")
    model.save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated"):
        load_cola(tmp_path / "ckpt")


def test_mismatched_checkpoint_names_file_and_tensor(tmp_path):
    tiny_cola("llama").save_pretrained(tmp_path / "a")
    tiny_cola("llama", num_actions=16).save_pretrained(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: \S+ has shape \[.*\] but config\.json"):
        load_cola(tmp_path / "a")


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_cola(tmp_path)


def test_paper_sizes_match_the_released_model():
    """CoLAConfig.paper on Llama-3.1-8B's config gives the spec's 11.236 B parameters (cola-spec.md §2.7)."""
    from transformers import LlamaConfig

    from cola.model import CoLAConfig

    llama8b = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=5e5)
    with torch.device("meta"):
        model = CoLAForCausalLM(CoLAConfig.paper(llama8b))
    counts = {g: sum(p.numel() for _, p in named) for g, named in model.group_parameters().items()}
    total = sum(counts.values())
    assert total == pytest.approx(11.236e9, rel=1e-3)
    assert counts["idm"] + 0 == pytest.approx(0.873e9, rel=1e-3)
    assert counts["merge"] == pytest.approx(0.587e9, rel=1e-3)
    assert counts["policy"] == pytest.approx(1.745e9, rel=1e-3)
    assert counts["codebook"] == 64 * 4096
