"""How tracking fails (design.md §9): fast on a dead server, without MLflow's own tracebacks, in one line."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from cola.tracking.location import tracking_uri


def _short(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (SQLAlchemy errors append the whole SQL statement)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # SQLAlchemy sometimes leads with "(raised as a result of Query-invoked autoflush; ...)".
    lines = [line for line in lines if not line.startswith("(raised as a result")] or lines
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tracking_uri_safe() -> str:
    """The tracking URI for messages, without raising (repo-root detection runs git)."""
    try:
        return tracking_uri()
    except Exception:  # noqa: BLE001
        return os.environ.get("MLFLOW_TRACKING_URI", "<default>")


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's SQL-store logger, which prints a full traceback for every database error (and
    schema-creation chatter) before raising; we report the failure ourselves in one line."""
    logger = logging.getLogger("mlflow.store.db.utils")
    previous, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = previous


def _check_server(uri: str) -> None:
    """Fail fast on a dead server: MLflow's HTTP client retries for ~4 minutes by default."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=3).close()
    except urllib.error.HTTPError:
        pass  # the server answered (auth, proxies without /health): reachable
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"cannot reach {uri}: {reason}") from None
    # Mid-run outages should cost seconds, not minutes; users who set these keep their values.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
