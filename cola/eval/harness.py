"""Evaluation loops for any pipeline model folder (CoLA checkpoint or plain HF base), cola-spec.md §5, §10.

    generate_texts            batched, left-padded decoding (latent actions for CoLA, HF `generate` for bases)
    score / format_ok         per-task correctness and format checks of one completion
    task_accuracy             accuracy ± standard error over task examples, with per-sample records
    perplexity                held-out CE: base, world model under IDM / policy-argmax actions, marginal,
                              and the IDM action-usage histogram (sanity checks (i)-(iv) of cola-spec.md §10)
    semantic_diversity_eval   QD of random latent actions vs token sampling vs random tokens (§5)
    action_following_probe    do different forced actions give different continuations? (§10 check (v))
    run_task                  the dispatch point of `cola eval` (task files, perplexity, diversity, probe,
                              lm-eval tasks from `cola.eval.lm_tasks`)
    sampled_task_accuracy     n sampled answers per problem: pass@k, best-of-n (oracle), majority vote
    score_samples             the same metrics for completions produced elsewhere (lm-eval models)

Prompts are encoded as the trainers see examples in the packed corpus: `EOS prompt` (corpus lines are joined
as `EOS ex EOS ex ...`), left-padded for batching, with positions that start at each row's first real token.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

from cola.errors import ColaError
from cola.eval.countdown import check_countdown, parse_answer_tag
from cola.eval.math_grader import extract_boxed, grade
from cola.eval.sampling_metrics import math_vote_key, sampling_summary
from cola.model.modeling_cola import left_padded_positions

COPY_TASKS = frozenset({"spell", "wrev"})  # answers are strings to reproduce exactly, not math
CODE_ALIVE_SHARE = 0.005  # a code is "alive" when it labels more than 0.5 % of tokens (cola-spec.md §10 (i))
_THINK_ANSWER = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)


class EvalError(ColaError):
    """An evaluation request that cannot run as given (unknown task, missing data file, bad option)."""


# --------------------------------------------------------------------------------------------- encoding


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, preceded by EOS as in the packed training corpus (no other specials)."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    return [([eos] if eos is not None else []) + list(ids) for ids in encoded]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"):
    """(ids, mask) of shape (B, max_len) with every row right-aligned (left padding)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _progress(iterable, total: int, desc: str | bool):
    """tqdm over `iterable` when `desc` is truthy (a string names the bar), else the iterable itself."""
    if not desc:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc if isinstance(desc, str) else None,
        unit="batch",
        leave=False,
        dynamic_ncols=True,
    )


# --------------------------------------------------------------------------------------------- generation


def _generate_base_batch(model, ids, mask, max_new_tokens: int, token_sampling: bool, eos, pad: int):
    """New tokens (B, N) and their validity mask from HF `generate` (greedy, or full-vocabulary sampling)."""
    sampling = (
        dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
        if token_sampling
        else dict(do_sample=False, temperature=None, top_k=None, top_p=None)
    )
    # eos_token_id=None overrides the model's generation config: the full budget runs, as in latent decoding.
    sequences = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
        **sampling,
    )  # fmt: skip
    new = sequences[:, ids.shape[1] :]
    valid = torch.ones_like(new, dtype=torch.bool)
    if eos is not None:  # keep tokens up to and including the first EOS of each row
        hit = (new == eos).long()
        valid = (hit.cumsum(1) - hit) == 0
    return new, valid


