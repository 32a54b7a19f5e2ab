"""Metrics over n sampled answers per problem: pass@k, best-of-n (oracle verifier) and majority vote.

Definitions (every number is a mean over problems; problem i has n samples of which c_i are correct):

``pass_at_k[k]``
    The unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models Trained on Code"):
    ``pass@k = 1 - C(n - c, k) / C(n, k)``, the probability that a random size-k subset of the n samples
    holds at least one correct answer. Reported for k = 1, 2, 4, ... up to n (powers of two). pass@1 = c / n,
    the mean accuracy of one *sampled* answer (not the greedy accuracy of a run without ``--samples``).

``best_of_n_oracle``
    The authors' best-of-n (cola-spec.md §3 stage 5a: best-of-16 CoLA generations on MATH train, each with a
    scalar score, presumably 0/1 correctness) needs a selector that picks one of the n answers. No learned
    reward model is available here, so the selector is an **oracle verifier** (the reference answer itself):
    a problem counts as solved when any of its n samples is correct. This is exactly pass@n
    (``1 - C(n - c, n) / C(n, n)`` is 1 iff c > 0) and an upper bound on any real reward-model selection.

``majority_vote``
    Self-consistency (maj@n), a best-of-n that needs **no** verifier: the n final answers (the last
    ``\\boxed{}``, normalised with `cola.tasks.math_grader.normalize_answer`: `Task.vote_key`) vote, the most
    frequent one is the model's answer, and that answer is graded (with the full grader, as every single
    sample is). Samples without a boxed answer abstain; a tie goes to the answer that appeared first among the
    samples; a problem where every sample abstains counts as wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "majority_index",
    "pass_at_k",
    "powers_of_two",
    "sampling_summary",
]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct out of ``n`` samples: ``1 - C(n-c, k) / C(n, k)``.

    Exact integer binomials (Python ints do not overflow), divided once, so n = 1024 is as exact as n = 4.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every size-k subset contains a correct sample
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def powers_of_two(n: int) -> list[int]:
    """The k values reported for n samples: 1, 2, 4, ... up to n (n itself only if it is a power of two)."""
    if n < 1:
        raise ValueError(f"need n >= 1 samples, got {n}")
    return [1 << i for i in range(n.bit_length()) if 1 << i <= n]


def majority_index(keys: Sequence[str | None]) -> int | None:
    """Index of the sample whose answer wins the vote: the first sample carrying the most frequent key.

    ``None`` keys abstain; ties go to the key seen first; returns None when every sample abstains.
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return None
    # max() keeps the first maximal element and dicts keep insertion order, so ties go to the earliest key.
    winner = max(counts, key=counts.__getitem__)
    return first[winner]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def stderr_of_mean(values: Sequence[float]) -> float:
    """Standard error of the mean over problems (population variance, as `harness.binomial_stderr`: with one
    sample per problem the two agree)."""
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values) / len(values))


def sampling_summary(
    correct: Sequence[Sequence[bool]], vote_keys: Sequence[Sequence[str | None]] | None = None
) -> dict[str, Any]:
    """pass@k, best-of-n (oracle) and majority vote over problems, each with n samples (see the module doc).

    Args:
        correct: per problem, the correctness of each of its n samples (every problem must have the same n).
        vote_keys: per problem, the normalised answer of each sample (None = abstain); without it there is no
            ``majority_vote`` (e.g. Countdown, whose expressions are not answers to vote on).

    Returns ``accuracy`` (= pass@1, the mean single-sample accuracy), ``stderr`` (of pass@1 over problems),
    ``n_problems``, ``n_samples``, ``pass_at_k`` ({str(k): value}), ``best_of_n_oracle`` and, with vote keys,
    ``majority_vote`` plus ``majority_index`` (per problem, the sample whose answer won; None: all abstained).
    """
    if not correct:
        raise ValueError("sampling_summary needs at least one problem")
    n = len(correct[0])
    if n < 1 or any(len(row) != n for row in correct):
        raise ValueError("every problem needs the same number (>= 1) of samples")
    counts = [sum(bool(x) for x in row) for row in correct]
    per_problem_pass1 = [c / n for c in counts]
    out: dict[str, Any] = {
        "accuracy": _mean(per_problem_pass1),
        "stderr": stderr_of_mean(per_problem_pass1),
        "n_problems": len(correct),
        "n_samples": n,
        "pass_at_k": {str(k): _mean([pass_at_k(n, c, k) for c in counts]) for k in powers_of_two(n)},
        "best_of_n_oracle": _mean([float(c > 0) for c in counts]),
    }
    if vote_keys is not None:
        if len(vote_keys) != len(correct):
            raise ValueError("vote_keys needs one row per problem")
        winners = [majority_index(keys) for keys in vote_keys]
        out["majority_vote"] = _mean(
            [float(w is not None and bool(row[w])) for w, row in zip(winners, correct, strict=True)]
        )
        out["majority_index"] = winners
    return out
