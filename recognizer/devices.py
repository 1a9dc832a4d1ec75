"""Where the model runs: the devices TensorFlow sees, and the distribution strategy `digitbot train` uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

# TensorFlow is imported only when used: the command line offers these names without paying its import.
STRATEGIES = ("default", "mirrored")


def describe_devices() -> str:
    """The devices the model runs on: "GPU:0 (NVIDIA H100 ...), GPU:1 (...)" or "CPU (no GPU visible ...)"."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU (no GPU visible to TensorFlow)"
    names = []
    for index, gpu in enumerate(gpus):
        name = tf.config.experimental.get_device_details(gpu).get("device_name", "unknown")
        names.append(f"GPU:{index} ({name})")
    return ", ".join(names)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """default: TensorFlow's own placement (the first GPU, else the CPU). mirrored: a replica per GPU of
    this machine, gradients all-reduced (one CPU replica where there is no GPU). No multi-worker strategy:
    Keras 3's fit() fails under MultiWorkerMirroredStrategy (keras-team/keras#20585; see the README)."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy {name!r}; one of {', '.join(STRATEGIES)}")
