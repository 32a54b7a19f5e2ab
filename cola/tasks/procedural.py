"""The procedural tasks, built on reasoning-gym generators: arith, wordprob, countdown, spell, wrev.

Every task is one reasoning-gym dataset, a fixed config and a formatter that rewrites the generator's item
into a short one-line question/answer pair; its scoring is its class's (:mod:`cola.tasks.base`). Every example
is a dict with the keys ``task, question, answer, prompt, completion, text`` (plus task-specific extras),
where ``prompt = f"Q: {question} A:"`` and ``text = prompt + completion``. ``completion`` is
``" \\boxed{answer}"`` for the direct-answer tasks and ``" <think> trace </think> <answer>EXPR</answer>"`` for
countdown (the "enhanced thinking" format). Questions are reworded to be short because the default base model
has about 1 M parameters and a 128-token context.

Streams are deterministic: item ``i`` of task ``t`` with seed ``s`` is always the same, on any machine.
"""

from __future__ import annotations

import ast
import zlib
from collections.abc import Iterator
from fractions import Fraction
from itertools import count, islice
from typing import Any

from cola.tasks.base import BoxedMathTask, CountdownTask, ExactBoxedTask, Task


def boxed(answer: str) -> str:
    """The completion for a direct-answer task: the answer inside ``\\boxed{}``, after one space."""
    return f" \\boxed{{{answer}}}"


# ---------------------------------------------------------------------------------------------- formatters


def _fmt_arith(item: dict[str, Any]) -> dict[str, Any]:
    # reasoning-gym's question is already short and one-line: "Calculate 13 - 92."
    return {"question": item["question"], "answer": item["answer"], "completion": boxed(item["answer"])}


# reasoning-gym pluralises by appending "s" ("jellyfishs"); we rebuild the phrase from the metadata so the
# corpus is proper English.
_PLURALS = {
    "sea slug": "sea slugs",
    "jellyfish": "jellyfish",
    "leech": "leeches",
    "sheep": "sheep",
    "deer": "deer",
    "butterfly": "butterflies",
    "firefly": "fireflies",
    "praying mantis": "praying mantises",
    "shrimp": "shrimp",
    "woodlouse": "woodlice",
}


def _animal_phrase(animal: str, n: int) -> str:
    return f"{n} {animal if n == 1 else _PLURALS.get(animal, animal + 's')}"


def _fmt_wordprob(item: dict[str, Any]) -> dict[str, Any]:
    animals = [_animal_phrase(a, n) for a, n in item["metadata"]["animals"].items()]
    listing = animals[0] if len(animals) == 1 else ", ".join(animals[:-1]) + " and " + animals[-1]
    answer = item["answer"]
    return {"question": f"Count the legs of {listing}.", "answer": answer, "completion": boxed(answer)}


def _wordprob_key(ex: dict[str, Any]) -> str:
    # "Count the legs of 2 cats and 3 dogs." is the same problem as "... of 3 dogs and 2 cats."
    listing = ex["question"].removeprefix("Count the legs of ").removesuffix(".")
    return " | ".join(sorted(listing.replace(" and ", ", ").split(", ")))


def _fmt_spell(item: dict[str, Any]) -> dict[str, Any]:
    word = item["metadata"]["word"]
    return {
        "question": f"Spell backward: {word}",
        "answer": item["answer"],
        "completion": boxed(item["answer"]),
    }


def _fmt_wrev(item: dict[str, Any]) -> dict[str, Any]:
    words = ", ".join(item["metadata"]["words"])
    return {
        "question": f"Reverse the words: {words}",
        "answer": item["answer"],
        "completion": boxed(item["answer"]),
    }


_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def _num(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def countdown_trace(expr: str) -> tuple[str, Fraction]:
    """A short deterministic trace of evaluating ``expr``: one ``a op b=c`` step per binary operation.

    ``"10+2-5"`` gives ``("10+2=12, 12-5=7", 7)``. Steps follow Python's evaluation order (left to right,
    innermost first). Exact fractions keep division honest.
    """
    steps: list[str] = []

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)  # a sign, not a step: "-4+5" is one step
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = ev(node.left), ev(node.right)
            op = _OPS[type(node.op)]
            v = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
            if v is None:
                raise ZeroDivisionError(expr)
            steps.append(f"{_num(a)}{op}{_num(b)}={_num(v)}")
            return v
        raise ValueError(f"unsupported countdown expression: {expr!r}")

    value = ev(ast.parse(expr, mode="eval").body)
    return ", ".join(steps), value


