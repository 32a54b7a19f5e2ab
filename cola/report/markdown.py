"""Markdown pieces: a table, and number cells that show a missing or non-finite value as a dash."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _seconds(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) and math.isfinite(value) else "—"


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and math.isfinite(value) else "—"
