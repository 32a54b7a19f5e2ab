"""Model folders: writing them atomically, and loading them with checks that name the bad file (design.md §9).

Every model folder the pipeline writes is a Hugging Face folder with its tokenizer (`save_hf_folder`), so one
path is enough to load it (`load_model_and_tokenizer`).

`transformers` reports a truncated safetensors file as "incomplete metadata" and a shape mismatch as a table
on stderr; `load_cola` checks the folder first and raises one `CheckpointError` line naming the file and key.
"""

from __future__ import annotations

import contextlib
import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch
from transformers import AutoConfig

from cola.errors import ColaError
from cola.io import atomic_dir, is_main_process
from cola.model.modeling_cola import CoLAForCausalLM


class CheckpointError(ColaError):
    """A checkpoint folder or file that cannot be loaded as what it claims to be."""


def read_safetensors_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Tensor name → (dtype, shape) from a safetensors header, after checking that the file is complete."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", raw)
        if 8 + header_len > size:
            raise CheckpointError(f"{path}: truncated safetensors file (header of {header_len} bytes, "
                                  f"file {size})")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from None
    header.pop("__metadata__", None)
    data_end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if 8 + header_len + data_end != size:
        raise CheckpointError(
            f"{path}: truncated or padded safetensors file "
            f"(header promises {8 + header_len + data_end} bytes, file has {size})"
        )
    return {name: (entry["dtype"], entry["shape"]) for name, entry in header.items()}


def check_checkpoint(path: str | Path) -> None:
    """Raise `CheckpointError` unless the folder's safetensors match what its config.json describes."""
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file}: missing (not a CoLA checkpoint folder)")
    check_safe_weights(folder)
    files = sorted(folder.glob("*.safetensors"))
    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_file}: cannot be read ({err})") from None
    if config.model_type != "cola":
        raise CheckpointError(f"{config_file}: model_type is {config.model_type!r}, expected 'cola'")
    with torch.device("meta"):
        expected_model = CoLAForCausalLM(config)
    expected = {name: list(t.shape) for name, t in expected_model.state_dict().items()}
    tied = set(getattr(expected_model, "all_tied_weights_keys", {}) or {})
    found: dict[str, Path] = {}
    for file in files:
        for name, (_, shape) in read_safetensors_header(file).items():
            found[name] = file
            if name not in expected:
                raise CheckpointError(f"{file}: unexpected tensor {name} for the model in {config_file.name}")
            if shape != expected[name]:
                raise CheckpointError(
                    f"{file}: {name} has shape {shape} but {config_file.name} implies {expected[name]}"
                )
    missing = sorted(set(expected) - set(found) - tied)
    if missing:
        raise CheckpointError(f"{folder}: {len(missing)} tensors missing from the weight files, "
                              f"e.g. {missing[0]}")


def load_cola(path: str | Path, **kwargs) -> CoLAForCausalLM:
    """Check then load a CoLA checkpoint folder (`kwargs` go to `from_pretrained`, e.g. `dtype`)."""
    check_checkpoint(path)
    return CoLAForCausalLM.from_pretrained(path, use_safetensors=True, **kwargs)


def is_cola_folder(path: str | Path) -> bool:
    """True when `path` holds a CoLA checkpoint (its config.json says model_type 'cola')."""
    config_file = Path(path) / "config.json"
    return config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "cola"


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_safe_weights(folder: Path) -> None:
    """Weights are loaded from safetensors only (a pickle file can run code when it is unpickled), and each
    file is checked to be complete first, so a truncated one is named instead of failing in the loader."""
    weights = sorted(folder.glob("*.safetensors"))
    for file in weights:
        read_safetensors_header(file)
    if weights:
        return
    pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern))
    if pickles:
        raise CheckpointError(
            f"{folder}: only pickle weights ({', '.join(pickles)}); cola loads safetensors only, since "
            "unpickling can run code: convert a model you trust with "
            "`AutoModelForCausalLM.from_pretrained(folder).save_pretrained(out)`")
    raise CheckpointError(f"{folder}: no *.safetensors weight files")


def load_causal_lm(source: str | Path, **kwargs):
    """`AutoModelForCausalLM.from_pretrained` from a folder or hub id, safely: safetensors only, never remote
    code, and a model that needs either (or an id not in the offline cache) is one `CheckpointError` line."""
    from transformers import AutoModelForCausalLM

    needs_code = False
    if Path(source).is_dir():
        check_safe_weights(Path(source))
        config = Path(source) / "config.json"
        needs_code = config.is_file() and "auto_map" in json.loads(config.read_text())
    try:
        return AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, trust_remote_code=False,
                                                    **kwargs)
    except (OSError, ValueError) as err:
        raise CheckpointError(_load_failure(source, err, needs_code)) from None


def _load_failure(source: str | Path, err: Exception, needs_code: bool) -> str:
    """One line for what transformers says in many (a remote-code model, an id not in the offline cache)."""
    text = " ".join(str(err).split())
    if needs_code or "trust_remote_code" in text:
        return (f"{source}: the model needs its own Python code (trust_remote_code), which cola never "
                "runs; use a model transformers supports natively")
    if not Path(source).exists() and ("offline" in text.lower() or "connect" in text.lower()
                                      or "couldn't" in text.lower() or "not a valid model" in text.lower()):
        return (f"{source}: not a local folder and not in the Hugging Face cache (the hub is not reachable "
                "offline); download it on a connected machine and give its local folder instead")
    return f"{source}: cannot load a causal LM ({text[:200]})"


def load_model_and_tokenizer(path: str | Path, **kwargs):
    """Load any pipeline model folder: a CoLA checkpoint or a plain HF causal LM, each with its tokenizer.

    Every model folder the pipeline writes holds the tokenizer beside the weights, so one path is enough.
    Returns (model in eval mode, tokenizer with left padding, kind) where kind is "cola" or "base". Weights
    load from safetensors only and never with remote code (`load_causal_lm`).
    """
    from transformers import AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model folder")
    if is_cola_folder(folder):
        model, kind = load_cola(folder, **kwargs), "cola"
    else:
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder / 'config.json'}: missing (not a model folder)")
        model, kind = load_causal_lm(folder, **kwargs), "base"
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left", trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: no usable tokenizer beside the weights ({err})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer, kind


def save_hf_folder(model, tokenizer, out_dir: str | Path) -> Path:
    """Save model (safetensors) + tokenizer as a plain HF folder, atomically (temp folder, then rename).
    In a multi-process run only the main process writes (every process holds the same weights)."""
    if not is_main_process():
        return Path(out_dir)
    with atomic_dir(out_dir) as tmp, plain_unwrap():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


@contextlib.contextmanager
def plain_unwrap() -> Iterator[None]:
    """`save_pretrained` without its unwrapping: accelerate's `extract_model_from_parallel`, which it calls,
    imports DeepSpeed wherever DeepSpeed is installed (1.4 s, most of a tiny stage's saving) only to look
    for an engine around the model. Ours are never wrapped when saved: DDP is not used, FSDP units and ZeRO
    engines are released when training ends (cola.train.sharding, cola.train.zero)."""
    from transformers import modeling_utils

    if "deepspeed" in sys.modules or not hasattr(modeling_utils, "unwrap_model"):
        yield
        return
    with mock.patch.object(modeling_utils, "unwrap_model", lambda model, *args, **kwargs: model):
        yield