@torch.inference_mode()
def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    kind: str,
    max_new_tokens: int,
    batch_size: int,
    action_mode: str = "greedy",
    forced_action: int | None = None,
    token_sampling: bool = False,
    seed: int = 0,
    stop_at_eos: bool = True,
    action_top_k: int | None = 40,
    action_temperature: float = 1.0,
    progress: bool | str = False,
) -> list[dict[str, Any]]:
    """Generate a completion for every prompt; returns `{prompt, completion, token_ids, actions}` records.

    Records are in input order. Prompts are sorted by length and decoded in left-padded batches (less
    padding). kind "cola": latent-action decoding with `action_mode` (greedy | sample | random | forced);
    `actions[i]` produced `token_ids[i]` (the generated ids, EOS included). kind "base": HF `generate`,
    greedy unless `token_sampling` (then temperature 1 over the whole vocabulary); `actions` is None.
    `completion` is the decoded text of the generated tokens without special tokens. One seeded generator
    (and, for HF sampling, the seeded global RNG, restored afterwards) drives every random choice of a call.
    """
    if kind not in ("cola", "base"):
        raise EvalError(f"kind must be 'cola' or 'base', got {kind!r}")
    encoded = encode_prompts(tokenizer, prompts)
    pad, device = _pad_id(tokenizer), _device(model)
    eos = tokenizer.eos_token_id if stop_at_eos else None
    generator = torch.Generator(device=device).manual_seed(seed)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    latent_options = dict(
        max_new_tokens=max_new_tokens, action_mode=action_mode, forced_action=forced_action,
        action_top_k=action_top_k, action_temperature=action_temperature, token_sampling=token_sampling,
        eos_token_id=eos, pad_token_id=pad,
    )  # fmt: skip
    records: list[dict[str, Any]] = [{} for _ in encoded]
    # HF sampling draws from the global RNG: seed it here and restore the caller's state afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for chunk in _progress(chunks, len(chunks), progress):
            ids, mask = left_pad([encoded[i] for i in chunk], pad, device)
            if kind == "cola":
                out = model.generate_latent(ids, mask, generator=generator, **latent_options)
                new, valid, actions = out.sequences[:, out.prompt_length :], out.response_mask, out.actions
            else:
                new, valid = _generate_base_batch(model, ids, mask, max_new_tokens, token_sampling, eos, pad)
                actions = None
            token_ids = [row[v].tolist() for row, v in zip(new, valid, strict=True)]
            texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True)
            for j, i in enumerate(chunk):
                records[i] = {
                    "prompt": prompts[i],
                    "completion": texts[j],
                    "token_ids": token_ids[j],
                    "actions": actions[j][valid[j]].tolist() if actions is not None else None,
                }
    return records


# --------------------------------------------------------------------------------------------- scoring


def _is_countdown(task: str, example: dict[str, Any]) -> bool:
    return task == "countdown" or ("numbers" in example and "target" in example)


def score(task: str, example: dict[str, Any], completion: str) -> bool:
    """Is `completion` a correct answer to `example`?

    countdown: the last `<answer>EXPR</answer>` uses the numbers once each and hits the target;
    copy tasks (spell, wrev): the last `\\boxed{}` content equals the answer after stripping whitespace;
    everything else (arith, wordprob, MATH-style examples): MATH answer equivalence of the last box.
    """
    if _is_countdown(task, example):
        expression = parse_answer_tag(completion)
        return expression is not None and check_countdown(
            expression, example["numbers"], int(example["target"])
        )
    if task in COPY_TASKS:
        boxed = extract_boxed(completion)
        return boxed is not None and boxed.strip() == str(example["answer"]).strip()
    return grade(completion, str(example["answer"]))


def format_ok(task: str, completion: str) -> bool:
    """Does `completion` have the task's answer format? countdown: `<think>…</think> <answer>…</answer>` and
    nothing else; every other task: a balanced `\\boxed{}`."""
    if task == "countdown":
        return _THINK_ANSWER.fullmatch(completion) is not None
    return extract_boxed(completion) is not None


