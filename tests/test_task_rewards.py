"""RL rewards (`Task.reward`) on hand-made completions, agreement with the task data's own reference
completions, and one Countdown format check shared by the RL reward, `cola eval` and the lm-eval scorer."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

from cola.tasks import TASKS, BoxedMathTask, CountdownTask, Task

COUNTDOWN = TASKS["countdown"]


def math_reward(completion: str, answer: str) -> float:
    return TASKS["arith"].reward(completion, {"answer": answer})


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
    ids=["plain", "with-work", "negative", "fraction", "wrong", "malformed", "no-box", "empty",
         "last-box-right", "last-box-wrong"],
)
def test_math_reward(completion: str, answer: str, expected: float) -> None:
    assert math_reward(completion, answer) == expected


# --------------------------------------------------------------------------------------------- countdown

NUMBERS, TARGET = [17, 5, 9], 13
EXAMPLE = {"numbers": NUMBERS, "target": TARGET}
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
        # The format is the whole completion (a full match, as the evaluation's format rate checks): extra
        # text around or between the blocks loses the bonus (the old reward's `re.search` gave it 0.1).
        (GOOD + " and more", 1.0),  # trailing text
        (" Sure. " + GOOD.strip(), 1.0),  # leading text
        (" <think> 17-9=8, 8+5=13 </think> so <answer>17-9+5</answer>", 1.0),  # text between the blocks
        (GOOD + "\n\n", 1.1),  # whitespace around the blocks is allowed
    ],
    ids=["format+correct", "correct-no-think", "multiline", "wrong-value", "number-reused", "foreign-number",
         "number-missing", "think-after-answer", "no-answer", "unclosed", "not-arithmetic", "trailing-text",
         "leading-text", "text-between", "trailing-whitespace"],
)
def test_countdown_reward(completion: str, expected: float) -> None:
    assert COUNTDOWN.reward(completion, EXAMPLE) == pytest.approx(expected)


def test_countdown_format_weight_and_regex() -> None:
    assert dataclasses.replace(COUNTDOWN, format_weight=0.0).reward(GOOD, EXAMPLE) == 1.0
    assert dataclasses.replace(COUNTDOWN, format_weight=0.5).reward(GOOD, EXAMPLE) == pytest.approx(1.5)
    assert COUNTDOWN.format_ok("<think></think><answer></answer>")
    assert not COUNTDOWN.format_ok("<answer>1</answer><think>2</think>")
    assert not COUNTDOWN.format_ok("<think>no answer</think>")
    assert not COUNTDOWN.format_ok("<think>a</think><answer>1</answer> extra")  # a full match, not a search


# ------------------------------------------------------------------------------------------ one format check

# Well-formed (right and wrong), trailing junk, leading junk, junk between, missing answer, wrong order,
# no think block, nothing.
FORMAT_CASES = [
    GOOD,
    " <think> guess </think> <answer>17+9-5</answer>",
    GOOD + " and more",
    " Sure. " + GOOD.strip(),
    " <think> 17-9=8 </think> so <answer>17-9+5</answer>",
    " <think> 17-9+5 </think>",
    " <answer>17-9+5</answer> <think> late </think>",
    " <answer>17-9+5</answer>",
    "",
]


def _evals_utils():
    """evals/utils.py, imported as lm-eval imports it (the file is not a package module)."""
    pytest.importorskip("lm_eval")
    from cola.eval.lm_tasks import EVALS_DIR

    spec = importlib.util.spec_from_file_location("cola_evals_utils", EVALS_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("completion", FORMAT_CASES)
def test_the_reward_format_bonus_is_the_evaluation_format_check(completion: str) -> None:
    """The RL reward's format term is exactly `CountdownTask.format_ok`, the check behind the format rate."""
    correct = 1.0 if COUNTDOWN.score(EXAMPLE, completion) else 0.0
    bonus = COUNTDOWN.format_weight if COUNTDOWN.format_ok(completion) else 0.0
    assert COUNTDOWN.format_weight == 0.1
    assert COUNTDOWN.reward(completion, EXAMPLE) - correct == pytest.approx(bonus)


