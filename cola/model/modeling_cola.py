"""CoLA around any Hugging Face causal LM (cola-spec.md §2, §7, §9).

    x ──base LM──▶ h = N_f(base(x))            (stop-gradient everywhere but in FTA)
    h ──IDM blocks──▶ u ──shift left by one──▶ z_t = u_{t+1}      q(a_t | x_{≤t+1})
    h ──policy blocks──▶ w_t                                       π(a_t | x_{≤t})
    a ──codebook──▶ e;  s⁰ = h,  sʲ = sʲ⁻¹ + SwiGLUʲ([sʲ⁻¹; e])    (world model, position-wise)
    logits = W_lm(N_f(s²) − h)  (`paper`)   or   W_lm(N_f(s²))  (`residual`, tiny-width deviation)

The IDM and the policy are stacks of the base's own decoder-layer class, built as the base's backbone class
(LlamaModel, Qwen2Model, …) with their own layer count, so masks, rotary embeddings and KV caches behave
exactly as in the base. Their token embedding is unused (they read h through `inputs_embeds`) and is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from cola.model.configuration_cola import CoLAConfig
from cola.model.generation import LatentGenerationMixin
from cola.model.inputs import left_padded_positions
from cola.model.kv_cache import returned_cache, with_cache
from cola.model.sampling import NoiseSource, uniform

# Trainable groups of cola-spec.md §7. `base` is the decoder without its final norm; `head` is N_f + W_lm.
GROUPS = ("base", "head", "idm", "codebook", "merge", "policy")

# How the base hidden state h may receive gradient in the world model (cola-spec.md §2.5, §3 stage 3):
#   none      h is detached everywhere (stages 1, 2 and RL);
#   state     through s⁰ = h and the merge blocks; the −h term of the paper head is detached (FTA-I world
#             model);
#   subtract  only through the −h term of the paper head: o = sg(N_f(s²)) − h (FTA-P). The residual head has
#             no −h term, so there FTA-P falls back to the `state` route (documented with the residual
#             deviation).
HiddenGrad = Literal["none", "state", "subtract"]

STAGES: dict[str, tuple[frozenset[str], HiddenGrad]] = {
    "latent": (frozenset({"idm", "codebook", "merge"}), "none"),
    "bc": (frozenset({"policy"}), "none"),
    "fta_i_world": (frozenset({"base", "head"}), "state"),
    "fta_i_policy": (frozenset({"policy"}), "none"),
    "fta_p": (frozenset({"base", "head"}), "subtract"),
    "rl": (frozenset({"policy"}), "none"),
    "frozen": (frozenset(), "none"),
}


@dataclass
class CoLAOutput(ModelOutput):
    """World-model output: next-token `logits` (B, T, V) under `actions` (B, T); `loss` when labels were
    given."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    actions: torch.Tensor | None = None
    policy_logits: torch.Tensor | None = None


class SwiGLUMerge(nn.Module):
    """One residual merge block: s + W_down(SiLU(W_gate v) ⊙ W_up v) with v = [s; e], no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(2 * hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(2 * hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, state: torch.Tensor, action_embedding: torch.Tensor) -> torch.Tensor:
        v = torch.cat([state, action_embedding], dim=-1)
        return state + self.down_proj(F.silu(self.gate_proj(v)) * self.up_proj(v))


def stack_config(base_config: PretrainedConfig, n_layers: int, init_std: float) -> PretrainedConfig:
    """The base's config with `n_layers` blocks, no vocabulary and the fresh modules' init std."""
    values = base_config.to_dict()
    model_type = values.pop("model_type")
    # Per-layer lists are derived from the layer count; drop them so the new count rebuilds them.
    for key in ("layer_types", "max_window_layers", "architectures", "auto_map", "quantization_config"):
        values.pop(key, None)
    values.update(num_hidden_layers=n_layers, vocab_size=1, pad_token_id=None, bos_token_id=None,
                  eos_token_id=None, tie_word_embeddings=False, initializer_range=init_std)
    return AutoConfig.for_model(model_type, **values)


def gumbel_straight_through(
    logits: torch.Tensor, temperature: float, generator: NoiseSource = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gumbel-max sample with a straight-through relaxed-softmax gradient (cola-spec.md §2.3).

    Returns (hard one-hot with the relaxed gradient, relaxed probabilities p, sampled indices). The index is a
    *sample* of softmax(logits); the temperature only shapes the backward pass.
    """
    tiny = torch.finfo(logits.dtype).tiny
    noise = uniform(tuple(logits.shape), generator, logits.device, logits.dtype)
    gumbel = -torch.log(-torch.log(noise.clamp(tiny, 1.0 - 1e-7)))
    probs = torch.softmax((logits + gumbel) / temperature, dim=-1)
    index = probs.argmax(dim=-1)
    hard = F.one_hot(index, logits.shape[-1]).to(probs.dtype)
    return hard + probs - probs.detach(), probs, index


