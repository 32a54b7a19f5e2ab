"""The `rl` stage (cola-spec.md §3 stage 4): GRPO of CoLA's latent-action policy or of the token baseline.

DVC runs one entry per (method, task) — ``rl@cola-math``, ``rl@token-countdown``, ... — with the same params
section ``rl``, so both action spaces get the same algorithm, prompts and budget (design.md §4). The grid is
defined in :mod:`cola.comparison`:

- **method** ``cola`` starts from the FTA model (``models/fta``) and trains only the latent-action policy;
  ``token`` starts from the SFT baseline (``models/sft``) and trains the whole LM on sampled tokens.
- **task** ``math`` draws prompts from the ``arith`` train split with the boxed-answer math reward;
  ``countdown`` draws from the ``countdown`` split with the enhanced-thinking reward (format 0.1 +
  correctness, :mod:`cola.rl.rewards`).

:class:`RLConfig` is the ``rl`` section: the GRPO settings of :class:`cola.rl.grpo.GRPOConfig` that both
methods share (so ``dvc exp run -S rl.lr=1e-6`` changes the lr of every RL run), per-task settings under
``rl.tasks``, and ``rl.seeds``. :meth:`RLConfig.grpo_config` builds the trainer's config of one run.

:func:`run_rl` trains one model per seed (see :mod:`cola.comparison`). Resumption: every seed checkpoints
its whole trainer state (policy, reference, optimizer, random streams, logged curve) to
``checkpoint_dir/seed-<s>/`` at the first log point after every ``checkpoint_every`` steps, and once more when
it finishes, so a stage killed during a later seed restores the finished ones instead of training them again.
Checkpoints are stamped with a fingerprint of the run's config and inputs and ignored on a mismatch; the
folder is emptied when every seed is done.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from cola.base.tiny import save_hf_folder
from cola.comparison import METHODS, RL_TASKS, START_MODELS, write_run_info
from cola.errors import ColaError
from cola.model.checkpoint import load_model_and_tokenizer
from cola.rl.grpo import GRPOConfig, GRPOTrainer, build_policy
from cola.rl.rewards import reward_for
from cola.train.loop import file_digest, fingerprint
from cola.train.sft_data import load_task_examples

__all__ = ["METHODS", "PER_RUN", "RL_TASKS", "START_MODELS", "RLConfig", "RLTaskConfig", "RLTasks",
           "SeedResult", "curve_records", "plot_curves", "run_rl", "seed_model_dir"]

# GRPOConfig fields that differ between the runs of one params file, so they are not `rl.*` keys:
# the method and task come from the DVC entry, the seed from `rl.seeds`, the rest from `rl.tasks.<task>`.
PER_RUN = frozenset({"method", "seed", "max_new_tokens", "reward_threshold"})
_GRPO_FIELDS = {f.name: f for f in dataclasses.fields(GRPOConfig)}
_UNSET = object()


def grpo_field(name: str, default: Any = _UNSET) -> Any:
    """GRPOConfig's field `name` (its help and bounds), optionally with another default for section ``rl``."""
    source = _GRPO_FIELDS[name]
    return field(default=source.default if default is _UNSET else default, metadata=source.metadata)


@dataclass
class RLTaskConfig:
    """Settings of one RL task that the other task does not share."""

    steps: int | None = field(default=None, metadata={
        "help": "GRPO steps for this task (both methods alike); null = rl.steps.", "min": 1})
    max_new_tokens: int = field(default=12, metadata={
        "help": "Longest response in tokens (= actions): room for the task's answer format.", "min": 1})
    reward_threshold: float | None = field(default=None, metadata={
        "help": "Time-to-threshold: the first step (and seconds) at which the 10-step moving average of the "
                "sampled reward rises this much above the run's start (rl.threshold_kind: gain) or reaches "
                "this value (absolute), and stays there rl.threshold_hold steps; null disables."})


@dataclass
class RLTasks:
    """Per-task settings, keyed by the task names of the `rl@<method>-<task>` entries."""

    # Math answers are `\boxed{-79}`-short (at most 7 tokens + EOS with the tiny tokenizer; calibration.md §5
    # uses 12); countdown's think + answer trace is about 6x longer (up to 41 tokens), so its steps cost ~4x
    # more and it gets fewer of them to keep every RL run near two minutes on 2 cores. Thresholds are rises
    # over each run's start: the two methods start from different models (FTA, SFT) and sample differently
    # (actions vs tokens), so no absolute reward sits above both starts and within both reaches (README). The
    # token baseline rose by about +0.04 in these budgets on 2026-11-30; a window's mean has an SE near 0.014.
    math: RLTaskConfig = field(default_factory=lambda: RLTaskConfig(max_new_tokens=12, reward_threshold=0.04),
                               metadata={"help": "math: prompts of the arith split, boxed-answer reward."})
    countdown: RLTaskConfig = field(
        default_factory=lambda: RLTaskConfig(steps=100, max_new_tokens=44, reward_threshold=0.03),
        metadata={"help": "countdown: prompts of the countdown split, format (0.1) + correctness reward."})


