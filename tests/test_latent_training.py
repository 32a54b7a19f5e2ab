"""A short latent-action pretraining run makes actions matter; training resumes exactly."""

from __future__ import annotations

import functools

import torch

from cola.config import TrainConfig
from cola.data.corpus import TokenStream
from cola.train.core import BatchTrainer, train
from cola.train.losses import LossOutput, latent_pretraining_loss, world_model_loss
from tests.conftest import VOCAB, tiny_cola


def _toy_stream(n: int = 20000, seed: int = 0) -> torch.Tensor:
    """A random walk over tokens 2..VOCAB-1 with steps of +1..+4: a base LM can learn the four choices
    (CE ln 4), but which one comes next is only known to the IDM, which sees x_{t+1}."""
    steps = torch.randint(1, 5, (n,), generator=torch.Generator().manual_seed(seed))
    return (steps.cumsum(0) % (VOCAB - 2)) + 2


@functools.cache
def _pretrained_base_state() -> dict[str, torch.Tensor]:
    """Briefly pretrain the tiny base on the toy walk, as the pipeline's `base` stage would."""
    base = tiny_cola("llama", seed=0).base
    cfg = TrainConfig(steps=150, batch_size=16, seq_len=32, lr=1e-2, warmup_steps=10, log_every=50, seed=0)
    stream = TokenStream(_toy_stream(), cfg.batch_size, cfg.seq_len, seed=0)
    train(base, lambda b, g: LossOutput(base(b, labels=b).loss, {}), stream, cfg)
    return {k: v.clone() for k, v in base.state_dict().items()}


def _toy_cola():
    model = tiny_cola("llama", seed=0)
    model.base.load_state_dict(_pretrained_base_state())
    model.set_stage("latent")
    return model


def _latent_run(steps: int, checkpoint_dir=None, stop_after: int | None = None):
    model = _toy_cola()
    cfg = TrainConfig(steps=steps, batch_size=16, seq_len=32, lr=1e-2, warmup_steps=10, log_every=20,
                      checkpoint_every=20, seed=0)
    stream = TokenStream(_toy_stream(), cfg.batch_size, cfg.seq_len, seed=0)
    if stop_after is not None:  # simulate a kill: same config, but stop early by raising from the logger
        class Stop(Exception):
            pass

        def stop(step, _):
            if step >= stop_after:
                raise Stop
        try:
            train(model, lambda b, g: latent_pretraining_loss(model, b, generator=g), stream, cfg,
                  checkpoint_dir=checkpoint_dir, on_log=stop)
        except Stop:
            pass
        model = _toy_cola()
        stream = TokenStream(_toy_stream(), cfg.batch_size, cfg.seq_len, seed=0)
    metrics = train(model, lambda b, g: latent_pretraining_loss(model, b, generator=g), stream, cfg,
                    checkpoint_dir=checkpoint_dir)
    return model, metrics


def test_forced_actions_give_different_next_token_distributions():
    model, metrics = _latent_run(steps=200)
    ids = _toy_stream(16 * 32, seed=1).view(16, 32)
    with torch.no_grad():
        model.set_stage("frozen")
        idm_loss = world_model_loss(model, ids, action_source="idm").loss.item()
        base_logits = model.base(ids).logits
        base_loss = torch.nn.functional.cross_entropy(base_logits[:, :-1].reshape(-1, VOCAB),
                                                      ids[:, 1:].reshape(-1)).item()
        h, _ = model.base_hidden(ids[:1, :12])
        k = model.config.num_actions
        dists = torch.softmax(model.world_model_logits(h[:, -1].expand(k, -1), torch.arange(k)), -1)
    # The IDM leaks the next token through the action, so the world model beats the frozen base.
    print(f"toy: world-model CE with IDM actions {idm_loss:.3f}, frozen base {base_loss:.3f}")
    assert idm_loss < 0.5 * base_loss, (idm_loss, base_loss)
    total_variation = 0.5 * (dists[:, None] - dists[None]).abs().sum(-1)
    off_diagonal = total_variation[~torch.eye(k, dtype=torch.bool)]
    print(f"toy: mean total variation between forced actions {off_diagonal.mean():.3f}")
    assert off_diagonal.mean() > 0.5, f"mean TV between forced actions {off_diagonal.mean():.3f}"
    assert metrics["tokens_per_second"] > 0


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    reference, expected = _latent_run(steps=60)
    resumed, metrics = _latent_run(steps=60, checkpoint_dir=tmp_path / "ckpt", stop_after=40)
    for (name, a), (_, b) in zip(reference.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    # The logged numbers of the last window are the same too (timing aside).
    timing = {"tokens_per_second"}
    assert {k: v for k, v in metrics.items() if k not in timing} == {k: v for k, v in expected.items()
                                                                      if k not in timing}
    assert not list((tmp_path / "ckpt").iterdir())  # emptied once training completed


def test_a_checkpoint_between_log_points_resumes_the_logging_window(tmp_path):
    """checkpoint_every need not be a multiple of log_every: the partial window is saved with the rest, so the
    resumed run logs the same curve as an uninterrupted one."""
    cfg = TrainConfig(steps=12, batch_size=4, seq_len=16, lr=1e-3, warmup_steps=1, log_every=8,
                      checkpoint_every=5, seed=0)

    def trainer(checkpoint_dir=None) -> BatchTrainer:
        model = _toy_cola()
        stream = TokenStream(_toy_stream(), cfg.batch_size, cfg.seq_len, seed=0)
        return BatchTrainer(model, lambda b, g: latent_pretraining_loss(model, b, generator=g), stream, cfg,
                            checkpoint_dir=checkpoint_dir)

    reference = trainer()
    reference.train()
    killed = trainer(tmp_path / "ckpt")
    killed.train(steps=7)  # its last checkpoint is step 5, mid-window (steps 1-8)
    resumed = trainer(tmp_path / "ckpt")
    resumed.train()

    def curve(t: BatchTrainer):
        return [(step, {k: v for k, v in m.items() if k != "tokens_per_second"}) for step, m in t.history]

    assert [step for step, _ in reference.history] == [8, 12]
    assert curve(resumed) == curve(reference)
