"""The CoLA model: config, model and latent-action decoding; registered with the transformers Auto classes."""

from transformers import AutoConfig, AutoModelForCausalLM

from cola.model.configuration_cola import CoLAConfig
from cola.model.generation import LatentGeneration
from cola.model.modeling_cola import GROUPS, STAGES, CoLAForCausalLM, CoLAOutput

AutoConfig.register("cola", CoLAConfig, exist_ok=True)
AutoModelForCausalLM.register(CoLAConfig, CoLAForCausalLM, exist_ok=True)

__all__ = [
    "GROUPS", "STAGES", "CoLAConfig", "CoLAForCausalLM", "CoLAOutput", "LatentGeneration",
]
