"""Model files are untrusted input: code in them is refused, and a damaged active model is replaced."""

from __future__ import annotations

import tomllib

import keras
import numpy as np
import pytest

from bot.model_store import install_shipped_model, model_path, recover_active
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


def test_a_damaged_active_model_falls_back_to_the_shipped_one(store, tmp_path):
    model_path(tmp_path, 1).write_bytes(b"not a model any more")
    live, problem = recover_active(store, tmp_path, 0.7)
    assert live.version == 2 and problem.startswith("model version 1 cannot be loaded")
    assert problem.endswith("Answering with version 2 instead.")
    assert [(m.version, m.status) for m in store.model_versions()] == [(1, "retired"), (2, "active")]
    assert store.model_versions()[0].note.startswith("model version 1 cannot be loaded")
    recognizer, _ = live.current()
    assert 0 <= recognizer.classify(np.zeros((28, 28), np.float32)).digit <= 9  # it answers


def test_an_intact_active_model_is_simply_loaded(store, tmp_path):
    live, problem = recover_active(store, tmp_path, 0.7)
    assert (live.version, problem) == (1, "")
    assert [m.version for m in store.model_versions()] == [1]
