"""What a stage's library call hands back to its stage script: headline metrics, figures, files to keep.

The stage script (`stages/*.py`) decides where figures go (their DVC plot paths come from its `cmd`) and logs
everything through its tracking run (`cola.pipeline.StageContext.finish`); the library never writes there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    """A stage's outcome: `metrics` (flat numbers: metrics/<stage>.json), `figures` (name -> matplotlib
    figure), `records` (name -> JSON-able data, e.g. a DVC plot's points), `artifacts` (files or folders to
    attach to the tracking run), `outputs` (DVC outputs recorded by pointer, e.g. the data folder) and
    `models` (model folders: attached to the run or referenced, and registered, as params.tracking says)."""

    metrics: dict[str, float]
    figures: dict[str, Any] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    models: list[Path] = field(default_factory=list)
