"""Profiles are override files: ``configs/profiles/NAME.yaml`` holds only what differs from the defaults.

The defaults (`cola.config.PipelineParams()`) are the ``tiny`` profile's sizes with the paper's choices;
``tiny.yaml`` overrides only what the RL ablation chose on validation at that scale (``rl.cola_start``),
and ``smollm2-135m.yaml`` says in a screen what that scale *is* (nanoGPT's ``config/*.py`` habit).
``cola profile NAME`` merges defaults and overrides, validates the result and writes it to params.yaml, the
file DVC tracks and ``dvc exp run -S`` edits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cola.config.validation import deep_merge, from_dict, load_params
from cola.errors import ParamsError
from cola.io import atomic_write_text

HEADER = """\
# The pipeline's params, profile {name}: `cola profile {name}` wrote the defaults of cola/config with
# configs/profiles/{name}.yaml on top. `cola params SECTION` documents every key; edit here or run
# `dvc exp run -S key=value`.
"""


def available_profiles(folder: Path) -> list[str]:
    return sorted(p.stem for p in Path(folder).glob("*.yaml")) if Path(folder).is_dir() else []


def _plain(value: Any) -> Any:
    """Tuples (from a dataclass default) as lists, so the YAML has no Python tags."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def merged_profile(name: str, folder: Path) -> dict[str, Any]:
    """The params of profile `name`: the defaults with ``folder/name.yaml`` on top, validated."""
    from cola.config import PipelineParams

    source = Path(folder) / f"{name}.yaml"
    if not source.is_file():
        known = ", ".join(available_profiles(folder)) or "none"
        raise ParamsError(f"unknown profile {name!r}: no {source}; available: {known}")
    overrides = load_params(source)
    if overrides.get("profile", name) != name:
        raise ParamsError(f"{source}: profile is {overrides['profile']!r}, expected {name!r}")
    merged = deep_merge(_plain(dataclasses.asdict(PipelineParams())), {**overrides, "profile": name})
    from_dict(PipelineParams, merged, where="", source=str(source))
    return merged


def render_params(name: str, params: Mapping[str, Any]) -> str:
    """params.yaml's text: a header, then every section in schema order."""
    return HEADER.format(name=name) + yaml.safe_dump(dict(params), sort_keys=False, allow_unicode=True)


def write_profile(name: str, folder: Path, params_file: Path) -> Path:
    """Write profile `name` to `params_file` atomically; a bad profile changes nothing."""
    return atomic_write_text(params_file, render_params(name, merged_profile(name, folder)))
