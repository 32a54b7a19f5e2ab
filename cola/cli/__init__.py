"""The `cola` command line: evaluate and sample any model folder, compare pipeline runs, open the MLflow UI,
switch the params profile.

    cola eval MODEL --task arith --task perplexity --out results.json
    cola eval MODEL --task math500_local --math500-path test.jsonl --samples 16 --out math.json
    cola generate MODEL "Q: Calculate 3 + 4. A:" --greedy-actions
    cola search MODEL --q QNET "Q: Calculate 3 + 4. A:"
    cola play MODEL --game GAME.z8
    cola compare -n 5 --format markdown
    cola ui --port 5000
    cola profile smollm2-135m
    cola params rl
    cola track sync

User errors (a bad path, an unknown task, an unreadable tracking store) print one `error: ...` line on stderr
and exit with code 2. Heavy imports (torch, transformers, mlflow) happen inside the commands, so `--help`
is fast.

Modules: `app` (the Typer app, consoles, shared helpers), one per command group: `evaluate` (eval, generate),
`runs` (compare, ui), `search` (search), `play` (play), `profiles` (profile, params), `track` (track
sync). Importing this package registers every command on `app`.
"""

from __future__ import annotations

# Importing a command module registers its commands; `cola --help` lists them in this order.
from cola.cli import evaluate, play, runs, search  # noqa: F401

# isort: split
from cola.cli import profiles, track
from cola.cli.app import CliError, app
from cola.cli.evaluate import ActionMode, eval_command, generate, run_task
from cola.cli.profiles import params, profile
from cola.cli.runs import Format, compare, comparison, render, ui, ui_command

__all__ = [
    "ActionMode",
    "CliError",
    "Format",
    "app",
    "compare",
    "comparison",
    "eval_command",
    "evaluate",
    "generate",
    "main",
    "params",
    "profile",
    "profiles",
    "render",
    "run_task",
    "runs",
    "track",
    "ui",
    "ui_command",
]


def main() -> None:  # pragma: no cover - `python -m cola.cli`
    app()
