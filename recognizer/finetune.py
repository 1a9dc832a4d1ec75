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

from recognizer import percent
from recognizer.augment import add_writing_styles
from recognizer.data import Mnist, to_model_input
from recognizer.evaluate import evaluate_arrays
from recognizer.train import TrainConfig, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTuneConfig:
    epochs: int = 3
    mnist_samples: int = 20_000  # MNIST training images mixed in, so the model keeps what it knew
    feedback_share: float = 0.25  # corrected samples are oversampled to at most this share of the mix
    max_repeats: int = 40  # ...but no sample more often than this (augmented each time): 3 corrections
    # must not weigh like 300, or MNIST suffers and one photo is memorised
    max_user_share: float = 0.25  # one user's samples fill at most this share of the corrections' part
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


def repeats(users: np.ndarray, others: int, config: FineTuneConfig) -> np.ndarray:
    """How often each corrected sample (given by its user) appears in a mix with `others` other images:
    oversampled towards `feedback_share`, at most `max_repeats` times, and no user beyond `max_user_share`
    of that part."""
    if not len(users):
        return np.zeros(0, np.int64)
    budget = config.feedback_share / (1 - config.feedback_share) * others
    each = np.full(len(users), min(config.max_repeats, max(1, int(budget // len(users)))), np.int64)
    ids, counts = np.unique(users, return_counts=True)
    for user, count in zip(ids, counts, strict=True):
        each[users == user] = np.clip(int(config.max_user_share * budget // count), 1, each[users == user])
    return each


def training_mix(
    mnist: Mnist, images: np.ndarray, labels: np.ndarray, users: np.ndarray, config: FineTuneConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (x uint8 (N, 28, 28), y: digits or NOT_ONE_DIGIT) to fine-tune on, and how often each users'
    sample is in it.

    What training taught is rehearsed, the ways of writing it added included: MNIST barely has continental
    1s and crossed 7s, and a run on MNIST alone forgot them (a real continental 1 read as 7 again); nor
    touching digits (augment.touching_digits)."""
    rng = np.random.default_rng(config.seed)
    pick = rng.choice(len(mnist.x_train), min(config.mnist_samples, len(mnist.x_train)), replace=False)
    known_x, known_y = add_writing_styles(mnist.x_train[pick], mnist.y_train[pick], seed=config.seed)
    each = repeats(users, len(known_x), config)
    x = np.concatenate([known_x, np.repeat(images, each, axis=0)])
    y = np.concatenate([known_y, np.repeat(labels.astype(np.int64), each)])
    return x, y, each


def fine_tune(
    model: keras.Model,
    mnist: Mnist,
    images: np.ndarray,
    labels: np.ndarray,
    users: np.ndarray,
    config: FineTuneConfig,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Continue training `model` in place on a mix of MNIST and the users' (uint8 28x28) samples, labelled
    with digits or NOT_ONE_DIGIT."""
    x, y, each = training_mix(mnist, images, labels, users, config)
    settings = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
        validation_split=0.0,
    )
    log.info(
        "fine-tuning on %d images: %d MNIST (continental 1s, crossed 7s, touching digits added), "
        "%d users' samples repeated %d-%d times",
        len(x),
        len(x) - each.sum(),
        len(images),
        each.min(initial=0),
        each.max(initial=0),
    )
    budget = TimeBudget(config.time_budget_s, progress)
    return fit(model, (to_model_input(x), y), None, settings, verbose=0, extra_callbacks=[budget])


MIN_HOLDOUT_SAMPLES = 20  # fewer held-out samples (or users) than this cannot show a candidate is worse
MIN_HOLDOUT_USERS = 2
SIGNIFICANCE = 0.05


def mcnemar_worse(worse: int, better: int) -> float:
    """Exact one-sided McNemar test: the chance of at least `worse` of the `worse + better` samples on which
    the two models disagree going against the candidate if both were equally good (a fair coin per sample)."""
    n = worse + better
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2**n


@dataclass(frozen=True)
class Gate:
    promote: bool
    reason: str
    active_mnist: float
    candidate_mnist: float
    holdout: int  # held-out feedback samples
    holdout_users: int
    active_feedback: float | None  # accuracy on them
    candidate_feedback: float | None
    worse: int = 0  # held-out samples the active model reads right and the candidate wrong
    better: int = 0  # ...and the other way round
    p_value: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        def pct(value: float | None) -> str:
            return percent(value, decimals=2, width=6)

        return (
            f"             active  candidate\n"
            f"MNIST test   {pct(self.active_mnist)}  {pct(self.candidate_mnist)}\n"
            f"feedback     {pct(self.active_feedback)}  {pct(self.candidate_feedback)}"
            f"  ({self.holdout} held out, from {self.holdout_users} users)"
        )


def judge(
    active_mnist: float,
    candidate_mnist: float,
    active_right: np.ndarray,
    candidate_right: np.ndarray,
    holdout_users: int,
    max_mnist_drop: float,
) -> tuple[bool, str, float | None]:
    """-> (promote, reason, p-value). MNIST test accuracy may drop by at most `max_mnist_drop`; on held-out
    feedback (per sample: right or not, for each model) the candidate is rejected only when an exact
    McNemar test says it is worse at the 5% level, so one sample flipping decides nothing."""
    drop = active_mnist - candidate_mnist
    if drop > max_mnist_drop + 1e-9:  # accuracies are counts / 10,000: compare without float noise
        return False, f"MNIST test accuracy dropped {drop:.2%} (more than {max_mnist_drop:.2%})", None
    if len(active_right) < MIN_HOLDOUT_SAMPLES or holdout_users < MIN_HOLDOUT_USERS:
        return (
            True,
            f"too little held-out feedback to judge ({len(active_right)} samples from {holdout_users} "
            f"users; {MIN_HOLDOUT_SAMPLES} from {MIN_HOLDOUT_USERS} needed): decided on MNIST test "
            f"accuracy alone, within {max_mnist_drop:.2%}",
            None,
        )
    worse = int(np.sum(active_right & ~candidate_right))
    better = int(np.sum(candidate_right & ~active_right))
    p = mcnemar_worse(worse, better)
    found = f"on held-out feedback {worse} samples now wrong, {better} now right (exact McNemar p={p:.3f})"
    if p < SIGNIFICANCE:
        return False, f"worse {found}", p
    return True, f"MNIST test accuracy within {max_mnist_drop:.2%}; {found}", p


def gate(
    active: keras.Model,
    candidate: keras.Model,
    mnist: Mnist,
    holdout_images: np.ndarray,
    holdout_labels: np.ndarray,
    holdout_users: int,
    max_mnist_drop: float = 0.002,
) -> Gate:
    """Score both models on the MNIST test set and on held-out feedback samples (never trained on)."""
    x_test = to_model_input(mnist.x_test)
    mnist_accuracy, right = {}, {}
    for name, model in (("active", active), ("candidate", candidate)):
        mnist_accuracy[name] = evaluate_arrays(model, x_test, mnist.y_test).accuracy
        predicted = (
            model.predict(to_model_input(holdout_images), verbose=0).argmax(axis=1)
            if len(holdout_images)
            else np.zeros(0, np.int64)
        )
        right[name] = predicted == holdout_labels
    promote, reason, p = judge(
        mnist_accuracy["active"],
        mnist_accuracy["candidate"],
        right["active"],
        right["candidate"],
        holdout_users,
        max_mnist_drop,
    )
    judged = len(holdout_images) > 0

    return Gate(
        promote=promote,
        reason=reason,
        active_mnist=mnist_accuracy["active"],
        candidate_mnist=mnist_accuracy["candidate"],
        holdout=len(holdout_images),
        holdout_users=holdout_users,
        active_feedback=float(right["active"].mean()) if judged else None,
        candidate_feedback=float(right["candidate"].mean()) if judged else None,
        worse=int(np.sum(right["active"] & ~right["candidate"])),
        better=int(np.sum(right["candidate"] & ~right["active"])),
        p_value=p,
    )
