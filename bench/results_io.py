"""Where a benchmark's result goes: JSON under bench/results/, with the machine it ran on."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def write_result(out: Path, payload: dict[str, Any]) -> None:
    """`payload` plus the machine (threads, platform, torch, load average: other processes on a 2-core VM
    skew absolute speeds, not the side-by-side ratios) as JSON at `out`."""
    machine = {"cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
               "platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
               "load_average": os.getloadavg()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, **payload}, indent=2) + "\n")
    print(f"wrote {out}")


def parse_bench_args(doc: str, name: str, quick_help: str) -> argparse.Namespace:
    """The options every benchmark takes (--quick, --threads, --out bench/results/<name>.json); sets the
    torch thread count."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=Path(f"bench/results/{name}.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args
