"""The DVC metrics file: flat numbers written atomically, so DVC never reads half a file."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cola.io import atomic_write_json


def _number(key: str, value: Any) -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if hasattr(value, "item"):  # numpy / torch 0-d values
        return _number(key, value.item())
    raise TypeError(f"metric {key!r} must be a number (got {type(value).__name__})")


def write_metrics_json(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write flat numeric ``metrics`` atomically (temp file + rename), so DVC never reads half a file.

    Non-finite values become ``null``: JSON has no NaN and ``dvc metrics`` would fail to parse it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {}
    for key, value in metrics.items():
        num = _number(key, value)
        data[key] = num if math.isfinite(num) else None
    return atomic_write_json(path, data, indent=2, allow_nan=False)
