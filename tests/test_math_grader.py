"""Tests for cola.tasks.math_grader: hand cases for each normalisation rule plus MATH-500 consistency."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest

from cola.tasks import math_grader
from cola.tasks.math_grader import extract_boxed, grade, is_equiv, normalize_answer

REPO_ROOT = Path(__file__).resolve().parents[1]
MATH500 = REPO_ROOT / ".." / "shared" / "data" / "math500" / "test.jsonl"


# ------------------------------------------------------------------------------------------------ extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $\\boxed{5}$.", "5"),
        ("first \\boxed{1} then \\boxed{2}", "2"),  # last box wins
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),  # nested braces
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not count
        ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
        ("The answer is $\\boxed 5$.", "5"),  # space form, up to `$`
        ("The answer is \\boxed 42 apples", "42"),  # space form, up to whitespace
        ("\\fbox{7}", "7"),
        ("\\boxed{1} and finally \\fbox{x+1}", "x+1"),
        ("\\boxed {12}", "12"),
        ("\\boxed{}", ""),
    ],
)
def test_extract_boxed(text: str, expected: str) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "no box here, the answer is 5",
        "",
        "\\boxed{\\frac{1}{2}",  # unbalanced (truncated generation)
        "\\boxed{3} and then \\boxed{4",  # the last box is unbalanced
        "\\boxedx",  # not the \boxed macro
        "\\boxed",
    ],
)
def test_extract_boxed_none(text: str) -> None:
    assert extract_boxed(text) is None


# ---------------------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # fractions
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\tfrac{3}{4}", "\\frac{3}{4}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\frac 59", "\\frac{5}{9}"),
        ("\\frac9{19}", "\\frac{9}{19}"),
        ("\\frac{270}7", "\\frac{270}{7}"),
        ("\\frac\\pi2", "\\frac{\\pi}{2}"),
        ("\\frac{\\frac12}{3}", "\\frac{\\frac{1}{2}}{3}"),
        ("3/4", "\\frac{3}{4}"),
        ("1\\frac{4}{5}", "\\frac{9}{5}"),  # mixed number
        ("137 \\frac{1}{2}", "\\frac{275}{2}"),
        # roots
        ("\\sqrt2", "\\sqrt{2}"),
        ("11\\sqrt2", "11\\sqrt{2}"),
        ("\\sqrt[3]{x}", "\\sqrt[3]{x}"),
        # \left / \right, spacing macros, spaces
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("\\left[ 1, 2 \\right)", "[1,2)"),
        ("10,\\!080", "10080"),
        ("3\\,\\text{cm}", "3"),
        ("p - q", "p-q"),
        ("\\cot x", "\\cot x"),  # the space after a control word is kept
        ("2 \\pi r", "2\\pi r"),
        # \text and units
        ("\\text{Evelyn}", "Evelyn"),
        ("\\text{(C)}", "C"),
        ("5.4 \\text{ cents}", "5.4"),
        ("864 \\mbox{ inches}^2", "864"),
        ("15\\mbox{ cm}^2", "15"),
        ("12 inches", "12"),
        ("4 \\text{ m}", "4"),
        ("30 square units", "30"),
        ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}"),
        ("2m+1", "2m+1"),  # a lone `m` outside \text is a variable, not metres
        # degrees
        ("90^\\circ", "90"),
        ("90^{\\circ}", "90"),
        ("90 ^ { \\circ }", "90"),
        ("90°", "90"),
        ("45 degrees", "45"),
        # percentages and dollars
        ("10\\%", "10"),
        ("10%", "10"),
        ("\\$32,\\!348", "32348"),
        ("$\\$18.90$", "18.90"),
        ("\\(\\frac{1}{2}\\)", "\\frac{1}{2}"),
        # unicode look-alikes
        ("\u22122\u03c0r", "-2\\pi r"),
        ("(0, \u221e)", "(0,\\infty)"),
        # thousands separators only for numbers
        ("1,000", "1000"),
        ("58,500", "58500"),
        ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
        ("1{,}000", "1000"),
        ("1,-2", "1,-2"),
        ("3, 5, 7", "3,5,7"),
        ("(1,000,2)", "(1,000,2)"),
        # trailing period, leading zero
        ("5.", "5"),
        ("\\frac{1}{2}.", "\\frac{1}{2}"),
        (".5", "0.5"),
        ("-.35", "-0.35"),
        # single-variable prefixes
        ("x = 5", "5"),
        ("y=2x+3", "2x+3"),
        ("k = \\frac{1}{2}", "\\frac{1}{2}"),
        ("x \\in [-2,7]", "[-2,7]"),
        ("5x - 7y + 11z + 4 = 0", "5x-7y+11z+4=0"),  # not a single-variable assignment
        # intervals, tuples, sets, matrices keep their structure
        ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2)\\cup(3,\\infty)"),
        ("(6, 31, -1)", "(6,31,-1)"),
        ("\\{1\\pm\\sqrt{5},-2\\}", "\\{1\\pm\\sqrt{5},-2\\}"),
        (
            "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
            "\\begin{pmatrix}-1/3\\\\2/3\\\\5/3\\end{pmatrix}",
        ),
        ("\\begin{bmatrix} 1 & 0 \\\\ 0 & 1 \\end{bmatrix}", "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}"),
        # super/subscripts get explicit braces
        ("x^2 + 1", "x^{2}+1"),
        ("52_8", "52_{8}"),
        ("4210_{5}", "4210_{5}"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "\\", "\\frac", "\\frac{", "{{{", "\\text{", "$$", "\\sqrt[", "x^", "=", "."]
)
def test_normalize_answer_never_raises(raw: str) -> None:
    assert isinstance(normalize_answer(raw), str)


# ------------------------------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("\\dfrac{1}{2}", "\\frac12"),
        ("0.5", "\\frac{1}{2}"),  # symbolic tier
        ("1/2", "\\frac{1}{2}"),
        ("5.0", "5"),
        ("\\$7.00", "7"),
        ("50\\%", "50"),
        ("1,000", "1000"),
        ("x = 5", "5"),
        ("90", "90^\\circ"),
        ("\\frac{270}{7}", "\\frac{270}7\\text{ degrees}"),
        ("864", "864 \\mbox{ inches}^2"),
        ("\\text{East}", "\\text{east}"),
        ("(C)", "\\text{(C)}"),
        ("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}"),
        ("2\\sqrt{2}", "\\sqrt8"),
        ("0.333333", "\\frac13"),
        ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("(-\\infty,0]", "(-\\infty, 0]"),
        ("3x - 6 + x^3", "x^3+3x-6"),
        ("6-5i", "-5i+6"),
        ("\\{-2, 1+\\sqrt5, 1-\\sqrt 5\\}", "\\{1\\pm\\sqrt{5},-2\\}"),
        (
            "\\begin{pmatrix} \\frac{-1}{3} \\\\ 2/3 \\end{pmatrix}",
            "\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}",
        ),
        ("\\frac{\\cos x}{\\sin x}", "\\cot x"),
        ("\\frac95", "1\\frac{4}{5}"),
    ],
)
def test_is_equiv_true(pred: str, gold: str) -> None:
    assert is_equiv(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("3", "4"),
        ("\\frac{1}{3}", "\\frac{2}{3}"),
        ("0.33", "\\frac13"),
        ("0.5", "50\\%"),
        ("seat", "\\text{east}"),  # SymPy would call these the same product of symbols
        ("odd", "\\text{even}"),
        ("(3, \\pi)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("(3,4)", "(3,4]"),
        ("[3,4]", "(3,4]"),
        ("1+i", "1-i"),
        ("3x+2", "y = 2x + 3"),
        ("\\frac45", "1\\frac{4}{5}"),
        ("\\begin{pmatrix} -1/3 \\\\ 4/3 \\end{pmatrix}", "\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}"),
        ("", "3"),
        ("3", ""),
        ("\\frac{", "3"),
        ("}}}{{{", "\\frac{1}{2}"),
        ("x" * 5000, "5"),
    ],
)
def test_is_equiv_false(pred: str, gold: str) -> None:
    assert not is_equiv(pred, gold)


def test_is_equiv_never_raises_on_bad_types() -> None:
    assert not is_equiv(None, "3")  # type: ignore[arg-type]
    assert not is_equiv("3", None)  # type: ignore[arg-type]
    assert is_equiv(3, "3")  # type: ignore[arg-type]


def test_grade() -> None:
    assert grade("We get $x = \\boxed{\\dfrac{1}{2}}$.", "\\frac12")
    assert grade("\\boxed{1} is wrong, so the answer is \\boxed{0.5}", "\\frac{1}{2}")
    assert not grade("\\boxed{0.5} is wrong, so the answer is \\boxed{1}", "\\frac{1}{2}")
    assert not grade("The answer is 1/2.", "\\frac{1}{2}")  # nothing boxed
    assert not grade("\\boxed{\\frac{1}{2}", "\\frac{1}{2}")  # truncated box
    assert grade("so \\fbox{90^\\circ}", "90")
    assert grade("thus $\\boxed 7$", "7")
    # A gold answer given as a whole solution: its last box is used.
    assert grade("\\boxed{7}", "so the total is $\\boxed{7}$.")


def test_timeout_bounds_pathological_input() -> None:
    # SymPy would take minutes to expand this; the deadline turns it into a quick "not equivalent".
    start = time.monotonic()
    assert not is_equiv("9^{9^{9^{9}}}", "5", timeout=1.0)
    assert time.monotonic() - start < 5.0


def test_off_main_thread() -> None:
    """Off the main thread (no SIGALRM there) grading goes through the helper subprocess and stays bounded."""
    results: dict[str, object] = {}

    def work() -> None:
        results["half"] = is_equiv("0.5", "\\frac{1}{2}")
        results["wrong"] = is_equiv("0.25", "\\frac{1}{2}")
        start = time.monotonic()
        results["slow"] = is_equiv("9^{9^{9^{9}}}", "5", timeout=1.0)
        results["slow_seconds"] = time.monotonic() - start
        # A crashed helper is restarted transparently on the next call.
        proc = math_grader._WORKER._proc
        if proc is not None:
            proc.kill()
            proc.wait()
        results["after_crash"] = is_equiv("\\sqrt{8}", "2\\sqrt2")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert results["half"] is True
    assert results["wrong"] is False
    assert results["slow"] is False
    assert results["slow_seconds"] < 1.0 + math_grader._Worker.GRACE + 1.0
    assert results["after_crash"] is True


def test_main_thread_alarm_is_restored() -> None:
    """A caller's own SIGALRM handler and pending timer survive a graded call."""
    import signal

    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        fired.append(signum)

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert is_equiv("0.5", "\\frac{1}{2}")  # symbolic tier: arms and disarms its own alarm
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 30.0
        assert signal.getsignal(signal.SIGALRM) is handler and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------------------------------------- MATH-500