def test_the_reward_asks_format_ok() -> None:
    """The reward calls the task's `format_ok` (no second copy of the format rule to drift apart)."""

    class Always(CountdownTask):
        def format_ok(self, completion: str) -> bool:
            return True

    class Never(CountdownTask):
        def format_ok(self, completion: str) -> bool:
            return False

    assert Always("countdown", "thinking").reward(" nothing", EXAMPLE) == pytest.approx(0.1)
    assert Never("countdown", "thinking").reward(GOOD, EXAMPLE) == 1.0


def test_evaluation_and_lm_eval_report_the_same_format(monkeypatch: pytest.MonkeyPatch) -> None:
    from cola.eval import scoring

    prompt = "Q: Use 17, 5, 9 to make 13. A:"
    examples = [{"task": "countdown", "prompt": prompt, "answer": "17-9+5", **EXAMPLE}]
    expected = [COUNTDOWN.format_ok(c) for c in FORMAT_CASES]
    assert any(expected) and not all(expected)

    # sampled evaluation (pass@k): every sample carries the task's format_ok and score
    sampled = scoring.score_samples("countdown", examples, [FORMAT_CASES])
    samples = sampled["records"][0]["samples"]
    assert [s["format_ok"] for s in samples] == expected
    assert [s["correct"] for s in samples] == [COUNTDOWN.score(EXAMPLE, c) for c in FORMAT_CASES]
    assert sampled["format_rate"] == pytest.approx(sum(expected) / len(expected))
    assert "majority_vote" not in sampled  # Countdown does not vote

    # greedy evaluation: task_accuracy's per-record format_ok, on the same completions (generation stubbed)
    def fake_generate(model, tokenizer, prompts, **_):
        assert len(prompts) == len(FORMAT_CASES)
        return [{"prompt": p, "completion": c, "token_ids": [], "actions": None}
                for p, c in zip(prompts, FORMAT_CASES, strict=True)]

    monkeypatch.setattr(scoring, "generate_texts", fake_generate)
    greedy = scoring.task_accuracy(None, None, "base", examples * len(FORMAT_CASES), progress=False)
    assert [r["format_ok"] for r in greedy["records"]] == expected
    assert greedy["format_rate"] == pytest.approx(sum(expected) / len(expected))

    # the lm-eval task's scorer (evals/utils.py, `format,none`)
    utils = _evals_utils()
    for completion, ok in zip(FORMAT_CASES, expected, strict=True):
        result = utils.process_countdown({**examples[0]}, [completion])
        assert result["format"] == int(ok), completion
        assert result["exact_match"] == int(COUNTDOWN.score(EXAMPLE, completion)), completion


# --------------------------------------------------------------------------------------------- registry


def test_each_task_owns_its_reward() -> None:
    # arith and wordprob share the boxed-math reward (correctness of the last box), countdown has its own
    for name in ("arith", "wordprob"):
        assert isinstance(TASKS[name], BoxedMathTask) and TASKS[name].reward.__func__ is Task.reward
    assert isinstance(COUNTDOWN, CountdownTask) and COUNTDOWN.reward.__func__ is CountdownTask.reward
    assert TASKS["arith"].reward(" \\boxed{30}", {"answer": "30"}) == 1.0
    assert COUNTDOWN.reward(GOOD, EXAMPLE) == pytest.approx(1.1)
    # the RL tasks are math / thinking tasks; retention tasks (spell, wrev) are never RL targets
    from cola.comparison import RL_TASKS

    assert {TASKS[split].role for split in RL_TASKS.values()} == {"math", "thinking"}
    assert TASKS["spell"].role == TASKS["wrev"].role == "retention"
    assert not {"spell", "wrev"} & set(RL_TASKS.values())


def test_reference_completions_of_the_task_data_get_full_reward() -> None:
    pytest.importorskip("reasoning_gym")
    from cola.tasks.procedural import make_examples

    for task, full in [("arith", 1.0), ("wordprob", 1.0), ("countdown", 1.1)]:
        reward = TASKS[task].reward
        for ex in make_examples(task, 5, seed=0):
            assert reward(ex["completion"], ex) == pytest.approx(full), (task, ex["completion"])
            assert reward(" I don't know", ex) == 0.0
            assert TASKS[task].format_ok(ex["completion"])  # the data's own completions are well-formed
