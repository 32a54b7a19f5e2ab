"""Where runs go: the real repository root (also from inside a ``dvc exp run --temp/--queue`` copy), the
MLflow tracking URI anchored there, the artifact folder beside a SQLite store, and the experiment name."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_EXPS_PARTS = (".dvc", "tmp", "exps")  # where dvc exp run --temp/--queue put their working copies


def _outside_exp_copy(path: Path) -> Path | None:
    """``<repo>/.dvc/tmp/exps/<...>`` -> ``<repo>``; None if ``path`` is not inside an experiment copy."""
    parts = path.parts
    for i in range(len(parts) - len(_EXPS_PARTS) + 1):
        if parts[i : i + len(_EXPS_PARTS)] == _EXPS_PARTS:
            return Path(*parts[:i])
    return None


def _git(*args: str, cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def repo_root(cwd: str | Path | None = None) -> Path:
    """The real repository root: exp-copy pattern, else ``DVC_ROOT``, else git toplevel, else cwd."""
    here = Path(cwd if cwd is not None else os.getcwd()).resolve()
    root = _outside_exp_copy(here)
    if root is not None:
        return root
    # DVC sets DVC_ROOT for every stage command (and points it at the parent repo for queued experiments).
    env_root = os.environ.get("DVC_ROOT")
    if env_root:
        env_path = Path(env_root).resolve()
        return _outside_exp_copy(env_path) or env_path
    top = _git("rev-parse", "--show-toplevel", cwd=here)
    if top:
        top_path = Path(top).resolve()
        return _outside_exp_copy(top_path) or top_path
    return here


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` (a relative ``sqlite:///x.db`` is anchored at the repo root), else the
    default."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return f"sqlite:///{repo_root() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # A relative path would resolve inside the temporary copy of a queued experiment and be lost.
        return f"sqlite:///{repo_root() / uri[len('sqlite:///') :]}"
    return uri


def _artifact_location(uri: str) -> str | None:
    """``mlartifacts`` beside a SQLite store; for servers the server decides (proxied artifacts)."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = Path(uri[len("sqlite:///") :].split("?", 1)[0])
    return (db_path.parent / "mlartifacts").as_uri()


def experiment_name() -> str:
    """The project's single MLflow experiment: ``cola`` unless ``COLA_MLFLOW_EXPERIMENT`` says otherwise."""
    return os.environ.get("COLA_MLFLOW_EXPERIMENT", "").strip() or "cola"


def outbox_dir() -> Path:
    """Where stage runs that could not reach MLflow wait for `cola track sync`: ``COLA_OUTBOX``, else
    ``<repo root>/.cola/outbox`` (the real root, also from inside a ``dvc exp run`` copy)."""
    env = os.environ.get("COLA_OUTBOX", "").strip()
    return Path(env) if env else repo_root() / ".cola" / "outbox"