def binomial_stderr(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent problems: sqrt(p (1 - p) / n)."""
    return math.sqrt(p * (1.0 - p) / n) if n else float("nan")


def task_accuracy(
    model,
    tokenizer,
    kind: str,
    examples: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    limit: int | None = None,
    progress: bool = True,
    **gen: Any,
) -> dict[str, Any]:
    """Generate an answer to each example's `prompt` and score it against its `answer`.

    Returns `accuracy`, `stderr`, `n`, `format_rate`, `seconds` and per-sample `records`
    (`index`, `id` when the example has one, `prompt`, `answer`, `completion`, `correct`, `format_ok`,
    `actions`). `gen` goes to `generate_texts` (action_mode, forced_action, token_sampling, seed, ...).
    """
    examples = list(examples)[:limit] if limit else list(examples)
    if not examples:
        raise EvalError("task_accuracy needs at least one example")
    task = examples[0].get("task", "")
    start = time.perf_counter()
    desc = f"{task or 'eval'} ({kind})" if progress else False
    outputs = generate_texts(
        model,
        tokenizer,
        [ex["prompt"] for ex in examples],
        kind=kind,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=desc,
        **gen,
    )
    records = []
    for i, (ex, out) in enumerate(zip(examples, outputs, strict=True)):
        ex_task = ex.get("task", task)
        record = {
            "index": i,
            **({"id": ex["id"]} if "id" in ex else {}),
            "prompt": ex["prompt"],
            "answer": ex["answer"],
            "completion": out["completion"],
            "correct": score(ex_task, ex, out["completion"]),
            "format_ok": format_ok(ex_task, out["completion"]),
            "actions": out["actions"],
        }
        records.append(record)
    n = len(records)
    accuracy = sum(r["correct"] for r in records) / n
    return {
        "accuracy": accuracy,
        "stderr": binomial_stderr(accuracy, n),
        "n": n,
        "format_rate": sum(r["format_ok"] for r in records) / n,
        "seconds": time.perf_counter() - start,
        "records": records,
    }


def vote_key(task: str, example: dict[str, Any], completion: str) -> str | None:
    """A completion's answer for majority voting: the normalised last box (math), the stripped box (copy
    tasks); None when there is nothing to vote with (no box; Countdown, whose expressions are no answers)."""
    if _is_countdown(task, example):
        return None
    if task in COPY_TASKS:
        boxed = extract_boxed(completion)
        return None if boxed is None else boxed.strip()
    return math_vote_key(completion)


def score_samples(
    task: str,
    examples: Sequence[dict[str, Any]],
    completions: Sequence[Sequence[str]],
    actions: Sequence[Sequence[list[int] | None]] | None = None,
) -> dict[str, Any]:
    """Score n completions per example: `sampling_summary`'s metrics plus per-problem `records`.

    Metrics: `accuracy` (= pass@1, mean single-sample accuracy), `stderr`, `n` (problems), `n_samples`,
    `pass_at_k` ({k: value} for k = 1, 2, 4, ... <= n), `best_of_n_oracle` (= pass@n: best-of-n with the
    reference answer as verifier), `majority_vote` (self-consistency; not for Countdown), `format_rate`.
    Records: `index`, `id`, `prompt`, (`problem`), `answer`, `n_correct`, `majority_answer`,
    `majority_correct`, and `samples`: [{`completion`, `correct`, `format_ok`, `vote`, (`actions`)}].
    """
    records, correct, votes = [], [], []
    for i, (ex, texts) in enumerate(zip(examples, completions, strict=True)):
        ex_task = ex.get("task", task)
        samples = []
        for j, text in enumerate(texts):
            sample = {
                "completion": text,
                "correct": score(ex_task, ex, text),
                "format_ok": format_ok(ex_task, text),
                "vote": vote_key(ex_task, ex, text),
            }
            if actions is not None:
                sample["actions"] = actions[i][j]
            samples.append(sample)
        correct.append([s["correct"] for s in samples])
        votes.append([s["vote"] for s in samples])
        record = {"index": i, **({"id": ex["id"]} if "id" in ex else {}), "prompt": ex["prompt"]}
        if ex.get("problem") is not None:
            record["problem"] = ex["problem"]
        record.update(answer=ex["answer"], n_correct=sum(correct[-1]))
        records.append((record, samples))
    countdown = all(_is_countdown(ex.get("task", task), ex) for ex in examples)
    summary = sampling_summary(correct, None if countdown else votes)
    winners = summary.pop("majority_index", [None] * len(records))
    for (record, samples), winner in zip(records, winners, strict=True):
        if not countdown:
            record["majority_answer"] = samples[winner]["vote"] if winner is not None else None
            record["majority_correct"] = winner is not None and samples[winner]["correct"]
        record["samples"] = samples
    n_texts = sum(len(samples) for _, samples in records)
    out = {
        "accuracy": summary.pop("accuracy"),
        "stderr": summary.pop("stderr"),
        "n": summary.pop("n_problems"),
        **summary,
        "format_rate": sum(s["format_ok"] for _, samples in records for s in samples) / n_texts,
    }
    out["records"] = [record for record, _ in records]
    return out


def describe_sampling(
    kind: str, action_mode: str | None, top_k: int, temperature: float, max_new_tokens: int
) -> str:
    """How the samples were drawn, as one string (a string, so the summary table and MLflow skip it)."""
    if kind == "cola":
        how = (
            "uniformly random latent actions"
            if action_mode == "random"
            else f"latent actions sampled from the policy's top-{top_k} at temperature {temperature:g}"
        )
        return f"{how}, greedy tokens, up to {max_new_tokens} new tokens"
    return f"tokens sampled at temperature 1 over the whole vocabulary, up to {max_new_tokens} new tokens"


def sampled_task_accuracy(
    model,
    tokenizer,
    kind: str,
    examples: Sequence[dict[str, Any]],
    *,
    samples: int,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    seed: int = 0,
    action_mode: str = "sample",
    action_top_k: int = 40,
    action_temperature: float = 1.0,
    progress: bool = True,
) -> dict[str, Any]:
    """`samples` sampled completions per example, scored by `score_samples` (pass@k, best-of-n, majority).

    CoLA samples latent actions (`action_mode` sample: top-`action_top_k` of the policy at
    `action_temperature`, the paper's rollout setting) and keeps tokens greedy; a plain base samples tokens at
    temperature 1 over the whole vocabulary. One seeded generator drives the whole call (reproducible).
    """
    examples = list(examples)
    if not examples:
        raise EvalError("sampled_task_accuracy needs at least one example")
    if samples < 1:
        raise EvalError(f"samples must be >= 1, got {samples}")
    task = examples[0].get("task", "")
    start = time.perf_counter()
    # Consecutive copies of each prompt: generate_texts sorts by length, so the copies share batches.
    prompts = [ex["prompt"] for ex in examples for _ in range(samples)]
    sampling = (
        dict(action_mode=action_mode, action_top_k=action_top_k, action_temperature=action_temperature)
        if kind == "cola"
        else dict(token_sampling=True)
    )
    outputs = generate_texts(
        model,
        tokenizer,
        prompts,
        kind=kind,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        progress=f"{task or 'eval'} ({kind}, {samples} samples)" if progress else False,
        **sampling,
    )
    groups = [outputs[i * samples : (i + 1) * samples] for i in range(len(examples))]
    result = score_samples(
        task,
        examples,
        [[o["completion"] for o in group] for group in groups],
        actions=[[o["actions"] for o in group] for group in groups],
    )
    records = result.pop("records")
    result["sampling"] = describe_sampling(
        kind, action_mode, action_top_k, action_temperature, max_new_tokens
    )
    result["seconds"] = time.perf_counter() - start
    result["records"] = records
    return result


# --------------------------------------------------------------------------------------------- perplexity


def pack_windows(tokenizer, lines: Sequence[str], seq_len: int, max_tokens: int | None = None):
    """EOS-joined lines (`EOS l1 EOS l2 ...`) cut into consecutive windows: (ids, mask) of shape (N, seq_len).

    The last, shorter window is left-padded so every token of the stream is scored once.
    """
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(list(lines), add_special_tokens=False)["input_ids"]:
        stream += [eos, *ids]
    if max_tokens:
        stream = stream[:max_tokens]
    if len(stream) < 2:
        raise EvalError("perplexity needs at least two tokens of text")
    rows = [stream[i : i + seq_len] for i in range(0, len(stream), seq_len)]
    rows = [r for r in rows if len(r) >= 2]  # a 1-token tail has nothing to predict
    return left_pad(rows, _pad_id(tokenizer))


def _targets(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens x_{t+1} (B, T-1) and where they count: both x_t and x_{t+1} are real tokens."""
    return ids[:, 1:], (mask[:, 1:] & mask[:, :-1]).bool()


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits[:, t])[x_{t+1}] for t < T-1, without materialising the full log-softmax."""
    logits = logits[:, :-1].float()
    return logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)


def policy_marginal_logprobs(
    model, h: torch.Tensor, policy_logits: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """log Σₐ π(a|s_t) p(x_{t+1}|s_t, a) per slot (B, T-1): the CoLA likelihood with actions summed out.

    One world-model pass per action on the cached base states h (the base never reruns); the sum is
    accumulated in log space so that tiny probabilities do not underflow.
    """
    log_pi = torch.log_softmax(policy_logits[:, :-1].float() / model.config.policy_temperature, -1)
    total = None
    for a in range(model.config.num_actions):
        actions = torch.full(h.shape[:-1], a, dtype=torch.long, device=h.device)
        term = log_pi[..., a] + _token_logprobs(model.world_model_logits(h, actions), targets)
        total = term if total is None else torch.logaddexp(total, term)
    return total


def _usage_stats(counts: torch.Tensor) -> dict[str, Any]:
    """Action-usage summary of IDM argmax labels (cola-spec.md §10 check (i))."""
    share = counts.double() / counts.sum().clamp(min=1)
    nonzero = share[share > 0]
    return {
        "codes_alive": int((share > CODE_ALIVE_SHARE).sum()),
        "max_code_share": float(share.max()),
        "usage_entropy": float(-(nonzero * nonzero.log()).sum()),  # nats; log K when every code is equal
        "usage_histogram": counts.tolist(),
    }


@torch.inference_mode()
def _cola_window_sums(model, ids, mask, targets, valid, marginal: bool = True) -> dict[str, Any]:
    """Summed token log-probs of one batch of windows under every CoLA readout, plus IDM label counts."""
    positions = left_padded_positions(mask)
    h, _ = model.base_hidden(ids, mask, positions)
    idm = model.idm_logits(h, mask, positions).argmax(-1)
    w, _ = model.policy_logits(h, mask, positions)
    greedy = w.argmax(-1)
    base_logits = model.base(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    sums = {
        "base_loss": _token_logprobs(base_logits, targets),
        "wm_loss_idm": _token_logprobs(model.world_model_logits(h, idm), targets),
        "wm_loss_policy_argmax": _token_logprobs(model.world_model_logits(h, greedy), targets),
    }
    if marginal:
        sums["wm_loss_policy_marginal"] = policy_marginal_logprobs(model, h, w, targets)
    out = {k: -float(v[valid].sum()) for k, v in sums.items()}
    out["policy_idm_agreement"] = float((greedy[:, :-1] == idm[:, :-1])[valid].sum())
    out["counts"] = torch.bincount(idm[:, :-1][valid], minlength=model.config.num_actions)
    return out


@torch.inference_mode()
def _base_window_sums(model, ids, mask, targets, valid) -> dict[str, Any]:
    logits = model(input_ids=ids, attention_mask=mask, position_ids=left_padded_positions(mask)).logits
    return {"base_loss": -float(_token_logprobs(logits, targets)[valid].sum())}


def perplexity(
    model,
    tokenizer,
    kind: str,
    lines: Sequence[str],
    *,
    seq_len: int = 128,
    batch_size: int = 16,
    max_tokens: int | None = None,
    marginal: bool = True,
) -> dict[str, Any]:
    """Mean next-token cross-entropy (nats per token) of held-out `lines`, joined with EOS as in training.

    `marginal=False` skips the policy-marginal loss (K world-model passes; meaningless before BC), and with it
    the CoLA `loss` and `perplexity`.

    Every kind: `base_loss` (the base LM's own CE), `loss` (the model's own LM loss), `perplexity` = e^loss.
    For CoLA, `loss` is `wm_loss_policy_marginal` = −log Σₐ π(a|s) p(x|s,a); also `wm_loss_idm` (world model
    under IDM argmax actions, which leak the next token, so clearly below base_loss once trained),
    `wm_loss_policy_argmax`, `policy_idm_agreement` (BC top-1) and the IDM action usage: `codes_alive`,
    `max_code_share`, `usage_entropy` (nats) and `usage_histogram` (counts per action).
    """
    ids, mask = pack_windows(tokenizer, lines, seq_len, max_tokens)
    device = _device(model)
    totals: dict[str, Any] = {}
    n_tokens = 0
    for start in range(0, ids.shape[0], batch_size):
        b_ids, b_mask = (
            ids[start : start + batch_size].to(device),
            mask[start : start + batch_size].to(device),
        )
        targets, valid = _targets(b_ids, b_mask)
        if kind == "cola":
            sums = _cola_window_sums(model, b_ids, b_mask, targets, valid, marginal)
        else:
            sums = _base_window_sums(model, b_ids, b_mask, targets, valid)
        for key, value in sums.items():
            totals[key] = totals[key] + value if key in totals else value
        n_tokens += int(valid.sum())
    counts = totals.pop("counts", None)
    result: dict[str, Any] = {key: value / n_tokens for key, value in totals.items()}
    if kind != "cola" or marginal:
        result["loss"] = result["wm_loss_policy_marginal"] if kind == "cola" else result["base_loss"]
        result["perplexity"] = math.exp(result["loss"])
    result["n_tokens"] = n_tokens
    if counts is not None:
        result.update(_usage_stats(counts.cpu()))
    return result


# --------------------------------------------------------------------------------------------- diversity


def _random_token_texts(tokenizer, n: int, length: int, seed: int) -> list[str]:
    """`n` strings of `length` uniformly random non-special tokens: the diversity floor of cola-spec.md §5."""
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    generator = torch.Generator().manual_seed(seed)
    picks = allowed[torch.randint(len(allowed), (n, length), generator=generator)]
    return tokenizer.batch_decode(picks.tolist(), skip_special_tokens=True)


def _groups(texts: list[str], m: int) -> list[list[str]]:
    return [texts[i : i + m] for i in range(0, len(texts), m)]


def semantic_diversity_eval(
    model,
    tokenizer,
    kind: str,
    prefixes: Sequence[str],
    *,
    m: int = 8,
    length: int = 24,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, dict[str, Any]]:
    """QD of M continuations of each of N prefixes, by sampling method (cola-spec.md §5).

    `latent_random` (CoLA only): uniformly random latent actions, greedy world-model tokens;
    `token_sampling`: the base LM (a CoLA model's frozen `model.base`) sampled at temperature 1;
    `random_tokens`: uniformly random tokens (the floor). Continuations run the full `length` (EOS does not
    stop them). Each method's dict is `cola.eval.diversity.semantic_diversity`'s (`mean_similarity`, `qd`,
    `n_groups`, `group_size`) plus `examples`, the continuations of the first prefix.
    """
    from cola.eval.diversity import semantic_diversity

    if m < 2:
        raise EvalError(f"semantic diversity needs m >= 2 continuations per prefix, got {m}")
    repeated = [p for p in prefixes for _ in range(m)]  # consecutive runs of m rows form one group
    common = dict(max_new_tokens=length, batch_size=batch_size, stop_at_eos=False, seed=seed)
    texts: dict[str, list[str]] = {}
    if kind == "cola":
        out = generate_texts(model, tokenizer, repeated, kind="cola", action_mode="random", **common)
        texts["latent_random"] = [r["completion"] for r in out]
    base = model.base if kind == "cola" else model
    out = generate_texts(base, tokenizer, repeated, kind="base", token_sampling=True, **common)
    texts["token_sampling"] = [r["completion"] for r in out]
    texts["random_tokens"] = _random_token_texts(tokenizer, len(repeated), length, seed)
    results = {}
    for method, method_texts in texts.items():
        groups = _groups(method_texts, m)
        results[method] = {**semantic_diversity(groups), "examples": groups[0]}
    return results


# --------------------------------------------------------------------------------------------- probe


def _mean_pairwise_tv(probs: torch.Tensor) -> torch.Tensor:
    """Mean total-variation distance ½‖p_i − p_j‖₁ over action pairs, per prefix: probs (A, N, V) → (N,)."""
    pairs = list(combinations(range(probs.shape[0]), 2))
    return torch.stack([0.5 * (probs[i] - probs[j]).abs().sum(-1) for i, j in pairs]).mean(0)


@torch.inference_mode()
def action_following_probe(
    model,
    tokenizer,
    prefixes: Sequence[str],
    *,
    actions: Sequence[int] | None = None,
    length: int = 12,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Does the world model follow the action it is given? (cola-spec.md §10 check (v))

    For each prefix, decode `length` greedy tokens with each action in `actions` forced at every step
    (default: the first min(4, K) actions). Reports `distinct_rate` (share of prefixes whose continuations
    all differ pairwise), `mean_distinct` (mean number of distinct continuations out of len(actions)),
    `next_token_tv` (mean total-variation distance between the next-token distributions of two forced
    actions at the prefix end), and `examples` (the continuations of the first few prefixes by action).
    """
    if actions is None:
        actions = tuple(range(min(4, model.config.num_actions)))
    actions = list(actions)
    if len(actions) < 2:
        raise EvalError("the action-following probe needs at least two actions")
    continuations = [
        [
            r["completion"]
            for r in generate_texts(
                model,
                tokenizer,
                prefixes,
                kind="cola",
                action_mode="forced",
                forced_action=a,
                max_new_tokens=length,
                batch_size=batch_size,
                stop_at_eos=False,
            )
        ]
        for a in actions
    ]  # (A, N)
    per_prefix = list(zip(*continuations, strict=True))  # (N, A)
    distinct = [len(set(c)) for c in per_prefix]
    tv = _next_token_tv(model, tokenizer, prefixes, actions, batch_size)
    return {
        "actions": actions,
        "n_prefixes": len(prefixes),
        "distinct_rate": sum(d == len(actions) for d in distinct) / len(distinct),
        "mean_distinct": sum(distinct) / len(distinct),
        "next_token_tv": float(tv.mean()),
        "examples": [
            {"prefix": p, "continuations": dict(zip(map(str, actions), c, strict=True))}
            for p, c in zip(prefixes[:4], per_prefix[:4], strict=False)
        ],
    }


def _next_token_tv(model, tokenizer, prefixes: Sequence[str], actions: list[int], batch_size: int):
    """Per prefix, the mean pairwise TV distance of p(x | prefix, a) over the forced actions (N,)."""
    encoded = encode_prompts(tokenizer, prefixes)
    device, out = _device(model), []
    for start in range(0, len(encoded), batch_size):
        ids, mask = left_pad(encoded[start : start + batch_size], _pad_id(tokenizer), device)
        h, _ = model.base_hidden(ids, mask, left_padded_positions(mask))
        h_last = h[:, -1]
        probs = torch.stack(
            [
                torch.softmax(
                    model.world_model_logits(h_last, torch.full(h_last.shape[:1], a, device=device)).float(),
                    -1,
                )
                for a in actions
            ]
        )
        out.append(_mean_pairwise_tv(probs))
    return torch.cat(out)


# --------------------------------------------------------------------------------------------- dispatch

SPECIAL_TASKS = ("perplexity", "diversity", "probe")


@dataclass
class EvalContext:
    """Everything a task runner may need: the loaded model, where the data is, and the generation options."""

    model_path: str
    model: Any
    tokenizer: Any
    kind: str
    data_dir: Path = Path("data")
    split: str = "test"
    limit: int | None = None
    batch_size: int = 64
    max_new_tokens: int | None = None  # None: room for the longest reference completion (+8 tokens)
    action_mode: str = "greedy"
    seed: int = 0
    progress: bool = True
    samples: int = 1  # > 1: that many sampled answers per problem (pass@k, best-of-n, majority vote)
    options: dict[str, Any] = field(default_factory=dict)  # runner-specific extras (e.g. lm-eval settings)

    @property
    def task_dir(self) -> Path:
        return Path(self.data_dir) / "tasks" / self.split


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per non-empty line; a bad line is a one-line EvalError naming the file and line."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise EvalError(f"{path}:{number}: invalid JSON ({err.msg})") from None
    return rows


def task_files(data_dir: Path | str, split: str) -> dict[str, Path]:
    """Task name → `<data_dir>/tasks/<split>/<task>.jsonl` for the task files that exist."""
    folder = Path(data_dir) / "tasks" / split
    return {p.stem: p for p in sorted(folder.glob("*.jsonl"))} if folder.is_dir() else {}


def default_max_new_tokens(tokenizer, examples: Sequence[dict[str, Any]]) -> int:
    """Room for the longest reference completion plus 8 tokens (countdown traces are ~3× a boxed answer)."""
    completions = [ex["completion"] for ex in examples if ex.get("completion")]
    if not completions:
        return 32
    lengths = [len(ids) for ids in tokenizer(completions, add_special_tokens=False)["input_ids"]]
    return max(lengths) + 8


def _run_file_task(name: str, ctx: EvalContext) -> dict[str, Any]:
    examples = read_jsonl(task_files(ctx.data_dir, ctx.split)[name])[: ctx.limit or None]
    if not examples:
        raise EvalError(f"{ctx.task_dir / (name + '.jsonl')}: no examples")
    budget = ctx.max_new_tokens or default_max_new_tokens(ctx.tokenizer, examples)
    if ctx.samples > 1:
        return sampled_task_accuracy(
            ctx.model,
            ctx.tokenizer,
            ctx.kind,
            examples,
            samples=ctx.samples,
            max_new_tokens=budget,
            batch_size=ctx.batch_size,
            seed=ctx.seed,
            # Greedy actions would give n identical answers; random actions are a deliberate choice, so kept.
            action_mode="random" if ctx.action_mode == "random" else "sample",
            progress=ctx.progress,
        )
    return task_accuracy(
        ctx.model,
        ctx.tokenizer,
        ctx.kind,
        examples,
        max_new_tokens=budget,
        batch_size=ctx.batch_size,
        progress=ctx.progress,
        action_mode=ctx.action_mode,
        seed=ctx.seed,
    )


def heldout_lines(ctx: EvalContext) -> list[str]:
    """`<data_dir>/corpus/<split>.txt` if it exists, else the `text` of every example of the split's tasks."""
    corpus = Path(ctx.data_dir) / "corpus" / f"{ctx.split}.txt"
    if corpus.is_file():
        lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line]
    else:
        lines = [
            ex["text"] for path in task_files(ctx.data_dir, ctx.split).values() for ex in read_jsonl(path)
        ]
    if not lines:
        raise EvalError(f"no held-out text: neither {corpus} nor task files in {ctx.task_dir}")
    return lines[: ctx.limit or None]