@dataclass
class RLConfig:
    """The ``rl`` section: GRPO settings shared by every ``rl@<method>-<task>`` entry (calibration.md §5)."""

    steps: int = grpo_field("steps", 300)
    prompts_per_step: int = grpo_field("prompts_per_step")
    group_size: int = grpo_field("group_size")
    lr: float = grpo_field("lr")
    warmup_steps: int = grpo_field("warmup_steps", 10)
    min_lr_ratio: float = grpo_field("min_lr_ratio")
    beta1: float = grpo_field("beta1")
    beta2: float = grpo_field("beta2")
    weight_decay: float = grpo_field("weight_decay")
    grad_clip: float = grpo_field("grad_clip")
    clip_eps: float = grpo_field("clip_eps")
    kl_coef: float = grpo_field("kl_coef")
    kl_estimator: Literal["k1", "k2", "k3"] = grpo_field("kl_estimator")
    kl_in: Literal["reward", "loss"] = grpo_field("kl_in")
    advantage_mode: Literal["group", "gae"] = grpo_field("advantage_mode")
    gamma: float = grpo_field("gamma")
    lam: float = grpo_field("lam")
    ppo_epochs: int = grpo_field("ppo_epochs")
    action_top_k: int = grpo_field("action_top_k")
    action_temperature: float = grpo_field("action_temperature")
    token_temperature: float = grpo_field("token_temperature")
    token_top_k: int = grpo_field("token_top_k")
    threshold_kind: Literal["gain", "absolute"] = grpo_field("threshold_kind")
    threshold_hold: int = grpo_field("threshold_hold")
    log_every: int = grpo_field("log_every")
    tasks: RLTasks = field(default_factory=RLTasks, metadata={"help": "Per-task settings (math, countdown)."})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={
        "help": "RL seeds: one model per seed from the same start model; the report shows mean ± spread when "
                "there are several (e.g. `dvc exp run -S 'rl.seeds=[0,1,2]'`)."})
    n_prompts: int = field(default=0, metadata={
        "help": "Use the first N train prompts of the task (0 = all of them).", "min": 0})
    checkpoint_every: int = field(default=100, metadata={
        "help": "Save a resumable checkpoint at the first log point after every N steps.", "min": 1})
    # Rollouts are batches of P·G = 128 sequences, big enough for two threads to pay off on the 1.25M base.
    threads: int = field(default=2, metadata={"help": "torch CPU threads.", "min": 1})

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        for task in RL_TASKS:  # GRPOConfig's own cross-field checks, once per task, before any work
            self.grpo_config("cola", task, self.seeds[0])

    def grpo_config(self, method: str, task: str, seed: int) -> GRPOConfig:
        """The trainer's config of one run: the shared settings plus its method, task settings and seed."""
        if method not in START_MODELS:
            raise ColaError(f"unknown RL method {method!r}; expected one of {', '.join(START_MODELS)}")
        if task not in RL_TASKS:
            raise ColaError(f"unknown RL task {task!r}; expected one of {', '.join(RL_TASKS)}")
        shared = {name: getattr(self, name) for name in _GRPO_FIELDS if name not in PER_RUN}
        per_task: RLTaskConfig = getattr(self.tasks, task)
        if per_task.steps is not None:
            shared["steps"] = per_task.steps
        return GRPOConfig(method=method, seed=seed, max_new_tokens=per_task.max_new_tokens,
                          reward_threshold=per_task.reward_threshold, **shared)


def seed_model_dir(out_dir: str | Path, seeds: list[int], seed: int) -> Path:
    """Where seed `seed`'s model goes: `out_dir` itself for the first seed, else `out_dir/seeds/<seed>`."""
    return Path(out_dir) if seed == seeds[0] else Path(out_dir) / "seeds" / str(seed)


@dataclass
class SeedResult:
    """One seed's RL run: its summary (final logged interval + whole-run figures) and logged curve."""

    seed: int
    summary: dict[str, float]
    history: list[tuple[int, dict[str, float]]]
    model_dir: Path


LogFn = Callable[[int, dict[str, float]], None]


