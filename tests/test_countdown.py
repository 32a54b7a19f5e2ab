"""Tests for cola.tasks.countdown: hand cases plus agreement with reasoning_gym's own countdown scorer."""

from __future__ import annotations

import random

import pytest

from cola.tasks.countdown import check_countdown, parse_answer_tag

NUMBERS = [100, 4, 5, 3]
TARGET = 483  # (100 - 4) * 5 + 3


@pytest.mark.parametrize(
    "expression",
    [
        "(100 - 4) * 5 + 3",
        "3 + 5 * (100 - 4)",
        "  ((100-4)*5)+3 ",
        "5*(100-4)+3",
    ],
)
def test_correct(expression: str) -> None:
    assert check_countdown(expression, NUMBERS, TARGET)


def test_wrong_value() -> None:
    assert not check_countdown("(100 - 4) * 5 - 3", NUMBERS, TARGET)
    assert not check_countdown("100 + 4 + 5 + 3", NUMBERS, TARGET)


def test_every_number_exactly_once() -> None:
    # 100*5 - 4*4 - 1 would need a second 4; here: a number reused, one missing, one unknown, one extra.
    assert not check_countdown("(100 - 4) * 5 + 3 + 3 - 3", NUMBERS, TARGET)  # 3 reused
    assert not check_countdown("(100 - 4) * 5", NUMBERS, 480)  # 3 unused
    assert not check_countdown("(100 - 4) * 5 + 7 - 4", NUMBERS, TARGET)  # 7 is not a source number
    assert not check_countdown("(100 - 4) * 5 + 3 + 0", NUMBERS, TARGET)  # 0 is not a source number


def test_duplicate_source_numbers() -> None:
    assert check_countdown("6 * 6 - 1 - 1", [6, 6, 1, 1], 34)
    assert not check_countdown("6 * 6 - 2", [6, 6, 1, 1], 34)
    assert not check_countdown("6 * 6 - 1", [6, 6, 1, 1], 35)  # one 1 left over


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "   ",
        "(100 - 4 * 5 + 3",  # unbalanced
        "100 - - ",
        "(100 - 4) x 5 + 3",  # `x` is not multiplication
        "(100 - 4) × 5 + 3",
        "(100 - 4) ** 1 * 5 + 3",  # power
        "(100 - 4) * 5 + 3 // 1",  # floor division
        "(100 - 4) * 5 + 3 % 4",
        "(100 - 4) * 5 + 3 = 483",  # reasoning_gym forbids `=`
        "(100.0 - 4) * 5 + 3",  # decimals
        "(100 - 4) * 5 + 0x3",  # hex literal
        "(100 - 4) * 5 + 3_0",  # digit separators
        "abs(100 - 4) * 5 + 3",  # calls
        "__import__('os').system('true')",
        "[100, 4, 5, 3]",
        "100 4 5 3",
    ],
)
def test_malformed(expression: str) -> None:
    assert not check_countdown(expression, NUMBERS, TARGET)


def test_non_string_input() -> None:
    assert not check_countdown(None, NUMBERS, TARGET)  # type: ignore[arg-type]
    assert not check_countdown("(" * 5000 + "1" + ")" * 5000, [1], 1)  # too long / too deep


def test_division_is_exact() -> None:
    assert check_countdown("100 / 4 + 5 - 3", NUMBERS, 27)
    # Non-integer intermediate results are fine as long as the final value is exact (as in reasoning_gym,
    # which evaluates with SymPy rationals).
    assert check_countdown("(1 + 1 / 3) * 3", [1, 1, 3, 3], 4)
    assert check_countdown("8 / (3 - 8 / 3)", [8, 3, 8, 3], 24)
    # No rounding or truncation: 100 / 3 is not 33.
    assert not check_countdown("100 / 3 + 4 - 5", [100, 3, 4, 5], 32)
    assert not check_countdown("100 / 3", [100, 3], 33)


def test_division_by_zero() -> None:
    assert not check_countdown("4 / (5 - 5) + 100", [4, 5, 5, 100], 100)
    assert not check_countdown("4 / (5 - 5) * 0 + 100", [4, 5, 5, 0, 100], 100)


def test_unary_minus_matches_reasoning_gym() -> None:
    assert check_countdown("-(4 - 100) * 5 + 3", NUMBERS, TARGET)
    assert not check_countdown("-(4 - 100) * 5 + 3", NUMBERS, TARGET, allow_unary_minus=False)
    assert not check_countdown("+3 + (100 - 4) * 5", NUMBERS, TARGET)  # unary plus is not an operation


def test_parse_answer_tag() -> None:
    text = "<think>try <answer>1+2</answer>?</think> final: <answer>\n (100 - 4) * 5 + 3 \n</answer> done"
    assert parse_answer_tag(text) == "(100 - 4) * 5 + 3"
    assert parse_answer_tag("<answer></answer>") == ""
    assert parse_answer_tag("no tags here") is None
    assert parse_answer_tag("<answer>unterminated") is None
    assert parse_answer_tag(None) is None  # type: ignore[arg-type]
    assert check_countdown(parse_answer_tag(text) or "", NUMBERS, TARGET)


def test_agrees_with_reasoning_gym() -> None:
    """On real reasoning_gym countdown tasks, our verdict matches its scorer (1.0 <=> correct).

    Checked on the reference answers and on seeded corruptions of them (changed operator, swapped literal,
    dropped or duplicated term), which exercise the wrong-value and wrong-numbers paths on real data.
    """
    reasoning_gym = pytest.importorskip("reasoning_gym")
    dataset = reasoning_gym.create_dataset("countdown", size=150, seed=1234)
    rng = random.Random(0)
    checked = disagreements = 0
    for entry in dataset:
        meta = entry["metadata"]
        numbers, target, reference = meta["numbers"], meta["target"], entry["answer"]
        assert check_countdown(reference, numbers, target), (reference, numbers, target)
        candidates = [reference]
        ops = [i for i, ch in enumerate(reference) if ch in "+-*/"]
        if ops:
            i = rng.choice(ops)
            candidates.append(
                reference[:i] + rng.choice("+-*/".replace(reference[i], "")) + reference[i + 1 :]
            )
        candidates.append(reference.replace(str(numbers[0]), str(numbers[0] + 1), 1))
        candidates.append(f"{reference} + {numbers[0]}")
        candidates.append(f"({reference}) * 1")
        for candidate in candidates:
            ours = check_countdown(candidate, numbers, target)
            theirs = dataset.score_answer(candidate, entry) == 1.0
            checked += 1
            disagreements += ours != theirs
    assert checked >= 600
    assert disagreements == 0, f"{disagreements}/{checked} verdicts differ from reasoning_gym"
