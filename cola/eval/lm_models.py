"""The lm-eval model objects `cola eval` hands to lm-eval: `ColaLM` for a CoLA folder, `PipelineHFLM` for a
plain base, both wrapping the model `cola eval` already loaded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any

from cola.eval.context import EvalContext

logger = logging.getLogger("cola.eval.lm_tasks")


@contextlib.contextmanager
def quiet(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise these loggers to `level` for a while: lm-eval logs every task-building step at INFO."""
    loggers = [logging.getLogger(n) for n in names]
    previous = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.level))
    try:
        yield
    finally:
        for lg, prev in zip(loggers, previous, strict=True):
            lg.setLevel(prev)


@functools.cache
def _pipeline_hflm_class() -> type:
    """`PipelineHFLM`, built on first use: importing lm-eval's HF model pulls in accelerate and friends."""
    from lm_eval import utils as lm_utils
    from lm_eval.models.huggingface import HFLM

    class PipelineHFLM(HFLM):
        """lm-eval's `HFLM` for the pipeline's plain bases, generating from what `ColaLM` gets for CoLA.

        Two differences from the stock class, both so base-vs-CoLA numbers compare like for like:

        * every generation context starts with EOS, the pipeline's start-of-example marker (training rows are
          ``EOS prompt completion EOS``; `ColaLM`'s ``add_bos_token``). Stock `HFLM` would only add what the
          tokenizer's own ``add_special_tokens`` adds, which is nothing for the pipeline's tokenizers.
        * a budget of ``max_length`` tokens or more is capped at ``max_length // 2`` with a warning (math500's
          1024 tokens do not fit a tiny model's window), where stock `HFLM` fails an assertion.

        Log-likelihood requests keep `HFLM`'s own encoding (no `evals/` task uses them).
        """

        def tok_batch_encode(
            self,
            strings: list[str],
            padding_side: str = "left",
            left_truncate_len: int | None = None,
            truncation: bool = False,
        ):
            from cola.model.inputs import left_pad, pad_token_id

            eos = self.tokenizer.eos_token_id
            rows = []
            for text in strings:
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                if ids[:1] != [eos]:
                    ids = [eos, *ids]
                rows.append(ids[-left_truncate_len:] if left_truncate_len else ids)
            return left_pad(rows, pad_token_id(self.tokenizer))  # left padding, as HFLM's generation expects

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
            window = self.max_length
            for request in requests:
                context, kwargs = request.arguments
                budget = int(kwargs.get("max_gen_toks", self.max_gen_toks))
                if budget >= window:
                    lm_utils.warning_once(
                        logger, f"hf: max_gen_toks={budget} >= max_length={window}; generating at most "
                                f"{window // 2} tokens"
                    )  # fmt: skip
                    request.arguments = (context, {**kwargs, "max_gen_toks": window // 2})
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    return PipelineHFLM


def build_lm(ctx: EvalContext, action_mode: str | None = None):
    """The lm-eval model of ``ctx``: `ColaLM` for a CoLA folder, `PipelineHFLM` for a plain base.

    Both wrap ``ctx.model`` when it is loaded (`cola eval` always loads it) rather than load the folder again.
    """
    if ctx.kind == "cola":
        from cola.eval import lm_eval_model

        options = dict(
            action_mode=action_mode or ctx.action_mode, batch_size=ctx.batch_size, seed=ctx.seed, dtype="auto"
        )
        if ctx.model is None:
            return lm_eval_model.ColaLM(pretrained=ctx.model_path, **options)
        loaded = (ctx.model, ctx.tokenizer, "cola")
        # ColaLM only takes a folder; its loader is swapped for this one call so it wraps the loaded model.
        with _patched(lm_eval_model, "load_model_and_tokenizer", lambda *_, **__: loaded):
            return lm_eval_model.ColaLM(
                pretrained=ctx.model_path, device=str(next(ctx.model.parameters()).device), **options
            )
    cls = _pipeline_hflm_class()
    model, tokenizer = ctx.model, ctx.tokenizer
    if model is None:
        from cola.model.checkpoint import load_model_and_tokenizer

        model, tokenizer, _ = load_model_and_tokenizer(ctx.model_path)
    eos = tokenizer.eos_token_id
    with quiet("lm_eval", level=logging.ERROR):  # "pretrained is not a str" warns about args we don't pass
        return cls(pretrained=model, tokenizer=tokenizer, batch_size=ctx.batch_size, prefix_token_id=eos)


@contextlib.contextmanager
def _patched(module: Any, attr: str, value: Any) -> Iterator[None]:
    original = getattr(module, attr)
    setattr(module, attr, value)
    try:
        yield
    finally:
        setattr(module, attr, original)