def run_rl(
    cfg: RLConfig,
    method: str,
    task: str,
    *,
    data_dir: str | Path = "data",
    models_dir: str | Path = "models",
    out_dir: str | Path,
    checkpoint_dir: str | Path | None = None,
    on_log: LogFn | None = None,
) -> list[SeedResult]:
    """Train one GRPO model per seed of `cfg.seeds` from ``models_dir/<START_MODELS[method]>``; save each.

    `on_log(step, stats)` gets the trainer's interval stats (reward, KL, entropy, response length, tokens/s,
    seconds per step, ...); with several seeds their keys are prefixed ``seed<s>/`` so the curves stay apart.
    Returns the per-seed results in seed order.
    """
    torch.set_num_threads(cfg.threads)
    start_dir = Path(models_dir) / START_MODELS[method]
    split = RL_TASKS[task]
    prompts = load_task_examples(data_dir, "train", [split])[: cfg.n_prompts or None]
    reward = reward_for(split)
    prompts_file = Path(data_dir) / "tasks" / "train" / f"{split}.jsonl"
    inputs = fingerprint(file_digest(start_dir), file_digest(prompts_file), cfg.n_prompts)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    results = []
    for seed in cfg.seeds:
        prefix = f"seed{seed}/" if len(cfg.seeds) > 1 else ""

        def log(step: int, stats: dict[str, float], prefix: str = prefix) -> None:
            if on_log is not None:
                on_log(step, {prefix + k: v for k, v in stats.items()})

        results.append(_run_seed(cfg.grpo_config(method, task, seed), task, start_dir, prompts, reward,
                                 inputs, label=f"rl {method}-{task} seed {seed}",
                                 seed_dir=folder / f"seed-{seed}" if folder is not None else None,
                                 checkpoint_every=cfg.checkpoint_every, on_log=log,
                                 model_dir=seed_model_dir(out_dir, cfg.seeds, seed)))
    if folder is not None:  # every seed is saved: keep the (DVC-declared) folder, empty
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    return results


def _run_seed(gcfg: GRPOConfig, task: str, start_dir: Path, prompts: list[dict], reward, inputs: str, *,
              label: str,
              seed_dir: Path | None, checkpoint_every: int, on_log: LogFn, model_dir: Path) -> SeedResult:
    model, tokenizer, kind = load_model_and_tokenizer(start_dir)
    wanted = "cola" if gcfg.method == "cola" else "base"
    if kind != wanted:
        raise ColaError(f"{start_dir}: {gcfg.method} RL needs a {'CoLA' if wanted == 'cola' else 'plain LM'} "
                        f"start model, found a {kind} folder")
    trainer = GRPOTrainer(build_policy(model, tokenizer, gcfg), gcfg, prompts, reward)
    stamp = fingerprint(asdict(gcfg), inputs)
    history = _restore(seed_dir, stamp, trainer) if seed_dir is not None else []
    for step, stats in history:  # replay a restored curve so this stage's MLflow run is complete
        on_log(step, stats)
    saved = trainer.step_count

    def log(step: int, stats: dict[str, float]) -> None:
        nonlocal saved
        history.append((step, dict(stats)))
        on_log(step, stats)
        # Checkpoint at log points: the trainer has just finished a step and reset its averaging window.
        if seed_dir is not None and step - saved >= checkpoint_every and step < gcfg.steps:
            _save(seed_dir, stamp, trainer, history)
            saved = step

    if trainer.step_count < gcfg.steps:
        trainer.train(on_log=log, description=label)
        if seed_dir is not None:  # a finished seed survives a kill during a later one
            _save(seed_dir, stamp, trainer, history)
    summary = {**(history[-1][1] if history else {}), **trainer.summary()}
    if gcfg.method == "cola":
        model.set_stage("frozen")
    model.eval()
    save_hf_folder(model, tokenizer, model_dir)
    write_run_info(model_dir, method=gcfg.method, task=task, seed=gcfg.seed, start=str(start_dir))
    return SeedResult(gcfg.seed, summary, history, model_dir)


def _save(folder: Path, stamp: str, trainer: GRPOTrainer, history: list) -> None:
    """Write the trainer state atomically (temp folder, then rename over the old one); safetensors + JSON."""
    tensors, meta = trainer.checkpoint_state()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "meta.json").write_text(json.dumps({"fingerprint": stamp, "trainer": meta, "history": history}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _restore(folder: Path, stamp: str, trainer: GRPOTrainer) -> list[tuple[int, dict[str, float]]]:
    """Load `folder`'s checkpoint into `trainer` when its fingerprint matches; return the stored curve."""
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        return []
    meta = json.loads(meta_file.read_text())
    if meta.get("fingerprint") != stamp:
        print(f"note: ignoring the checkpoint in {folder}: it was written for other params or inputs")
        return []
    trainer.load_checkpoint_state(load_file(str(folder / "state.safetensors")), meta["trainer"])
    return [(int(step), stats) for step, stats in meta["history"]]


# --------------------------------------------------------------------------------------------- outputs

CURVE_KEYS = ("reward_mean", "kl", "entropy", "response_length")


def curve_records(results: list[SeedResult]) -> list[dict[str, float]]:
    """Every seed's logged curve as flat records ``{step, seed, reward_mean, kl, ...}`` (a DVC plots file)."""
    return [{"step": step, "seed": r.seed, **stats} for r in results for step, stats in r.history]


def plot_curves(results: list[SeedResult], title: str):
    """Reward, KL, entropy and response length against the GRPO step, one line per seed."""
    from cola.plots import plt

    fig, axes = plt.subplots(2, 2, figsize=(8, 5))
    for ax, key in zip(axes.flat, CURVE_KEYS, strict=True):
        for r in results:
            points = [(step, stats[key]) for step, stats in r.history if key in stats]
            if points:
                ax.plot(*zip(*points, strict=True), label=f"seed {r.seed}")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    axes[1][0].set_xlabel("GRPO step")
    axes[1][1].set_xlabel("GRPO step")
    if len(results) > 1:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
