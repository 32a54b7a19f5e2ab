"""Every params section in one torch-free package: ``params.yaml`` is :class:`PipelineParams`.

    from cola.config import load_stage_config
    cfg = load_stage_config("latent")     # validates the whole params.yaml, returns its LatentConfig

One dataclass per section (the transformers ``configuration_*.py`` habit: configs import no torch, so a bad
params.yaml is refused in well under a second, before a stage pays for its imports). Each field is declared
once, with its help text and bounds (:mod:`cola.config.fields`); the defaults are the ``tiny`` profile's, and
the other profiles are override files in ``configs/profiles/`` (:mod:`cola.config.profiles`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cola.config.agent import AgentConfig
from cola.config.data import PrepareConfig
from cola.config.describe import flatten, help_table, missing_help
from cola.config.evaluation import EvalConfig, EvaluateConfig, Math500Config, ReportConfig, RLEvalConfig
from cola.config.fields import override, param
from cola.config.launch import LaunchConfig
from cola.config.rl import RLConfig, RLTaskConfig, RLTasks
from cola.config.search import MctsConfig, QLearnConfig, SearchConfig
from cola.config.tracking import TrackingConfig
from cola.config.training import (
    BaseConfig,
    BCConfig,
    CoLAArchitecture,
    FTAConfig,
    LatentConfig,
    OptimConfig,
    RuntimeConfig,
    SFTConfig,
    TinyBaseConfig,
    TrainConfig,
)
from cola.config.validation import from_dict, load_params, load_section
from cola.errors import ParamsError

__all__ = [
    "AgentConfig", "BCConfig", "BaseConfig", "CoLAArchitecture", "EvalConfig", "EvaluateConfig", "FTAConfig",
    "LaunchConfig", "LatentConfig", "Math500Config", "MctsConfig", "OptimConfig", "ParamsError",
    "PipelineParams", "PrepareConfig", "QLearnConfig", "RLConfig", "RLEvalConfig", "RLTaskConfig", "RLTasks",
    "ReportConfig", "RuntimeConfig", "SFTConfig", "SearchConfig", "TinyBaseConfig", "TrackingConfig",
    "TrainConfig", "flatten", "from_dict", "help_table", "load_params", "load_pipeline_params",
    "load_section", "load_stage_config", "missing_help", "override", "param", "params_path",
]

PROFILES = ("tiny", "smoke", "smollm2-135m", "llama-3.1-8b")


@dataclass
class PipelineParams:
    """All of params.yaml: one section per stage (the stage's name)."""

    profile: Literal["tiny", "smoke", "smollm2-135m", "llama-3.1-8b"] = param(
        "tiny", "Which scale these params are for (recorded on every run); switch with `cola profile NAME`.")
    prepare: PrepareConfig = param(PrepareConfig(), "Data preparation.")
    base: BaseConfig = param(BaseConfig(), "The base LM.")
    latent: LatentConfig = param(LatentConfig(), "Latent-action pretraining (IDM + world model).")
    bc: BCConfig = param(BCConfig(), "Behaviour cloning of the policy.")
    evaluate: EvaluateConfig = param(EvaluateConfig(), "Evaluation of the base and the CoLA-BC model.")
    fta: FTAConfig = param(FTAConfig(), "Fine-tuning under action guidance of the BC model "
                                        "(CoLA RL's start).")
    sft: SFTConfig = param(SFTConfig(), "Supervised fine-tuning of the base on the same data and budget "
                                        "(token RL's start).")
    rl: RLConfig = param(RLConfig(), "GRPO, shared by every rl@<method>-<task> entry (latent and token).")
    rl_eval: RLEvalConfig = param(RLEvalConfig(), "Evaluation of every model of the RL comparison.")
    math500: Math500Config = param(Math500Config(), "MATH-500 accuracy of every model of the comparison.")
    agent: AgentConfig = param(AgentConfig(), "Agent tasks: TextWorld games, walkthrough fine-tuning, "
                                              "multi-turn RL, success on seen and unseen games.")
    report: ReportConfig = param(ReportConfig(), "The comparison report.")
    qlearn: QLearnConfig = param(QLearnConfig(), "MCTS-Q's Q-networks: double DQN on rollouts of each RL "
                                                 "model (CoLA and token, per task).")
    mcts: MctsConfig = param(MctsConfig(), "MCTS-Q for CoLA and the token baseline against best-of-n at the "
                                           "same budget.")
    launch: LaunchConfig = param(LaunchConfig(), "Processes and machines of the training stages (not a "
                                                 "stage: accelerate launch settings).")
    tracking: TrackingConfig = param(TrackingConfig(), "What MLflow keeps of the models (not a stage: "
                                                       "changing it re-runs nothing).")

    def __post_init__(self) -> None:
        # Every process draws the same global batch and keeps its block of rows (cola.train.distributed), so
        # the launchable stages' global batches must split evenly: say so before any stage loads a model.
        processes = self.launch.num_processes
        batches = {"base.batch_size": self.base.batch_size, "latent.batch_size": self.latent.batch_size,
                   "bc.batch_size": self.bc.batch_size, "fta.batch_size": self.fta.batch_size,
                   "sft.batch_size": self.sft.batch_size, "rl.prompts_per_step": self.rl.prompts_per_step,
                   "qlearn.batch_size": self.qlearn.batch_size,
                   "agent.ft_batch_size": self.agent.ft_batch_size,
                   "agent.games_per_step": self.agent.games_per_step}
        for name, rows in batches.items():
            if rows % processes:
                raise ValueError(f"{name} {rows} does not split over launch.num_processes {processes}: "
                                 f"make it a multiple of {processes}")


def params_path() -> Path:
    """``params.yaml``, unless ``COLA_PARAMS`` names another file (tests try bad params without touching
    it)."""
    return Path(os.environ.get("COLA_PARAMS", "params.yaml"))


def load_pipeline_params(path: str | Path | None = None) -> PipelineParams:
    """Validate a whole params file (default: :func:`params_path`); one-line `ParamsError` on the first
    problem."""
    path = Path(path) if path is not None else params_path()
    return from_dict(PipelineParams, load_params(path), where="", source=str(path))


def load_stage_config(section: str, path: str | Path | None = None) -> tuple[Any, PipelineParams]:
    """(the section's config, the whole params) after validating the whole file: a bad key anywhere stops any
    stage, so a typo costs seconds, not a run that fails later."""
    params = load_pipeline_params(path)
    if not hasattr(params, section):
        raise ParamsError(f"params.yaml has no section for stage {section!r}")
    return getattr(params, section), params

