"""Benchmark: MCTS-Q's throughput against plain latent decoding of the same model, side by side.

For each base size it runs (a) plain greedy CoLA decoding of one prompt (batch 1, KV caches) and (b) MCTS-Q on
the same prompt (`cola.search.mcts.Search`: the policy's top actions, world-model tokens, chunking, greedy
rollouts, a Q-network the size of the base), in alternating repeats, and reports

    decode tok/s   = tokens / s of plain decoding
    search pass/s  = model forward passes / s inside the search (one per decoded token, per state, per
                     world-model call; the Q-network's passes are extra work and are not counted as passes)
    ratio          = search pass/s / decode tok/s     (target ≥ 0.7: the search's bookkeeping, cache copies
                                                       and Q-network cost at most 30 % of decoding speed)
    nodes/s, Q passes per node

Also once, uncached: the same search recomputing every node's prefix (`use_cache=False`), to show what the
KV-cache reuse buys.

Run: `python bench/search.py [--quick] [--out bench/results/search.json]`.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from results_io import (  # bench/ is the script's directory, so first on sys.path
    parse_bench_args,
    write_result,
)
from shapes import SIZES
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from cola.config import SearchConfig, load_stage_config
from cola.search.mcts import Search, action_space
from cola.search.qnetwork import QNetwork
from cola.train.latent import cola_from_base

VOCAB = 1024
ROOT = Path(__file__).resolve().parents[1]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """w0 … w1023 as whole words (w0 pad, w1 EOS), so any id sequence round-trips through text."""
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w2"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", eos_token="w1", unk_token="w2",
                                   padding_side="left")


def bench_size(name: str, cfg: SearchConfig, prompt_len: int, repeats: int) -> dict:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=2048, tie_word_embeddings=False,
                         pad_token_id=0, eos_token_id=1, bos_token_id=1, **SIZES[name])
    base = AutoModelForCausalLM.from_config(config).eval()
    cola = cola_from_base(base, load_stage_config("latent", ROOT / "params.yaml")[0].cola).eval()
    qnet = QNetwork.from_base(base, cola.config.num_actions).eval()
    torch.nn.init.normal_(qnet.q_head.weight, std=0.02, generator=torch.Generator().manual_seed(1))
    tokenizer = word_tokenizer()
    ids = torch.randint(2, VOCAB, (prompt_len,), generator=torch.Generator().manual_seed(2)).tolist()
    prompt = " ".join(f"w{i}" for i in ids)
    # encode_prompts puts EOS in front as a BOS: the plain decode gets the same ids
    prompt_ids = torch.tensor([[tokenizer.eos_token_id, *ids]])

    def plain() -> tuple[float, int]:
        start = time.perf_counter()
        out = cola.generate_latent(prompt_ids, max_new_tokens=cfg.rollout_tokens, action_mode="greedy")
        return time.perf_counter() - start, int(out.response_mask.sum())

    def search(use_cache: bool = True):
        return Search(action_space(cola, tokenizer, "cola", use_cache), tokenizer, qnet, cfg).run(prompt)

    plain(), search()  # warm-up
    decode_tps, pass_rates, node_rates, q_per_node, result = [], [], [], [], None
    for _ in range(repeats):  # alternate, so machine noise hits both alike
        seconds, tokens = plain()
        decode_tps.append(tokens / seconds)
        result = search()
        pass_rates.append(result.model_passes / result.seconds)
        node_rates.append(result.nodes / result.seconds)
        q_per_node.append(result.q_passes / result.nodes)
    uncached = search(use_cache=False)
    decode, passes = statistics.median(decode_tps), statistics.median(pass_rates)
    return {"size": name, "decode_tok_s": decode, "search_pass_s": passes, "ratio": passes / decode,
            "nodes_s": statistics.median(node_rates), "q_passes_per_node": statistics.median(q_per_node),
            "passes_per_search": result.model_passes, "nodes_per_search": result.nodes,
            "uncached_pass_s": uncached.model_passes / uncached.seconds, "repeats": repeats}


def main() -> None:
    args = parse_bench_args(__doc__, "search", "a smaller search and fewer repeats")
    cfg = (SearchConfig(rounds=4, rollout_tokens=16, chunk_tokens=4, max_depth=16) if args.quick
           else SearchConfig(rounds=16, rollout_tokens=64, chunk_tokens=16, max_depth=64))
    repeats = 2 if args.quick else 5
    rows = [bench_size(name, cfg, prompt_len=16, repeats=repeats) for name in SIZES]
    print(f"{'size':<12}{'decode tok/s':>14}{'search pass/s':>15}{'ratio':>7}{'nodes/s':>9}{'Q/node':>8}"
          f"{'uncached pass/s':>17}")
    for r in rows:
        print(f"{r['size']:<12}{r['decode_tok_s']:>14.0f}{r['search_pass_s']:>15.0f}{r['ratio']:>7.2f}"
              f"{r['nodes_s']:>9.1f}{r['q_passes_per_node']:>8.2f}{r['uncached_pass_s']:>17.0f}")
    write_result(args.out, {"search": vars(cfg), "rows": rows})


if __name__ == "__main__":
    main()
