"""bench/gpu_check.py, the script a lent GPU runs once: its CPU smoke run (`--quick`) completes every part and
imports nothing beyond torch, transformers, accelerate, safetensors and this checkout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_ON_A_GPU_MACHINE = {"mlflow", "dvc", "lm_eval", "datasets", "reasoning_gym", "typer", "math_verify"}


def test_the_gpu_check_runs_every_part_with_only_the_training_stack(tmp_path) -> None:
    out = tmp_path / "gpu_check.json"
    code = (
        "import atexit, runpy, sys\n"
        f"atexit.register(lambda: print('IMPORTED', sorted({{m.split('.')[0] for m in sys.modules}} & "
        f"set({sorted(NOT_ON_A_GPU_MACHINE)!r}))))\n"
        f"sys.argv = ['gpu_check.py', '--quick', '--profile', '--out', {str(out)!r}]\n"
        f"runpy.run_path({str(REPO / 'bench' / 'gpu_check.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "IMPORTED []" in done.stdout
    result = json.loads(out.read_text())
    assert [(row["path"], row["batch"]) for row in result["decode"]] == [
        ("eager", 1), ("eager", 4), ("static", 1), ("static", 4)]
    assert all(row["base_tok_s"] > 0 and 0 < row["flop_ideal"] < 1 for row in result["decode"])
    assert [row["tokens_per_second"] > 0 for row in result["latent_training"]] == [True]
    assert set(result["grpo"]) == {"cola", "token"}
    profiles = sorted(p.name for p in tmp_path.glob("gpu_check.*.txt"))  # --profile: the busiest operations
    assert profiles == ["gpu_check.grpo_cola.txt", "gpu_check.grpo_token.txt", "gpu_check.latent_4.txt"]
    assert all("aten::mm" in (tmp_path / name).read_text() for name in profiles)
