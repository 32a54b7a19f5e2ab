"""The Typer app every command registers on, the two consoles (results on stdout, messages on stderr), and the
helpers the commands share: loading a model folder, writing JSON, formatting a number."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from typer._click import echo
from typer._click import exceptions as click_errors  # typer vendors click (pinned in pyproject)
from typer.core import TyperGroup

from cola.errors import ColaError
from cola.io import atomic_write_json


class OneLineErrors(TyperGroup):
    """Every command-line mistake (an unknown command or option, a missing argument, a bad value) is one
    ``error: ...`` line and exit code 2, like the commands' own user errors (`cola.errors.user_errors`);
    Click would print a usage block first."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            # Outside standalone mode Click raises usage errors instead of printing them, and returns the
            # code of a `typer.Exit` (--help's 0, Ctrl-C's 130) instead of exiting with it.
            exit_code = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as exc:  # `cola` alone: the help, as before
            exc.show()
            sys.exit(0)
        except click_errors.UsageError as exc:
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            echo(f"error: {' '.join(exc.format_message().split())}{where}", err=True)
            sys.exit(2)
        except click_errors.ClickException as exc:
            echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            echo("error: interrupted", err=True)
            sys.exit(130)
        sys.exit(exit_code if isinstance(exit_code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    name="cola",
    help="CoLA (Controlling LLMs with Latent Actions): evaluate, sample and compare models and runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # bugs keep a plain traceback; user errors are one line (user_errors)
    rich_markup_mode=None,  # plain help text, wrapped at the terminal width (the rich table cut words at 80)
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class CliError(ColaError):
    """A command line that cannot run as given."""


def _check_out(out_path: Path | None) -> None:
    """An --out whose folder is not there fails in milliseconds (a typo must not create a stray tree)."""
    if out_path is None:
        return
    if out_path.is_dir():
        raise CliError(f"--out {out_path}: is a folder; give a file such as {out_path / 'eval.json'}")
    if not out_path.parent.is_dir():
        raise CliError(f"--out {out_path}: no folder {out_path.parent} (create it first)")


def _model_folder(address: str, out_path: Path | None = None) -> Path:
    """The local folder of a model argument, checked before torch loads: a folder as given, or a
    ``models:/NAME/VERSION`` / ``runs:/RUN_ID/model`` address fetched from MLflow (no torch either). The
    checkpoint loader checks the folder's contents."""
    from cola.tracking.models import resolve_model

    _check_out(out_path)  # before any download
    model = resolve_model(address)
    if not model.is_dir():
        raise CliError(f"{model}: no such model folder" if not model.exists() else f"{model}: not a folder")
    if not (model / "config.json").is_file():
        raise CliError(f"{model / 'config.json'}: missing (not a model folder)")
    return model


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
