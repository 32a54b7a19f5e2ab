"""Model folders: writing them atomically, and loading them with checks that name the bad file (design.md §9).

Every model folder the pipeline writes is a Hugging Face folder with its tokenizer (`save_hf_folder`), so one
path is enough to load it (`load_model_and_tokenizer`).

`transformers` reports a truncated safetensors file as "incomplete metadata" and a shape mismatch as a table
on stderr; `load_cola` checks the folder first and raises one `CheckpointError` line naming the file and key.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from transformers import AutoConfig

from cola.errors import ColaError
from cola.io import atomic_dir
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
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors weight files")
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
    return CoLAForCausalLM.from_pretrained(path, **kwargs)


def is_cola_folder(path: str | Path) -> bool:
    """True when `path` holds a CoLA checkpoint (its config.json says model_type 'cola')."""
    config_file = Path(path) / "config.json"
    return config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "cola"


def load_model_and_tokenizer(path: str | Path, **kwargs):
    """Load any pipeline model folder: a CoLA checkpoint or a plain HF causal LM, each with its tokenizer.

    Every model folder the pipeline writes holds the tokenizer beside the weights, so one path is enough.
    Returns (model in eval mode, tokenizer with left padding, kind) where kind is "cola" or "base".
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such model folder")
    if is_cola_folder(folder):
        model, kind = load_cola(folder, **kwargs), "cola"
    else:
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder / 'config.json'}: missing (not a model folder)")
        model, kind = AutoModelForCausalLM.from_pretrained(folder, **kwargs), "base"
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: no usable tokenizer beside the weights ({err})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer, kind


def save_hf_folder(model, tokenizer, out_dir: str | Path) -> Path:
    """Save model (safetensors) + tokenizer as a plain HF folder, atomically (temp folder, then rename)."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
