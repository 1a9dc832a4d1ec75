"""`digitbot train --strategy mirrored`: one replica per GPU, one on the CPU where there is none."""

from __future__ import annotations

import json
import logging

from bot.cli import main
from tests.conftest import MNIST_DIR

QUICK = ["--mnist-dir", str(MNIST_DIR), "--limit", "600", "--epochs", "2", "--no-augment"]


def test_mirrored_strategy_trains_on_the_cpu_where_there_is_no_gpu(mnist, tmp_path, caplog):
    output = tmp_path / "mirrored.keras"
    with caplog.at_level(logging.INFO, logger="digitbot"):
        assert main(["train", *QUICK, "--strategy", "mirrored", "--output", str(output)]) == 0
    assert "training on CPU (no GPU visible to TensorFlow): mirrored strategy, 1 replica(s)" in caplog.text
    card = json.loads(output.with_suffix(".json").read_text())
    loss = card["history"]["loss"]  # two short epochs: too few to judge accuracy, enough to see it learn
    assert card["config"]["limit"] == 600 and loss[1] < loss[0]
