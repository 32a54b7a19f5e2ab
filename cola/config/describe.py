"""Describing configs: flat dotted params for MLflow, and help tables for the docs and the CLI."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cola.config.validation import _hints, _is_dataclass_type, _join, type_name

__all__ = ["flatten", "help_table", "missing_help"]

Scalar = str | int | float | bool | None


def _scalar(value: Any) -> Scalar:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return _scalar(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple | set | frozenset):
        # MLflow params are strings anyway; JSON keeps lists readable and comparable across runs.
        return json.dumps(list(value), default=_json_default, sort_keys=True)
    if hasattr(value, "item"):  # numpy / torch scalars
        try:
            return _scalar(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    return str(value)


def flatten(obj: Any, prefix: str = "") -> dict[str, Scalar]:
    """Flatten dataclasses and mappings into ``{"a.b.c": scalar}`` (lists become JSON strings) for MLflow."""
    out: dict[str, Scalar] = {}

    def walk(value: Any, key: str) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            items = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
        elif isinstance(value, Mapping):
            items = list(value.items())
        else:
            out[key] = _scalar(value)
            return
        if not items and key:
            out[key] = "{}"  # keep the key visible: an empty mapping is a setting too
        for name, item in items:
            walk(item, f"{key}.{name}" if key else str(name))

    walk(obj, prefix)
    return out


def _fmt_default(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _fmt_default(value.value)
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=_json_default)
    return str(value)


def help_table(cls: type, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, str, str]]:
    """Rows ``(dotted name, type, default, help)`` for every field; nested dataclasses are expanded in place,
    with the defaults their parent field gives them (`defaults`: the instance whose values are the
    defaults)."""
    rows: list[tuple[str, str, str, str]] = []
    hints = _hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        name, tp = _join(prefix, field.name), hints.get(field.name, Any)
        if defaults is not None:
            value = getattr(defaults, field.name)
        elif field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            value = dataclasses.MISSING
        if _is_dataclass_type(tp):
            rows.extend(help_table(tp, name, value if value is not dataclasses.MISSING else None))
            continue
        default = "required" if value is dataclasses.MISSING else _fmt_default(value)
        rows.append((name, type_name(tp), default, str(field.metadata.get("help", ""))))
    return rows


def missing_help(cls: type) -> list[str]:
    """Dotted names of fields without ``help`` metadata (for a test that every config is documented)."""
    return [name for name, _tp, _default, text in help_table(cls) if not text.strip()]
