"""Typed validation of ``params.yaml`` sections into stage config dataclasses.

Every stage has a ``@dataclass`` config whose fields carry ``metadata={"help": ..., "min": ..., "max": ...,
"exclusive_min": bool, "exclusive_max": bool, "choices": [...]}``. :func:`from_dict` turns a YAML mapping into
that dataclass or raises :class:`ParamsError` with ONE line naming the dotted key, so a stage stops before
doing any work (design.md §9)::

    cfg = load_section(LatentConfig, "latent")      # params.yaml: latent.lr must be > 0 (got -0.001)

Describing configs (flattened MLflow params, help tables) is :mod:`cola.config.describe`. Pure Python
(dataclasses + PyYAML): validating params never imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from cola.errors import ParamsError

__all__ = [
    "ParamsError",
    "from_dict",
    "load_params",
    "load_section",
]

T = TypeVar("T")
Scalar = str | int | float | bool | None
_NoneType = type(None)
_UNION_ORIGINS = (Union, types.UnionType)


# --------------------------------------------------------------------------------------------- errors


def _err(source: str, key: str, msg: str) -> ParamsError:
    """One-line error for ``key``; ``.key`` lets unions tell a top-level mismatch from a nested one."""
    err = ParamsError(f"{source}: {key} {msg}".replace("\n", " "))
    err.key = key  # type: ignore[attr-defined]
    return err


def _show(value: Any) -> str:
    """Short repr of an offending value for error messages (bools are flagged: they look like ints in
    YAML)."""
    if isinstance(value, bool):
        return f"{value}, a bool"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(where: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{where}[{name}]"
    return f"{where}.{name}" if where else str(name)


# --------------------------------------------------------------------------------------------- types


def type_name(tp: Any) -> str:
    """Readable name of a field type as used in messages and help tables: ``float``, ``'adam' | 'sgd'``."""
    origin = get_origin(tp)
    if origin in _UNION_ORIGINS:
        return " | ".join(type_name(a) for a in get_args(tp))
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin is not None:
        args = get_args(tp)
        base = getattr(origin, "__name__", str(origin))
        return (
            f"{base}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]" if args else base
        )
    if tp is _NoneType:
        return "None"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # get_type_hints resolves string annotations (``from __future__ import annotations``) in the class's
    # module.
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against ``tp`` and return it converted (int→float, "1e-4"→float, list→tuple,
    dict→dataclass)."""
    if tp is Any or tp is object:
        return value
    origin = get_origin(tp)
    if origin in _UNION_ORIGINS:
        return _convert_union(value, tp, key, source)
    if origin is Literal:
        for choice in get_args(tp):
            # type() equality keeps True from matching Literal[1] (True == 1 in Python).
            if value == choice and type(value) is type(choice):
                return choice
        raise _err(source, key, f"must be one of {', '.join(map(repr, get_args(tp)))} (got {_show(value)})")
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
        return _convert_sequence(value, tp, key, source)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return _convert_mapping(value, tp, key, source)
    if _is_dataclass_type(tp):
        if not isinstance(value, Mapping):
            raise _err(source, key, f"must be a mapping of {type_name(tp)} fields (got {_show(value)})")
        return from_dict(tp, value, key, source=source)
    return _convert_scalar(value, tp, key, source)


def _convert_union(value: Any, tp: Any, key: str, source: str) -> Any:
    args = get_args(tp)
    if value is None:
        if _NoneType in args:
            return None
        raise _err(source, key, f"must be {type_name(tp)} (got null)")
    last: ParamsError | None = None
    for arg in args:
        if arg is _NoneType:
            continue
        try:
            return _convert(value, arg, key, source)
        except ParamsError as exc:
            last = exc
    # An error deeper down (a list element, a nested key) is more precise than "must be X | None".
    if last is not None and getattr(last, "key", key) != key:
        raise last
    raise _err(source, key, f"must be {type_name(tp)} (got {_show(value)})")


def _convert_sequence(value: Any, tp: Any, key: str, source: str) -> Any:
    container = get_origin(tp) or tp
    if not isinstance(value, list | tuple):
        raise _err(source, key, f"must be a list, {type_name(tp)} (got {_show(value)})")
    args = get_args(tp)
    if container is tuple and args and args[-1] is not Ellipsis:  # fixed-length tuple[int, str]
        if len(args) != len(value):
            raise _err(source, key, f"must be a list of {len(args)} items (got {len(value)})")
        items = [
            _convert(v, a, _join(key, i), source) for i, (v, a) in enumerate(zip(value, args, strict=True))
        ]
    else:
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, _join(key, i), source) for i, v in enumerate(value)]
    return items if container is list else container(items)


def _convert_mapping(value: Any, tp: Any, key: str, source: str) -> dict:
    if not isinstance(value, Mapping):
        raise _err(source, key, f"must be a mapping (got {_show(value)})")
    key_tp, val_tp = get_args(tp) or (Any, Any)
    out = {}
    for k, v in value.items():
        sub = _join(key, k)
        if key_tp is str and not isinstance(k, str):
            raise _err(source, sub, f"has a non-string key {_show(k)}; quote it in YAML")
        out[k] = _convert(v, val_tp, sub, source)
    return out


