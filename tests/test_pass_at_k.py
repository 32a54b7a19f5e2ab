"""pass@k, best-of-n (oracle) and majority vote (cola.eval.sampling_metrics) against hand-computed values."""

from __future__ import annotations

import math

import pytest

from cola.eval.sampling_metrics import (
    majority_index,
    pass_at_k,
    powers_of_two,
    sampling_summary,
)
from cola.eval.scoring import binomial_stderr, score_samples
from cola.tasks import TASKS

math_vote_key = TASKS["arith"].vote_key  # BoxedMathTask.vote_key: the normalised last boxed answer


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (1, 1 / 4),  # 1 - C(3,1)/C(4,1) = 1 - 3/4
        (2, 1 / 2),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (3, 3 / 4),  # 1 - C(3,3)/C(4,3) = 1 - 1/4
        (4, 1.0),  # n - c = 3 < k: every 4-subset holds the correct sample
    ],
)
def test_pass_at_k_one_correct_of_four(k: int, expected: float) -> None:
    assert pass_at_k(4, 1, k) == pytest.approx(expected)


def test_pass_at_k_edges_and_more_hand_cases() -> None:
    assert all(pass_at_k(4, 4, k) == 1.0 for k in range(1, 5))  # n = c
    assert all(pass_at_k(4, 0, k) == 0.0 for k in range(1, 5))  # c = 0
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(16, 3, 1) == pytest.approx(3 / 16)  # pass@1 = c / n
    assert pass_at_k(1024, 1, 512) == pytest.approx(0.5)  # exact big binomials, no overflow
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_powers_of_two() -> None:
    assert powers_of_two(1) == [1]
    assert powers_of_two(4) == [1, 2, 4]
    assert powers_of_two(6) == [1, 2, 4]
    assert powers_of_two(16) == [1, 2, 4, 8, 16]


def test_majority_index_counts_abstains_and_ties() -> None:
    assert majority_index(["a", "b", "b", None]) == 1
    assert majority_index(["x", "y"]) == 0  # tie: the answer seen first
    assert majority_index(["x", "y", "y", "x"]) == 0
    assert majority_index([None, "y", None]) == 1  # abstentions do not vote
    assert majority_index([None, None]) is None


def test_vote_keys_are_normalised_boxed_answers() -> None:
    assert math_vote_key("so \\boxed{\\frac12}") == math_vote_key("\\boxed{ \\frac{1}{2} }")
    assert math_vote_key("no box here") is None


def test_sampling_summary_hand_computed() -> None:
    correct = [[True, False, False, False], [True, True, True, True], [False, False, False, False]]
    keys = [["1", "2", "2", None], ["5", "5", "5", "5"], [None, None, None, None]]
    out = sampling_summary(correct, keys)
    assert out["n_problems"] == 3 and out["n_samples"] == 4
    assert out["accuracy"] == pytest.approx((0.25 + 1 + 0) / 3)
    assert out["pass_at_k"] == pytest.approx({"1": 1.25 / 3, "2": 1.5 / 3, "4": 2 / 3})
    assert out["best_of_n_oracle"] == pytest.approx(2 / 3) == out["pass_at_k"]["4"]
    # problem 1: "2" wins 2-1 but is wrong; problem 2: right; problem 3: everyone abstains -> wrong
    assert out["majority_vote"] == pytest.approx(1 / 3)
    assert out["majority_index"] == [1, 0, None]
    assert "majority_vote" not in sampling_summary(correct)  # no vote keys (Countdown): no vote


def test_one_sample_per_problem_is_plain_accuracy() -> None:
    out = sampling_summary([[True], [False], [False], [True]])
    assert out["accuracy"] == out["pass_at_k"]["1"] == out["best_of_n_oracle"] == 0.5
    assert out["stderr"] == pytest.approx(binomial_stderr(0.5, 4))


def test_score_samples_grades_votes_and_records() -> None:
    examples = [{"prompt": "Q: 1/2? A:", "answer": "\\frac{1}{2}"}, {"prompt": "Q: 2+2? A:", "answer": "4"}]
    completions = [
        [" \\boxed{0.5}", " \\boxed{\\frac12}", " \\boxed{3}", " \\boxed{\\frac{1}{2}}"],
        [" \\boxed{5}", " \\boxed{5}", " \\boxed{4}", " nothing"],
    ]
    out = score_samples("arith", examples, completions)
    assert out["n"] == 2 and out["n_samples"] == 4
    assert [r["n_correct"] for r in out["records"]] == [3, 1]
    assert out["accuracy"] == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert out["best_of_n_oracle"] == 1.0
    first, second = out["records"]
    assert first["majority_correct"] and first["majority_answer"] == math_vote_key("\\boxed{\\frac12}")
    assert not second["majority_correct"] and second["majority_answer"] == "5"
    assert out["majority_vote"] == 0.5 and out["format_rate"] == pytest.approx(7 / 8)
    assert second["samples"][3] == {
        "completion": " nothing",
        "correct": False,
        "format_ok": False,
        "vote": None,
    }
    assert math.isclose(out["pass_at_k"]["2"], ((1 - 0 / 6) + (1 - 3 / 6)) / 2)
