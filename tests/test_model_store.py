"""Model files are untrusted input: code in them is refused, and a damaged active model is replaced."""

from __future__ import annotations

import tomllib

import keras
import numpy as np
import pytest
from sqlalchemy import text

from bot.model_store import cache_path, install_shipped_model, load_active, recover_active
from recognizer import Recognizer
from storage.db import connect, sqlite_url
from storage.repository import Store
from tests.conftest import ROOT


def test_keras_is_pinned_past_the_safe_mode_bypasses():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "keras>=3.11" in [d.split("#")[0].strip() for d in dependencies]
    assert tuple(int(p) for p in keras.version().split(".")[:2]) >= (3, 11)


def test_a_model_that_carries_code_is_refused(tmp_path):
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(keras.layers.Lambda(lambda t: t * 2)(inputs)))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        Recognizer.load(path)


@pytest.fixture
def store(tmp_path):
    store = Store(connect(sqlite_url(tmp_path)))
    install_shipped_model(store, tmp_path)
    yield store
    store.engine.dispose()


def damage(store, tmp_path) -> None:
    """The active version's file, here and in the database, replaced by what Keras cannot load."""
    sha = store.active_model().sha256
    cache_path(tmp_path, sha).write_bytes(b"not a model any more")
    with store.session.begin() as s:
        s.execute(text("UPDATE model_files SET data = :d"), {"d": b"not a model any more"})


def test_a_damaged_active_model_falls_back_to_the_shipped_one(store, tmp_path):
    damage(store, tmp_path)
    live, problem = recover_active(store, tmp_path, 0.7)
    assert live.version == 2 and problem.startswith("model version 1 cannot be loaded")
    assert problem.endswith("Answering with version 2 instead.")
    assert [(m.version, m.status) for m in store.model_versions()] == [(1, "retired"), (2, "active")]
    assert store.model_versions()[0].note.startswith("model version 1 cannot be loaded")
    recognizer, _ = live.current()
    assert 0 <= recognizer.classify(np.zeros((28, 28), np.float32)).digit <= 9  # it answers


def test_a_replica_without_a_copy_loads_the_databases_and_keeps_it(store, tmp_path):
    elsewhere = tmp_path / "another-replica"  # no shared disk: an empty data directory
    assert load_active(store, elsewhere, 0.7).version == 1
    kept = cache_path(elsewhere, store.active_model().sha256)
    assert kept.read_bytes() == cache_path(tmp_path, store.active_model().sha256).read_bytes()


def test_a_version_recorded_before_the_database_kept_copies_is_loaded_and_shared(store, tmp_path):
    with store.session.begin() as s:
        s.execute(text("DELETE FROM model_files"))  # as the migration left the versions of earlier releases
    sha = store.active_model().sha256
    old = cache_path(tmp_path, sha).rename(tmp_path / "models" / "v1.keras")
    with store.session.begin() as s:
        s.execute(text("UPDATE model_versions SET path = :p"), {"p": str(old)})
    assert load_active(store, tmp_path, 0.7).version == 1  # from the recorded path, on its own host
    assert store.model_file(sha) == old.read_bytes()  # ...and now from anywhere
    assert load_active(store, tmp_path / "another-replica", 0.7).version == 1


def test_an_intact_active_model_is_simply_loaded(store, tmp_path):
    live, problem = recover_active(store, tmp_path, 0.7)
    assert (live.version, problem) == (1, "")
    assert [m.version for m in store.model_versions()] == [1]
