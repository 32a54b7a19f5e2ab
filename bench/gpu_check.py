"""One GPU check of a few minutes: CoLA decoding, latent pretraining, one GRPO step of each action space.

Runs from a checkout with `python bench/gpu_check.py` on whatever torch / transformers / accelerate /
safetensors the machine has (no install of this package, no DVC, MLflow or hub access): the base is a randomly
initialised Llama of about 0.5B parameters made from a config, wrapped in CoLA modules of the paper's
proportions. It prints a table and writes JSON (bench/results/gpu_check.json); a part that fails records its
error and the others still run:

- decode tokens/s, CoLA latent decoding vs the base's own `generate` (greedy, KV caches) in bf16, at batch 1
  and 64, first eager on dynamic caches, then both on static caches with a compiled step (the fast path), with
  the speed ratio, the FLOP ideal (base / (base + policy + merge) matmul FLOPs per token) and the efficiency
  (ratio / ideal; target ≥ 0.9 at batch 64);
- latent-pretraining tokens/s in bf16 through the training core (8 and 32 windows a step), and its model FLOP
  utilisation: model FLOPs per token (2 × frozen base parameters for the forward without gradient, 6 × trained
  parameters, 4 × the LM head the world model back-propagates through; attention's own FLOPs left out) ×
  tokens/s over the GPU's peak dense bf16 FLOP/s (`--peak-tflops`, known for H100/H200/A100; target ≥ 35 %);
- the seconds of one GRPO step for CoLA (latent actions, policy update) and for the token baseline (whole LM).

`--quick` shrinks everything for a CPU smoke run (tests/test_gpu_check.py runs it; the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]  # the bench helpers and this checkout's cola, not installed

from flops import flop_ideal, matmul_params  # noqa: E402  (bench/ is first on sys.path)
from results_io import write_result  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast  # noqa: E402

#: Peak dense bf16 FLOP/s by device name (vendor data sheets, without sparsity).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
FULL = dict(vocab=32000, hidden_size=1536, intermediate_size=4096, layers=18, heads=16, kv_heads=4,
            idm_layers=2, policy_layers=4, prompt=64, new_tokens=128, batches=(1, 64), repeats=3,
            train_batches=(8, 32), seq_len=1024, train_steps=10, prompts=16, group=8)
QUICK = dict(vocab=512, hidden_size=64, intermediate_size=128, layers=2, heads=4, kv_heads=2,
             idm_layers=1, policy_layers=1, prompt=8, new_tokens=8, batches=(1, 4), repeats=1,
             train_batches=(4,), seq_len=32, train_steps=2, prompts=2, group=2)


def word_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over w0 … w{vocab-1} (w0 pads, w1 ends): prompts and completions as text."""
    words = {f"w{i}": i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="w2"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", eos_token="w1", bos_token="w1",
                                   padding_side="left")


def build(shape: dict, device: torch.device):
    from cola.model import CoLAForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden_size"],
                         intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["layers"],
                         num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                         max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=0,
                         eos_token_id=1, bos_token_id=1)
    base = AutoModelForCausalLM.from_config(config)
    cola = CoLAForCausalLM.from_base(base, num_actions=64, n_idm_layers=shape["idm_layers"],
                                     n_policy_layers=shape["policy_layers"], n_merge_blocks=2,
                                     output_head="paper")
    return cola.to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def decode(cola, shape: dict, batch: int, device: torch.device, fast: bool) -> dict:
    """Base `generate` vs CoLA decoding at one batch size, alternating repeats. `fast`: both on static KV
    caches with the decode step compiled (the base: `generate(cache_implementation="static")`, which compiles
    its forward on a GPU; CoLA: `generate_latent(fast_path=True)`); otherwise both eager on dynamic caches."""
    base, n = cola.base, shape["new_tokens"]
    seeded = torch.Generator().manual_seed(1)
    ids = torch.randint(2, shape["vocab"], (batch, shape["prompt"]), generator=seeded).to(device)
    mask = torch.ones_like(ids)
    static = {"cache_implementation": "static"} if fast else {}

    @torch.no_grad()
    def run_base():
        out = base.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                            do_sample=False, pad_token_id=0, **static)
        assert out.shape[1] == shape["prompt"] + n

    def run_cola():
        out = cola.generate_latent(ids, mask, max_new_tokens=n, action_mode="sample", fast_path=fast,
                                   generator=torch.Generator().manual_seed(0))
        assert out.sequences.shape[1] == shape["prompt"] + n

    warm = {"base_first_call_s": timed(run_base, device), "cola_first_call_s": timed(run_cola, device)}
    base_s, cola_s = [], []
    for _ in range(shape["repeats"]):
        base_s.append(timed(run_base, device))
        cola_s.append(timed(run_cola, device))
    ideal, params = flop_ideal(cola)
    base_tps, cola_tps = batch * n / statistics.median(base_s), batch * n / statistics.median(cola_s)
    ratio = cola_tps / base_tps
    path = ("static+compiled" if device.type == "cuda" else "static") if fast else "eager"
    return {"batch": batch, "path": path, "dtype": str(cola.dtype),
            "base_tok_s": base_tps, "cola_tok_s": cola_tps, "speed_ratio": ratio, "flop_ideal": ideal,
            "efficiency": ratio / ideal, "matmul_params": params, **warm}


