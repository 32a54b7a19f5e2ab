"""Latent-action decoding (cola-spec.md §4), a mixin the model inherits: one latent action per generated
token.

At every step the base gives h_t, the policy gives w_t, an action a_t is chosen from w_t (sampled from the
top-k at a temperature, argmax, forced, or uniformly random), and the world model turns (h_t, a_t) into the
next token (greedy by default). The base and the policy keep their own KV caches; the merge blocks are
position-wise and need none. Prompts are left-padded.

`CoLAForCausalLM` inherits `LatentGenerationMixin` (the transformers `GenerationMixin` pattern), so decoding
needs only the model's public pieces (base_hidden, policy_logits, world_model_logits) and never imports it.

Alignment (cola-spec.md §9 item 1): `actions[:, i]` is the action chosen at sequence position P − 1 + i and it
produced `sequences[:, P + i]`; `LatentGeneration.actions_by_position()` lays them out on the sequence axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from cola.model.inputs import left_padded_positions
from cola.model.sampling import NoiseSource, sample_top_k, uniform
from cola.model.static_decoding import fast_path_default, static_steps

ActionMode = Literal["sample", "greedy", "forced", "random"]


@dataclass
class LatentGeneration:
    """Result of `generate_latent` for a batch of B prompts padded to length P, with N generated steps."""

    sequences: torch.Tensor  # (B, P + N) prompt + generated tokens; pad after a row's EOS
    actions: torch.Tensor  # (B, N) action that produced sequences[:, P + i]; -1 after a row's EOS
    action_logprobs: torch.Tensor  # (B, N) log softmax(w / τ_policy)[a] over all K actions; 0 after EOS
    response_mask: torch.Tensor  # (B, N) True for generated tokens up to and including EOS
    prompt_length: int
    attention_mask: torch.Tensor  # (B, P + N) prompt mask followed by the response mask
    hidden: torch.Tensor | None = None  # (B, P + N - 1, d) base states h, when requested (RL reuses them)
    caches: tuple | None = None  # (base, policy) KV caches of sequences[:, :-1] when decoding used caches

    def actions_by_position(self, ignore_index: int = -100) -> torch.Tensor:
        """Actions on the sequence axis (B, P + N): position t holds the action that produced token t + 1."""
        out = torch.full_like(self.sequences, ignore_index)
        n = self.actions.shape[1]
        p = self.prompt_length
        out[:, p - 1 : p - 1 + n] = torch.where(self.response_mask, self.actions, ignore_index)
        return out


def choose_actions(
    policy_logits: torch.Tensor,
    mode: ActionMode,
    top_k: int | None = 40,
    temperature: float = 1.0,
    forced_action: int | None = None,
    generator: NoiseSource = None,
) -> torch.Tensor:
    """Pick one action per row from policy logits (B, K)."""
    batch, num_actions = policy_logits.shape
    if mode == "sample":
        return sample_top_k(policy_logits, top_k, temperature, generator)
    if mode == "greedy":
        return policy_logits.argmax(-1)
    if mode == "forced":
        if forced_action is None or not 0 <= forced_action < num_actions:
            raise ValueError(f"forced action must be in [0, {num_actions}), got {forced_action}")
        return torch.full((batch,), forced_action, dtype=torch.long, device=policy_logits.device)
    if mode == "random":
        u = uniform((batch,), generator, policy_logits.device)
        return (u * num_actions).long().clamp(max=num_actions - 1)
    raise ValueError(f"unknown action mode {mode!r}; expected sample, greedy, forced or random")


class LatentGenerationMixin:
    """`generate_latent` for a model with `base_hidden`, `policy_logits`, `world_model_logits` and a config
    with `policy_temperature` (`CoLAForCausalLM`)."""

    @torch.no_grad()
    def generate_latent(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 32,
        action_mode: ActionMode = "sample",
        action_top_k: int | None = 40,
        action_temperature: float = 1.0,
        forced_action: int | None = None,
        token_sampling: bool = False,
        token_top_k: int | None = None,
        token_temperature: float = 1.0,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int = 0,
        use_cache: bool = True,
        generator: NoiseSource = None,
        return_hidden: bool = False,
        num_samples: int = 1,
        caches: tuple | None = None,
        fast_path: bool | None = None,
    ) -> LatentGeneration:
        """Decode up to `max_new_tokens` tokens per prompt, one latent action per token.

        Args:
            input_ids, attention_mask: left-padded prompts (B, P).
            action_mode: `sample` (top-k + temperature, the RL behaviour policy), `greedy` (argmax),
                `forced` (always `forced_action`) or `random` (uniform over the K actions).
            token_sampling: sample the token from the world model instead of taking its argmax (the paper
                decodes tokens greedily; exploration lives in action space).
            eos_token_id: a row stops after producing any of these ids.
            use_cache: KV caches for the base and the policy; `False` recomputes the whole prefix every step
                (slow, used to test that caching changes nothing).
            generator: seeds every random choice, so a seeded run is reproducible with or without caches
                (a `cola.model.sampling.BatchRows` when these prompts are rows of a larger batch).
            return_hidden: also return the base states h of every position that chose an action (for RL
                updates that re-score actions without running the base again).
            num_samples: continuations per prompt (an RL group): the prompt is encoded once, then its caches
                are repeated, so row b·num_samples + j of the result is sample j of prompt b.
            caches: (base, policy) KV caches of a prefix of `input_ids` shorter than it, from an earlier call
                (the search's nodes): only the rest is run. They are extended in place; pass copies to keep
                them.
            fast_path: static KV caches and a compiled decode step (`cola.model.static_decoding`); None:
                on CUDA devices when decoding from scratch with caches. The same tokens and actions.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if fast_path is None:
            fast_path = use_cache and caches is None and fast_path_default(input_ids.device)
        static = None
        if fast_path:
            if caches is not None or not use_cache:
                raise ValueError("the fast path decodes from scratch with caches (no `caches`, use_cache)")
            # Static caches have one batch size: the samples of a group are rows from the prompt pass on.
            input_ids = input_ids.repeat_interleave(num_samples, 0)
            attention_mask = attention_mask.repeat_interleave(num_samples, 0)
            num_samples = 1
            static = static_steps(self, input_ids.shape[0], input_ids.shape[1] + max_new_tokens,
                                  compile_step=input_ids.device.type == "cuda")
        eos = torch.tensor(
            [] if eos_token_id is None
            else [eos_token_id] if isinstance(eos_token_id, int)
            else list(eos_token_id),
            device=input_ids.device,
        )
        batch, prompt_length = input_ids.shape
        sequences, mask = input_ids, attention_mask.long()
        done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        actions, logprobs, alive, hiddens = [], [], [], []
        base_cache, policy_cache = caches if caches is not None else (None, None)
        cached = base_cache.get_seq_length() if base_cache is not None else 0
        if cached >= prompt_length:
            raise ValueError(f"the caches cover {cached} tokens; they must cover fewer than the "
                             f"{prompt_length} given, so that the last one is run")
        step_ids, step_positions = sequences[:, cached:], left_padded_positions(mask)[:, cached:]

        for _ in range(max_new_tokens):
            if static is not None:
                h, w = static(self, step_ids, mask, step_positions)
            elif use_cache:
                h, base_cache = self.base_hidden(step_ids, mask, step_positions, base_cache, use_cache=True)
                w, policy_cache = self.policy_logits(h, mask, step_positions, policy_cache, use_cache=True)
            else:
                positions = left_padded_positions(mask)
                h, _ = self.base_hidden(sequences, mask, positions)
                w, _ = self.policy_logits(h, mask, positions)
            if not actions and num_samples > 1:  # after the prompt pass: one row per sample from here on
                h, w = h.repeat_interleave(num_samples, 0), w.repeat_interleave(num_samples, 0)
                sequences, mask, attention_mask, step_positions = (
                    t.repeat_interleave(num_samples, 0)
                    for t in (sequences, mask, attention_mask, step_positions))
                done = done.repeat_interleave(num_samples)
                if use_cache and static is None:
                    base_cache.batch_repeat_interleave(num_samples)
                    policy_cache.batch_repeat_interleave(num_samples)
            if return_hidden:
                hiddens.append(h if use_cache or not hiddens else h[:, -1:])
            h_last, w_last = h[:, -1], w[:, -1]
            action = choose_actions(w_last, action_mode, action_top_k, action_temperature, forced_action,
                                    generator)
            logp = torch.log_softmax(w_last.float() / self.config.policy_temperature, -1)
            logp = logp.gather(-1, action[:, None]).squeeze(-1)
            logits = self.world_model_logits(h_last, action)
            if token_sampling:
                token = sample_top_k(logits, token_top_k, token_temperature, generator)
            else:
                token = logits.argmax(-1)

            alive.append(~done)
            actions.append(torch.where(done, -1, action))
            logprobs.append(torch.where(done, 0.0, logp))
            token = torch.where(done, pad_token_id, token)
            done = done | torch.isin(token, eos)

            sequences = torch.cat([sequences, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step_ids, step_positions = token[:, None], step_positions[:, -1:] + 1
            if done.all():
                break

        response_mask = torch.stack(alive, 1)
        return LatentGeneration(
            sequences=sequences,
            actions=torch.stack(actions, 1),
            action_logprobs=torch.stack(logprobs, 1),
            response_mask=response_mask,
            prompt_length=prompt_length,
            attention_mask=torch.cat([attention_mask.long(), response_mask.long()], dim=1),
            hidden=torch.cat(hiddens, dim=1) if return_hidden else None,
            caches=(base_cache, policy_cache) if use_cache and static is None else None,
        )