class CoLAPreTrainedModel(PreTrainedModel):
    config_class = CoLAConfig
    base_model_prefix = "cola"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        # Only CoLA's own linear layers reach here: the base and the IDM/policy stacks are sub-models that
        # initialise themselves (the stacks with the same GPT-NeoX std through their config).
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config_init_std())
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def config_init_std(self) -> float:
        return self.config.init_std or math.sqrt(2.0 / (5.0 * self.config.hidden_size))


class CoLAForCausalLM(CoLAPreTrainedModel, LatentGenerationMixin):
    """A base causal LM extended with an IDM, a latent-action world model and a latent-action policy.

    Latent-action decoding, `generate_latent(ids, mask, ...)`, comes from `LatentGenerationMixin`.
    """

    def __init__(self, config: CoLAConfig, base: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        base_config = config.base_config
        d, k, std = config.hidden_size, config.num_actions, self.config_init_std()
        self.base = base if base is not None else AutoModelForCausalLM.from_config(base_config)
        self.idm = self._new_stack(config.n_idm_layers, std)
        self.idm_head = nn.Linear(d, k, bias=False)
        self.action_codebook = nn.Linear(k, d, bias=False)
        self.merge_blocks = nn.ModuleList(
            SwiGLUMerge(d, config.merge_width) for _ in range(config.n_merge_blocks)
        )
        self.policy = self._new_stack(config.n_policy_layers, std)
        self.policy_head = nn.Linear(d, k, bias=False)
        self.hidden_grad: HiddenGrad = "none"
        self.post_init()

    def _new_stack(self, n_layers: int, std: float) -> PreTrainedModel:
        stack = AutoModel.from_config(stack_config(self.config.base_config, n_layers, std))
        stack.embed_tokens = None  # reads h through inputs_embeds
        return stack

    @classmethod
    def from_base(cls, base: PreTrainedModel | str, **config_kwargs) -> CoLAForCausalLM:
        """Wrap a base causal LM (a loaded model or a folder / hub id) with freshly initialised CoLA
        modules."""
        if isinstance(base, str):
            base = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True, trust_remote_code=False)
        for module in base.modules():  # keep the pretrained weights out of CoLA's initialisation
            module._is_hf_initialized = True
        config = CoLAConfig(base_config=base.config, **config_kwargs)
        return cls(config, base=base).to(base.dtype)

    # ----- the pieces --------------------------------------------------------------------------------------

    @property
    def final_norm(self) -> nn.Module:
        decoder = self.base.get_decoder()
        for name in ("norm", "final_layernorm", "ln_f"):
            if isinstance(getattr(decoder, name, None), nn.Module):
                return getattr(decoder, name)
        raise TypeError(f"cannot find the final norm of {type(decoder).__name__} (looked for norm, ln_f)")

    @property
    def lm_head(self) -> nn.Module:
        return self.base.get_output_embeddings()

    def group_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Named parameters by trainable group of cola-spec.md §7 (N_f and W_lm form the `head` group)."""
        head_ids = {id(p) for p in [*self.final_norm.parameters(), *self.lm_head.parameters()]}
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in GROUPS}
        prefixes = {"idm": "idm", "codebook": "action_codebook", "merge": "merge_blocks", "policy": "policy"}
        seen: set[int] = set()
        for name, param in self.named_parameters():
            if id(param) in seen:  # tied embeddings appear once
                continue
            seen.add(id(param))
            if name.startswith("base."):
                groups["head" if id(param) in head_ids else "base"].append((name, param))
                continue
            top = name.split(".")[0]
            group = next(g for g, prefix in prefixes.items() if top.startswith(prefix))
            groups[group].append((name, param))
        return groups

    def set_stage(self, stage: str) -> list[nn.Parameter]:
        """Make exactly the groups of `stage` (cola-spec.md §7) trainable; return the trainable parameters.

        Also sets how the world model lets gradient reach the base hidden state (see `HiddenGrad`).
        """
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")
        trainable, self.hidden_grad = STAGES[stage]
        params: list[nn.Parameter] = []
        for group, named in self.group_parameters().items():
            for _, param in named:
                param.requires_grad_(group in trainable)
                if group in trainable:
                    params.append(param)
        return params

    def base_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        use_cache: bool = False,
    ):
        """h = N_f(base(x)): the final-normed hidden state the LM head normally reads; returns (h, cache)."""
        out = self.base.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            **with_cache(cache, use_cache),
        )
        return out.last_hidden_state, returned_cache(out)

    def idm_logits(
        self,
        h: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Inverse-dynamics logits z (B, T, K) aligned so that z_t scores the action producing x_{t+1}.

        The IDM is causal over h, so its raw output u_{t+1} sees x_{≤t+1}; shifting it to slot t gives the
        action at t a view of exactly one future token. The last slot keeps its own output (as the authors
        do).
        """
        u = self.idm_head(
            self.idm(inputs_embeds=h.detach(), attention_mask=attention_mask, position_ids=position_ids)
            .last_hidden_state
        )
        return torch.cat([u[:, 1:], u[:, -1:]], dim=1)

    def policy_logits(
        self,
        h: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        use_cache: bool = False,
    ):
        """Policy logits w (B, T, K) from x_{≤t} only; returns (w, cache)."""
        out = self.policy(
            inputs_embeds=h.detach(), attention_mask=attention_mask, position_ids=position_ids,
            **with_cache(cache, use_cache),
        )
        return self.policy_head(out.last_hidden_state), returned_cache(out)

    def action_embedding(self, actions: torch.Tensor) -> torch.Tensor:
        """e = C·a for action indices (…) or (relaxed) one-hot vectors (…, K)."""
        if actions.dtype in (torch.long, torch.int):
            return F.embedding(actions, self.action_codebook.weight.t())
        return self.action_codebook(actions)

    def world_model_logits(self, h: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Next-token logits p(x_{t+1} | x_{≤t}, a_t) for a state h (…, d) and actions (…) or (…, K)."""
        e = self.action_embedding(actions)
        route = self.hidden_grad
        if self.config.output_head == "residual" and route == "subtract":
            route = "state"
        state = h if route == "state" else h.detach()
        for block in self.merge_blocks:
            state = block(state, e)
        normed = self.final_norm(state)
        if self.config.output_head == "residual":
            return self.lm_head(normed)
        if route == "subtract":
            return self.lm_head(normed.detach() - h)
        return self.lm_head(normed - h.detach())

    # ----- whole-model conveniences ------------------------------------------------------------------------

    @torch.no_grad()
    def idm_actions(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Deterministic IDM labels argmax z_t (B, T): the action at t that produced x_{t+1}."""
        positions = left_padded_positions(attention_mask) if attention_mask is not None else None
        h, _ = self.base_hidden(input_ids, attention_mask, positions)
        return self.idm_logits(h, attention_mask, positions).argmax(-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> CoLAOutput:
        """World-model logits under `actions` (B, T), or under the policy's argmax actions when none are
        given.

        With `labels` (B, T; -100 ignored) the loss is the next-token cross-entropy of logits[:, :-1] against
        labels[:, 1:], as for any causal LM.
        """
        positions = left_padded_positions(attention_mask) if attention_mask is not None else None
        h, _ = self.base_hidden(input_ids, attention_mask, positions)
        policy_logits = None
        if actions is None:
            policy_logits, _ = self.policy_logits(h, attention_mask, positions)
            actions = policy_logits.argmax(-1)
        logits = self.world_model_logits(h, actions)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return CoLAOutput(loss=loss, logits=logits, actions=actions, policy_logits=policy_logits)
