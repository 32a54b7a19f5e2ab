"""Configuration of a CoLA model: a base causal LM plus the latent-action modules around it.

The sizes follow the released v1 design (cola-spec.md §2): an inverse dynamics model (IDM) and a policy built
from the base's own decoder-layer class, a K-way action head on each, a codebook Linear(K→d) and two residual
SwiGLU merge blocks on [state; action embedding]. `CoLAConfig.paper(base_config)` gives the paper's sizes for
any base; the defaults are the `tiny` profile's small ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from cola.config import CoLAArchitecture, from_dict

#: The architecture fields, declared once in `cola.config.CoLAArchitecture` (the `latent.cola` params
#: section).
ARCHITECTURE_FIELDS = tuple(f.name for f in dataclasses.fields(CoLAArchitecture))


class WrapsBaseConfig(PretrainedConfig):
    """A config around a base causal LM's own config (`base_config`), which config.json keeps nested."""

    @staticmethod
    def as_base_config(value: PretrainedConfig | dict[str, Any] | None) -> PretrainedConfig | None:
        """The base's config from a config or its saved dict (with `model_type`)."""
        if isinstance(value, dict):
            value = dict(value)
            return AutoConfig.for_model(value.pop("model_type"), **value)
        return value

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        if isinstance(self.base_config, PretrainedConfig):
            output["base_config"] = self.base_config.to_dict()
        return output


class CoLAConfig(WrapsBaseConfig):
    """The latent-action modules' sizes (`cola.config.CoLAArchitecture`) plus the wrapped base's own config.

    Args:
        base_config: config of the wrapped causal LM (a `PretrainedConfig` or its dict with `model_type`).
        init_std: std of the fresh modules' weights; `None` means GPT-NeoX's sqrt(2 / (5 d)).
        **kwargs: the fields of `CoLAArchitecture` (num_actions, n_idm_layers, n_policy_layers,
            n_merge_blocks, merge_intermediate_size, output_head, policy_temperature), validated by its rules,
            with its defaults; anything else goes to `PretrainedConfig`.
    """

    model_type = "cola"

    def __init__(
        self,
        base_config: PretrainedConfig | dict[str, Any] | None = None,
        init_std: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.base_config = self.as_base_config(base_config)
        given = {name: kwargs.pop(name) for name in ARCHITECTURE_FIELDS if name in kwargs}
        if given.get("merge_intermediate_size") is None:  # configs saved before 0 meant "the base's width"
            given.pop("merge_intermediate_size", None)
        architecture = from_dict(CoLAArchitecture, given, "cola", source="CoLAConfig")
        for name, value in dataclasses.asdict(architecture).items():
            setattr(self, name, value)
        self.init_std = init_std
        super().__init__(**kwargs)

    @classmethod
    def paper(cls, base_config: PretrainedConfig, **overrides: Any) -> CoLAConfig:
        """The released model's sizes (4 IDM blocks, 8 policy blocks, merge width = base FFN, paper head)."""
        values: dict[str, Any] = dict(
            num_actions=64, n_idm_layers=4, n_policy_layers=8, n_merge_blocks=2, merge_intermediate_size=0,
            output_head="paper",
        )
        values.update(overrides)
        return cls(base_config=base_config, **values)

    def architecture(self) -> CoLAArchitecture:
        """The module sizes as the params dataclass (what `latent.cola` would hold to rebuild this model)."""
        return CoLAArchitecture(**{name: getattr(self, name) for name in ARCHITECTURE_FIELDS})

    @property
    def hidden_size(self) -> int:
        return self.base_config.hidden_size

    @property
    def merge_width(self) -> int:
        return self.merge_intermediate_size or self.base_config.intermediate_size
