"""Configuration of a CoLA model: a base causal LM plus the latent-action modules around it.

The sizes follow the released v1 design (cola-spec.md §2): an inverse dynamics model (IDM) and a policy built
from the base's own decoder-layer class, a K-way action head on each, a codebook Linear(K→d) and two residual
SwiGLU merge blocks on [state; action embedding]. `CoLAConfig.paper(base_config)` gives the paper's sizes for
any base; the defaults below are the small ones used with the tiny CPU base.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

OUTPUT_HEADS = ("paper", "residual")


class CoLAConfig(PretrainedConfig):
    """Hyper-parameters of the latent-action modules; the base's own config is nested as `base_config`.

    Args:
        base_config: config of the wrapped causal LM (a `PretrainedConfig` or its dict with `model_type`).
        num_actions: K, the size of the discrete latent action space (paper: 64).
        n_idm_layers: decoder blocks of the inverse dynamics model (paper: 4).
        n_policy_layers: decoder blocks of the policy (paper: 8).
        n_merge_blocks: residual SwiGLU blocks merging the action into the state (paper: 2).
        merge_intermediate_size: width of each merge block's SwiGLU (paper: the base's FFN width, 14336 for 8B).
            `None` means the base's `intermediate_size`.
        output_head: `paper` = W_lm(N_f(s²) − h) as in the released model; `residual` = W_lm(N_f(s²)), a
            documented deviation that trains at tiny width (calibration.md §3).
        gumbel_temperature: temperature τ of the straight-through relaxed softmax in latent pretraining (paper 2.0).
        entropy_coef: weight of the per-position entropy bonus in latent pretraining (paper 1e-3).
        policy_temperature: τ dividing the policy logits when scoring action log-probabilities (paper 1.0).
        init_std: std of the fresh modules' weights; `None` means GPT-NeoX's sqrt(2 / (5 d)).
    """

    model_type = "cola"

    def __init__(
        self,
        base_config: PretrainedConfig | dict[str, Any] | None = None,
        num_actions: int = 64,
        n_idm_layers: int = 2,
        n_policy_layers: int = 2,
        n_merge_blocks: int = 2,
        merge_intermediate_size: int | None = None,
        output_head: str = "residual",
        gumbel_temperature: float = 2.0,
        entropy_coef: float = 1e-3,
        policy_temperature: float = 1.0,
        init_std: float | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(base_config, dict):
            base_config = dict(base_config)
            base_config = AutoConfig.for_model(base_config.pop("model_type"), **base_config)
        self.base_config = base_config
        if output_head not in OUTPUT_HEADS:
            raise ValueError(f"output_head must be one of {OUTPUT_HEADS}, got {output_head!r}")
        if num_actions < 2:
            raise ValueError(f"num_actions must be at least 2, got {num_actions}")
        if n_merge_blocks < 1:
            raise ValueError(f"n_merge_blocks must be at least 1, got {n_merge_blocks}")
        self.num_actions = num_actions
        self.n_idm_layers = n_idm_layers
        self.n_policy_layers = n_policy_layers
        self.n_merge_blocks = n_merge_blocks
        self.merge_intermediate_size = merge_intermediate_size
        self.output_head = output_head
        self.gumbel_temperature = gumbel_temperature
        self.entropy_coef = entropy_coef
        self.policy_temperature = policy_temperature
        self.init_std = init_std
        super().__init__(**kwargs)

    @classmethod
    def paper(cls, base_config: PretrainedConfig, **overrides: Any) -> CoLAConfig:
        """The released model's sizes (4 IDM blocks, 8 policy blocks, merge width = base FFN, paper head)."""
        values: dict[str, Any] = dict(
            num_actions=64, n_idm_layers=4, n_policy_layers=8, n_merge_blocks=2,
            merge_intermediate_size=None, output_head="paper",
        )
        values.update(overrides)
        return cls(base_config=base_config, **values)

    @property
    def hidden_size(self) -> int:
        return self.base_config.hidden_size

    @property
    def merge_width(self) -> int:
        return self.merge_intermediate_size or self.base_config.intermediate_size

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        if isinstance(self.base_config, PretrainedConfig):
            output["base_config"] = self.base_config.to_dict()
        return output
