"""Run alone and under `accelerate launch` by tests/test_distributed.py: the latent, BC, Q-learning and
GRPO (both action spaces) trainers, 4 steps each on micro models; the main process saves each one's logged
curve and trained weights to OUT/<trainer>.pt.

    python tests/distributed_worker.py OUT full     # 4 steps
    python tests/distributed_worker.py OUT half     # 2 steps, checkpoint written at step 2 into OUT/ckpt
    python tests/distributed_worker.py OUT resume CKPT   # resume from CKPT (written by `half`) to step 4

Under an FSDP config (configs/accelerate/fsdp.yaml) the trainers that do not shard (Q-learning, GRPO, agent
RL) train data-parallel.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cola.config import BCConfig, LatentConfig, QLearnConfig  # noqa: E402
from cola.data.corpus import TokenStream  # noqa: E402
from cola.rl.grpo import GRPOTrainer, build_policy  # noqa: E402
from cola.search.qlearn import QTrainer, RecordedRollout  # noqa: E402
from cola.search.qnetwork import QNetwork  # noqa: E402
from cola.train.core import BatchTrainer  # noqa: E402
from cola.train.losses import behaviour_cloning_loss, latent_pretraining_loss  # noqa: E402
from tests.test_grpo import PROMPTS, config, make_tokenizer, tiny_base, tiny_cola, toy_reward  # noqa: E402

STEPS = 4
OPTIM = dict(steps=STEPS, lr=1e-2, warmup_steps=1, log_every=1, checkpoint_every=2, batch_size=8, seq_len=12)


def trainers(checkpoints: Path | None, micro_batch_size: int):
    """(name, a function that builds the trainer) for each trainer under test, each from its own fixed
    start."""
    tokens = torch.randint(2, 12, (4000,), generator=torch.Generator().manual_seed(0))
    tokenizer = make_tokenizer()

    def ckpt(name: str) -> Path | None:
        return checkpoints / name if checkpoints is not None else None

    latent = tiny_cola(0)
    latent.set_stage("latent")
    cfg = LatentConfig(**OPTIM, micro_batch_size=micro_batch_size)
    yield "latent", partial(BatchTrainer, latent,
                            lambda b, noise: latent_pretraining_loss(latent, b, generator=noise),
                            TokenStream(tokens, 8, 12, 0), cfg, checkpoint_dir=ckpt("latent"))

    bc = tiny_cola(1)
    bc.set_stage("bc")
    cfg = BCConfig(**OPTIM, micro_batch_size=micro_batch_size)
    yield "bc", partial(BatchTrainer, bc, lambda b, _noise: behaviour_cloning_loss(bc, b),
                        TokenStream(tokens, 8, 12, 1), cfg, checkpoint_dir=ckpt("bc"))

    # Rollouts of ragged lengths with 0/1 rewards; a target sync mid-run.
    draw = torch.Generator().manual_seed(4)
    rollouts = []
    for i in range(24):
        n, p = 1 + i % 5, 2 + i % 3
        rollouts.append(RecordedRollout(torch.randint(2, 12, (p,), generator=draw).tolist(),
                                        torch.randint(2, 12, (n,), generator=draw).tolist(),
                                        torch.randint(0, 8, (n,), generator=draw).tolist(), float(i % 2)))
    cfg = QLearnConfig(steps=STEPS, lr=1e-2, warmup_steps=1, log_every=1, checkpoint_every=2, batch_size=8,
                       target_sync=2)
    yield "qlearn", partial(QTrainer, QNetwork.from_base(tiny_base(5), 8), cfg, rollouts, 0,
                            checkpoint_dir=ckpt("qlearn"))

    for method, model in (("cola", tiny_cola(2)), ("token", tiny_base(3))):
        cfg = config(steps=STEPS, prompts_per_step=4, group_size=4, log_every=1, checkpoint_every=2)
        policy = build_policy(model, tokenizer, method, cfg)
        yield f"grpo-{method}", partial(GRPOTrainer, policy, cfg, PROMPTS, toy_reward, max_new_tokens=3,
                                        seed=0, checkpoint_dir=ckpt(f"grpo-{method}"))

    # Multi-turn GRPO on TextWorld games the test generated (2 games x a group of 2, up to 3 turns).
    if "COLA_TEST_GAMES" not in os.environ:  # no TextWorld installed
        return
    from cola.envs.agent_rl import AgentGRPOTrainer
    from cola.envs.protocol import PromptStyle
    from cola.envs.textworld_env import TextWorldEnv

    games = sorted(Path(os.environ["COLA_TEST_GAMES"]).glob("*.z8"))
    cfg = config(steps=STEPS, prompts_per_step=2, group_size=2, log_every=1, checkpoint_every=2,
                 kl_in="loss")
    policy = build_policy(tiny_cola(6), tokenizer, "cola", cfg)
    yield "agent-cola", partial(AgentGRPOTrainer, policy, cfg, games,
                                lambda game: TextWorldEnv(game, max_steps=3),
                                style=PromptStyle(history=1, max_observation_chars=60, show_admissible=False),
                                max_new_tokens=3, seed=0, checkpoint_dir=ckpt("agent-cola"))


def main(out: Path, mode: str, resume_from: Path | None = None) -> None:
    torch.set_num_threads(1)
    checkpoints = resume_from if mode == "resume" else out / "ckpt" if mode == "half" else None
    # The multi-process full run also accumulates micro-batches of 2 rows (4 per process).
    micro = 2 if mode == "full" and int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    only = os.environ.get("COLA_TEST_TRAINERS")  # a comma-separated subset, else all of them
    for name, build in trainers(checkpoints, micro):
        if only and name not in only.split(","):
            continue
        trainer = build()
        sharded = sorted(trainer.sharding.units) if trainer.sharding is not None else []
        zero: dict[str, object] = {}  # under DeepSpeed, what its engine partitioned, seen while training

        def seen(step: int, _metrics: dict[str, float], trainer=trainer, zero=zero) -> None:
            if trainer.zero is not None and not zero:
                zero["held"] = trainer.zero.held()
                # ZeRO-3 keeps a part of each weight (`ds_tensor`) on each process and gathers the rest when
                # a layer runs (the tiny weights here stay gathered too: under DeepSpeed's persistence
                # threshold of 1e5 numbers, a speed rule).
                zero["partitioned"] = sorted(n for n, p in trainer.model.named_parameters()
                                             if hasattr(p, "ds_tensor") and p.ds_tensor.numel() < p.ds_numel)

        trainer.on_log = seen
        trainer.train(steps=STEPS // 2 if mode == "half" else None)
        if trainer.processes.is_main:
            weights = {n: p.detach().clone() for n, p in trainer.named_params}
            plain = all(type(p) is torch.nn.Parameter for p in trainer.model.parameters())
            torch.save({"history": trainer.history, "weights": weights, "world": trainer.processes.world,
                        "sharded": sharded, "plain_after": plain, "zero": zero,
                        "parameters": [n for n, _ in trainer.model.named_parameters()]}, out / f"{name}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]) if len(sys.argv) > 3 else None)
