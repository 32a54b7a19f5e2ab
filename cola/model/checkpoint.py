"""Loading CoLA checkpoint folders with checks that name the bad file (design.md §9).

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
            raise CheckpointError(f"{path}: truncated safetensors file (header of {header_len} bytes, file {size})")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from None
    header.pop("__metadata__", None)
    data_end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if 8 + header_len + data_end != size:
        raise CheckpointError(
            f"{path}: truncated or padded safetensors file (header promises {8 + header_len + data_end} bytes, "
            f"file has {size})"
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
        raise CheckpointError(f"{folder}: {len(missing)} tensors missing from the weight files, e.g. {missing[0]}")


def load_cola(path: str | Path, **kwargs) -> CoLAForCausalLM:
    """Check then load a CoLA checkpoint folder (`kwargs` go to `from_pretrained`, e.g. `dtype`)."""
    check_checkpoint(path)
    return CoLAForCausalLM.from_pretrained(path, **kwargs)
