"""Multi-process training equals single-process training: `accelerate launch --num_processes 2` (gloo,
configs/accelerate/cpu-2proc.yaml) of the latent, BC, Q-learning and GRPO trainers logs the same losses and
trains the same weights as one process with the same global batch, and a checkpoint written with one process
count resumes with the other; under configs/accelerate/fsdp.yaml and the DeepSpeed ZeRO configs the
pretraining-style trainers shard. The trainers run in tests/distributed_worker.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cola.errors import ColaError
from cola.model.sampling import BatchRows, sample_top_k, uniform
from cola.train.distributed import Processes

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "distributed_worker.py"
# Each trainer, with a logged number that moves only when the weights do.
TRAINERS = {"latent": "latent_loss", "bc": "bc_loss", "qlearn": "td_loss", "grpo-cola": "kl",
            "grpo-token": "kl", "agent-cola": "kl"}
TIMING = ("tokens_per_second", "seconds_")


def test_a_slice_of_rows_draws_what_the_whole_batch_draws_for_them() -> None:
    whole = uniform((6, 3), torch.Generator().manual_seed(4))
    for start, stop in [(0, 2), (2, 6), (5, 6)]:
        part = uniform((stop - start, 3), BatchRows(torch.Generator().manual_seed(4), start, stop, 6))
        assert torch.equal(part, whole[start:stop])
    logits = torch.randn(6, 9, generator=torch.Generator().manual_seed(0))
    together = sample_top_k(logits, 4, 0.7, torch.Generator().manual_seed(1))
    apart = torch.cat([sample_top_k(logits[a:b], 4, 0.7, BatchRows(torch.Generator().manual_seed(1), a, b, 6))
                       for a, b in [(0, 3), (3, 6)]])
    assert torch.equal(together, apart)
    with pytest.raises(ValueError, match="3 rows of noise from a slice of 2"):
        uniform((3, 1), BatchRows(torch.Generator(), 0, 2, 6))


def test_a_batch_that_does_not_split_evenly_is_a_clear_error() -> None:
    second_of_two = Processes(SimpleNamespace(process_index=1, num_processes=2, is_main_process=False))
    assert second_of_two.rows(8) == (4, 8)
    with pytest.raises(ColaError, match="a batch of 7 rows cannot be split evenly over 2 processes"):
        second_of_two.rows(7)


def test_deepspeed_settings_come_from_the_launch_and_bad_ones_are_one_line_errors(monkeypatch) -> None:
    from cola.train import zero

    assert zero.requested() is None  # no DeepSpeed launch
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu")
    assert zero.requested() == zero.ZeroSettings(stage=3, offload_optimizer="cpu", offload_param="none")
    for key, value, message in [
            ("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0", "zero_stage 0: use 1, 2 or 3"),
            ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "nvme", "offload_param_device 'nvme': use none"),
            ("ACCELERATE_DEEPSPEED_CONFIG_FILE", "ds.json", "names a deepspeed_config_file")]:
        with monkeypatch.context() as env:
            env.setenv(key, value)
            with pytest.raises(ColaError, match=message):
                zero.requested()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(out: Path, mode: str, *extra: str, games: Path | None, processes: int = 1,
               config: str = "cpu-2proc.yaml", **env_vars: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if processes == 1:
        command = [sys.executable, str(WORKER)]
    else:  # fp32 whatever the config says: the single-process run it is compared with is fp32
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(REPO / "configs" / "accelerate" / config), "--num_processes", str(processes),
                   "--mixed_precision", "no", "--main_process_port", str(free_port()), str(WORKER)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_vars}
    if games is not None:
        env["COLA_TEST_GAMES"] = str(games)
    done = subprocess.run([*command, str(out), mode, *extra], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def games(tmp_path_factory) -> Path | None:
    """Two small TextWorld games for the agent trainer (None without TextWorld: the `agents` extra)."""
    try:
        import textworld  # noqa: F401
    except ImportError:
        return None
    from cola.envs.textworld_env import make_game
    from tests.test_envs import SETTINGS

    folder = tmp_path_factory.mktemp("games")
    for seed in (1, 2):
        make_game(SETTINGS, seed, folder)
    return folder


def played(games: Path | None) -> dict[str, str]:
    """The trainers the worker runs: the agent trainer only where there are games."""
    return {k: v for k, v in TRAINERS.items() if games is not None or not k.startswith("agent")}


def assert_same_training(one: Path, other: Path, trainers: dict[str, str]) -> None:
    for name in trainers:
        a, b = torch.load(one / f"{name}.pt"), torch.load(other / f"{name}.pt")
        assert [step for step, _ in a["history"]] == [step for step, _ in b["history"]] == [1, 2, 3, 4]
        for (step, logged), (_, other_logged) in zip(a["history"], b["history"], strict=True):
            keys = {k for k in logged if not k.startswith(TIMING)}
            assert keys == {k for k in other_logged if not k.startswith(TIMING)}, (name, step)
            for key in keys:
                assert other_logged[key] == pytest.approx(logged[key], abs=1e-5), (name, step, key)
        for key, weight in a["weights"].items():
            torch.testing.assert_close(b["weights"][key], weight, atol=1e-4, rtol=1e-4, msg=f"{name} {key}")
        moving = [logged[TRAINERS[name]] for _, logged in a["history"]]
        assert len(set(moving)) > 1, f"{name} did not train"


@pytest.fixture(scope="module")
def one(tmp_path_factory, games) -> Path:
    """The reference: every trainer's full run in one process."""
    out = tmp_path_factory.mktemp("one")
    run_worker(out, "full", games=games)
    return out


