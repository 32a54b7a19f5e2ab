"""RL rewards on hand-made completions, and agreement with the task data's own reference completions."""

from __future__ import annotations

import pytest

from cola.rl.rewards import REWARDS, countdown_format_ok, countdown_reward, math_reward, reward_for

# --------------------------------------------------------------------------------------------- math


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        (" \\boxed{30}", "30", 1.0),  # the data's own format
        (" 4 + 3 = 7 so \\boxed{7}", "7", 1.0),
        (" \\boxed{-12}", "-12", 1.0),
        (" \\boxed{\\frac{1}{2}}", "1/2", 1.0),  # equivalent form, exact-number tier
        (" \\boxed{31}", "30", 0.0),  # wrong
        (" \\boxed{3 0", "30", 0.0),  # malformed: unbalanced box
        (" 30", "30", 0.0),  # right number but no box
        ("", "30", 0.0),
        (" \\boxed{12} then \\boxed{30}", "30", 1.0),  # the last box counts
        (" \\boxed{30} then \\boxed{12}", "30", 0.0),
    ],
    ids=["plain", "with-work", "negative", "fraction", "wrong", "malformed", "no-box", "empty", "last-box-right",
         "last-box-wrong"],
)
def test_math_reward(completion: str, answer: str, expected: float) -> None:
    assert math_reward(completion, answer) == expected


# --------------------------------------------------------------------------------------------- countdown

NUMBERS, TARGET = [17, 5, 9], 13
GOOD = " <think> 17-9=8, 8+5=13 </think> <answer>17-9+5</answer>"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (GOOD, 1.1),  # format + correct
        (" <answer>17-9+5</answer>", 1.0),  # correct without a think block: no format bonus
        (" <think>\nsome\nlines\n</think>\n<answer> (17 - 9) + 5 </answer>", 1.1),  # multi-line, spaces
        (" <think> guess </think> <answer>17+9-5</answer>", 0.1),  # format only: 21, wrong value
        (" <think> x </think> <answer>17-9+5+5</answer>", 0.1),  # 5 used twice
        (" <think> x </think> <answer>17-4</answer>", 0.1),  # numbers not from the source set
        (" <think> x </think> <answer>17-9</answer>", 0.1),  # a number left out
        (" <answer>17-9+5</answer> <think> late </think>", 1.0),  # think after answer: no format bonus
        (" <think> 17-9+5 </think>", 0.0),  # no answer tag at all
        (" <think> x </think> <answer>17-9+5", 0.0),  # unclosed answer tag
        (" <think> x </think> <answer>import os</answer>", 0.1),  # never evaluated
    ],
    ids=["format+correct", "correct-no-think", "multiline", "wrong-value", "number-reused", "foreign-number",
         "number-missing", "think-after-answer", "no-answer", "unclosed", "not-arithmetic"],
)
def test_countdown_reward(completion: str, expected: float) -> None:
    assert countdown_reward(completion, NUMBERS, TARGET) == pytest.approx(expected)


def test_countdown_format_weight_and_regex() -> None:
    assert countdown_reward(GOOD, NUMBERS, TARGET, format_weight=0.0) == 1.0
    assert countdown_reward(GOOD, NUMBERS, TARGET, format_weight=0.5) == pytest.approx(1.5)
    assert countdown_format_ok("<think></think><answer></answer>")
    assert not countdown_format_ok("<answer>1</answer><think>2</think>")
    assert not countdown_format_ok("<think>no answer</think>")


# --------------------------------------------------------------------------------------------- registry


def test_reward_for_maps_tasks_to_example_rewards() -> None:
    assert reward_for("arith") is REWARDS["math"] and reward_for("wordprob") is REWARDS["math"]
    assert reward_for("countdown") is REWARDS["countdown"]
    assert reward_for("arith")(" \\boxed{30}", {"answer": "30"}) == 1.0
    assert reward_for("countdown")(GOOD, {"numbers": NUMBERS, "target": TARGET}) == pytest.approx(1.1)
    with pytest.raises(ValueError, match="no RL reward for task 'spell'"):
        reward_for("spell")


def test_reference_completions_of_the_task_data_get_full_reward() -> None:
    pytest.importorskip("reasoning_gym")
    from cola.data.tasks import make_examples

    for task, full in [("arith", 1.0), ("wordprob", 1.0), ("countdown", 1.1)]:
        reward = reward_for(task)
        for ex in make_examples(task, 5, seed=0):
            assert reward(ex["completion"], ex) == pytest.approx(full), (task, ex["completion"])
            assert reward(" I don't know", ex) == 0.0