def cut_prefixes(texts: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """`n` texts (seeded choice) cut at a random point of their middle half, as open prefixes.

    Diversity and action-following need prefixes whose continuation is open: after a task prompt's "A:", the
    answer format fixes the next tokens whatever the action, which would hide what the actions do.
    """
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(texts), generator=generator)[:n].tolist()
    cuts = torch.rand(len(picks), generator=generator).tolist()
    return [texts[i][: max(1, int(len(texts[i]) * (0.25 + 0.5 * c)))] for i, c in zip(picks, cuts, strict=True)]


def heldout_prefixes(ctx: EvalContext, n: int) -> list[str]:
    """`n` open prefixes of the split's held-out texts (see `cut_prefixes`)."""
    return cut_prefixes(heldout_lines(ctx), n, seed=ctx.seed)


def _run_perplexity(ctx: EvalContext) -> dict[str, Any]:
    return perplexity(
        ctx.model,
        ctx.tokenizer,
        ctx.kind,
        heldout_lines(ctx),
        **{k: ctx.options[k] for k in ("seq_len", "max_tokens") if k in ctx.options},
    )


def _run_diversity(ctx: EvalContext) -> dict[str, Any]:
    prefixes = heldout_prefixes(ctx, ctx.limit or 16)
    return semantic_diversity_eval(
        ctx.model,
        ctx.tokenizer,
        ctx.kind,
        prefixes,
        seed=ctx.seed,
        **{k: ctx.options[k] for k in ("m", "length") if k in ctx.options},
    )


