"""The `tracking` section: what MLflow keeps of each stage's model.

No stage declares this section in dvc.yaml, on purpose: it changes what the MLflow store holds, not any DVC
output, so changing it must not retrain a model. It takes effect from the next stage that runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from cola.config.fields import param

MODEL_STAGES = ("base", "latent", "bc", "fta", "sft", "rl")


@dataclass
class TrackingConfig:
    attach_models_up_to_mb: float = param(
        200.0, "A stage's model folder up to this size (MiB) is copied into its MLflow run under `model/`; a "
        "larger one is recorded by reference (`model/reference.json`: its DVC path, the md5 dvc.lock records "
        "and the command that fetches it). 0 records every model by reference.", min=0)
    register: list[str] = param(
        ["bc", "rl"], "Stages whose models are registered in MLflow's model registry, each under a stable "
        "name `<registry_prefix>-<run>` (`cola-bc`, `cola-rl-cola-math`, ...), one version per run; "
        "`cola eval models:/cola-bc/1` evaluates one.", choices=MODEL_STAGES)
    registry_prefix: str = param("cola", "First part of every registered model's name.")