def decode_all(cola, shape: dict, device: torch.device, fast: bool) -> list[dict]:
    """Every batch size on one path, on a bf16 copy on a GPU (the precision RL decodes in)."""
    import copy

    model = copy.deepcopy(cola).to(torch.bfloat16) if device.type == "cuda" else cola
    rows = []
    for batch in shape["batches"]:
        row = attempt(f"decode batch {batch} fast={fast}",
                      lambda b=batch: decode(model, shape, b, device, fast))
        rows.append(row)
        if "error" not in row:
            print(f"{row['path']:>16}{row['batch']:>6}{row['base_tok_s']:>12.0f}{row['cola_tok_s']:>12.0f}"
                  f"{row['speed_ratio']:>8.2f}{row['flop_ideal']:>8.2f}{row['efficiency']:>7.2f}"
                  f"{row['cola_first_call_s']:>9.1f}")
    return rows


def latent_training(cola, shape: dict, batch: int, device: torch.device, peak: float | None,
                    profile_to: Path | None = None) -> dict:
    """Latent pretraining steps of `batch` windows in bf16 (CPU: fp32) through the training core; tokens/s
    and MFU; with `profile_to`, one more step runs under the profiler (`<profile_to>.latent_<batch>.txt`)."""
    from cola.config import LatentConfig
    from cola.train.core import BatchTrainer
    from cola.train.losses import latent_pretraining_loss

    cola.set_stage("latent")
    steps = shape["train_steps"]
    cfg = LatentConfig(steps=steps + 2, batch_size=batch, seq_len=shape["seq_len"], lr=1e-4,
                       warmup_steps=1, log_every=steps + 2, checkpoint_every=10**6, threads=1)
    tokens = torch.randint(2, shape["vocab"], (200_000,), generator=torch.Generator().manual_seed(2))

    class Windows:
        generator = torch.Generator().manual_seed(3)

        def __next__(self):
            starts = torch.randint(0, tokens.numel() - cfg.seq_len, (cfg.batch_size,),
                                   generator=self.generator)
            return torch.stack([tokens[s : s + cfg.seq_len] for s in starts.tolist()])

    def loss(batch, noise):
        return latent_pretraining_loss(cola, batch, generator=noise)

    trainer = BatchTrainer(cola, loss, Windows(), cfg, description="latent (bench)")
    trainer.advance(), trainer.advance()  # warm-up
    seconds = timed(lambda: [trainer.advance() for _ in range(steps)], device)
    if profile_to is not None:
        with profiled(True) as profiler:
            trainer.advance()
        write_profile(profiler, profile_to.with_suffix(f".latent_{batch}.txt"))
    tps = steps * cfg.batch_size * cfg.seq_len / seconds
    trained = sum(p.numel() for p in cola.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in cola.base.parameters())
    head = matmul_params(cola.base.lm_head)
    flops_per_token = 2 * frozen + 6 * trained + 4 * head
    cola.set_stage("frozen")
    return {"batch": batch, "seq_len": cfg.seq_len, "tokens_per_second": tps,
            "flops_per_token": flops_per_token, "trained_params": trained,
            "mfu": flops_per_token * tps / (peak * 1e12) if peak else None,
            "precision": os.environ.get("ACCELERATE_MIXED_PRECISION", "no")}


def grpo_steps(cola, shape: dict, tokenizer, profile_to: Path | None = None) -> dict:
    """Seconds of one GRPO step (after one warm-up step) for each action space, on a length reward; with
    `profile_to`, the timed step runs under torch's profiler and its busiest operations (self CPU time, self
    device time) go to `<profile_to>.grpo_<method>.txt`."""
    import copy

    from cola.config import RLConfig
    from cola.rl.grpo import GRPOTrainer, build_policy

    prompts = [{"prompt": " ".join(f"w{3 + (i * k) % 500}" for i in range(shape["prompt"]))}
               for k in range(4 * shape["prompts"])]
    out = {}
    # From copies on the CPU, as a stage loads its model: the trainer moves it (and its frozen reference).
    for method, model in (("cola", copy.deepcopy(cola).cpu()), ("token", copy.deepcopy(cola.base).cpu())):
        cfg = RLConfig(steps=3, prompts_per_step=shape["prompts"], group_size=shape["group"], lr=1e-6,
                       warmup_steps=0, log_every=3, checkpoint_every=10**6, threads=1)
        trainer = GRPOTrainer(build_policy(model, tokenizer, method, cfg), cfg, prompts,
                              lambda completion, _ex: len(completion.split()) / 100,
                              max_new_tokens=shape["new_tokens"], seed=0)
        trainer.advance()
        profiler = profiled(profile_to is not None)
        with profiler:
            metrics = trainer.advance()
        if profile_to is not None:
            write_profile(profiler, profile_to.with_suffix(f".grpo_{method}.txt"))
        kept = ("seconds_per_step", "seconds_generation", "seconds_update", "seconds_reward",
                "seconds_reference", "response_length")
        out[method] = {k: metrics[k] for k in kept}
        del trainer
    return out


