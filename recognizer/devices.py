"""Where the model runs: the devices TensorFlow sees, and the distribution strategy `digitbot train` uses."""

from __future__ import annotations

import faulthandler
import json
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

# TensorFlow is imported only when used: the command line offers these names without paying its import.
STRATEGIES = ("default", "mirrored", "multiworker")


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


def make_strategy(name: str, worker_timeout: float) -> tf.distribute.Strategy:
    """default: TensorFlow's own placement (the first GPU, else the CPU). mirrored: a replica per GPU of
    this machine, gradients all-reduced (one CPU replica where there is no GPU). multiworker: the same
    across the machines that TF_CONFIG names (see join_workers)."""
    import tensorflow as tf

    if name == "multiworker":
        return join_workers(worker_timeout)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy {name!r}; one of {', '.join(STRATEGIES)}")


def join_workers(timeout: float) -> tf.distribute.MultiWorkerMirroredStrategy:
    """MultiWorkerMirroredStrategy over the workers TF_CONFIG names, or exit after `timeout` seconds.

    Its constructor waits for every worker to start, with no time limit and holding the GIL, so neither a
    Python timer nor a signal handler could stop it: faulthandler's watchdog is a C thread, and ends the
    process (status 1) with the stack of where it waited."""
    import tensorflow as tf

    tf_config = json.loads(os.environ["TF_CONFIG"])
    log.info(
        "joining the workers %s as %s %d; if they have not all started within %g s, this process exits "
        "(status 1, 'Timeout' and the stack where it waited)",
        tf_config["cluster"],
        tf_config["task"]["type"],
        tf_config["task"]["index"],
        timeout,
    )
    faulthandler.dump_traceback_later(timeout, exit=True)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    finally:
        faulthandler.cancel_dump_traceback_later()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes what training makes: under a multi-worker strategy the chief only
    (TF_CONFIG's "chief", or else worker 0), as TensorFlow's guide has it; otherwise always."""
    resolver = strategy.cluster_resolver
    if resolver is None or resolver.task_type is None:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """The machines training together: the chief and workers TF_CONFIG names, or this one alone."""
    resolver = strategy.cluster_resolver
    if resolver is None:
        return 1
    spec = resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs)
