"""Params sections of the evaluation stages (``evaluate``, ``rl_eval``, ``math500``) and the ``report``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cola.config.fields import override, param
from cola.config.training import RuntimeConfig, task_names


@dataclass
class EvalConfig(RuntimeConfig):
    """What both evaluation stages set: which test problems, the generation budget, held-out text,
    sampling."""

    tasks: list[str] = param(task_names(), "Task test splits scored by greedy accuracy.",
                             choices=task_names())
    limit: int = param(0, "Problems per task; 0 = the whole test split.", min=0)
    max_new_tokens: int = param(48, "Generation budget per answer; 0 = per task, the longest reference "
                                    "completion + 8 tokens.", min=0)
    batch_size: int = param(128, "Prompts per generation batch.", min=1)
    perplexity_tokens: int = param(8192, "Held-out tokens for perplexity and the policy-marginal loss "
                                         "(a CoLA model costs one world-model pass per action).", min=128)
    diversity_samples: int = param(8, "M sampled continuations per prefix or prompt (semantic diversity).",
                                   min=2)
    seed: int = param(0, "Seed of every sampled continuation.")
    diversity_embedder: str = param(
        "all-MiniLM-L6-v2", "Sentence embedder of semantic diversity: all-MiniLM-L6-v2 (offline, the "
        "default), a sentence-transformers model folder, or a hub id such as BAAI/bge-m3 (the paper's; needs "
        "the hub or its cache). QD compares runs under one embedder only.")


@dataclass
class EvaluateConfig(EvalConfig):
    """The ``evaluate`` section: the base vs the CoLA-BC model (spec §5, §10 checks)."""

    diversity_prefixes: int = param(32, "N held-out prefixes for semantic diversity.", min=1)
    diversity_length: int = param(24, "Tokens per diversity continuation.", min=1)
    probe_prefixes: int = param(32, "Prefixes for the action-following probe.", min=1)


@dataclass
class RLEvalConfig(EvalConfig):
    """The ``rl_eval`` section: how every model of the RL comparison is scored.

    Overrides: limit 300 (the standard error is about 2.5 points at n = 300), max_new_tokens 0 (per task),
    perplexity_tokens 4096.
    """

    diversity_tasks: list[str] = param(["arith", "countdown"], "Tasks whose test prompts get sampled "
                                                               "solutions for semantic diversity.",
                                       choices=task_names())
    diversity_prompts: int = param(16, "N test prompts per diversity task.", min=1)
    action_top_k: int = param(40, "CoLA sampling: top k of the K action logits (as the RL behaviour policy).",
                              min=1)
    limit: int = override(EvalConfig, "limit", 300)
    max_new_tokens: int = override(EvalConfig, "max_new_tokens", 0)
    perplexity_tokens: int = override(EvalConfig, "perplexity_tokens", 4096)


#: The hub dataset `math500.source` names by default (cola.eval.lm_tasks reads it through lm-eval).
MATH500_HUB = "HuggingFaceH4/MATH-500"


@dataclass
class Math500Config(RuntimeConfig):
    """The ``math500`` section: MATH-500 accuracy of every model of the comparison, through the same
    lm-eval task, prompt and grader as ``cola eval --task math500``.

    Off at the ``tiny`` scale: a 1.25M-parameter model trained on procedural arithmetic solves none of
    these competition problems, and 500 answers of 1024 tokens per model would dominate the CPU DAG. The
    profiles with a pretrained LLM (smollm2-135m, llama-3.1-8b) turn it on.
    """

    enabled: bool = param(False, "Evaluate MATH-500 (the stage still runs when off: it records why not).")
    source: str = param(MATH500_HUB, f"{MATH500_HUB} (the hub, or its HF cache when offline) or the path of "
                                     "a local JSONL with its fields (problem, answer).")
    limit: int = param(0, "The first N problems; 0 = all 500.", min=0)
    max_new_tokens: int = param(1024, "Generation budget per answer (the lm-eval task's default).", min=1)
    batch_size: int = param(16, "MATH-500 problems per generation batch.", min=1)
    models: list[str] = param([], "Which models of the comparison (base, sft, bc, fta, token-math, "
                                  "cola-math, ...); [] = all of them.")


@dataclass
class ReportConfig:
    """The ``report`` section."""

    retention_tasks: list[str] = param(task_names("retention"),
                                       "Tasks no stage fine-tunes or RLs on: their accuracy change is the "
                                       "capability retention.",
                                       choices=task_names())
    seed_spread: Literal["sd", "se", "range"] = param("sd", "Spread shown beside means over several RL "
                                                            "seeds: sample sd, sd/√n, or max − min.")
    smooth: int = param(3, "Moving-average window (in logged points) of the RL curves in the plots; 1 = raw.",
                        min=1)