def profiled(active: bool):
    """torch's profiler over CPU and (when there is one) CUDA activity, or a do-nothing context."""
    import contextlib

    from torch.profiler import ProfilerActivity, profile

    if not active:
        return contextlib.nullcontext()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    return profile(activities=activities, record_shapes=False)


def write_profile(profiler, path: Path) -> None:
    """The 30 operations with the most self CPU time, then (on a GPU) the 30 with the most device time."""
    table = profiler.key_averages()
    parts = [table.table(sort_by="self_cpu_time_total", row_limit=30)]
    if torch.cuda.is_available():
        parts.append(table.table(sort_by="self_device_time_total", row_limit=30))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(parts))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a CPU smoke run")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of the GPU")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    parser.add_argument("--parts", default="decode,latent,fast,grpo",
                        help="comma-separated parts to run: decode (eager), latent, fast (decode), grpo")
    parser.add_argument("--profile", action="store_true",
                        help="profile the timed GRPO steps (tables beside --out)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    shape = QUICK if args.quick else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    if device.type == "cuda":  # the training core's Accelerator reads it
        os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "bf16")
        torch.backends.cuda.matmul.allow_tf32 = True
    cola = build(shape, device)
    size = {"base_params": sum(p.numel() for p in cola.base.parameters()),
            "cola_params": sum(p.numel() for p in cola.parameters())}
    print(f"device {name}; base {size['base_params'] / 1e9:.3f}B, CoLA {size['cola_params'] / 1e9:.3f}B "
          f"parameters; torch {torch.__version__}")
    start = time.perf_counter()
    result: dict = {"device": name, "peak_tflops": peak, "quick": args.quick, **size}
    print(f"{'decode':>16}{'batch':>6}{'base tok/s':>12}{'CoLA tok/s':>12}{'ratio':>8}{'ideal':>8}{'eff.':>7}"
          f"{'1st s':>9}")
    result["decode"], result["latent_training"] = [], []
    profile_to = args.out if args.profile else None
    if "decode" in parts:
        result["decode"] += decode_all(cola, shape, device, fast=False)
        write_result(args.out, result)  # after every part: a run cut short keeps what it measured
    for batch in shape["train_batches"] if "latent" in parts else ():
        train = attempt(f"latent batch {batch}",
                        lambda b=batch: latent_training(cola, shape, b, device, peak, profile_to))
        result["latent_training"].append(train)
        if "error" not in train:
            mfu = (f"{100 * train['mfu']:.1f} %" if train["mfu"] is not None
                   else "unknown peak (--peak-tflops)")
            print(f"latent pretraining, {batch} x {train['seq_len']} tokens a step: "
                  f"{train['tokens_per_second']:.0f} tok/s ({train['precision']}), MFU {mfu}")
        write_result(args.out, result)
    if "fast" in parts:
        result["decode"] += decode_all(cola, shape, device, fast=True)  # compiles: after the quick parts
        write_result(args.out, result)
    if "grpo" in parts:
        result["grpo"] = attempt("grpo", lambda: grpo_steps(cola, shape, word_tokenizer(shape["vocab"]),
                                                            profile_to))
    for method, g in (result["grpo"].items() if "error" not in result.get("grpo", {"error": 0}) else []):
        print(f"GRPO step, {method}: {g['seconds_per_step']:.2f} s "
              f"(generation {g['seconds_generation']:.2f} s, "
              f"update {g['seconds_update']:.2f} s of which reference {g['seconds_reference']:.2f} s, "
              f"{g['response_length']:.0f} tokens a response)")
    result["seconds"] = time.perf_counter() - start
    write_result(args.out, result)
    measured = [*result["decode"], *result["latent_training"], result.get("grpo", {})]
    if any("error" in part for part in measured):
        sys.exit(1)


def attempt(what: str, fn):
    """`fn()`, or ``{"error": ...}`` with the traceback printed: one failing part must not lose the others'
    figures from a rare, timed GPU run."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - reported and recorded, the run goes on
        traceback.print_exc()
        print(f"{what}: FAILED ({type(exc).__name__}: {exc})")
        return {"error": f"{type(exc).__name__}: {exc}"}

if __name__ == "__main__":
    main()