def test_two_processes_train_like_one_and_resume_across_process_counts(tmp_path, games, one) -> None:
    run_worker(tmp_path / "two", "full", processes=2, games=games)  # 4 rows a process, micro-batches of 2
    assert {torch.load(tmp_path / "two" / f"{n}.pt")["world"] for n in played(games)} == {2}
    assert_same_training(one, tmp_path / "two", played(games))

    # Two processes stop at step 2 (their checkpoint is the one left), one process finishes the run.
    run_worker(tmp_path / "half", "half", processes=2, games=games)
    run_worker(tmp_path / "resumed", "resume", str(tmp_path / "half" / "ckpt"), games=games)
    assert_same_training(one, tmp_path / "resumed", played(games))


def test_the_launch_params_become_an_accelerate_command() -> None:
    from cola.config import LaunchConfig
    from cola.pipeline import launch_command

    command = launch_command(LaunchConfig(num_processes=8, precision="bf16",
                                          config_file="configs/accelerate/cpu-2proc.yaml"),
                             "stages/bc.py", ["--out", "models/bc"])
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    flags = dict(zip(command[3:-3:2], command[4:-3:2], strict=True))
    assert flags == {"--num_processes": "8", "--num_machines": "1", "--machine_rank": "0",
                     "--main_process_port": "29500", "--mixed_precision": "bf16",
                     "--config_file": "configs/accelerate/cpu-2proc.yaml"}
    assert command[-3:] == ["stages/bc.py", "--out", "models/bc"]
    with pytest.raises(ColaError, match="launch.config_file: no such file 'configs/accelerate/nope.yaml'"):
        launch_command(LaunchConfig(num_processes=2, config_file="configs/accelerate/nope.yaml"), "s.py", [])


