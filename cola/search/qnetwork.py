"""MCTS-Q's Q-network: a copy of the base LM whose head gives Q(s_t, ·) over the K latent actions.

The paper's network (cola-spec.md §3 stage 5a) is a separate, fully fine-tuned copy of the base with
Linear(d → K, no bias) on its last hidden states, so Q(s_t, a) is read at every position t. Here it is a
config + model pair in the transformers habit: `QNetworkConfig` holds the base's own config and K,
`QNetwork` the base's decoder (a copy) and the head; folders save and load like any HF model (safetensors).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from cola.model.configuration_cola import WrapsBaseConfig
from cola.model.inputs import left_padded_positions


class QNetworkConfig(WrapsBaseConfig):
    """The base's config (a `PretrainedConfig` or its dict with `model_type`) and the number of actions K."""

    model_type = "cola_qnet"

    def __init__(self, base_config: PretrainedConfig | dict[str, Any] | None = None, num_actions: int = 64,
                 **kwargs: Any) -> None:
        self.base_config, self.num_actions = self.as_base_config(base_config), num_actions
        super().__init__(**kwargs)


class QNetwork(PreTrainedModel):
    """Q(s_t, ·) ∈ R^K at every position: the base's decoder, then Linear(d → K, no bias)."""

    config_class = QNetworkConfig
    base_model_prefix = "decoder"

    def __init__(self, config: QNetworkConfig, decoder: nn.Module | None = None) -> None:
        super().__init__(config)
        if decoder is None:  # from_config / from_pretrained: transformers initialises (or loads) it
            decoder = AutoModelForCausalLM.from_config(config.base_config).get_decoder()
        else:  # a copied decoder keeps its weights through post_init
            # Only here: flagged under from_pretrained, the loader skipped the non-persistent buffers too (the
            # rotary inv_freq stayed uninitialised memory: garbage positions, sometimes NaN Q-values).
            for module in decoder.modules():
                module._is_hf_initialized = True
        self.decoder = decoder
        self.q_head = nn.Linear(config.base_config.hidden_size, config.num_actions, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is self.q_head:  # Q ≡ 0 at the start: no action is preferred before any training
            nn.init.zeros_(module.weight)

    @classmethod
    def from_base(cls, base: PreTrainedModel, num_actions: int) -> QNetwork:
        """A Q-network on a copy of `base`'s decoder (the base itself is left untouched)."""
        return cls(QNetworkConfig(base.config, num_actions), copy.deepcopy(base.get_decoder()))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None) -> Tensor:
        """(B, T, K) Q-values for every prefix of `input_ids` (left-padded rows: generation's positions)."""
        if position_ids is None and attention_mask is not None:
            position_ids = left_padded_positions(attention_mask)
        out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return self.q_head(out.last_hidden_state)


def load_qnetwork(folder: str | Path) -> QNetwork:
    """A saved Q-network folder (safetensors only, as every model the pipeline loads)."""
    return QNetwork.from_pretrained(Path(folder), use_safetensors=True).eval()


@torch.no_grad()
def action_values(qnet: QNetwork, sequences: Tensor, attention_mask: Tensor, prompt_length: int,
                  n_actions: int) -> Tensor:
    """(B, N, K) Q-values of the states the N response actions were chosen in: position P − 1 + t is the
    state before response token t (the authors' actions fill positions [P − 1, EOS])."""
    q = qnet(sequences, attention_mask)
    return q[:, prompt_length - 1 : prompt_length - 1 + n_actions]
