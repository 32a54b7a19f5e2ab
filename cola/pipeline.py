"""The pipeline's params schema and the shared start-up of every DVC stage.

Every stage validates the *whole* params.yaml before any work, so an unknown key or a bad value anywhere stops
the stage with one line naming it, and nothing on disk changes.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cola.data.prepare import PrepareConfig
from cola.errors import ParamsError
from cola.params import flatten, from_dict, load_params
from cola.tracking import StageRun
from cola.train.base_lm import BaseConfig
from cola.train.bc import BCConfig
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


def load_pipeline_params(path: str | Path = "params.yaml") -> PipelineParams:
    data = load_params(path)
    return from_dict(PipelineParams, data, where="", source=str(path))


@contextmanager
def stage(name: str, params_path: str | Path | None = None):
    """Validate params.yaml, then open the stage's MLflow run; yields (its config, run).

    `run.on_log(step, metrics)` logs step metrics and keeps them in `run.history` for plots. The params file
    is `params.yaml` unless `COLA_PARAMS` names another (used by tests to try bad params without touching it).
    """
    params_path = params_path or os.environ.get("COLA_PARAMS", "params.yaml")
    params = load_pipeline_params(params_path)
    cfg = getattr(params, name)
    if cfg is None:
        raise ParamsError(f"{params_path}: section {name} is missing")
    history: list[tuple[int, dict[str, float]]] = []
    with StageRun(name, params=flatten(cfg, prefix=name), profile=params.profile,
                  metrics_path=f"metrics/{name}.json") as run:
        def on_log(step: int, metrics: dict[str, Any]) -> None:
            history.append((step, dict(metrics)))
            run.log_metrics(metrics, step)

        run.on_log = on_log
        run.history = history
        start = time.perf_counter()
        yield cfg, run
        run.summary({"stage_seconds": time.perf_counter() - start})
