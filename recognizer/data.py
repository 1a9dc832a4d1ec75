"""MNIST loading: the original IDX files from a directory, else the Keras cache, else a download."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
KERAS_CACHE = Path("~/.keras/datasets/mnist.npz")
_IDX_MAGIC = {0x00000801: 1, 0x00000803: 3}  # unsigned-byte labels (1-D) and images (3-D)


class DataError(Exception):
    """A data file is missing or malformed; the message says which one and why."""


@dataclass(frozen=True)
class Mnist:
    x_train: np.ndarray  # uint8 (N, 28, 28), white ink on black
    y_train: np.ndarray  # uint8 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> sha256


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (gzipped or raw) of unsigned bytes into an array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip raises these for truncated or non-gzip input
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if len(raw) < 4:
        raise DataError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _IDX_MAGIC:
        raise DataError(f"{path}: wrong magic number 0x{magic:08x}, expected 0x00000801 or 0x00000803")
    ndim = _IDX_MAGIC[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    found = len(raw) - header
    if found != expected:
        kind = "truncated" if found < expected else "has trailing bytes"
        raise DataError(f"{path}: {kind}: header says {shape} = {expected} bytes of data, found {found}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def sha256_file(path: Path) -> str:
    """The file's sha256, read in 1 MB chunks (model files and datasets can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_idx_dir(directory: str | Path) -> Mnist:
    directory = Path(directory).expanduser()
    paths = {key: _find_idx(directory, name) for key, name in MNIST_FILES.items()}
    missing = [MNIST_FILES[key] for key, path in paths.items() if path is None]
    if missing:
        raise DataError(f"{directory}: missing {', '.join(f'{m}[.gz]' for m in missing)}")
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{directory}: {split} images {x.shape} and labels {y.shape} do not match")
    return Mnist(**arrays, source=str(directory), checksums={p.name: sha256_file(p) for p in paths.values()})


def load_npz(path: str | Path) -> Mnist:
    path = Path(path).expanduser()
    try:
        with np.load(path) as npz:
            arrays = {key: npz[key] for key in MNIST_FILES}
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: not a usable MNIST .npz ({exc})") from exc
    return Mnist(**arrays, source=str(path), checksums={path.name: sha256_file(path)})


def load_mnist(mnist_dir: str | Path | None = None) -> Mnist:
    """Load MNIST from `mnist_dir`, `$DIGITBOT_MNIST_DIR`, the Keras cache, or a download, in that order."""
    mnist_dir = mnist_dir or os.environ.get("DIGITBOT_MNIST_DIR")
    if mnist_dir:
        mnist = load_idx_dir(mnist_dir)
        log.info("MNIST loaded from %s", mnist.source)
        return mnist
    cache = KERAS_CACHE.expanduser()
    if cache.is_file():
        return load_npz(cache)
    try:
        import keras

        keras.datasets.mnist.load_data()  # downloads into the cache
    except Exception as exc:  # noqa: BLE001 - any download failure becomes the one message below
        raise DataError(
            "MNIST not found. Looked in: --mnist-dir / $DIGITBOT_MNIST_DIR (not set), "
            f"the Keras cache {cache} (absent), and a download (failed: {exc.__class__.__name__}). "
            "Fix: point --mnist-dir or DIGITBOT_MNIST_DIR at a folder holding the four original IDX "
            "files (train-images-idx3-ubyte.gz, ...), or copy mnist.npz into ~/.keras/datasets/."
        ) from None
    return load_npz(cache)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float (N, 28, 28) in [0, 1] -> uint8, as MNIST is kept (and the inputs learnt from are)."""
    return (np.clip(np.asarray(images, np.float32), 0, 1) * 255).round().astype(np.uint8)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1], the model's input."""
    return (np.asarray(images, dtype=np.float32) / 255.0)[..., None]
