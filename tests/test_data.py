import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from recognizer.data import MNIST_FILES, DataError, load_idx_dir, read_idx, to_model_input


def idx_bytes(array: np.ndarray) -> bytes:
    magic = {1: 0x801, 3: 0x803}[array.ndim]
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist_dir(directory, n_train=6, n_test=4, gz=True):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28)),
        "y_train": rng.integers(0, 10, n_train),
        "x_test": rng.integers(0, 256, (n_test, 28, 28)),
        "y_test": rng.integers(0, 10, n_test),
    }
    for key, name in MNIST_FILES.items():
        data = idx_bytes(arrays[key])
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_reads_a_good_idx_directory(tmp_path, gz):
    arrays = write_mnist_dir(tmp_path, gz=gz)
    mnist = load_idx_dir(tmp_path)
    np.testing.assert_array_equal(mnist.x_train, arrays["x_train"])
    np.testing.assert_array_equal(mnist.y_test, arrays["y_test"])
    assert mnist.x_test.shape == (4, 28, 28)
    assert len(mnist.checksums) == 4 and all(len(h) == 64 for h in mnist.checksums.values())


def test_truncated_idx_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((3, 28, 28)))[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated.*\(3, 28, 28\)"):
        read_idx(path)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(50)))[:20])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: cannot read"):
        read_idx(path)


def test_wrong_magic_names_the_file(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x02" + (5).to_bytes(4, "big") + bytes(5))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: wrong magic number 0x00000802"):
        read_idx(path)


def test_missing_files_are_listed(tmp_path):
    write_mnist_dir(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing t10k-images-idx3-ubyte\[\.gz\]"):
        load_idx_dir(tmp_path)


def test_model_input_is_float_in_unit_range():
    x = to_model_input(np.array([[[0, 255] * 14] * 28], dtype=np.uint8))
    assert x.shape == (1, 28, 28, 1) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0


def run_cli(*args, env_extra=None, home=None):
    env = {k: v for k, v in os.environ.items() if k != "DIGITBOT_MNIST_DIR"}
    env.update(env_extra or {})
    if home:
        env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_offline_with_no_data_gives_one_clear_message(tmp_path):
    # A proxy on a closed local port makes the download fail at once, online or not.
    proxy = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = run_cli("evaluate", env_extra=proxy, home=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("digitbot: error: MNIST not found")
    assert "DIGITBOT_MNIST_DIR" in message and ".keras/datasets/mnist.npz" in message


def test_corrupt_idx_through_the_cli_is_one_line(tmp_path):
    write_mnist_dir(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + bytes(20)))
    result = run_cli("evaluate", "--mnist-dir", str(tmp_path), home=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "t10k-images-idx3-ubyte.gz" in result.stderr.strip().splitlines()[-1]