def _convert_scalar(value: Any, tp: Any, key: str, source: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        # bool is an int subclass; `steps: true` is almost certainly a mistake, so it is rejected.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float) and math.isnan(value):
                raise _err(source, key, "must be a number, not NaN")
            return float(value)
        # PyYAML reads `1e-4` (no dot) as a string, and `dvc exp run -S lr=3e-4` may write it that way.
        if isinstance(value, str):
            try:
                parsed = float(value.strip())
            except ValueError:
                pass
            else:
                if not math.isnan(parsed):
                    return parsed
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if value == member.value or value == member.name or value is member:
                return member
        choices = ", ".join(repr(m.value) for m in tp)
        raise _err(source, key, f"must be one of {choices} (got {_show(value)})")
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:  # an annotation we do not understand (TypeVar, Callable, ...): trust the dataclass
        return value
    noun = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, type_name(tp)
    )
    raise _err(source, key, f"must be {noun} (got {_show(value)})")


# --------------------------------------------------------------------------------------------- constraints


def _check_constraints(value: Any, meta: Mapping[str, Any], key: str, source: str) -> None:
    """Apply ``min``/``max``/``choices`` metadata; lists and dicts are checked element by element."""
    if value is None:
        return
    if isinstance(value, list | tuple | set | frozenset):
        for i, item in enumerate(value):
            _check_constraints(item, meta, _join(key, i), source)
        return
    if isinstance(value, Mapping):
        for k, item in value.items():
            _check_constraints(item, meta, _join(key, k), source)
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise _err(source, key, f"must be one of {', '.join(map(repr, choices))} (got {_show(value)})")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None:
        if meta.get("exclusive_min") and not value > lo:
            raise _err(source, key, f"must be > {lo} (got {_show(value)})")
        if not value >= lo:
            raise _err(source, key, f"must be >= {lo} (got {_show(value)})")
    if hi is not None:
        if meta.get("exclusive_max") and not value < hi:
            raise _err(source, key, f"must be < {hi} (got {_show(value)})")
        if not value <= hi:
            raise _err(source, key, f"must be <= {hi} (got {_show(value)})")


# --------------------------------------------------------------------------------------------- public API


def deep_merge(defaults: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`defaults` with `overrides` on top; nested mappings merge key by key."""
    merged = dict(defaults)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str, *, source: str = "params.yaml") -> T:
    """Build dataclass ``cls`` from ``data`` (one params.yaml section), validating every key.

    ``where`` is the dotted path of ``data`` in the file (``"latent"``), used in messages; ``source`` names
    the file. Missing keys take the field default. Raises :class:`ParamsError` on the first problem found:
    unknown key, missing required key, wrong type, out-of-range value, or a value not in ``choices``.
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    if data is None:  # `latent:` with nothing under it in YAML
        data = {}
    if not isinstance(data, Mapping):
        raise _err(source, where or "<top level>", f"must be a mapping (got {_show(data)})")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in sorted(map(str, data)):
        if name not in fields:
            hint = difflib.get_close_matches(name, list(fields), n=1)
            known = ", ".join(fields) or "none"
            extra = f"; did you mean '{hint[0]}'?" if hint else ""
            raise _err(source, _join(where, name), f"is not a known key (known: {known}){extra}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        key = _join(where, name)
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise _err(source, key, "is required (no default)")
            continue
        raw = data[name]
        if isinstance(raw, Mapping) and field.default_factory is not dataclasses.MISSING:
            # A partial nested section overrides the *field's* default (its factory may differ from the
            # nested class's own defaults), so start from that and apply the given keys on top.
            default = field.default_factory()
            if dataclasses.is_dataclass(default):
                raw = deep_merge(dataclasses.asdict(default), raw)
        value = _convert(raw, hints.get(name, Any), key, source)
        _check_constraints(value, field.metadata, key, source)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ParamsError:
        raise
    except ValueError as exc:  # cross-field checks in __post_init__ ("batch_size must divide ...")
        raise _err(source, where or "<top level>", f"is invalid: {exc}") from exc


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read a params file with ``yaml.safe_load``; a missing, unparsable or non-mapping file is a
    ParamsError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the repository root)") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(
            f"{path}: must be a mapping of sections at the top level (got {type(data).__name__})"
        )
    return data


def load_section(cls: type[T], section: str, path: str | Path = "params.yaml") -> T:
    """Load ``section`` (dotted for nested, e.g. ``"eval.math500"``) of the params file into ``cls``."""
    data: Any = load_params(path)
    walked: list[str] = []
    for part in section.split("."):
        walked.append(part)
        if not isinstance(data, Mapping) or part not in data:
            raise ParamsError(f"{path}: section '{'.'.join(walked)}' is missing")
        data = data[part]
    return from_dict(cls, data, section, source=str(path))