def test_fsdp_shards_the_layers_and_trains_like_one_process(tmp_path, games, one) -> None:
    """configs/accelerate/fsdp.yaml on 2 gloo processes: the decoder layers are sharded (FSDP2), the rest is
    replicated; losses and weights (with gradient checkpointing on) equal one process's, the checkpoint it
    writes holds whole tensors that one process resumes from; the trainers that hold the model outside their
    step (Q-learning's target, RL's sampler and reference) train data-parallel under the same launch, also
    like one process."""
    batch_trainers = {k: v for k, v in TRAINERS.items() if k in ("latent", "bc")}
    # With gradient checkpointing too (the blocks recomputed in the backward are sharded units).
    run_worker(tmp_path / "fsdp", "full", processes=2, config="fsdp.yaml", games=games,
               COLA_GRADIENT_CHECKPOINTING="1")
    assert_same_training(one, tmp_path / "fsdp", played(games))
    layers = ["base.model.layers.0", "base.model.layers.1", "idm.layers.0", "idm.layers.1", "merge_blocks.0",
              "merge_blocks.1", "policy.layers.0"]
    for name in played(games):  # every decoder layer and merge block a unit where the trainer shards
        run = torch.load(tmp_path / "fsdp" / f"{name}.pt")
        assert run["world"] == 2 and run["plain_after"]
        assert run["sharded"] == (layers if name in batch_trainers else []), name

    run_worker(tmp_path / "half", "half", processes=2, config="fsdp.yaml", games=games)
    run_worker(tmp_path / "resumed", "resume", str(tmp_path / "half" / "ckpt"), games=games)
    assert_same_training(one, tmp_path / "resumed", played(games))


def test_deepspeed_zero_partitions_training_state_and_trains_like_one_process(tmp_path, games, one) -> None:
    """configs/accelerate/deepspeed-zero3.yaml and -zero2.yaml on 2 gloo processes (DeepSpeed's CPU
    accelerator): the pretraining-style trainers run their loss through a ZeRO engine, which partitions
    their optimizer state (ZeRO-3: every weight too, gathered per layer while the loss runs); the logged
    numbers and weights equal one process's when a run's first two steps and its last two are taken in
    different launches (ZeRO-2 then ZeRO-3, ZeRO-3 then one process, one process then ZeRO-2 with the
    optimizer state offloaded to CPU memory); the other trainers train data-parallel under the same launch."""
    pytest.importorskip("deepspeed")
    batch_trainers = ("latent", "bc")
    trainers = {k: v for k, v in TRAINERS.items() if k in (*batch_trainers, "grpo-cola")}
    only = {"COLA_TEST_TRAINERS": ",".join(trainers)}
    zero2 = dict(processes=2, config="deepspeed-zero2.yaml", games=games, **only)
    offloaded = tmp_path / "zero2-offload.yaml"  # the optimizer state in CPU memory (DeepSpeed's offload)
    offloaded.write_text((REPO / "configs" / "accelerate" / "deepspeed-zero2.yaml").read_text()
                         .replace("offload_optimizer_device: none", "offload_optimizer_device: cpu"))
    zero2_offloaded = {**zero2, "config": str(offloaded)}
    zero3 = dict(processes=2, config="deepspeed-zero3.yaml", games=games, COLA_GRADIENT_CHECKPOINTING="1",
                 **only)
    # Each run: two steps, then its checkpoint; two more steps in another launch from it.
    for first, then, name in [(zero2, zero3, "2-3"), (zero3, {}, "3-1"), ({}, zero2_offloaded, "1-2")]:
        run_worker(tmp_path / f"{name}-half", "half", **{"games": games, **only, **first})
        run_worker(tmp_path / name, "resume", str(tmp_path / f"{name}-half" / "ckpt"),
                   **{"games": games, **only, **then})
        assert_same_training(one, tmp_path / name, trainers)
    for name, stage in (("2-3", 3), ("1-2", 2)):  # what the engine partitioned, seen during steps 3-4
        for trainer in trainers:
            run = torch.load(tmp_path / name / f"{trainer}.pt")
            assert run["world"] == 2 and run["plain_after"], (name, trainer)
            if trainer not in batch_trainers:
                assert run["zero"] == {}, trainer  # data-parallel
                continue
            held, total = run["zero"]["held"]
            assert total / 2 <= held < total / 2 + 64, (name, trainer, held, total)  # up to alignment
            # ZeRO-3: a part of every weight on each process, frozen ones too; ZeRO-2: whole weights.
            partitioned = sorted(run["parameters"]) if stage == 3 else []
            assert run["zero"]["partitioned"] == partitioned, (name, trainer)
