"""Countdown answer checking for RL rewards.

A Countdown task gives source ``numbers`` and a ``target``; the answer is an arithmetic expression.  The rules
mirror ``reasoning_gym``'s ``countdown`` dataset (``reasoning_gym.games.countdown``, v0.1.25), whose
``score_answer`` gives full reward only when

* the integer literals in the expression are exactly the source numbers as a multiset -- every number is
  used, and used exactly once (duplicated source numbers may be used as often as they appear), and
* the expression evaluates to the target.

Its generator only builds expressions from ``+ - * /`` with parentheses, and its prompt asks for exactly
that, so those are the only operators accepted here (no ``**``, ``//``, ``%``, no function calls, no names,
no decimals, no concatenation of digits beyond the literals themselves).  Division is exact rational
division, as in reasoning_gym (which evaluates with SymPy rationals): intermediate results may be fractions
(``(1 + 1/3) * 3`` is fine) and only the final value has to equal the target.  Division by zero makes the
answer wrong.  reasoning_gym's parser also accepts a unary minus (``-(a - b)``); so do we, by default.

The expression is parsed with :mod:`ast` and evaluated by walking the tree with :class:`fractions.Fraction`
-- nothing is ever passed to ``eval``.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

__all__ = ["check_countdown", "parse_answer_tag"]

# Long inputs are certainly not a valid answer built from a handful of numbers; refusing them early keeps
# `ast.parse` (and the recursion below) cheap and shallow on adversarial generations.
_MAX_EXPRESSION_CHARS = 1000

_BINARY_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def parse_answer_tag(text: str) -> str | None:
    """Return the stripped content of the last ``<answer>...</answer>`` in ``text`` (None if there is
    none)."""
    if not isinstance(text, str):
        return None
    matches = _ANSWER_TAG.findall(text)
    if not matches:
        return None
    return matches[-1].strip()


class _Invalid(Exception):
    """The expression uses something outside the Countdown grammar."""


def _evaluate(node: ast.AST, literals: list[int], allow_unary_minus: bool) -> Fraction:
    """Evaluate a Countdown expression tree exactly, collecting its integer literals in ``literals``."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, literals, allow_unary_minus)
    if isinstance(node, ast.Constant):
        # `type(...) is int` rejects bools (True is an int subclass) as well as floats and complex numbers.
        if type(node.value) is not int or node.value < 0:
            raise _Invalid("only non-negative integer literals are allowed")
        literals.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, _BINARY_OPS):
        left = _evaluate(node.left, literals, allow_unary_minus)
        right = _evaluate(node.right, literals, allow_unary_minus)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise _Invalid("division by zero")
        return left / right
    if allow_unary_minus and isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, literals, allow_unary_minus)
    raise _Invalid(f"unsupported syntax: {type(node).__name__}")


def _literal_tokens_ok(expression: str) -> bool:
    """Reject spellings that Python's parser would accept but that are not plain decimal integers.

    ``ast`` reads ``0x10``, ``1_000`` and ``1e3`` as numbers; the only characters allowed are digits,
    operators, parentheses and whitespace (which also keeps Unicode digits and names out).
    """
    return re.fullmatch(r"[0-9+\-*/()\s]*", expression) is not None


def check_countdown(
    expression: str,
    numbers: list[int],
    target: int,
    *,
    allow_unary_minus: bool = True,
) -> bool:
    """True if ``expression`` uses each of ``numbers`` exactly once and evaluates exactly to ``target``.

    Only ``+ - * /`` and parentheses over non-negative integer literals are allowed (plus unary minus
    unless ``allow_unary_minus`` is False).  Never raises: malformed or disallowed input is simply wrong.
    """
    try:
        if not isinstance(expression, str):
            return False
        # No `= target` tolerance: reasoning_gym's prompt forbids `=` and its scorer fails to parse it, and
        # RL rewards should agree with the evaluation score.
        expression = expression.strip()
        if not expression or len(expression) > _MAX_EXPRESSION_CHARS or not _literal_tokens_ok(expression):
            return False
        tree = ast.parse(expression, mode="eval")
        literals: list[int] = []
        value = _evaluate(tree, literals, allow_unary_minus)
        if Counter(literals) != Counter(int(n) for n in numbers):
            return False
        return value == target
    except Exception:  # _Invalid, SyntaxError, RecursionError, MemoryError, ...: all just "wrong"
        return False
