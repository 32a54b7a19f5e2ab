"""Model folders in MLflow: attached to their stage run (or referenced above a size), registered, fetched.

A stage's model folder is a DVC output. Its MLflow run gets either the files themselves under ``model/``
(small models: the run is self-contained) or ``model/reference.json`` naming the DVC path, the md5 dvc.lock
records for it and the command that brings it back (large models: the store holds no second copy of
gigabytes). Registered models point at ``runs:/<run>/model`` either way; :func:`resolve_model` turns a
``models:/NAME/VERSION`` or ``runs:/RUN/PATH`` address back into a local folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cola.errors import ColaError
from cola.tracking.location import repo_root

MODEL_ARTIFACT = "model"
REFERENCE_FILE = "reference.json"
MODEL_URI_SCHEMES = ("models:/", "runs:/")


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_md5(path: Path) -> str:
    """The md5 DVC 3 records in dvc.lock for `path`: a file's md5, or for a folder the md5 of its sorted
    ``[{"md5", "relpath"}]`` listing plus ``.dir`` (dvc_data's ``Tree.digest``), so the two compare."""
    if path.is_file():
        return _file_md5(path)
    entries = sorted(({"md5": _file_md5(f), "relpath": f.relative_to(path).as_posix()}
                      for f in path.rglob("*") if f.is_file()), key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def folder_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (0 for a path that is not there)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def model_reference(path: Path) -> dict[str, Any]:
    """Where a model folder lives outside MLflow and how to get it back."""
    md5 = dvc_md5(path)
    return {"dvc_path": path.as_posix(), "md5": md5, "bytes": folder_bytes(path),
            "fetch": f"dvc pull {path.as_posix()}  (in a checkout whose dvc.lock records md5 {md5} for it)"}


def registered_name(prefix: str, run_name: str) -> str:
    """A stable registry name for a stage run's model: ``bc`` -> ``cola-bc``, ``rl@cola-math`` ->
    ``cola-rl-cola-math`` (the registry allows no ``@``)."""
    return f"{prefix}-{run_name.replace('@', '-')}"


def register(client: Any, name: str, run_id: str, tags: dict[str, str]) -> str:
    """A new version of registered model `name` (created on first use) from the run's ``model/`` artifact;
    returns its ``models:/NAME/VERSION`` address."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="A cola stage's model; each version is one run.")
    version = client.create_model_version(name, source=f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id,
                                          tags=tags)
    return f"models:/{name}/{version.version}"


def log_model(client: Any, run_id: str, stage: str, path: str, attach_up_to_mb: float,
              registry_name: str | None) -> None:
    """Put model folder `path` on run `run_id` (files or a reference, as its size says), tag it ``model.*``
    and, with `registry_name`, register it."""
    folder = Path(path)
    ref = model_reference(folder)  # an md5 of every file: paid only when MLflow is on
    attached = ref["bytes"] <= attach_up_to_mb * 2**20
    tags = {"model.dvc_path": ref["dvc_path"], "model.md5": ref["md5"], "model.bytes": str(ref["bytes"]),
            "model.stored": "files" if attached else "reference"}
    if attached:
        client.log_artifacts(run_id, str(folder), MODEL_ARTIFACT)
    else:
        client.log_dict(run_id, ref, f"{MODEL_ARTIFACT}/{REFERENCE_FILE}")
    if registry_name is not None:
        uri = tags["model.registered"] = register(client, registry_name, run_id,
                                                  {"stage": stage, "md5": ref["md5"]})
        print(f"MLflow: {path} registered as {uri}", flush=True)
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])


def is_model_uri(address: str) -> bool:
    return address.startswith(MODEL_URI_SCHEMES)


def resolve_model(address: str, cache: Path | None = None) -> Path:
    """A local model folder for `address`: a folder as given, or a ``models:/``/``runs:/`` address downloaded
    once into ``<repo>/.cola/models/`` (registered versions and run artifacts never change). A run that holds
    only a reference resolves to the DVC path when that folder's md5 still matches, else a one-line error with
    the command that fetches it."""
    if not is_model_uri(address):
        return Path(address)
    cache = cache or repo_root() / ".cola" / "models"
    target = cache / "".join(c if c.isalnum() or c in "-_." else "_" for c in address)
    if not target.is_dir():
        _download(address, target)
    reference = target / REFERENCE_FILE
    if not reference.is_file():
        return target
    ref = json.loads(reference.read_text())
    local = Path(ref["dvc_path"])
    if not local.is_absolute():
        local = repo_root() / local
    if local.exists() and dvc_md5(local) == ref["md5"]:
        return local
    raise ColaError(f"{address} is stored by reference ({ref['bytes'] / 2**20:.0f} MiB): {ref['fetch']}")


def _download(address: str, target: Path) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    from cola.tracking.failures import _quiet_mlflow, _short
    from cola.tracking.location import tracking_uri

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        with _quiet_mlflow():
            mlflow.set_tracking_uri(tracking_uri())
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=address, dst_path=str(tmp)))
        os.replace(got, target)  # whole or not at all: a killed download leaves no half folder behind
    except MlflowException as exc:
        raise ColaError(f"{address}: {_short(exc)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