def _fmt_countdown(item: dict[str, Any]) -> dict[str, Any]:
    meta = item["metadata"]
    numbers, target = list(meta["numbers"]), int(meta["target"])
    expr = item["answer"].replace(" ", "")  # same expression, fewer tokens: "10 + 2 - 5" -> "10+2-5"
    trace, value = countdown_trace(expr)
    if value != target:  # would mean the reference solution is wrong; never seen, but never train on it
        raise ValueError(f"countdown reference {expr!r} evaluates to {value}, not {target}")
    question = f"Use {', '.join(map(str, numbers))} to make {target}."
    completion = f" <think> {trace} </think> <answer>{expr}</answer>"
    return {
        "question": question,
        "answer": expr,
        "completion": completion,
        "numbers": numbers,
        "target": target,
    }


# ---------------------------------------------------------------------------------------------- registry

PROCEDURAL: tuple[Task, ...] = (
    BoxedMathTask(
        "arith", "math", "a + b or a - b with 1-2 digit operands; RL target",
        source="basic_arithmetic",
        config=dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2, operators=("+", "-"),
                    allow_parentheses=False, allow_negation=False),
        formatter=_fmt_arith,
    ),
    BoxedMathTask(
        "wordprob", "math", "leg counting word problem with 1-2 kinds of animal, 1-4 of each",
        source="leg_counting",
        config=dict(min_animals=1, max_animals=2, min_instances=1, max_instances=4),
        formatter=_fmt_wordprob,
        key=_wordprob_key,
    ),
    CountdownTask(
        "countdown", "thinking",
        "make a target <= 100 from 3 numbers in 1..20 with + - * /; think trace then expression",
        source="countdown",
        # 1..10 and targets <= 50 give only ~2.3 k distinct problems (as number multisets), too few for 700
        # unique test problems; 1..20 and <= 100 give well over 10 k.
        config=dict(min_numbers=3, max_numbers=3, min_value=1, max_value=20, min_target=1, max_target=100),
        formatter=_fmt_countdown,
        extras=("numbers", "target"),
        key=lambda ex: f"{sorted(ex['numbers'])} -> {ex['target']}",  # number order does not matter
    ),
    ExactBoxedTask(
        "spell", "retention", "spell a 3-5 letter word backward",
        source="spell_backward", config=dict(min_word_len=3, max_word_len=5), formatter=_fmt_spell,
    ),
    ExactBoxedTask(
        "wrev", "retention", "reverse a list of 2-3 words",
        source="word_sequence_reversal", config=dict(min_words=2, max_words=3), formatter=_fmt_wrev,
    ),
)


_BY_NAME = {task.name: task for task in PROCEDURAL}


def source_seed(task: str, seed: int) -> int:
    """The reasoning-gym seed of a task's stream.

    reasoning-gym seeds item ``i`` with ``Random(seed + i)``, so seeds ``s`` and ``s + 1`` would give the same
    stream shifted by one. Spacing seeds by 2**56 and tasks by 2**24 keeps every stream disjoint.
    """
    return (seed * 2**32 + zlib.crc32(task.encode())) * 2**24


def holdout_key(ex: dict[str, Any]) -> str:
    """The identity of an example's problem, for held-out splitting (the question for most tasks)."""
    return _BY_NAME[ex["task"]].key(ex)


def format_example(task: str, item: dict[str, Any]) -> dict[str, Any]:
    """Turn one reasoning-gym item into an example dict (key order fixed, so JSONL output is stable)."""
    spec = _BY_NAME[task]
    f = spec.formatter(item)
    prompt = spec.prompt(f["question"])
    ex = {
        "task": task,
        "question": f["question"],
        "answer": f["answer"],
        "prompt": prompt,
        "completion": f["completion"],
        "text": prompt + f["completion"],
    }
    ex.update({k: v for k, v in f.items() if k not in ex})
    if "\n" in ex["text"]:  # the corpus is one example per line
        raise ValueError(f"{task}: example text contains a newline: {ex['text']!r}")
    return ex


def iter_examples(task: str, seed: int) -> Iterator[dict[str, Any]]:
    """The endless deterministic stream of examples of ``task`` (duplicates included)."""
    if task not in _BY_NAME:
        raise KeyError(f"unknown task {task!r}; known: {sorted(_BY_NAME)}")
    import reasoning_gym  # here, not at module level: its 2 s import would otherwise tax every stage

    spec = _BY_NAME[task]
    # size is only reasoning-gym's virtual length; __getitem__ works for any index.
    ds = reasoning_gym.create_dataset(spec.source, seed=source_seed(task, seed), size=1, **spec.config)
    for i in count():
        yield format_example(task, ds[i])


def make_examples(task: str, n: int, seed: int) -> list[dict[str, Any]]:
    """The first ``n`` examples of the stream of ``task`` with ``seed``."""
    return list(islice(iter_examples(task, seed), n))
