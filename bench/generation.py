"""Benchmark: CoLA latent-action decoding vs the same base's `generate`, both with KV caches, side by side.

For each base size and batch size it measures tokens/s of (a) `base.generate` (greedy) and (b) CoLA decoding
(policy-sampled action + greedy world-model token per step), in alternating repeats within one run, and
reports

    speed ratio  = CoLA tok/s / base tok/s
    FLOP ideal   = base FLOPs / (base + policy + merge) FLOPs per token (2 × matmul parameters each)
    efficiency   = speed ratio / FLOP ideal   (1.0 = no overhead beyond the added compute;
                                              target ≥ 0.9 at B=16)

Run: `python bench/generation.py [--quick] [--out bench/results/generation.json]`.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from flops import flop_ideal
from results_io import (  # bench/ is the script's directory, so first on sys.path
    parse_bench_args,
    write_result,
)
from shapes import SIZES
from transformers import AutoModelForCausalLM, LlamaConfig

from cola.config import load_stage_config
from cola.train.latent import cola_from_base

VOCAB = 1024
ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_size(name: str, batch: int, new_tokens: int, prompt_len: int, repeats: int) -> dict:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=1024, tie_word_embeddings=False,
                         pad_token_id=0, eos_token_id=1, bos_token_id=1, **SIZES[name])
    base = AutoModelForCausalLM.from_config(config).eval()
    cola = cola_from_base(base, load_stage_config("latent", ROOT / "params.yaml")[0].cola).eval()
    ideal, flops = flop_ideal(cola)
    ids = torch.randint(2, VOCAB, (batch, prompt_len), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)

    def run_base():
        with torch.no_grad():
            out = base.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        assert out.shape[1] == prompt_len + new_tokens

    def run_cola():
        out = cola.generate_latent(ids, mask, max_new_tokens=new_tokens, action_mode="sample",
                                   generator=torch.Generator().manual_seed(0))
        assert out.sequences.shape[1] == prompt_len + new_tokens

    run_base(), run_cola()  # warm-up
    base_times, cola_times = [], []
    for _ in range(repeats):  # alternate, so machine noise hits both alike
        base_times += timed(run_base, 1)
        cola_times += timed(run_cola, 1)
    tokens = batch * new_tokens
    base_tps = tokens / statistics.median(base_times)
    cola_tps = tokens / statistics.median(cola_times)
    ratio = cola_tps / base_tps
    return {"size": name, "batch": batch, "new_tokens": new_tokens, "base_tok_s": base_tps,
            "cola_tok_s": cola_tps, "speed_ratio": ratio, "flop_ideal": ideal, "efficiency": ratio / ideal,
            "matmul_params": flops, "repeats": repeats}


def main() -> None:
    args = parse_bench_args(__doc__, "generation", "fewer tokens and repeats (a smoke run)")
    new_tokens, repeats = (16, 2) if args.quick else (64, 5)
    rows = [bench_size(name, batch, new_tokens, prompt_len=16, repeats=repeats)
            for name in SIZES for batch in (1, 16)]
    header = (f"{'size':<12}{'batch':>6}{'base tok/s':>12}{'CoLA tok/s':>12}{'ratio':>8}{'ideal':>8}"
              f"{'eff.':>7}")
    print(header)
    for r in rows:
        print(f"{r['size']:<12}{r['batch']:>6}{r['base_tok_s']:>12.0f}{r['cola_tok_s']:>12.0f}"
              f"{r['speed_ratio']:>8.2f}{r['flop_ideal']:>8.2f}{r['efficiency']:>7.2f}")
    write_result(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
