"""Procedural tasks and the prepare stage: formats, determinism, held-out hygiene, atomic output."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from cola.config import PrepareConfig, from_dict
from cola.data.prepare import SPLITS, check_no_overlap, prepare
from cola.errors import ParamsError
from cola.tasks import TASK_NAMES, TASKS, BoxedMathTask, ExactBoxedTask
from cola.tasks.procedural import PROCEDURAL, countdown_trace, holdout_key, make_examples

FORMATS = {
    "arith": r"Q: Calculate \d{1,3} [+-] \d{1,3}\. A: \\boxed\{-?\d+\}",
    "wordprob": r"Q: Count the legs of \d [a-z ]+( and \d [a-z ]+)?\. A: \\boxed\{\d+\}",
    "countdown": r"Q: Use \d+, \d+, \d+ to make \d+\. A: <think> [^<>]+ </think> "
                 r"<answer>[-+*/()\d]+</answer>",
    "spell": r"Q: Spell backward: \w{3,5} A: \\boxed\{\w{3,5}\}",
    "wrev": r"Q: Reverse the words: \w+(, \w+){1,2} A: \\boxed\{\w+(, \w+){1,2}\}",
}


def _small(seed: int = 0) -> PrepareConfig:
    """A config that builds in about a second (what the old `_small()` gave)."""
    return PrepareConfig(
        seed=seed,
        n_train={"arith": 200, "wordprob": 100, "countdown": 60, "spell": 100, "wrev": 100},
        n_val=20,
        n_test=30,
    )


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_registry_of_procedural_tasks() -> None:
    assert TASK_NAMES == tuple(task.name for task in PROCEDURAL) == tuple(FORMATS)
    assert all(TASKS[task.name] is task for task in PROCEDURAL)
    # the answer format is the class: boxed for the math and retention tasks, think/answer for countdown
    boxed = {name for name in TASK_NAMES if isinstance(TASKS[name], BoxedMathTask | ExactBoxedTask)}
    assert boxed == {"arith", "wordprob", "spell", "wrev"}


@pytest.mark.parametrize("task", sorted(TASK_NAMES))
def test_example_format(task: str) -> None:
    exs = make_examples(task, 200, seed=0)
    assert len(exs) == 200
    for ex in exs:
        assert ex["task"] == task
        assert ex["prompt"] == f"Q: {ex['question']} A:"
        assert ex["text"] == ex["prompt"] + ex["completion"]
        assert re.fullmatch(FORMATS[task], ex["text"]), ex["text"]
        if isinstance(TASKS[task], BoxedMathTask | ExactBoxedTask):  # the boxed answer format
            assert ex["completion"] == f" \\boxed{{{ex['answer']}}}"


def test_answers_are_right() -> None:
    for ex in make_examples("arith", 200, seed=1):
        a, op, b = ex["question"][len("Calculate ") : -1].split()
        assert int(ex["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    for ex in make_examples("spell", 100, seed=1):
        assert ex["answer"] == ex["question"].split(": ")[1][::-1]
    for ex in make_examples("wrev", 100, seed=1):
        assert ex["answer"].split(", ") == ex["question"].split(": ")[1].split(", ")[::-1]


def test_countdown_trace_and_reference() -> None:
    assert countdown_trace("10+2-5") == ("10+2=12, 12-5=7", 7)
    assert countdown_trace("9*(2+3)")[0] == "2+3=5, 9*5=45"
    for ex in make_examples("countdown", 150, seed=0):
        trace, value = countdown_trace(ex["answer"])
        assert value == ex["target"]
        assert ex["completion"] == f" <think> {trace} </think> <answer>{ex['answer']}</answer>"
        assert sorted(int(x) for x in re.findall(r"\d+", ex["answer"])) == sorted(ex["numbers"])
        assert (
            len(ex["numbers"]) == 3 and all(1 <= n <= 20 for n in ex["numbers"]) and 1 <= ex["target"] <= 100
        )


def test_holdout_keys_ignore_order() -> None:
    a = {"task": "countdown", "question": "Use 3, 6, 10 to make 7.", "numbers": [3, 6, 10], "target": 7}
    b = {**a, "question": "Use 10, 3, 6 to make 7.", "numbers": [10, 3, 6]}
    assert holdout_key(a) == holdout_key(b) != holdout_key({**a, "target": 8})
    w1 = {"task": "wordprob", "question": "Count the legs of 2 cats and 1 duck."}
    w2 = {"task": "wordprob", "question": "Count the legs of 1 duck and 2 cats."}
    assert holdout_key(w1) == holdout_key(w2)
    assert holdout_key({"task": "arith", "question": "Calculate 1 + 2."}) == "Calculate 1 + 2."


def test_streams_are_deterministic_and_seeded() -> None:
    for task in TASK_NAMES:
        assert make_examples(task, 30, seed=3) == make_examples(task, 30, seed=3)
    # reasoning-gym seeds item i with seed + i; neighbouring seeds must still give unrelated streams
    a = [ex["question"] for ex in make_examples("wrev", 50, seed=0)]
    b = [ex["question"] for ex in make_examples("wrev", 50, seed=1)]
    assert len(set(a) & set(b)) == 0


def test_prepare_tiny(tmp_path: Path) -> None:
    cfg = _small()
    summary = prepare(cfg, tmp_path / "data")
    root = tmp_path / "data"
    assert json.loads((root / "summary.json").read_text()) == summary
    train_texts: list[str] = []
    val_texts: list[str] = []
    for task, n in cfg.n_train.items():
        splits = {s: _read_jsonl(root / "tasks" / s / f"{task}.jsonl") for s in SPLITS}
        assert [len(splits[s]) for s in SPLITS] == [n, cfg.n_val, cfg.n_test]
        assert summary["tasks"][task]["train"] == n
        qs = {s: {ex["question"] for ex in splits[s]} for s in SPLITS}
        assert len(qs["val"]) == cfg.n_val and len(qs["test"]) == cfg.n_test  # unique
        assert (
            not (qs["train"] & qs["val"]) and not (qs["train"] & qs["test"]) and not (qs["val"] & qs["test"])
        )
        keys = {s: {holdout_key(ex) for ex in splits[s]} for s in SPLITS}  # reordered problems count as one
        assert (
            len(keys["test"]) == cfg.n_test
            and not (keys["train"] & keys["test"])
            and not (keys["val"] & keys["test"])
        )
        assert not (keys["train"] & keys["val"])
        train_texts += [ex["text"] for ex in splits["train"]]
        val_texts += [ex["text"] for ex in splits["val"]]
    corpus_train = (root / "corpus" / "train.txt").read_text(encoding="utf-8").splitlines()
    corpus_val = (root / "corpus" / "val.txt").read_text(encoding="utf-8").splitlines()
    assert Counter(corpus_train) == Counter(train_texts)
    assert Counter(corpus_val) == Counter(val_texts)
    assert corpus_train != sorted(corpus_train)  # shuffled
    assert summary["corpus"]["train"]["lines"] == len(corpus_train)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_prepare_is_byte_identical(tmp_path: Path) -> None:
    cfg = _small(seed=5)
    prepare(cfg, tmp_path / "a")
    prepare(cfg, tmp_path / "b")
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert a == b and len(a) == 1 + 2 + 3 * len(cfg.n_train)
    # overwriting an existing output works and gives the same bytes
    prepare(cfg, tmp_path / "a")
    assert _tree_bytes(tmp_path / "a") == a
    # another seed changes the data
    prepare(_small(seed=6), tmp_path / "c")
    assert _tree_bytes(tmp_path / "c")["corpus/train.txt"] != a["corpus/train.txt"]


def test_too_small_question_space_fails_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "data"
    prepare(_small(), out)
    before = _tree_bytes(out)
    # spell has a few thousand 3-5 letter words; 2 % of them cannot give 5000 unique test questions
    cfg = PrepareConfig(n_train={"spell": 10}, n_val=5, n_test=5000, test_fraction=0.02, max_scan_factor=1)
    with pytest.raises(ValueError, match="question space is too small"):
        prepare(cfg, out)
    assert _tree_bytes(out) == before  # the previous output is untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_overlap_check_and_unknown_task(tmp_path: Path) -> None:
    ex = make_examples("arith", 2, seed=0)
    with pytest.raises(ValueError, match="both train and test"):
        check_no_overlap("arith", {"train": [ex[0]], "val": [ex[1]], "test": [ex[0]]})
    # an unknown task is refused when the config is built, before prepare writes anything
    with pytest.raises(ValueError, match="unknown tasks"):
        prepare(PrepareConfig(n_train={"nope": 1}), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ParamsError, match=r"prepare.*unknown tasks \['nope'\]"):
        from_dict(PrepareConfig, {"n_train": {"nope": 1}}, "prepare")


def test_config_fields_have_help() -> None:
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(PrepareConfig))
    assert PrepareConfig().n_test >= 650