@pytest.fixture(scope="module")
def math500() -> list[dict]:
    if not MATH500.is_file():
        pytest.skip(f"MATH-500 not found at {MATH500.resolve()} (expected ../shared/data/math500/test.jsonl)")
    with MATH500.open() as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert len(rows) == 500
    return rows


def test_math500_reference_solutions_grade_correct(math500: list[dict]) -> None:
    """The last boxed answer of each reference solution grades equal to the dataset's `answer` field."""
    failures = [
        (row["unique_id"], row["answer"]) for row in math500 if not grade(row["solution"], row["answer"])
    ]
    rate = 1 - len(failures) / len(math500)
    print(
        f"MATH-500 solution-vs-answer agreement: {rate:.4f} ({len(math500) - len(failures)}/{len(math500)})"
    )
    assert rate >= 0.99, f"agreement {rate:.4f} < 0.99; failures: {failures[:20]}"


def test_math500_different_answers_grade_unequal(math500: list[dict]) -> None:
    """Answers of different problems (different after normalisation) must not grade as equivalent."""
    rng = random.Random(20240607)
    answers = [row["answer"] for row in math500]
    pairs: list[tuple[str, str]] = []
    while len(pairs) < 1000:
        i, j = rng.sample(range(len(answers)), 2)
        if normalize_answer(answers[i]) != normalize_answer(answers[j]):
            pairs.append((answers[i], answers[j]))
    false_matches = [(a, b) for a, b in pairs if is_equiv(a, b)]
    rate = 1 - len(false_matches) / len(pairs)
    print(f"MATH-500 different-answer discrimination: {rate:.4f} over {len(pairs)} pairs")
    assert rate >= 0.99, f"discrimination {rate:.4f} < 0.99; false matches: {false_matches[:20]}"


def test_math500_normal_forms_parse_symbolically(math500: list[dict]) -> None:
    """math-verify can read every normalised gold answer (the symbolic tier sees normal forms, not raw text).

    Compares each normal form with itself through the symbolic tier only, so a normalisation that produced
    unparseable LaTeX (e.g. a broken matrix or a glued macro) would show up here.
    """
    failures = []
    for row in math500:
        normal = normalize_answer(row["answer"])
        if not math_grader._symbolic_equiv(normal, normal, math_grader.DEFAULT_TIMEOUT):
            failures.append((row["unique_id"], row["answer"], normal))
    rate = 1 - len(failures) / len(math500)
    print(f"MATH-500 normal forms accepted by the symbolic tier: {rate:.4f}")
    assert rate >= 0.99, f"symbolic self-agreement {rate:.4f} < 0.99; failures: {failures[:20]}"
