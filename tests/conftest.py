from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MNIST_DIR = Path(os.environ.get("DIGITBOT_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist")).resolve()
POSTGRES_URL = os.environ.get(
    "DIGITBOT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def postgres_url():
    """The test PostgreSQL database, in a fresh schema dropped afterwards; skips when it is not reachable."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as c:
            c.execute(text("SELECT 1"))
    except OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL} (set DIGITBOT_TEST_POSTGRES_URL): {exc}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.connect() as c:
        c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(scope="session")
def mnist():
    from recognizer.data import load_idx_dir

    if not MNIST_DIR.is_dir():
        message = f"MNIST IDX files not found at {MNIST_DIR}; set DIGITBOT_MNIST_DIR"
        if os.environ.get("DIGITBOT_REQUIRE_DATA") == "1":  # CI: half the suite skipped is not a pass
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return load_idx_dir(MNIST_DIR)


@pytest.fixture(scope="session")
def tiny_model(mnist, tmp_path_factory) -> Path:
    """A model trained by the real `digitbot train` on 3,000 images for 3 epochs (about 20 s)."""
    from bot.cli import main

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    args = ["train", "--mnist-dir", str(MNIST_DIR), "--limit", "3000", "--epochs", "3", "--output", str(path)]
    assert main(args) == 0
    return path


@pytest.fixture(scope="session")
def test_images(mnist) -> tuple[np.ndarray, np.ndarray]:
    from recognizer.data import to_model_input

    return to_model_input(mnist.x_test[:2000]), mnist.y_test[:2000].astype(np.int64)
