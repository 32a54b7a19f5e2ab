"""Hostile and broken inputs: each is one clear line naming the file or key, a non-zero exit, and no damage.

Params (caught by the validation every stage runs before any work: tests/test_architecture.py shows it comes
first), data rows, checkpoints and model folders, failed writes, and secrets in the environment.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from cola.config import ParamsError, load_pipeline_params
from cola.config.profiles import merged_profile
from cola.io import InputError, WriteError, atomic_write_text, read_jsonl, read_text_lines
from cola.model.checkpoint import CheckpointError, load_causal_lm, load_model_and_tokenizer, save_hf_folder
from cola.train.sft_data import load_task_examples
from tests.conftest import tiny_base_config, tiny_cola
from tests.test_harness import build_assets

REPO = Path(__file__).resolve().parents[1]


def smoke() -> dict:
    return merged_profile("smoke", REPO / "configs" / "profiles")


def with_value(params: dict, key: str, value) -> dict:
    """A copy of `params` with the dotted `key` set to `value` (a new key is added where it is unknown)."""
    out = copy.deepcopy(params)
    *path, last = key.split(".")
    node = out
    for part in path:
        node = node[part]
    node[last] = value
    return out


# (dotted key, value, what the one-line error must say)
BAD_PARAMS = [
    ("rll", {"lr": 1e-4}, "rll is not a known key"),
    ("latent.lrr", 0.1, "latent.lrr is not a known key (known: threads"),
    ("latent.steps", "many", "latent.steps must be an integer (got 'many')"),
    ("base.steps", True, "base.steps must be an integer (got True, a bool)"),
    ("latent.lr", -0.001, "latent.lr must be > 0 (got -0.001)"),
    ("rl.lr", 0, "rl.lr must be > 0 (got 0.0)"),
    ("bc.beta1", 1.5, "bc.beta1 must be <= 1 (got 1.5)"),
    ("sft.min_lr_ratio", 2, "sft.min_lr_ratio must be <= 1"),
    ("fta.grad_clip", -1, "fta.grad_clip must be >= 0"),
    ("rl.group_size", 1, "rl.group_size must be >= 2 (got 1)"),
    ("rl.advantage_mode", "group", "kl_in='reward' needs advantage_mode='gae'"),
    ("rl.warmup_steps", 50, "warmup_steps (50) must not exceed"),
    ("rl.seeds", [], "seeds must list at least one seed"),
    ("rl.seeds", [1, 1], "seeds must be distinct"),
    ("rl.kl_estimator", "k4", "rl.kl_estimator must be one of 'k1', 'k2', 'k3' (got 'k4')"),
    ("rl.tasks.countdown.max_new_tokens", 0, "rl.tasks.countdown.max_new_tokens must be >= 1"),
    ("rl.tasks.algebra", {"steps": 3}, "rl.tasks.algebra is not a known key"),
    ("fta.variant", "fta_x", "fta.variant must be one of 'fta_p', 'fta_i' (got 'fta_x')"),
    ("sft.tasks", ["arith", "algebra"], "sft.tasks[1] must be one of 'arith'"),
    ("sft.tasks", [], "tasks must name at least one task"),
    ("sft.seq_len", 2, "seq_len must be >= 3"),
    ("evaluate.tasks", ["bogus"], "evaluate.tasks[0] must be one of"),
    ("evaluate.batch_size", 0, "evaluate.batch_size must be >= 1"),
    ("rl_eval.diversity_tasks", ["spell2"], "rl_eval.diversity_tasks[0] must be one of"),
    ("report.retention_tasks", ["x"], "report.retention_tasks[0] must be one of"),
    ("report.seed_spread", "iqr", "report.seed_spread must be one of 'sd', 'se', 'range'"),
    ("prepare.n_train", {"algebra": 10}, "n_train names unknown tasks ['algebra']"),
    ("prepare.n_train.arith", -5, "prepare.n_train.arith must be >= 0 (got -5)"),
    ("prepare.test_fraction", 1.5, "prepare.test_fraction must be <= 1"),
    ("prepare.val_fraction", 0.95, "test_fraction + val_fraction must leave a train share"),
    ("base.source", "gguf", "base.source must be one of 'tiny', 'smollm2', 'hf' (got 'gguf')"),
    ("base.tiny.num_heads", 3, "hidden_size (32) must be a multiple of num_heads (3)"),
    ("latent.cola.output_head", "x", "latent.cola.output_head must be one of 'paper', 'residual'"),
    ("latent.cola.num_actions", 1, "latent.cola.num_actions must be >= 2 (got 1)"),
    ("latent.cola.merge_intermediate_size", -1, "latent.cola.merge_intermediate_size must be >= 0"),
    ("profile", "huge", "profile must be one of 'tiny', 'smoke'"),
    ("rl.n_prompts", -1, "rl.n_prompts must be >= 0"),
    ("latent", 5, "latent must be a mapping"),
    ("launch.num_processes", 3, "base.batch_size 8 does not split over launch.num_processes 3: make it"),
    ("launch.machine_rank", 1, "machine_rank 1 must be below num_machines 1"),
]


@pytest.mark.parametrize(
    ("key", "value", "message"), BAD_PARAMS, ids=[f"{k}={v!r}" for k, v, _ in BAD_PARAMS]
)
def test_bad_params_are_one_line_naming_the_key(tmp_path, key, value, message):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(with_value(smoke(), key, value), sort_keys=False))
    with pytest.raises(ParamsError) as info:
        load_pipeline_params(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    assert message in text, text


def test_bad_params_beyond_values(tmp_path):
    missing_base = with_value(
        with_value(smoke(), "base.source", "hf"), "base.hf_path", str(tmp_path / "gone")
    )
    cases = {
        "a local base folder that is not there": (yaml.safe_dump(missing_base), "hf_path"),
        "invalid YAML": ("latent:\n  lr: [0.1\n", "invalid YAML at line"),
        "not a mapping": ("- 1\n- 2\n", "must be a mapping of sections"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / "params.yaml"
        path.write_text(text)
        with pytest.raises(ParamsError, match=message):
            load_pipeline_params(path)
        assert name
    with pytest.raises(ParamsError, match="file not found"):
        load_pipeline_params(tmp_path / "nowhere.yaml")
    with pytest.raises(ParamsError, match="unknown profile 'huge'"):
        merged_profile("huge", REPO / "configs" / "profiles")


def test_a_stage_refuses_bad_params_with_exit_2_and_changes_nothing(tmp_path):
    """Through a real stage process: one `error:` line, exit 2, no output written."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_value(smoke(), "prepare.n_train.arith", -5)))
    out = tmp_path / "data"
    env = {**os.environ, "COLA_PARAMS": str(bad), "COLA_TRACKING": "off"}
    result = subprocess.run(
        [sys.executable, "stages/prepare.py", "--out", str(out), "--metrics", str(tmp_path / "m.json"),
         "--headline", str(tmp_path / "h.json")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}: prepare.n_train.arith must be >= 0 (got -5)"
    ]
    assert not out.exists() and not (tmp_path / "m.json").exists()


