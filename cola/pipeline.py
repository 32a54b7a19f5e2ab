"""The pipeline's params schema and the shared start-up of every DVC stage.

Every stage validates the *whole* params.yaml before any work, so an unknown key or a bad value anywhere stops
the stage with one line naming it, and nothing on disk changes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cola.data.prepare import PrepareConfig
from cola.errors import ParamsError
from cola.params import flatten, from_dict, load_params
from cola.report import ReportConfig
from cola.rl.evaluation import RLEvalConfig
from cola.rl.stage import RLConfig
from cola.tracking import StageRun
from cola.train.base_lm import BaseConfig
from cola.train.bc import BCConfig
from cola.train.fta import FTAConfig, SFTConfig
from cola.train.latent import LatentConfig

PROFILES = ("tiny", "smollm2-135m", "llama-3.1-8b")


@dataclass
class EvaluateConfig:
    """Held-out evaluation of the base and the CoLA-BC model."""

    tasks: list[str] = field(default_factory=lambda: ["arith", "wordprob", "countdown", "spell", "wrev"],
                             metadata={"help": "Task test splits to score (greedy decoding)."})
    limit: int = field(default=0, metadata={"help": "Problems per task; 0 = the whole test split.", "min": 0})
    max_new_tokens: int = field(default=48, metadata={"help": "Generation budget per answer.", "min": 1})
    batch_size: int = field(default=128, metadata={"help": "Prompts per generation batch.", "min": 1})
    perplexity_tokens: int = field(default=8192, metadata={"help": "Held-out tokens for perplexity and the "
                                                           "policy-marginal loss (K passes each).", "min": 128})
    diversity_prefixes: int = field(default=32, metadata={"help": "N held-out prefixes for semantic diversity.",
                                                           "min": 1})
    diversity_samples: int = field(default=8, metadata={"help": "M continuations per prefix.", "min": 2})
    diversity_length: int = field(default=24, metadata={"help": "Tokens per continuation.", "min": 1})
    probe_prefixes: int = field(default=32, metadata={"help": "Prefixes for the action-following probe.",
                                                      "min": 1})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    threads: int = field(default=2, metadata={"help": "torch CPU threads.", "min": 1})


@dataclass
class PipelineParams:
    """All of params.yaml: one section per stage."""

    profile: Literal["tiny", "smollm2-135m", "llama-3.1-8b"] = field(default="tiny", metadata={
        "help": "Which scale these params are for (recorded on every run); switch with `cola profile NAME`."})
    prepare: PrepareConfig = field(default_factory=PrepareConfig, metadata={"help": "Data preparation."})
    base: BaseConfig = field(default_factory=BaseConfig, metadata={"help": "The base LM."})
    latent: LatentConfig = field(default_factory=LatentConfig, metadata={"help": "Latent-action pretraining."})
    bc: BCConfig = field(default_factory=BCConfig, metadata={"help": "Behaviour cloning."})
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig, metadata={"help": "Evaluation."})
    fta: FTAConfig = field(default_factory=FTAConfig, metadata={
        "help": "Fine-tuning under action guidance of the BC model (CoLA RL starts from it)."})
    sft: SFTConfig = field(default_factory=SFTConfig, metadata={
        "help": "Supervised fine-tuning of the base on the same data and budget (token RL starts from it)."})
    rl: RLConfig = field(default_factory=RLConfig, metadata={
        "help": "GRPO, shared by every rl@<method>-<task> entry (latent-action and token-level)."})
    rl_eval: RLEvalConfig = field(default_factory=RLEvalConfig, metadata={
        "help": "Evaluation of every model of the RL comparison (rl_eval@<model>)."})
    report: ReportConfig = field(default_factory=ReportConfig, metadata={"help": "The comparison report."})


def load_pipeline_params(path: str | Path = "params.yaml") -> PipelineParams:
    data = load_params(path)
    return from_dict(PipelineParams, data, where="", source=str(path))


@contextmanager
def stage(name: str, params_path: str | Path | None = None, *, key: str | None = None,
          tags: Mapping[str, Any] | None = None) -> Iterator[tuple[Any, StageRun]]:
    """Validate params.yaml, then open the stage's MLflow run; yields (its config, run).

    `run.on_log(step, metrics)` logs step metrics and keeps them in `run.history` for plots. The params file
    is `params.yaml` unless `COLA_PARAMS` names another (used by tests to try bad params without touching it).
    `key` is the entry of a foreach stage (``rl@cola-math`` has name ``rl``, key ``cola-math``): the section
    is still `name`, the MLflow run is ``name@key`` and the metrics go to ``metrics/<name>/<key>.json``.
    """
    params_path = params_path or os.environ.get("COLA_PARAMS", "params.yaml")
    params = load_pipeline_params(params_path)
    cfg = getattr(params, name)
    if cfg is None:
        raise ParamsError(f"{params_path}: section {name} is missing")
    history: list[tuple[int, dict[str, float]]] = []
    run_name = f"{name}@{key}" if key else name
    metrics_path = f"metrics/{name}/{key}.json" if key else f"metrics/{name}.json"
    with StageRun(run_name, params=flatten(cfg, prefix=name), profile=params.profile,
                  metrics_path=metrics_path, tags=tags) as run:
        def on_log(step: int, metrics: dict[str, Any]) -> None:
            history.append((step, dict(metrics)))
            run.log_metrics(metrics, step)

        run.on_log = on_log
        run.history = history
        start = time.perf_counter()
        yield cfg, run
        timing = {"stage_seconds": time.perf_counter() - start}
        age = process_seconds()
        if age is not None:
            timing["process_seconds"] = age
        run.summary(timing)


def process_seconds() -> float | None:
    """Seconds since this process started, interpreter start-up and imports included (Linux), else None.

    `wall_clock_seconds` (StageRun) times the stage's own work; on a 2-core machine the imports and MLflow
    set-up add several seconds per stage, which this shows.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22 of proc(5): starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
