"""Fine-tuning on MNIST plus users' corrected samples, and the gate a candidate must pass to replace
the active model."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import keras
import numpy as np

from recognizer.data import Mnist, to_model_input
from recognizer.evaluate import evaluate_arrays
from recognizer.train import TrainConfig, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTuneConfig:
    epochs: int = 3
    mnist_samples: int = 20_000  # MNIST training images mixed in, so the model keeps what it knew
    feedback_share: float = 0.25  # corrected samples are oversampled to this share of the mix
    learning_rate: float = 3e-4  # a fraction of training's: adjust, do not relearn
    batch_size: int = 128
    time_budget_s: float = 240.0
    seed: int = 0


class TimeBudget(keras.callbacks.Callback):
    """Stop after the batch that crosses the budget; the weights so far are still a valid candidate."""

    def __init__(self, seconds: float, progress: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.seconds, self.progress = seconds, progress
        self.started = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if time.monotonic() - self.started > self.seconds:
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.progress:
            elapsed = time.monotonic() - self.started
            self.progress(
                f"epoch {epoch + 1} done in {elapsed:.0f} s, accuracy {logs.get('accuracy', 0):.3f}"
            )


def fine_tune(
    model: keras.Model,
    mnist: Mnist,
    images: np.ndarray,
    labels: np.ndarray,
    config: FineTuneConfig,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Continue training `model` in place on a mix of MNIST and the corrected (uint8 28x28) samples."""
    rng = np.random.default_rng(config.seed)
    pick = rng.choice(len(mnist.x_train), min(config.mnist_samples, len(mnist.x_train)), replace=False)
    x, y = [mnist.x_train[pick]], [mnist.y_train[pick].astype(np.int64)]
    if len(images):
        wanted = config.feedback_share / (1 - config.feedback_share) * len(pick)
        repeats = max(1, math.ceil(wanted / len(images)))
        x.append(np.repeat(images, repeats, axis=0))
        y.append(np.repeat(labels.astype(np.int64), repeats))
    train = (to_model_input(np.concatenate(x)), np.concatenate(y))
    settings = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
        validation_split=0.0,
    )
    log.info("fine-tuning on %d images (%d corrected samples, oversampled)", len(train[0]), len(images))
    budget = TimeBudget(config.time_budget_s, progress)
    return fit(model, train, None, settings, verbose=0, extra_callbacks=[budget])


@dataclass(frozen=True)
class Gate:
    promote: bool
    reason: str
    active_mnist: float
    candidate_mnist: float
    active_feedback: float | None
    candidate_feedback: float | None
    holdout: int

    def as_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        def pct(value: float | None) -> str:
            return "   n/a" if value is None else f"{value:6.2%}"

        return (
            f"             active  candidate\n"
            f"MNIST test   {pct(self.active_mnist)}  {pct(self.candidate_mnist)}\n"
            f"feedback     {pct(self.active_feedback)}  {pct(self.candidate_feedback)}"
            f"  ({self.holdout} held out)"
        )


def judge(
    active_mnist: float,
    candidate_mnist: float,
    active_feedback: float | None,
    candidate_feedback: float | None,
    max_mnist_drop: float,
) -> tuple[bool, str]:
    """Promote only if MNIST accuracy drops by at most `max_mnist_drop` and feedback accuracy doesn't drop."""
    drop = active_mnist - candidate_mnist
    if drop > max_mnist_drop + 1e-9:  # accuracies are counts / 10,000: compare without float noise
        return False, f"MNIST test accuracy dropped {drop:.2%} (more than {max_mnist_drop:.2%})"
    if (
        active_feedback is not None
        and candidate_feedback is not None
        and candidate_feedback < active_feedback
    ):
        return False, f"accuracy on held-out feedback dropped {active_feedback - candidate_feedback:.2%}"
    return True, "no worse on MNIST test and on held-out feedback"


def gate(
    active: keras.Model,
    candidate: keras.Model,
    mnist: Mnist,
    holdout_images: np.ndarray,
    holdout_labels: np.ndarray,
    max_mnist_drop: float = 0.002,
) -> Gate:
    """Score both models on the MNIST test set and on held-out feedback samples (never trained on)."""
    x_test = to_model_input(mnist.x_test)
    scores = {}
    for name, model in (("active", active), ("candidate", candidate)):
        mnist_accuracy = evaluate_arrays(model, x_test, mnist.y_test).accuracy
        feedback = (
            evaluate_arrays(model, to_model_input(holdout_images), holdout_labels).accuracy
            if len(holdout_images)
            else None
        )
        scores[name] = (mnist_accuracy, feedback)
    promote, reason = judge(
        scores["active"][0],
        scores["candidate"][0],
        scores["active"][1],
        scores["candidate"][1],
        max_mnist_drop,
    )
    return Gate(
        promote,
        reason,
        scores["active"][0],
        scores["candidate"][0],
        scores["active"][1],
        scores["candidate"][1],
        len(holdout_images),
    )