# --------------------------------------------------------------------------------------------- data rows


def test_malformed_data_rows_name_the_file_and_row(tmp_path):
    split = tmp_path / "tasks" / "train"
    split.mkdir(parents=True)
    good = json.dumps({"prompt": "Q: a A:", "completion": " \\boxed{a}"})
    cases = {
        "missing": (good + "\n" + json.dumps({"prompt": "Q: b A:"}) + "\n").encode(),
        "json": (good + "\n\n" + '{"prompt": "Q: b A:", ' + "\n").encode(),
        "utf8": good.encode() + b"\n" + b'{"prompt": "Q: \xff A:", "completion": " x"}\n',
        "array": (good + "\n[1, 2]\n").encode(),
    }
    expected = {
        "missing": ":2: expected an object with string prompt and completion (missing or not a string: "
        "completion)",
        "json": ":3: invalid JSON (Expecting property name enclosed in double quotes)",
        "utf8": ":2: not UTF-8 text (byte 0xff at column 16)",
        "array": ":2: expected a JSON object, got list",
    }
    for name, data in cases.items():
        (split / f"{name}.jsonl").write_bytes(data)
        with pytest.raises(InputError) as info:
            load_task_examples(tmp_path / "tasks", "train", [name])
        assert str(info.value) == f"{split / name}.jsonl{expected[name]}"
    corpus = tmp_path / "val.txt"
    corpus.write_bytes(b"fine\nalso fine\nbad \xc3\x28 here\n")
    with pytest.raises(InputError, match=r"val.txt:3: not UTF-8 text \(byte 0xc3 at column 5\)"):
        read_text_lines(corpus)
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "absent.jsonl")


# --------------------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.mktemp("reliability"))


def test_broken_model_folders_are_one_line(assets, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_model_and_tokenizer(empty)
    with pytest.raises(CheckpointError, match="no such model folder"):
        load_model_and_tokenizer(tmp_path / "absent")
    # Another kind of model (an image model, not a causal LM): one line, no traceback from transformers.
    other = tmp_path / "vit"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "vit"}))
    save_file({"x": torch.zeros(1)}, str(other / "model.safetensors"))
    with pytest.raises(CheckpointError, match="cannot load a causal LM"):
        load_model_and_tokenizer(other)
    # A truncated weight file of a plain base is named, before transformers reads it.
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for name in ("config.json", "model.safetensors"):
        (truncated / name).write_bytes((assets["root"] / "base" / name).read_bytes())
    with (truncated / "model.safetensors").open("r+b") as f:
        f.truncate(200)
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated safetensors file"):
        load_model_and_tokenizer(truncated)


