"""Benchmark: one GRPO step, latent actions (CoLA) vs tokens, and our token GRPO vs TRL's `GRPOTrainer`.

All three run on the tiny default base (calibration.md §2: Llama d128, 4 layers, 4 heads / 2 KV, FFN 512,
vocab 1024, untied, random weights; `--size base-25M` for d512 × 6 layers) at equal work per step: P prompts ×
G samples × N new tokens (16 × 8 × 12 by default), prompts from the arith task encoded as `EOS prompt`, the
math reward, β = 1e-3, one PPO epoch.

* cola   -- `cola.rl.grpo.GRPOTrainer` with `LatentActionPolicy` (module sizes of params.yaml's
            `latent.cola`): actions sampled top-40, greedy world-model tokens, only the policy (0.50 M)
            trains; the update re-uses the rollout's base states, so it runs only the policy (twice:
            reference, then with grad).
* token  -- the same trainer with `TokenPolicy`: sampled tokens, the whole base (1.25 M) trains.
* trl    -- `trl.GRPOTrainer` (trl 1.16.0) on the same base weights and prompts (ecosystem-notes §8 CPU
            settings: bf16=False, beta>0 so it loads a reference model (from the saved folder),
            gradient_checkpointing=False, per_device_train_batch_size = P·G completions).

The EOS row of the LM head is zeroed in the shared base weights so no policy stops early (a random model would
otherwise end rows at different points): every method generates N tokens per row.

Time. The three run side by side in one process: TRL drives its own training loop, and a callback runs one
cola step and one token step (alternating which goes first) after each TRL optimizer step, so the machine's
drift hits all three alike. TRL's step time is measured from `on_step_begin` to `on_step_end` (generation,
rewards, reference and policy log-probs, backward, optimizer); its generation part is the time spent in
`_generate_single_turn`. Ours: `seconds_generation` (rollout) and `seconds_update` (everything after it).

Memory. Peak resident set size in a fresh subprocess per method: `VmHWM` of /proc/self/status, the counter
behind `getrusage(RUSAGE_SELF).ru_maxrss`. Setup (tokenizer training, models, reference, trainer) leaves a
high water mark far above what a tiny-model step needs, so after setup the free heap is handed back to the OS
(`malloc_trim`) and the mark is reset to the current RSS (`/proc/self/clear_refs` ← 5, Linux ≥ 4.0) after
one warm-up step (so lazily allocated kernel buffers and the optimizer state already exist); the reported
`step_peak_delta_mb` is the peak during the following steps minus the RSS at that reset: the transient
memory of a steady-state step (KV caches, activations, gradients). Not tracemalloc: it only sees the Python
heap, not torch's tensor memory. Where the reset is unavailable the delta falls back to plain `ru_maxrss`
before/after.

Run: `python bench/rl_step.py [--quick] [--no-trl] [--out bench/results/rl_step.json]`.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flops import matmul_params  # noqa: E402  (bench/ is the script's directory, so first on sys.path)
from shapes import SIZES  # noqa: E402  (bench/ is the script's directory, so first on sys.path)

from cola.base.tiny import tiny_llama_config  # noqa: E402
from cola.base.tokenizer import train_tokenizer  # noqa: E402
from cola.config import RLConfig, TinyBaseConfig, load_stage_config  # noqa: E402
from cola.rl.grpo import GRPOTrainer, build_policy  # noqa: E402
from cola.tasks import TASKS  # noqa: E402
from cola.train.latent import cola_from_base  # noqa: E402

METHODS = ("cola", "token", "trl")
DEFAULT_SIZE = "tiny-1.25M"


# ------------------------------------------------------------------------------------------------ setup


def corpus_and_prompts(n_prompts: int = 256) -> tuple[list[str], list[dict[str, Any]]]:
    """Tokenizer corpus and arith prompts: the pipeline's tasks when reasoning-gym is installed, else a
    stand-in."""
    try:
        from cola.tasks.procedural import make_examples

        lines = [e["text"] for t in ("arith", "wordprob", "countdown", "spell", "wrev")
                 for e in make_examples(t, 400, seed=0)]
        prompts = make_examples("arith", n_prompts, seed=1)
    except ImportError:  # same shapes without reasoning-gym: "Q: Calculate a + b. A: \boxed{c}"
        g = torch.Generator().manual_seed(0)
        pairs = torch.randint(0, 100, (max(2000, n_prompts), 2), generator=g).tolist()
        prompts = [{"prompt": f"Q: Calculate {a} + {b}. A:", "answer": str(a + b)} for a, b in pairs]
        words = [f"w{i} v{i * 7 % 997} u{i * 13 % 991}" for i in range(3000)]
        lines = [f"{p['prompt']} \\boxed{{{p['answer']}}}" for p in prompts] + words
        prompts = prompts[:n_prompts]
    return lines, prompts


def build(size: str = DEFAULT_SIZE, seed: int = 0):
    """Tokenizer, a random base of the given shape (EOS row of the head zeroed) and a CoLA model around a copy
    of it (CoLA module sizes of params.yaml, so the policy has the base's width)."""
    lines, prompts = corpus_and_prompts()
    tokenizer = train_tokenizer(lines, vocab_size=1024)
    torch.manual_seed(seed)
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(TinyBaseConfig(), tokenizer)
    config.update(SIZES[size])
    base = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        base.lm_head.weight[tokenizer.eos_token_id].zero_()  # logit 0: never the argmax, rarely sampled
    latent, _ = load_stage_config("latent", ROOT / "params.yaml")
    cola = cola_from_base(copy.deepcopy(base), latent.cola).eval()
    return tokenizer, base, cola, prompts


def our_trainer(method: str, model, tokenizer, prompts, args) -> GRPOTrainer:
    cfg = RLConfig(steps=10_000, prompts_per_step=args.prompts, group_size=args.group, lr=1e-4,
                   warmup_steps=0)
    return GRPOTrainer(build_policy(model, tokenizer, method, cfg), cfg, prompts, TASKS["arith"].reward,
                       max_new_tokens=args.new_tokens, seed=0)


def trl_trainer(base, tokenizer, prompts, args, workdir: Path, steps: int, callbacks=()):
    """TRL's GRPOTrainer on the same weights (loaded from a saved folder, which is also where its reference
    model comes from) with the CPU settings of ecosystem-notes §8."""
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer as TRLTrainer

    model_dir = workdir / "base"
    base.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    # "<eos>" in the text is the special token: the same `EOS prompt` ids our policies use.
    data = Dataset.from_list([{"prompt": tokenizer.eos_token + p["prompt"], "answer": p["answer"]}
                              for p in prompts])

    def accuracy(prompts, completions, answer, **kwargs) -> list[float]:
        return [TASKS["arith"].reward(c, {"answer": a}) for c, a in zip(completions, answer, strict=True)]

    config = TRLConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group, max_completion_length=args.new_tokens, learning_rate=1e-4,
        lr_scheduler_type="constant", beta=1e-3, temperature=1.0, num_iterations=1, bf16=False,
        gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=10_000, max_steps=steps, seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TRLTrainer(model=str(model_dir), reward_funcs=accuracy, args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=list(callbacks))


def time_generation(trainer) -> list[float]:
    """Wrap TRL's generation call on this trainer instance; returns the list it appends seconds to."""
    spent: list[float] = []
    inner = trainer._generate_single_turn

    def timed(*a, **k):
        start = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            spent.append(time.perf_counter() - start)

    trainer._generate_single_turn = timed
    return spent


# ------------------------------------------------------------------------------------------------ timing


def run_timing(args, tokenizer, base, cola, prompts) -> dict[str, list[dict[str, float]]]:
    """Alternate cola / token (/ trl) steps in one process; per-step seconds, warm-up steps dropped."""
    ours = {"cola": our_trainer("cola", cola, tokenizer, prompts, args),
            "token": our_trainer("token", copy.deepcopy(base), tokenizer, prompts, args)}
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    total = args.warmup + args.repeats

    def ours_once(index: int) -> None:
        order = ("cola", "token") if index % 2 == 0 else ("token", "cola")
        for method in order:
            stats = ours[method].advance()
            if index >= args.warmup:
                rows[method].append({k: stats[k] for k in (
                    "seconds_per_step", "seconds_generation", "seconds_update", "seconds_reward",
                    "seconds_reference", "response_length")})

    if args.no_trl:
        for i in range(total):
            ours_once(i)
        return rows

    from transformers import TrainerCallback

    class Interleave(TrainerCallback):
        def __init__(self) -> None:
            self.start, self.index = 0.0, 0

        def on_step_begin(self, *a, **k):
            generation.clear()
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            seconds = time.perf_counter() - self.start
            if self.index >= args.warmup:
                rows["trl"].append({"seconds_per_step": seconds, "seconds_generation": sum(generation),
                                    "seconds_update": seconds - sum(generation)})
            ours_once(self.index)
            self.index += 1

    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(base, tokenizer, prompts, args, Path(tmp), total, callbacks=[Interleave()])
        generation = time_generation(trainer)
        trainer.train()
    return rows


# ------------------------------------------------------------------------------------------------ memory


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _peak_mb() -> float:
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB


def _reset_peak() -> float:
    """Return freed heap to the OS and reset the high-water mark to the current RSS; returns that RSS
    (MiB)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mb("VmRSS") or _peak_mb()
    except OSError:
        return _peak_mb()  # no reset possible: the delta is then against the setup's peak


def run_memory(method: str, args) -> dict[str, float]:
    """In this (fresh) process: peak RSS before the first step and after `steps` steps of one method."""
    tokenizer, base, cola, prompts = build(args.size)
    steps = args.memory_steps
    if method in ("cola", "token"):
        trainer = our_trainer(method, cola if method == "cola" else base, tokenizer, prompts, args)
        trainer.advance()  # warm-up: lazy kernel buffers and the optimizer state exist before the reset
        before = _reset_peak()
        for _ in range(steps):
            trainer.advance()
    else:
        from transformers import TrainerCallback

        marks: dict[str, float] = {}

        class Mark(TrainerCallback):
            def on_step_end(self, args, state, control, **k):
                if state.global_step == 1:  # after the warm-up step, as for ours
                    marks["before"] = _reset_peak()

        with tempfile.TemporaryDirectory() as tmp:
            trainer = trl_trainer(base, tokenizer, prompts, args, Path(tmp), steps + 1, callbacks=[Mark()])
            trainer.train()
        before = marks["before"]
    after = _peak_mb()
    return {"peak_rss_mb": after, "rss_before_steps_mb": before, "step_peak_delta_mb": after - before}


def memory_in_subprocess(method: str, args) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--memory-only", method, "--size", args.size,
           "--threads", str(args.threads), "--prompts", str(args.prompts), "--group", str(args.group),
           "--new-tokens", str(args.new_tokens), "--memory-steps", str(args.memory_steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ report


def flop_reference(base: torch.nn.Module, cola: torch.nn.Module) -> dict[str, float]:
    """Per-position matmul parameters of what each update runs: the policy (stack + head) vs the whole base.

    Their ratio is the update-time ratio a FLOP-bound implementation would reach (both score the same
    positions; the LM head runs only at the N response positions, so the true ratio sits a little above).
    """
    policy = matmul_params(cola.policy) + cola.policy_head.weight.numel()
    decoder = matmul_params(base.model)
    head = base.lm_head.weight.numel()
    return {"policy": policy, "base_decoder": decoder, "base_lm_head": head,
            "flop_ideal_update_ratio": policy / (decoder + head)}


def summarise(rows: dict[str, list[dict[str, float]]], memory: dict[str, dict[str, float]]) -> dict[str, Any]:
    table: dict[str, dict[str, float]] = {}
    for method, steps in rows.items():
        if not steps:
            continue
        table[method] = {f"median_{k}": statistics.median(s[k] for s in steps) for k in steps[0]}
        table[method]["repeats"] = len(steps)
        table[method].update(memory.get(method, {}))
    ratios: dict[str, float] = {}
    if "cola" in table and "token" in table:
        c, t = table["cola"], table["token"]
        ratios["latent_update_over_token_update"] = c["median_seconds_update"] / t["median_seconds_update"]
        ratios["latent_step_over_token_step"] = c["median_seconds_per_step"] / t["median_seconds_per_step"]
        ratios["latent_generation_over_token_generation"] = (c["median_seconds_generation"]
                                                             / t["median_seconds_generation"])
    if "token" in table and "trl" in table:
        ratios["token_step_over_trl_step"] = (table["token"]["median_seconds_per_step"]
                                              / table["trl"]["median_seconds_per_step"])
    return {"methods": table, "ratios": ratios}


def print_table(result: dict[str, Any]) -> None:
    setup = result["setup"]
    print(f"\nGRPO step, {setup['size']} base, {setup['prompts']} prompts × G={setup['group']} × "
          f"{setup['new_tokens']} tokens, {setup['threads']} threads (median seconds)")
    head = f"{'method':<7}{'step':>9}{'generate':>10}{'update':>9}{'ref':>8}{'reward':>8}{'peak RSS':>10}" \
           f"{'Δpeak':>9}"
    print(head + "\n" + "-" * len(head))
    for method, r in result["methods"].items():
        ref = r.get("median_seconds_reference")
        rew = r.get("median_seconds_reward")
        print(f"{method:<7}{r['median_seconds_per_step']:>9.3f}{r['median_seconds_generation']:>10.3f}"
              f"{r['median_seconds_update']:>9.3f}{'' if ref is None else f'{ref:.3f}':>8}"
              f"{'' if rew is None else f'{rew:.3f}':>8}"
              f"{r.get('peak_rss_mb', float('nan')):>8.0f}MB"
              f"{r.get('step_peak_delta_mb', float('nan')):>7.1f}MB")
    targets = {"latent_update_over_token_update": 0.25, "token_step_over_trl_step": 0.7}
    flops = result["matmul_params"]
    print(f"{'FLOP-ideal latent/token update':<42}{flops['flop_ideal_update_ratio']:6.3f}  (policy "
          f"{flops['policy'] / 1e6:.2f}M vs base "
          f"{(flops['base_decoder'] + flops['base_lm_head']) / 1e6:.2f}M "
          "matmul params per position)")
    for name, value in result["ratios"].items():
        goal = f"  (target ≤ {targets[name]}: {'met' if value <= targets[name] else 'NOT met'})" \
            if name in targets else ""
        print(f"{name:<42}{value:6.3f}{goal}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default=DEFAULT_SIZE,
                        help="base shape (bench/shapes.py); the policy is params.yaml's "
                             "`latent.cola` at its width")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the 1.25M base prefers 2)")
    parser.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up (a smoke run)")
    parser.add_argument("--no-trl", action="store_true", help="skip TRL (e.g. when trl is not installed)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--memory-only", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="JSON result (default bench/results/rl_step.json, or "
                        "rl_step-<size>.json for a non-default --size)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.warmup = 3, 1
    if args.out is None:
        suffix = "" if args.size == DEFAULT_SIZE else f"-{args.size}"
        args.out = ROOT / f"bench/results/rl_step{suffix}.json"

    if args.memory_only:
        print(json.dumps(run_memory(args.memory_only, args)))
        return

    methods = [m for m in METHODS if not (m == "trl" and args.no_trl)]
    load_at_start = os.getloadavg()  # other processes on this 2-core machine skew absolute times
    tokenizer, base, cola, prompts = build(args.size)
    matmul = flop_reference(base, cola)  # parameter counts: read before training touches the models
    rows = run_timing(args, tokenizer, base, cola, prompts)
    memory = {} if args.no_memory else {m: memory_in_subprocess(m, args) for m in methods}
    result = {
        "machine": {"cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "trl": None if args.no_trl else importlib.metadata.version("trl"),
                    "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()},
        "setup": {"size": args.size, "prompts": args.prompts, "group": args.group,
                  "new_tokens": args.new_tokens, "threads": args.threads, "repeats": args.repeats,
                  "warmup": args.warmup,
                  "memory": "VmHWM (= ru_maxrss) peak during the steps minus VmRSS after setup + 1 warm-up "
                            "step, mark reset there (malloc_trim + /proc/self/clear_refs); fresh subprocess "
                            "per method"},
        **summarise(rows, memory),
        "matmul_params": matmul,
        "raw": rows,
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
