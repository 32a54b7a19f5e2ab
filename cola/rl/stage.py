"""The `rl` stage (cola-spec.md §3 stage 4): GRPO of CoLA's latent-action policy or of the token baseline.

DVC runs one entry per (method, task) — ``rl@cola-math``, ``rl@token-countdown``, ... — with the same params
section ``rl`` (`cola.config.RLConfig`), so both action spaces get the same algorithm, prompts and budget
(design.md §4). The grid is defined in :mod:`cola.comparison`:

- **method** ``cola`` starts from the FTA model and trains only the latent-action policy; ``token`` starts
  from the SFT baseline and trains the whole LM on sampled tokens (the start folder comes from the stage's
  cmd).
- **task** ``math`` draws prompts from the ``arith`` train split, ``countdown`` from the ``countdown`` split;
  the reward is the task's own (`cola.tasks`: boxed-answer math; format 0.1 + correctness for countdown).

:func:`run_rl` trains one model per seed of ``rl.seeds`` (see :mod:`cola.comparison`). Resumption is the
training core's: every seed checkpoints into ``checkpoint_dir/seed-<s>/`` and keeps its final checkpoint, so a
stage killed during a later seed restores the finished ones instead of training them again; the folder is
emptied when every seed is done.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from cola.comparison import RL_TASKS, START_MODELS, aggregate, write_run_info
from cola.config import RLConfig
from cola.errors import ColaError
from cola.io import file_digest, fingerprint
from cola.model.checkpoint import load_model_and_tokenizer, save_hf_folder
from cola.plots import plt
from cola.results import StageResult
from cola.rl.grpo import GRPOTrainer, build_policy
from cola.tasks import TASKS
from cola.train.core import LogFn
from cola.train.sft_data import load_task_examples

__all__ = ["CURVE_KEYS", "curve_records", "plot_curves", "run_rl", "seed_model_dir"]

CURVE_KEYS = ("reward_mean", "kl", "entropy", "response_length")
History = list[tuple[int, dict[str, float]]]


def seed_model_dir(out_dir: str | Path, seeds: list[int], seed: int) -> Path:
    """Where seed `seed`'s model goes: `out_dir` itself for the first seed, else `out_dir/seeds/<seed>`."""
    return Path(out_dir) if seed == seeds[0] else Path(out_dir) / "seeds" / str(seed)


def run_rl(cfg: RLConfig, method: str, task: str, *, tasks_dir: Path, start_dir: Path, out_dir: Path,
           checkpoint_dir: Path | None = None, on_log: LogFn | None = None) -> StageResult:
    """Train one GRPO model per seed of `cfg.seeds` from `start_dir` on `task`'s train prompts; save each.

    `on_log(step, stats)` gets the trainer's interval stats (reward, KL, entropy, response length, tokens/s,
    seconds per step, ...); with several seeds their keys are prefixed ``seed<s>/`` so the curves stay apart.
    Metrics: each seed's last logged interval and whole-run figures, aggregated over seeds
    (`cola.comparison.aggregate`); records ``curves``: every logged point (the DVC plot); figure ``curves``.
    """
    if method not in START_MODELS:
        raise ColaError(f"unknown RL method {method!r}; expected one of {', '.join(START_MODELS)}")
    if task not in RL_TASKS:
        raise ColaError(f"unknown RL task {task!r}; expected one of {', '.join(RL_TASKS)}")
    torch.set_num_threads(cfg.threads)
    split = RL_TASKS[task]
    prompts = load_task_examples(tasks_dir, "train", [split])[: cfg.n_prompts or None]
    val_examples = load_task_examples(tasks_dir, "val", [split])[: cfg.val_prompts] if cfg.val_every else []
    inputs = fingerprint(file_digest(start_dir), file_digest(tasks_dir / "train" / f"{split}.jsonl"),
                         cfg.n_prompts)
    run_cfg = cfg.for_task(task)
    summaries: dict[int, dict[str, float]] = {}
    histories: dict[int, History] = {}
    for seed in cfg.seeds:
        prefix = f"seed{seed}/" if len(cfg.seeds) > 1 else ""

        def log(step: int, stats: dict[str, float], prefix: str = prefix) -> None:
            if on_log is not None:
                on_log(step, {prefix + k: v for k, v in stats.items()})

        model, tokenizer, kind = load_model_and_tokenizer(start_dir)
        wanted = "cola" if method == "cola" else "base"
        if kind != wanted:
            raise ColaError(f"{start_dir}: {method} RL needs a {'CoLA' if wanted == 'cola' else 'plain LM'} "
                            f"start model, found a {kind} folder")
        trainer = GRPOTrainer(
            build_policy(model, tokenizer, method, run_cfg), run_cfg, prompts, TASKS[split].reward,
            task=TASKS[split], val_examples=val_examples,
            max_new_tokens=cfg.task(task).max_new_tokens, reward_threshold=cfg.task(task).reward_threshold,
            seed=seed, checkpoint_dir=checkpoint_dir / f"seed-{seed}" if checkpoint_dir is not None else None,
            keep_final=True,  # a finished seed survives a kill during a later one
            fingerprint=fingerprint(asdict(run_cfg), method, task, seed, inputs),
            description=f"rl {method}-{task} seed {seed}", on_log=log)
        last = trainer.train()
        summaries[seed] = {**last, **trainer.summary()}
        histories[seed] = trainer.history
        if method == "cola":
            model.set_stage("frozen")
        model.eval()
        model_dir = seed_model_dir(out_dir, cfg.seeds, seed)
        save_hf_folder(model, tokenizer, model_dir)
        write_run_info(model_dir, method=method, task=task, seed=seed, start=str(start_dir))
    if checkpoint_dir is not None:  # every seed is saved: keep the (DVC-declared) folder, empty
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        checkpoint_dir.mkdir(parents=True)
    return StageResult(aggregate(summaries),
                       figures={"curves": plot_curves(histories, f"GRPO {method}-{task}")},
                       records={"curves": curve_records(histories)}, models=[out_dir])


def curve_records(histories: dict[int, History]) -> list[dict[str, float]]:
    """Every seed's logged curve as flat records ``{step, seed, reward_mean, kl, ...}`` (a DVC plots file).

    Only the keys every record has: DVC's renderer fails on rows that lack a field ("argument of type
    'NoneType' is not iterable"), and the validation accuracy is measured every `rl.val_every` steps only
    (it stays in MLflow's curves and the metrics)."""
    records = [{"step": step, "seed": seed, **stats} for seed, history in histories.items()
               for step, stats in history]
    common = set.intersection(*(set(r) for r in records)) if records else set()
    return [{k: v for k, v in r.items() if k in common} for r in records]


def plot_curves(histories: dict[int, History], title: str):
    """Reward, KL, entropy and response length against the GRPO step, one line per seed."""
    fig, axes = plt.subplots(2, 2, figsize=(8, 5))
    for ax, key in zip(axes.flat, CURVE_KEYS, strict=True):
        for seed, history in histories.items():
            points = [(step, stats[key]) for step, stats in history if key in stats]
            if points:
                ax.plot(*zip(*points, strict=True), label=f"seed {seed}")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    axes[1][0].set_xlabel("GRPO step")
    axes[1][1].set_xlabel("GRPO step")
    if len(histories) > 1:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
