"""What a run is part of: the git commit, the DVC experiment, the pipeline execution (one ``dvc repro`` or
``dvc exp run``, recognised by its ``dvc`` ancestor process), and the tags that nest stage runs under it."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from cola.tracking.location import _git

RUN_TYPE_TAG = "cola.run_type"  # "pipeline" (the parent) or "stage"
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI reads to nest runs


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` (the baseline commit inside an exp copy), or ``"unknown"``."""
    return _git("rev-parse", "HEAD", cwd=Path(cwd) if cwd else None) or "unknown"


def dvc_exp_name() -> str:
    """The DVC experiment name (DVC exports ``DVC_EXP_NAME`` under ``dvc exp run``), else ``"workspace"``."""
    return os.environ.get("DVC_EXP_NAME", "").strip() or "workspace"


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """``(comm, ppid, starttime)`` from /proc/<pid>/stat; comm may hold spaces and parens, so split at the
    last ')'."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
        comm = data[data.index("(") + 1 : data.rindex(")")]
        fields = data[data.rindex(")") + 2 :].split()
        return comm, int(fields[1]), int(fields[19])  # fields 4 (ppid) and 22 (starttime) of proc(5)
    except (OSError, ValueError, IndexError):
        return None


def _looks_like_dvc(comm: str, argv: list[str]) -> bool:
    names = [os.path.basename(a) for a in argv[:3]]
    if comm == "dvc" or (names and names[0] == "dvc"):
        return True
    # `python /venv/bin/dvc ...` or `python -m dvc ...`
    return (
        bool(names)
        and names[0].startswith("python")
        and (names[1:2] == ["dvc"] or argv[1:3] == ["-m", "dvc"])
    )


def _dvc_ancestor(start: int | None = None) -> tuple[int, int] | None:
    """``(pid, starttime)`` of the nearest ``dvc`` process above us, or None (not run by DVC, or no /proc)."""
    pid = os.getppid() if start is None else start
    for _ in range(64):  # bounded: a corrupted parent chain must not loop forever
        if pid <= 1:
            return None
        stat = _proc_stat(pid)
        if stat is None:
            return None
        comm, ppid, starttime = stat
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            argv = []
        if _looks_like_dvc(comm, argv):
            return pid, starttime
        pid = ppid
    return None


def _process_start_ms(starttime_ticks: int) -> int | None:
    """Wall-clock start (ms) of a process from its /proc starttime, via the boot time in /proc/stat."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int((int(line.split()[1]) + starttime_ticks / os.sysconf("SC_CLK_TCK")) * 1000)
    except (OSError, ValueError):
        pass
    return None


def _pipeline_identity() -> tuple[str, int | None]:
    """``(pipeline id, earliest plausible parent start in ms or None)``; see :func:`pipeline_id`."""
    env = os.environ.get("COLA_PIPELINE_ID", "").strip()
    if env:
        return env, None
    found = _dvc_ancestor()
    if found is None:
        return uuid.uuid4().hex, None
    return f"{found[0]}-{found[1]}", _process_start_ms(found[1])


def pipeline_id() -> str:
    """Id shared by the stages of one ``dvc repro``/``dvc exp run``: ``COLA_PIPELINE_ID``, else
    ``<pid>-<starttime>`` of the ``dvc`` ancestor process (unique while the machine is up), else a new
    uuid."""
    return _pipeline_identity()[0]