def test_pickle_weights_are_refused(assets, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((assets["root"] / "base" / "config.json").read_text())
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(
        CheckpointError, match=r"only pickle weights \(pytorch_model.bin\); cola loads safetensors"
    ):
        load_model_and_tokenizer(folder)
    cola_folder = tmp_path / "cola_pickled"
    cola_folder.mkdir()
    (cola_folder / "config.json").write_text((assets["root"] / "cola" / "config.json").read_text())
    torch.save({"w": torch.zeros(1)}, cola_folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only pickle weights"):
        load_model_and_tokenizer(cola_folder)


def test_remote_code_is_never_run(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    config = tiny_base_config().to_dict()
    config.update(model_type="custom_thing", auto_map={"AutoModelForCausalLM": "modeling.CustomModel"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling.py").write_text("raise SystemExit('remote code ran')\n")
    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_causal_lm(folder)
    assert "needs its own Python code (trust_remote_code), which cola never runs" in str(info.value)


def test_a_hub_id_offline_says_to_use_a_local_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as info:
        load_causal_lm("some-org/not-in-the-cache-model")
    assert "not a local folder and not in the Hugging Face cache" in str(info.value)
    assert "give its local folder instead" in str(info.value)


# --------------------------------------------------------------------------------------------- writes


def test_a_failed_model_write_keeps_the_previous_folder(assets, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "models" / "bc"
    model, tokenizer = tiny_cola(), AutoTokenizer.from_pretrained(assets["root"] / "cola")
    save_hf_folder(model, tokenizer, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"half")  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    model.save_pretrained = full_disk
    with pytest.raises(WriteError) as info:
        save_hf_folder(model, tokenizer, out)
    assert str(info.value) == f"{out}: writing failed (No space left on device); the previous version is kept"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["bc"]  # no temporary folder left behind
    load_model_and_tokenizer(out)  # still a good checkpoint


def test_a_failed_checkpoint_or_file_write_keeps_the_previous_one(tmp_path, monkeypatch):
    from cola.config import TrainConfig
    from cola.train import core
    from cola.train.core import BatchTrainer
    from cola.train.losses import LossOutput

    model = torch.nn.Linear(4, 4)
    batches = type(
        "Batches",
        (),
        {
            "generator": torch.Generator().manual_seed(0),
            "__next__": lambda self: torch.randn(2, 4, generator=self.generator),
        },
    )()
    trainer = BatchTrainer(
        model,
        lambda b, g: LossOutput(model(b).pow(2).mean(), {"loss": 0.0}),
        batches,
        TrainConfig(steps=4, warmup_steps=0, log_every=1, checkpoint_every=2),
        checkpoint_dir=tmp_path / "ckpt",
    )
    trainer.train(steps=2)  # its step-2 checkpoint is on disk
    saved = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    trainer.train(steps=1)

    def full_disk(tensors, filename):
        Path(filename).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(core, "save_file", full_disk)
    with pytest.raises(
        WriteError, match="ckpt: writing failed .No space left on device.; the previous version"
    ):
        trainer.save()
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()} == saved

    target = tmp_path / "metrics.json"
    target.write_text("old")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(WriteError, match="metrics.json: writing failed"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt",
        "metrics.json",
    ]


# --------------------------------------------------------------------------------------------- secrets


SECRETS = {
    "HF_TOKEN": "hf_sEcReTtOkEn123",
    "MLFLOW_TRACKING_PASSWORD": "pw-sEcReT-456",
    "AWS_SECRET_ACCESS_KEY": "aws/sEcReT/789",
    "MLFLOW_TRACKING_TOKEN": "tok-sEcReT-000",
}


def test_no_secret_reaches_the_tracking_store(tmp_path):
    """A real stage run with secrets in its environment: none of them is in the store (params, tags, metrics,
    artifacts), nor in the metrics file."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(smoke(), sort_keys=False))
    store = tmp_path / "mlflow.db"
    env = {**os.environ, **SECRETS, "COLA_PARAMS": str(params), "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    env.pop("COLA_TRACKING", None)
    result = subprocess.run(
        [
            sys.executable,
            "stages/prepare.py",
            "--out",
            str(tmp_path / "data"),
            "--metrics",
            str(tmp_path / "prepare.json"),
            "--headline",
            str(tmp_path / "headline.json"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("cola").experiment_id])
    assert runs and any(run.data.params for run in runs)  # the stage run and its parent were logged
    stored = [store.read_bytes(), (tmp_path / "prepare.json").read_bytes()]
    stored += [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "mlartifacts" in p.parts]
    for name, secret in SECRETS.items():
        assert not any(secret.encode() in blob for blob in stored), f"{name} leaked into the tracking store"


def test_no_unsafe_loading_in_the_code():
    """No `torch.load` without `weights_only=True`, no `trust_remote_code=True`, and every `from_pretrained`
    of model weights asks for safetensors, anywhere in cola/ (read from the source)."""
    import ast

    problems = []
    for path in sorted((REPO / "cola").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if node.func.attr == "load" and getattr(node.func.value, "id", "") == "torch":
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            remote = keywords.get("trust_remote_code")
            if isinstance(remote, ast.Constant) and remote.value is True:
                problems.append(f"{where}: trust_remote_code=True")
            model_class = getattr(node.func.value, "id", "")
            if node.func.attr == "from_pretrained" and model_class.startswith("AutoModel") \
                    and "gguf_file" not in keywords and "use_safetensors" not in keywords:
                problems.append(f"{where}: {model_class}.from_pretrained without use_safetensors")
    assert not problems, problems
