"""How a params field is declared: its default, its help text and its validation rules, in one call.

    lr: float = param(2e-3, "Peak learning rate.", min=0, exclusive_min=True)

The rules are read by :func:`cola.config.validation.from_dict` (``min``, ``max``, ``exclusive_min``,
``exclusive_max``, ``choices``) and the help by ``cola params`` and the docs. A subclass that needs another
default for an inherited field says so with :func:`override`, which keeps the field's help and rules: a field
is defined once, and only its default may change further down (the TRL ``GRPOConfig`` habit).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any


def param(default: Any, help: str, **rules: Any) -> Any:
    """A dataclass field with `help` text and validation `rules`; mutable defaults are copied per instance."""
    metadata = {"help": help, **rules}
    if isinstance(default, list | dict) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def override(base: type, name: str, default: Any) -> Any:
    """Field `name` of dataclass `base` with another default (same help and rules)."""
    source = next((f for f in dataclasses.fields(base) if f.name == name), None)
    if source is None:
        raise TypeError(f"{base.__name__} has no field {name!r} to override")
    if isinstance(default, list | dict) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=source.metadata)
    return dataclasses.field(default=default, metadata=source.metadata)
