"""lm-evaluation-harness model `cola`: CoLA checkpoints evaluated with latent-action decoding.

`ColaLM` wraps a CoLA checkpoint folder (weights + tokenizer, as every pipeline stage writes them) for the
harness (lm-eval 0.4.13):

* ``generate_until`` decodes with `CoLAForCausalLM.generate_latent` (one latent action per token, cola-spec.md
  §4): tokens are greedy by default, as in the paper, and exploration lives in the action choice. How the
  task's ``gen_kwargs`` map onto that:

  ============================  ==============================================================================
  gen_kwargs                    effect
  ============================  ==============================================================================
  ``do_sample: false`` (tasks)  actions follow the model arg ``action_mode`` (default ``greedy``: argmax)
  ``do_sample: true``           ``greedy`` becomes ``sample`` (top-k of the policy logits at a temperature);
                                ``sample`` and ``random`` model args are kept as they are
  ``temperature``               the action temperature when sampling (else model arg ``action_temperature``)
  ``top_k``                     the action top-k when sampling (else model arg ``action_top_k``)
  ``until``                     stop strings: the text is cut at the earliest one; rows stop early
  ``max_gen_toks``              generation budget (contexts are left-truncated to ``max_length - budget``)
  ============================  ==============================================================================

  Tokens are sampled from the world model only with the model arg ``token_sampling=true``.

* ``loglikelihood`` is the world model's log-probability of the continuation under the policy's **argmax**
  action at every position: one forward over context + continuation, ``log p(x_{t+1} | x_{<=t}, a_t*)`` with
  ``a_t* = argmax_a π(a | x_{<=t})`` summed over the continuation. This is the likelihood of the deterministic
  (greedy-action) policy. The policy-marginal likelihood ``log Σ_a π(a | x) p(x_{t+1} | x, a)`` would need the
  world model under each of the K actions at every position (K passes of the head), and is not what greedy
  decoding produces; ``is_greedy`` is exactly "greedy latent decoding would produce this continuation".
  ``loglikelihood_rolling`` applies the same score over the harness's rolling windows of ``max_length``.

Every context starts with the tokenizer's EOS token (model arg ``add_bos_token``, default true) because the
pipeline trains on ``EOS example EOS example ...`` streams and ``[EOS, prompt, completion, EOS]`` SFT rows, so
EOS is the start-of-example marker the model knows.

Registration: ``@register_model("cola")`` runs when this module is imported. lm-eval 0.4.13 never reads
package entry points, so the CLI only knows ``--model cola`` after something imports this module; the ways to
get there (a task YAML path whose ``utils.py`` imports it, or ``python -m cola.eval.lm_eval_model``) are in
``evals/README.md``. The Python API needs none of that: ``simple_evaluate(model=ColaLM(pretrained=...))``.

Long because it is one class implementing lm-eval's whole `LM` interface (generation with stop strings in
segments, two log-likelihoods, request batching and ordering) plus its registration; its methods call each
other and share the class's state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs
from tqdm import tqdm

from cola.model.checkpoint import CheckpointError, is_cola_folder, load_model_and_tokenizer
from cola.model.generation import ActionMode
from cola.model.inputs import left_pad, left_padded_positions

logger = logging.getLogger(__name__)

ACTION_MODES = ("greedy", "sample", "random")
_DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "float16": torch.float16, "half": torch.float16}

#: The task YAMLs of a source checkout (``<repo>/evals``); `make_task_manager` includes it by default.
EVALS_DIR = Path(__file__).resolve().parents[2] / "evals"


def _as_bool(value: Any) -> bool:
    """Model args arrive as strings from the CLI (``token_sampling=True``) and as bools from Python."""
    if isinstance(value, str):
        if value.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if value.strip().lower() in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)


def _register(cls: type[TemplateLM]) -> type[TemplateLM]:
    # `python -m cola.eval.lm_eval_model` executes this file as `__main__`; registering that copy as well
    # would make the real import in `main()` fail with "alias 'cola' already registered", so only the
    # importable class (`cola.eval.lm_eval_model.ColaLM`) goes into lm-eval's model registry.
    return cls if __name__ == "__main__" else register_model("cola")(cls)


@_register
class ColaLM(TemplateLM):
    """A CoLA checkpoint as an lm-eval `LM` (registered as ``cola``); see the module docstring for semantics.

    Args:
        pretrained: a CoLA checkpoint folder holding its tokenizer (what every pipeline stage writes).
        action_mode: ``greedy`` (argmax action, the default), ``sample`` (top-k + temperature) or ``random``
            (uniform over the K actions, the semantic-diversity setting).
        action_top_k, action_temperature: the action sampler's defaults (paper: 40 of 64 actions, τ = 1).
        token_sampling: sample tokens from the world model instead of taking its argmax.
        batch_size: requests per forward / decoding batch (``auto`` is not supported and falls back to 8).
        max_length: context window in tokens; default: the base's ``max_position_embeddings``.
        max_gen_toks: generation budget when a task sets none.
        seed: seeds the generator used for every sampled action / token (reproducible runs).
        dtype: ``float32`` (default), ``bfloat16``, ``float16`` or ``auto`` (the checkpoint's dtype).
        device: ``cpu`` or a CUDA device; a CUDA device without CUDA falls back to CPU (the CLI passes
            ``cuda:0`` by default).
        add_bos_token: start every context with EOS, the pipeline's start-of-example marker.
        stop_check_every: while decoding, check stop strings every this many tokens and drop finished rows (a
            long ``max_gen_toks`` then costs only what the answers need; each check re-reads the prompt once).
    """

    backend = "causal"

    def __init__(
        self,
        pretrained: str | Path,
        action_mode: str = "greedy",
        action_top_k: int = 40,
        action_temperature: float = 1.0,
        token_sampling: bool | str = False,
        batch_size: int | str = 8,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        seed: int = 1234,
        dtype: str = "float32",
        device: str | None = "cpu",
        add_bos_token: bool | str = True,
        stop_check_every: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        # The CLI also passes max_batch_size (auto batching), which has no meaning here.
        kwargs.pop("max_batch_size", None)
        if kwargs:
            logger.warning("cola: ignoring unknown model args %s", sorted(kwargs))
        if action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")
        self.action_mode: str = action_mode
        self.action_top_k = int(action_top_k)
        self.action_temperature = float(action_temperature)
        self.token_sampling = _as_bool(token_sampling)
        self.add_bos_token = _as_bool(add_bos_token)
        self.max_gen_toks = int(max_gen_toks)
        self.stop_check_every = max(1, int(stop_check_every))
        self.batch_size = self._parse_batch_size(batch_size)

        device = str(device or "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            logger.info("cola: %s requested but CUDA is not available; using cpu", device)
            device = "cpu"
        self._device = torch.device(device)

        load_kwargs: dict[str, Any] = {}
        if dtype != "auto":
            if dtype not in _DTYPES:
                raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or auto, got {dtype!r}")
            load_kwargs["dtype"] = _DTYPES[dtype]
        if (Path(pretrained) / "config.json").is_file() and not is_cola_folder(pretrained):
            # Checked before loading: a plain model has no policy or world model to decode with.
            raise CheckpointError(f"{pretrained}: not a CoLA checkpoint (a plain causal LM?); use --model hf")
        model, tokenizer, _ = load_model_and_tokenizer(pretrained, **load_kwargs)
        self.pretrained = str(pretrained)
        self.model = model.to(self._device).eval()
        self.tokenizer = tokenizer
        if tokenizer.eos_token_id is None:
            raise CheckpointError(f"{pretrained}: the tokenizer has no EOS token")
        self.pad_token_id = (tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                             else tokenizer.eos_token_id)

        window = int(getattr(model.config.base_config, "max_position_embeddings", 0) or 2048)
        self._max_length = int(max_length) if max_length is not None else window
        self.generator = torch.Generator(device=self._device).manual_seed(int(seed))
        self.seed = int(seed)

    @staticmethod
    def _parse_batch_size(batch_size: int | str) -> int:
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            logger.warning("cola: batch_size=%s is not supported; using 8", batch_size)
            return 8
        value = int(batch_size)
        if value < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return value

    # ----- what the harness asks about the model ------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        # The pipeline's start-of-example marker is EOS (see the module docstring), also for empty contexts.
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained

    def get_model_info(self) -> dict[str, Any]:
        """Recorded by the harness under ``results["config"]`` (and so in MLflow / the results JSON)."""
        return {
            "model_path": self.pretrained,
            "num_actions": self.model.config.num_actions,
            "action_mode": self.action_mode,
            "action_top_k": self.action_top_k,
            "action_temperature": self.action_temperature,
            "token_sampling": self.token_sampling,
            "seed": self.seed,
        }

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of `string`, with the EOS start marker unless ``add_special_tokens`` is False."""
        ids = self.tokenizer(string, add_special_tokens=False)["input_ids"]
        prefix = self.add_bos_token if add_special_tokens is None else add_special_tokens
        if prefix and ids[:1] != [self.prefix_token_id]:
            ids = [self.prefix_token_id, *ids]
        return ids

    def tok_decode(self, tokens: Iterable[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return left_pad(rows, self.pad_token_id, self._device)

    # ----- log-likelihoods ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def _continuation_logprobs(self, rows: list[list[int]], n_scored: list[int]) -> list[tuple[float, bool]]:
        """Score the last ``n_scored[i]`` tokens of each ``rows[i]`` given the tokens before them.

        Equivalent to ``model(ids, mask).logits`` (world model under the policy's argmax actions), where the
        logits at position t score token t + 1; the world-model head runs only on the scored positions, so a
        48k-token vocabulary costs (B, max n_scored, V) instead of (B, T, V).
        """
        # The last token of a row is only ever a target, never an input.
        ids, mask = self._left_pad([row[:-1] for row in rows])
        positions = left_padded_positions(mask)
        h, _ = self.model.base_hidden(ids, mask, positions)
        w, _ = self.model.policy_logits(h, mask, positions)
        span = max(n_scored)
        # Left padding puts every row's last input at column -1, so the scored positions are the last `span`.
        logits = self.model.world_model_logits(h[:, -span:], w[:, -span:].argmax(-1))
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        out = []
        for i, (row, n) in enumerate(zip(rows, n_scored, strict=True)):
            if n == 0:
                out.append((0.0, True))
                continue
            target = torch.tensor(row[-n:], dtype=torch.long, device=logprobs.device)
            lp = logprobs[i, span - n:]
            score = lp.gather(-1, target[:, None]).sum().item()
            out.append((float(score), bool((lp.argmax(-1) == target).all().item())))
        return out

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str] | None, list[int], list[int]]],
        disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) for tokenised ``(request, context, continuation)``."""
        for _, _, cont in requests:
            if len(cont) > self.max_length:
                raise ValueError(
                    f"continuation of {len(cont)} tokens is longer than max_length={self.max_length}"
                )

        def sort_key(req: tuple[Any, list[int], list[int]]) -> tuple[int, tuple[int, ...]]:
            toks = req[1] + req[2]
            return -len(toks), tuple(toks)  # longest first: one padded length per batch, failures early

        collator = Collator(requests, sort_fn=sort_key, group_by=None)
        results: list[tuple[float, bool]] = []
        pbar = tqdm(total=len(requests), disable=disable_tqdm, desc="cola loglikelihood")
        for chunk in collator.get_batched(n=self.batch_size):
            # Keep the last max_length + 1 tokens: max_length inputs, the last token only a target.
            rows = [(ctx + cont)[-(self.max_length + 1):] for _, ctx, cont in chunk]
            scores = self._continuation_logprobs(rows, [len(cont) for _, _, cont in chunk])
            for (request, _, _), answer in zip(chunk, scores, strict=True):
                if request is not None:
                    self.cache_hook.add_partial("loglikelihood", request, answer)
            results.extend(scores)
            pbar.update(len(chunk))
        pbar.close()
        return collator.get_original(results)

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Sum of the deterministic-policy log-likelihood over rolling windows of ``max_length`` tokens."""
        results = []
        for request in tqdm(requests, disable=disable_tqdm, desc="cola loglikelihood_rolling"):
            (string,) = request.args
            windows = [
                (None, *lm_utils.make_disjoint_window(window))
                for window in lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string, add_special_tokens=False),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            total = sum(score for score, _ in self._loglikelihood_tokens(windows, disable_tqdm=True))
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            results.append(total)
        return results

    # ----- generation ---------------------------------------------------------------------------------------

    def _decoding_settings(self, do_sample: bool, kwargs: dict[str, Any]) -> tuple[ActionMode, int, float]:
        """(action mode, top-k, temperature) for one request group; see the table in the module docstring."""
        mode = self.action_mode
        if do_sample and mode == "greedy":
            mode = "sample"
        temperature = float(kwargs.get("temperature") or 0.0) if do_sample else 0.0
        top_k = kwargs.get("top_k")
        return (
            mode,  # type: ignore[return-value]
            int(top_k) if top_k is not None else self.action_top_k,
            temperature if temperature > 0 else self.action_temperature,
        )

    @staticmethod
    def _cut_at_stop(text: str, until: list[str]) -> tuple[str, bool]:
        """Text before the earliest stop string, and whether one occurred."""
        cuts = [i for i in (text.find(s) for s in until if s) if i >= 0]
        return (text[: min(cuts)], True) if cuts else (text, False)

    @torch.inference_mode()
    def _generate_batch(
        self,
        contexts: list[list[int]],
        max_new_tokens: int,
        until: list[str],
        mode: ActionMode,
        top_k: int,
        temperature: float,
    ) -> list[list[int]]:
        """Generated token ids per context (EOS excluded), stopping rows at EOS or at a stop string.

        `generate_latent` has no stop-string hook, so it runs in segments of `stop_check_every` tokens; after
        each segment finished rows leave the batch and the others continue from their full prefix. Greedy
        decoding gives the same tokens as one uninterrupted call (the segment boundary only re-reads the
        prefix).
        """
        eos = self.eot_token_id
        out: list[list[int]] = [[] for _ in contexts]
        active = list(range(len(contexts)))
        ids, mask = self._left_pad(contexts)
        remaining = max_new_tokens
        while active and remaining > 0:
            step = min(self.stop_check_every, remaining) if until else remaining
            gen = self.model.generate_latent(
                ids, mask, max_new_tokens=step, action_mode=mode, action_top_k=top_k,
                action_temperature=temperature, token_sampling=self.token_sampling, eos_token_id=eos,
                pad_token_id=self.pad_token_id, generator=self.generator,
            )
            new_tokens = gen.sequences[:, gen.prompt_length:]
            still: list[int] = []
            for j, row in enumerate(active):
                toks = new_tokens[j][gen.response_mask[j]].tolist()
                hit_eos = bool(toks) and toks[-1] == eos
                out[row].extend(toks[:-1] if hit_eos else toks)
                if not hit_eos and not (until and self._cut_at_stop(self.tok_decode(out[row]), until)[1]):
                    still.append(j)
            remaining -= new_tokens.shape[1]
            if not still or remaining <= 0:
                break
            active = [active[j] for j in still]
            ids, mask = gen.sequences[still], gen.attention_mask[still]
            first = int(mask.any(0).long().argmax())  # drop columns that are padding in every remaining row
            ids, mask = ids[:, first:], mask[:, first:]
        return out

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Latent-action decoding for each ``(context, gen_kwargs)``; see the module docstring for
        gen_kwargs."""
        eos_text = self.tokenizer.decode([self.eot_token_id], skip_special_tokens=False)

        def sort_key(req: tuple[str, dict]) -> tuple[int, str]:
            return -len(self.tok_encode(req[0])), req[0]

        collator = Collator([r.args for r in requests], sort_fn=sort_key, group_by="gen_kwargs",
                            group_fn=lambda r: r[1])
        results: list[str] = []
        pbar = tqdm(total=len(requests), disable=disable_tqdm, desc="cola generate_until")
        for chunk in collator.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*chunk, strict=True)
            gen_kwargs = all_kwargs[0]  # the collator groups requests with equal gen_kwargs
            kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_new = int(kwargs.pop("max_gen_toks"))
            if max_new >= self.max_length:
                # A task's budget (math500: 1024) can exceed a tiny model's window; keep half for the prompt.
                lm_utils.warning_once(
                    logger, f"cola: max_gen_toks={max_new} >= max_length={self.max_length}; "
                            f"generating at most {self.max_length // 2} tokens"
                )
                max_new = self.max_length // 2
            mode, top_k, temperature = self._decoding_settings(bool(kwargs.get("do_sample")), kwargs)
            max_ctx = self.max_length - max_new
            # An empty context (possible with add_bos_token=false) still needs one token to decode from.
            encoded = [self.tok_encode(ctx)[-max_ctx:] or [self.prefix_token_id] for ctx in contexts]
            generated = self._generate_batch(encoded, max_new, until, mode, top_k, temperature)
            for ctx, toks in zip(contexts, generated, strict=True):
                text, _ = self._cut_at_stop(self.tok_decode(toks), until)
                results.append(text)
                self.cache_hook.add_partial("generate_until", (ctx, gen_kwargs), text)
            pbar.update(len(chunk))
        pbar.close()
        return collator.get_original(results)


def make_task_manager(
    include_path: str | Path | list[str | Path] | None = None,
    metadata: dict[str, Any] | None = None,
    include_defaults: bool = False,
):
    """A `TaskManager` over our task YAMLs (default `EVALS_DIR`) without lm-eval's built-in task index.

    Indexing the ~14k built-in YAMLs costs seconds per call and the cola tasks do not need them; pass
    ``include_defaults=True`` to mix in built-in tasks. ``metadata`` reaches the dataset loaders of
    ``evals/utils.py`` (``math500_path``, ``tasks_dir``).
    """
    from lm_eval.tasks import TaskManager

    paths = include_path if isinstance(include_path, list) else [include_path or EVALS_DIR]
    return TaskManager(include_path=[str(p) for p in paths], include_defaults=include_defaults,
                       metadata=metadata or {})


def main() -> None:
    """``python -m cola.eval.lm_eval_model ARGS`` = ``lm_eval ARGS`` with ``--model cola`` registered."""
    from lm_eval.__main__ import cli_evaluate

    import cola.eval.lm_eval_model  # noqa: F401  (registers the importable ColaLM under "cola")

    cli_evaluate()


if __name__ == "__main__":
    main()
