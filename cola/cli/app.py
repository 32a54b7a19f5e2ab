"""The Typer app every command registers on, the two consoles (results on stdout, messages on stderr), and the
helpers the commands share: loading a model folder, writing JSON, formatting a number."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from cola.errors import ColaError
from cola.io import atomic_write_json

app = typer.Typer(
    name="cola",
    help="CoLA (Controlling LLMs with Latent Actions): evaluate, sample and compare models and runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # bugs keep a plain traceback; user errors are one line (_user_errors)
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class CliError(ColaError):
    """A command line that cannot run as given."""


def _load(model: Path, threads: int | None):
    """(model, tokenizer, kind) of a model folder; torch imported only now."""
    import torch
    from transformers.utils import logging as hf_logging

    from cola.model.checkpoint import load_model_and_tokenizer

    hf_logging.disable_progress_bar()  # "Loading weights" bars would bury the one-line results and errors
    if threads:
        torch.set_num_threads(threads)
    try:
        return load_model_and_tokenizer(model)
    except (OSError, ValueError) as exc:  # transformers' own complaints about a folder that is no model
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise CliError(f"{model}: cannot load a model ({first})") from None


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically so a reader never sees half a results file."""
    atomic_write_json(path, data, indent=1, ensure_ascii=False, default=str)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
