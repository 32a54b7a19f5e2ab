"""Build the task splits and the pretraining corpus (the ``prepare`` stage).

Held-out questions are chosen by a hash of the question, not by position in the stream: a question belongs to
``test`` if ``u(key) < test_fraction``, to ``val`` if it falls in the next ``val_fraction``, else to the
train pool. The key is the question, except where reordering gives the same problem (countdown numbers, the
animals of a leg-counting problem; see ``TaskSpec.key``). So every kind of question (e.g. one-digit sums,
which are a small, frequent corner of the arith space) loses the same share to held-out, and the train pool
never contains a held-out question by construction. ``val`` and ``test`` hold unique problems (keys);
``train`` keeps the generator's natural frequencies (duplicates included).

Outputs of :func:`prepare` (all UTF-8, ``\\n`` line ends):

- ``tasks/{train,val,test}/{task}.jsonl``: one example dict per line (see :mod:`cola.tasks.procedural`),
- ``corpus/{train,val}.txt``: the ``text`` of every train (val) example of every task, shuffled, one per line,
- ``summary.json``: counts per task and split, corpus sizes, and the config.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cola.config import PrepareConfig
from cola.io import atomic_dir
from cola.results import StageResult
from cola.tasks.procedural import holdout_key, iter_examples

SPLITS = ("train", "val", "test")
STALL = 10_000  # give up on a task after this many scanned examples that added nothing to any split


def holdout_u(key: str, task: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) for a problem key (Python's ``hash`` is salted per process)."""
    h = hashlib.blake2b(f"{seed}\x00{task}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def split_task(task: str, cfg: PrepareConfig) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Scan the task's stream once and fill the three splits. Returns the splits and the number scanned."""
    n_train = cfg.n_train[task]
    want = {"train": n_train, "val": cfg.n_val, "test": cfg.n_test}
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    seen: dict[str, set[str]] = {"val": set(), "test": set()}
    max_scan = cfg.max_scan_factor * sum(want.values()) + STALL
    scanned = last_progress = 0
    for ex in iter_examples(task, cfg.seed):
        if all(len(out[s]) >= want[s] for s in SPLITS):
            break
        # Stop early when the held-out splits stopped growing: their region of the question space is used up.
        if scanned >= max_scan or scanned - last_progress >= STALL:
            got = {s: len(out[s]) for s in SPLITS}
            raise ValueError(
                f"task {task!r}: after scanning {scanned} examples got {got}, wanted {want}. "
                f"The task's question space is too small for these sizes: lower n_val/n_test or raise "
                f"val_fraction/test_fraction."
            )
        scanned += 1
        key = holdout_key(ex)
        u = holdout_u(key, task, cfg.seed)
        split = (
            "test"
            if u < cfg.test_fraction
            else "val"
            if u < cfg.test_fraction + cfg.val_fraction
            else "train"
        )
        if len(out[split]) >= want[split]:
            continue
        if split != "train":
            if key in seen[split]:
                continue  # held-out splits hold unique problems
            seen[split].add(key)
        out[split].append(ex)
        last_progress = scanned
    check_no_overlap(task, out)
    return out, scanned


def check_no_overlap(task: str, splits: dict[str, list[dict[str, Any]]]) -> None:
    """Raise if a question (or problem key) appears in two splits of a task, or twice in val or test."""
    for get in (lambda ex: ex["question"], holdout_key):
        qs = {s: [get(ex) for ex in splits[s]] for s in SPLITS}
        for s in ("val", "test"):
            if len(set(qs[s])) != len(qs[s]):
                raise ValueError(f"task {task!r}: duplicate questions inside the {s} split")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = set(qs[a]) & set(qs[b])
            if both:
                raise ValueError(
                    f"task {task!r}: {len(both)} questions in both {a} and {b}, e.g. {sorted(both)[0]!r}"
                )


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)


def prepare(cfg: PrepareConfig, out_dir: Path) -> dict[str, Any]:
    """Write the splits, the corpus and ``summary.json`` into ``out_dir``; return the summary.

    The same ``cfg`` gives byte-identical files. Everything is written into a temporary sibling directory that
    replaces ``out_dir`` only once complete, so a failure never leaves a half-written ``out_dir``.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        summary = _build(cfg, tmp)
    return summary


def _build(cfg: PrepareConfig, root: Path) -> dict[str, Any]:
    corpus: dict[str, list[str]] = {"train": [], "val": []}
    tasks_summary: dict[str, dict[str, int]] = {}
    for task in sorted(cfg.n_train):  # sorted: the corpus order must not depend on dict order in params.yaml
        splits, scanned = split_task(task, cfg)
        for s in SPLITS:
            _write_lines(
                root / "tasks" / s / f"{task}.jsonl", [json.dumps(ex, ensure_ascii=False) for ex in splits[s]]
            )
        corpus["train"] += [ex["text"] for ex in splits["train"]]
        corpus["val"] += [ex["text"] for ex in splits["val"]]
        tasks_summary[task] = {s: len(splits[s]) for s in SPLITS}
        tasks_summary[task]["train_unique_questions"] = len({ex["question"] for ex in splits["train"]})
        tasks_summary[task]["scanned"] = scanned
    rng = random.Random(cfg.seed)
    corpus_summary = {}
    for s, lines in corpus.items():
        rng.shuffle(lines)
        _write_lines(root / "corpus" / f"{s}.txt", lines)
        corpus_summary[s] = {"lines": len(lines), "chars": sum(len(x) + 1 for x in lines)}
    summary = {"tasks": tasks_summary, "corpus": corpus_summary, "config": asdict(cfg)}
    (root / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


def prepare_stage(cfg: PrepareConfig, out_dir: Path) -> StageResult:
    """The `prepare` stage: :func:`prepare`, with the example count of every task and split as its metrics."""
    summary = prepare(cfg, out_dir)
    counts = {f"{task}_{split}": count for task, splits in summary["tasks"].items()
              for split, count in splits.items() if split in SPLITS}
    return StageResult(counts, outputs=[out_dir])