def _run_probe(ctx: EvalContext) -> dict[str, Any]:
    return action_following_probe(
        ctx.model, ctx.tokenizer, heldout_prefixes(ctx, ctx.limit or 32), batch_size=ctx.batch_size
    )


# Named evaluations beyond the task files: a runner `fn(ctx) -> dict` under the task's name. The lm-eval-
# shaped tasks (math500, math500_local, cola_*) are added at the end of this module by `lm_tasks.register`.
RUNNERS: dict[str, Callable[[EvalContext], dict[str, Any]]] = {
    "perplexity": _run_perplexity,
    "diversity": _run_diversity,
    "probe": _run_probe,
}


# Runners that need latent actions: refused up front for a plain base, before any other task runs.
COLA_ONLY = frozenset({"probe"})

# Data checks of named runners (`fn(ctx)` raising a one-line EvalError: a missing file, a dataset not in the
# cache), run by `check_tasks`, so a run fails before the model loads and before any other task runs.
PRECHECKS: dict[str, Callable[[EvalContext], None]] = {}

# The runners that go through lm-eval (registered by `cola.eval.lm_tasks`): listed apart from the harness's
# own evaluations, in `all_tasks` and in the unknown-task message.
LM_EVAL_TASKS: list[str] = []


def check_tasks(names: Sequence[str], ctx: EvalContext) -> None:
    """Raise one EvalError for the first name `run_task` would refuse, so a run fails before any work."""
    known = known_tasks(ctx.data_dir, ctx.split)
    for name in names:
        if name not in known and name not in LM_EVAL_TASKS:
            missing = ctx.task_dir / f"{name}.jsonl"
            via = f"; through lm-eval: {', '.join(LM_EVAL_TASKS)}" if LM_EVAL_TASKS else ""
            raise EvalError(f"unknown task {name!r} (no {missing}); known: {', '.join(known)}{via}")
        if name in COLA_ONLY and ctx.kind != "cola":
            raise EvalError(f"{ctx.model_path}: task {name!r} needs a CoLA model (this is a plain base)")
        if name in PRECHECKS:
            PRECHECKS[name](ctx)


