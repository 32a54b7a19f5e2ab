"""Atomic outputs and content digests: the one way cola writes files and recognises its inputs.

- :func:`atomic_dir` / :func:`atomic_write_text`: an output folder or file is either the old one or the
  complete new one, never half-written (a killed stage, a full disk), design.md §9.
- :func:`read_text_lines` / :func:`read_jsonl`: the pipeline's text and JSONL inputs, with every problem (a
  missing file, bytes that are not UTF-8, a line that is not a JSON object, a missing field) one error line
  naming the file and the line.
- :func:`fingerprint` / :func:`file_digest`: short content hashes of params and inputs; a resumable checkpoint
  or a cached evaluation is reused only when its fingerprint matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cola.errors import ColaError


class InputError(ColaError):
    """An input file that cannot be read as what it should be (the message names the file and line)."""


class WriteError(ColaError):
    """An output could not be written (disk full, permissions); the previous version, if any, is kept."""


def is_main_process() -> bool:
    """False in the worker processes of a multi-process run (torchrun / accelerate set ``RANK``): only the
    main process writes models and files."""
    return os.environ.get("RANK", "0") == "0"


def _write_failed(target: Path, exc: OSError, kept: bool) -> WriteError:
    reason = exc.strerror or type(exc).__name__
    previous = "the previous version is kept" if kept else "nothing was written"
    return WriteError(f"{target}: writing failed ({reason}); {previous}")


@contextmanager
def atomic_dir(out_dir: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary sibling of `out_dir`; on success it replaces `out_dir`, on error it is removed.

    An `OSError` while writing (``ENOSPC``, ...) becomes one `WriteError` line naming `out_dir`, which is then
    still the previous complete folder (or absent).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the final folder should look like any other output
    try:
        try:
            yield tmp
        except OSError as exc:
            raise _write_failed(out_dir, exc, out_dir.exists()) from exc
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a synced temporary file renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary repository files
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _write_failed(path, exc, path.exists()) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: Path | str, data: Any, **dump: Any) -> Path:
    """`json.dumps(data, **dump)` plus a final newline, written atomically."""
    return atomic_write_text(path, json.dumps(data, **dump) + "\n")


def read_text_lines(path: Path | str) -> list[str]:
    """The non-empty lines of a UTF-8 text file (`str.splitlines`): `FileNotFoundError` when it is missing
    (an upstream stage has not run); one `InputError` line naming the line of a byte that is not UTF-8."""
    return [line for _, line in _numbered_lines(Path(path))]


def read_jsonl(path: Path | str, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One JSON object per non-empty line, each with the `required` string fields; problems are one
    `InputError` line naming the file and the line."""
    rows = []
    path = Path(path)
    for number, line in _numbered_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        missing = [key for key in required if not isinstance(row.get(key), str)]
        if missing:
            raise InputError(f"{path}:{number}: expected an object with string {' and '.join(required)} "
                             f"(missing or not a string: {', '.join(missing)})")
        rows.append(row)
    return rows


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-empty lines."""
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column})") \
            from None
    return [(number, line) for number, line in enumerate(text.splitlines(), 1) if line]


def fingerprint(*parts: Any) -> str:
    """A short hash of params and inputs (JSON-serialisable, or anything with a faithful `str`)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path | str) -> str:
    """Content hash of a file or of every file in a folder (names and bytes; mtimes change on checkout)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
