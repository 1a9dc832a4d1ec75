"""Model versions and the one the bot answers with: install, fetch, verify, promote, swap, roll back.

The database keeps every version's file (model_files, by sha256), so replicas share no disk: each keeps
verified copies in its data directory (models/<sha256>.keras) and fetches what it lacks."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from recognizer import DEFAULT_MODEL
from recognizer.data import sha256_file
from storage.models import ModelVersion
from storage.repository import Store

if TYPE_CHECKING:
    from recognizer import Recognizer

log = logging.getLogger(__name__)


class ModelIntegrityError(Exception):
    """A model file is missing or differs from the sha256 the database recorded for it."""


def write_atomically(data: bytes, destination: Path) -> None:
    """Write `data` to `destination` so that readers see the old file or the whole new one, never a part:
    temp file in the same folder, fsync, rename, fsync the folder."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, destination)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    folder = os.open(destination.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def cache_path(data_dir: Path, sha256: str) -> Path:
    """Where this replica keeps its copy of the model file with this sha256."""
    return Path(data_dir) / "models" / f"{sha256}.keras"


def keep_locally(data_dir: Path, data: bytes) -> tuple[Path, str]:
    """Write a model file into this replica's copies; returns its path and sha256."""
    sha = hashlib.sha256(data).hexdigest()
    path = cache_path(data_dir, sha)
    write_atomically(data, path)
    return path, sha


def install_shipped_model(store: Store, data_dir: Path, shipped: Path = DEFAULT_MODEL) -> None:
    """On a fresh data directory the shipped model becomes version 1, active."""
    if not store.model_versions():
        _install_shipped(store, data_dir, shipped, 1, f"shipped model {shipped.name}")


def _install_shipped(store: Store, data_dir: Path, shipped: Path, version: int, note: str) -> ModelVersion:
    data = shipped.read_bytes()
    destination, sha = keep_locally(data_dir, data)
    card_path = shipped.with_suffix(".json")
    accuracy = json.loads(card_path.read_text())["test"]["accuracy"] if card_path.is_file() else None
    model = store.add_model_version(
        version, str(destination), sha, mnist_accuracy=accuracy, status="active", note=note, data=data
    )
    log.info("installed the shipped model as version %d (%s)", version, destination)
    return model


def _refuse(model: ModelVersion, source: str, actual: str) -> ModelIntegrityError:
    return ModelIntegrityError(
        f"model version {model.version}: {source} has sha256 {actual[:12]}..., "
        f"the database recorded {model.sha256[:12]}...; refusing to load it"
    )


def version_file(store: Store, model: ModelVersion, data_dir: Path) -> Path:
    """A local file of the version whose sha256 is the recorded one: this replica's copy, else the
    database's copy (kept locally from then on), else, for versions recorded before the database kept
    copies, the file at the recorded path (the database then keeps a copy for the other replicas)."""
    cached = cache_path(data_dir, model.sha256)
    if cached.is_file() and sha256_file(cached) == model.sha256:
        return cached
    data = store.model_file(model.sha256)
    if data is not None:
        if (actual := hashlib.sha256(data).hexdigest()) != model.sha256:
            raise _refuse(model, "the database's copy", actual)
        write_atomically(data, cached)
        log.info("model version %d fetched from the database into %s", model.version, cached)
        return cached
    path = Path(model.path)
    if not path.is_file():
        raise ModelIntegrityError(f"model version {model.version}: file {path} is missing")
    data = path.read_bytes()
    if (actual := hashlib.sha256(data).hexdigest()) != model.sha256:
        raise _refuse(model, str(path), actual)
    store.keep_model_file(model.sha256, data)
    return path


def load_version(store: Store, model: ModelVersion, data_dir: Path, min_confidence: float) -> Recognizer:
    """Load a recorded version (see version_file), refusing a file whose sha256 is not the recorded one."""
    path = version_file(store, model, data_dir)
    from recognizer import Recognizer  # TensorFlow: only when a model is really loaded

    return Recognizer.load(path, min_confidence)


class LiveModel:
    """The recognizer that answers now and its version. Requests take `current()` once and use that pair,
    so a swap between requests never mixes versions and never drops a request."""

    def __init__(self, recognizer: Recognizer, version: int) -> None:
        self._current = (recognizer, version)
        self._lock = threading.Lock()

    def current(self) -> tuple[Recognizer, int]:
        return self._current  # one attribute read: atomic

    @property
    def version(self) -> int:
        return self._current[1]

    def swap(self, recognizer: Recognizer, version: int) -> None:
        with self._lock:
            self._current = (recognizer, version)
        log.info("now answering with model version %d", version)


def load_active(store: Store, data_dir: Path, min_confidence: float) -> LiveModel:
    active = store.active_model()
    if active is None:
        raise ModelIntegrityError("no active model version in the database")
    return LiveModel(load_version(store, active, data_dir, min_confidence), active.version)


def recover_active(
    store: Store, data_dir: Path, min_confidence: float, shipped: Path = DEFAULT_MODEL
) -> tuple[LiveModel, str]:
    """The active version, or when its file is missing or will not load (a bot that exits here would be
    restarted into the same failure forever): the newest earlier version that loads, else the shipped model
    installed as a new version, made active. Returns it and what went wrong ("" when nothing did)."""
    active = store.active_model()
    if active is None:
        raise ModelIntegrityError("no active model version in the database")
    try:
        return LiveModel(load_version(store, active, data_dir, min_confidence), active.version), ""
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in many ways inside Keras
        problem = f"model version {active.version} cannot be loaded: {exc}"
    log.error("%s", problem)
    earlier = [m for m in store.model_versions() if m.version < active.version and m.status == "retired"]
    for model in sorted(earlier, key=lambda m: m.version, reverse=True):
        try:
            recognizer = load_version(store, model, data_dir, min_confidence)
        except Exception as exc:  # noqa: BLE001
            log.error("model version %d cannot be loaded either: %s", model.version, exc)
            continue
        store.activate(model.version)
        break
    else:
        model = _install_shipped(
            store, data_dir, shipped, store.next_model_version(), f"shipped model, reinstalled: {problem}"
        )
        recognizer = load_version(store, model, data_dir, min_confidence)
    store.set_model_status(active.version, "retired", note=problem)
    log.error("answering with model version %d instead", model.version)
    return LiveModel(recognizer, model.version), f"{problem}. Answering with version {model.version} instead."


def rollback(store: Store, live: LiveModel, data_dir: Path, min_confidence: float) -> ModelVersion:
    """Re-activate the version the active one replaced (its parent, else the newest retired one)."""
    versions = {m.version: m for m in store.model_versions()}
    active = versions.get(live.version)
    previous = versions.get(active.parent_version) if active and active.parent_version else None
    if previous is None:
        retired = [m for m in versions.values() if m.status == "retired"]
        previous = max(retired, key=lambda m: m.version) if retired else None
    if previous is None:
        raise LookupError("there is no earlier model version to roll back to")
    recognizer = load_version(store, previous, data_dir, min_confidence)
    store.activate(previous.version)
    live.swap(recognizer, previous.version)
    return previous