def known_tasks(data_dir: Path | str, split: str) -> list[str]:
    """The harness's own task names: the task files of the split, then the named evaluations (perplexity,
    diversity, probe). `run_task` also accepts the lm-eval tasks, `LM_EVAL_TASKS` (see `all_tasks`)."""
    return [*task_files(data_dir, split), *(name for name in RUNNERS if name not in LM_EVAL_TASKS)]


def all_tasks(data_dir: Path | str, split: str) -> list[str]:
    """Every name `run_task` accepts: `known_tasks`, then the lm-eval tasks."""
    return [*known_tasks(data_dir, split), *LM_EVAL_TASKS]


def run_task(name: str, ctx: EvalContext) -> dict[str, Any]:
    """Run one evaluation by name: a named runner in `RUNNERS`, or a task file of `ctx.split`."""
    check_tasks([name], ctx)
    if name in RUNNERS:
        return RUNNERS[name](ctx)
    return _run_file_task(name, ctx)


def headline_metrics(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The scalar numbers of a result, flattened with `/` (records, histograms and examples left out)."""
    flat: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(headline_metrics(value, name))
        elif isinstance(value, bool | int | float) and not isinstance(value, bool):
            flat[name] = value
    return flat


# lm-eval-shaped tasks (math500, math500_local, the cola_* tasks of evals/) register themselves in RUNNERS and
# PRECHECKS. Imported last: lm_tasks imports this module's names, which all exist by now. It imports neither
# torch-heavy lm-eval nor datasets until a task runs.
from cola.eval import lm_tasks  # noqa: E402

lm_tasks.register()
