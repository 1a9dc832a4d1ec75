"""`digitbot train --strategy mirrored`: one replica per GPU, one on the CPU where there is none;
`--strategy multiworker`: worker processes on 127.0.0.1 training together, the chief alone writing."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

from bot.cli import main
from tests.conftest import MNIST_DIR, ROOT

QUICK = ["--mnist-dir", str(MNIST_DIR), "--limit", "600", "--epochs", "2", "--no-augment"]
# Each worker imports TensorFlow, traces its step and evaluates on the test set: about 40 s on a quiet
# 2-core machine, over 100 s with the cores shared. The deadline is for a hang, not for speed.
WORKER_DEADLINE_S = 400
TINY = ["--mnist-dir", str(MNIST_DIR), "--limit", "300", "--epochs", "2", "--batch-size", "64"]
TINY += ["--no-augment", "--no-styles", "--strategy", "multiworker"]


def test_mirrored_strategy_trains_on_the_cpu_where_there_is_no_gpu(mnist, tmp_path, caplog):
    output = tmp_path / "mirrored.keras"
    with caplog.at_level(logging.INFO):
        assert main(["train", *QUICK, "--strategy", "mirrored", "--output", str(output)]) == 0
    assert "training on CPU (no GPU visible to TensorFlow): mirrored strategy, 1 replica(s)" in caplog.text
    card = json.loads(output.with_suffix(".json").read_text())
    loss = card["history"]["loss"]  # two short epochs: too few to judge accuracy, enough to see it learn
    assert card["config"]["limit"] == 600 and loss[1] < loss[0]
    assert card["distribution"] == {"workers": 1, "replicas": 1}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:  # all bound at once: distinct ports
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def run_workers(tmp_path: Path, workers: int, started: int, *options: str) -> list[tuple[int, str]]:
    """Start workers 0..started-1 of a `workers`-worker TF_CONFIG cluster on 127.0.0.1, each with its own
    models folder (as on separate machines); return each one's exit status and output. Whatever happens,
    no worker outlives the test."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    processes, logs = [], []
    try:
        for index in range(started):
            tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
            output = tmp_path / f"models{index}" / "mw.keras"
            log_path = tmp_path / f"worker{index}.log"
            logs.append(log_path)
            with log_path.open("w") as log_file:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "bot.cli", "train", *TINY, *options, "--output", str(output)],
                        cwd=ROOT,
                        env={**os.environ, "TF_CONFIG": json.dumps(tf_config), "PYTHONPATH": str(ROOT)},
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                    )
                )
        statuses = [process.wait(timeout=WORKER_DEADLINE_S) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()  # SIGKILL: TensorFlow's runtime outlives a SIGTERM while it waits for peers
                process.wait()
    return [(status, path.read_text()) for status, path in zip(statuses, logs, strict=True)]


def epoch_lines(output: str) -> list[str]:
    return [
        line.split("recognizer.train: ")[1]
        for line in output.splitlines()
        if "recognizer.train: epoch" in line
    ]


def test_two_workers_train_one_model_and_the_chief_alone_writes_it(mnist, tmp_path):
    (chief_status, chief_output), (worker_status, worker_output) = run_workers(tmp_path, 2, 2)
    assert chief_status == 0, chief_output[-3000:]
    assert worker_status == 0, worker_output[-3000:]
    # One training, not two: every epoch's figures are reduced across both workers, the same in each.
    assert len(epoch_lines(chief_output)) == 2 and epoch_lines(chief_output) == epoch_lines(worker_output)
    assert sorted(p.name for p in (tmp_path / "models0").iterdir()) == ["mw.json", "mw.keras", "mw.md"]
    assert not (tmp_path / "models1").exists()

    card = json.loads((tmp_path / "models0" / "mw.json").read_text())
    assert card["config"]["strategy"] == "multiworker"
    assert card["distribution"] == {"workers": 2, "replicas": 2}
    assert (
        "Trained with the multiworker strategy: 2 worker(s), 2 replica(s)"
        in (tmp_path / "models0" / "mw.md").read_text()
    )
    loss = card["history"]["loss"]
    assert loss[1] < loss[0]

    from recognizer.model import build_model

    keras.utils.set_random_seed(42)  # the workers' seed: the weights they started from
    initial = build_model().get_weights()
    trained = keras.models.load_model(tmp_path / "models0" / "mw.keras", compile=False).get_weights()
    assert len(trained) == len(initial)
    assert all(not np.allclose(before, after) for before, after in zip(initial, trained, strict=True))


def test_a_worker_whose_peer_never_starts_exits_after_the_timeout(mnist, tmp_path):
    [(status, output)] = run_workers(tmp_path, 2, 1, "--worker-timeout", "10")
    assert status != 0
    assert "if they have not all started within 10 s, this process exits" in output
    assert "Timeout (0:00:10)!" in output and "join_workers" in output
    assert not (tmp_path / "models0").exists()


def test_multiworker_without_tf_config_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert main(["train", *TINY, "--output", str(tmp_path / "mw.keras")]) == 2
    assert "--strategy multiworker needs TF_CONFIG" in capsys.readouterr().err
