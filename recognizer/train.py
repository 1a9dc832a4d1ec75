"""Training: `digitbot train` fits the CNN on MNIST, keeps the best epoch by validation accuracy,
evaluates once on the test set and writes the model with its model card."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from recognizer.augment import add_writing_styles, augment
from recognizer.data import Mnist, to_model_input
from recognizer.evaluate import Evaluation, evaluate_arrays
from recognizer.model import build_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    validation_split: float = 0.1
    learning_rate: float = 2e-3
    seed: int = 42
    limit: int | None = None  # train on the first N training images only (quick runs)
    augment: bool = True
    styles: bool = True  # add continental 1s and crossed 7s (recognizer.augment.add_writing_styles)
    patience: int = 10  # early stopping on validation accuracy
    tensorboard_dir: str | None = None
    init_from: str | None = None  # start from this .keras model's weights (a fine-tune) instead of scratch


def split_train_validation(mnist: Mnist, config: TrainConfig):
    """A seeded shuffle of the (possibly limited) training set, split into train and validation."""
    x, y = mnist.x_train, mnist.y_train
    if config.limit:
        x, y = x[: config.limit], y[: config.limit]
    order = np.random.default_rng(config.seed).permutation(len(x))
    n_val = round(len(x) * config.validation_split)
    val, train = order[:n_val], order[n_val:]
    x_train, y_train = x[train], y[train]
    if config.styles:
        x_train, y_train = add_writing_styles(x_train, y_train, seed=config.seed)
    return (to_model_input(x_train), y_train), (to_model_input(x[val]), y[val])


def training_dataset(x: np.ndarray, y: np.ndarray, config: TrainConfig) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.shuffle(len(x), seed=config.seed, reshuffle_each_iteration=True).batch(config.batch_size)
    if config.augment:
        ds = ds.map(lambda images, labels: (augment(images), labels), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def compile_model(model: keras.Model, learning_rate: float, steps: int) -> None:
    """Adam with a short warm-up then cosine decay to zero over `steps` batches."""
    warmup = max(1, steps // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / 10,
        decay_steps=max(1, steps - warmup),
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def fit(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray] | None,
    config: TrainConfig,
    verbose: str | int = "auto",
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
) -> dict[str, list[float]]:
    """Fit with the schedule above. With a validation set, stop early and end with the weights of the best
    epoch by validation accuracy."""
    steps = config.epochs * int(np.ceil(len(train[0]) / config.batch_size))
    compile_model(model, config.learning_rate, steps)
    callbacks = list(extra_callbacks or [])
    validating = validation is not None and len(validation[0]) > 0
    if validating:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy", patience=config.patience, restore_best_weights=True
            )
        )
    if config.tensorboard_dir:
        callbacks.append(keras.callbacks.TensorBoard(config.tensorboard_dir))
    history = model.fit(
        training_dataset(*train, config),
        validation_data=validation if validating else None,
        epochs=config.epochs,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # training_dataset() shuffles, seeded
    )
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def train(mnist: Mnist, config: TrainConfig, output: Path, command: str | None = None) -> dict:
    """Train a new model on MNIST, save it to `output` (.keras) and its card beside it; return the card."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    train_set, validation = split_train_validation(mnist, config)
    log.info("training on %d images, validating on %d", len(train_set[0]), len(validation[0]))
    model = keras.models.load_model(config.init_from) if config.init_from else build_model()
    start = _describe_start(config.init_from)  # before training: `output` may be the file we start from
    started = time.monotonic()
    history = fit(model, train_set, validation, config)
    seconds = time.monotonic() - started
    # Saved beside the target and moved into place: the model being replaced (perhaps the shipped one, or
    # the one a running bot reads) is never a half-written file.
    partial = output.with_name(f".{output.name}.partial.keras")
    model.save(partial)
    os.replace(partial, output)
    evaluation = evaluate_arrays(model, to_model_input(mnist.x_test), mnist.y_test)
    card = model_card(model, output, config, mnist, history, seconds, evaluation, command, start)
    write_model_card(output, card)
    log.info("test accuracy %.4f, model written to %s", evaluation.accuracy, output)
    return card


def model_card(
    model: keras.Model,
    output: Path,
    config: TrainConfig,
    mnist: Mnist,
    history: dict[str, list[float]],
    seconds: float,
    evaluation: Evaluation,
    command: str | None,
    start: dict | None = None,
) -> dict:
    best_epoch = (
        int(np.argmax(history["val_accuracy"])) + 1 if "val_accuracy" in history else len(history["loss"])
    )
    return {
        "model": output.name,
        "command": command or " ".join(["digitbot", *sys.argv[1:]]),
        "seed": config.seed,
        "config": asdict(config),
        "data": {"source": mnist.source, "sha256": mnist.checksums, "train_images": len(mnist.x_train)},
        "init_from": start,
        "epochs_run": len(history["loss"]),
        "best_epoch": best_epoch,
        "training_seconds": round(seconds, 1),
        "test": evaluation.as_dict(),
        "history": history,
        "parameters": model.count_params(),
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "machine": f"{platform.machine()}, {platform.system()}",
        },
    }


def _describe_start(init_from: str | None) -> dict | None:
    """Where a fine-tuned model started: the file's sha256 and the command and test accuracy on its card."""
    if not init_from:
        return None
    card = load_model_card(Path(init_from)) or {}
    return {
        "sha256": hashlib.sha256(Path(init_from).read_bytes()).hexdigest(),
        "command": card.get("command"),
        "test_accuracy": card.get("test", {}).get("accuracy"),
    }


def _start_line(start: dict | None) -> str:
    if not start:
        return ""
    return (
        f"- Fine-tuned from a model with sha256 `{start['sha256'][:16]}...` (made by `{start['command']}`, "
        f"MNIST test accuracy {start['test_accuracy']})\n"
    )


def card_paths(model_path: Path) -> tuple[Path, Path]:
    """The JSON and Markdown model-card paths that belong to a .keras file."""
    model_path = Path(model_path)
    return model_path.with_suffix(".json"), model_path.with_suffix(".md")


def write_model_card(model_path: Path, card: dict) -> None:
    json_path, md_path = card_paths(model_path)
    json_path.write_text(json.dumps(card, indent=2) + "\n")
    test = card["test"]
    per_class = " | ".join(f"{acc:.2%}" for acc in test["per_class_accuracy"])
    matrix = "\n".join(
        "| " + " | ".join([str(i), *map(str, row)]) + " |" for i, row in enumerate(test["confusion"])
    )
    md_path.write_text(
        f"""# Model card: {card["model"]}

A Keras CNN (Conv2D/BatchNorm/MaxPooling2D blocks, Dense head, softmax over 10 digits), {card["parameters"]:,}
parameters. Input float32 (N, 28, 28, 1) in [0, 1], white ink on black; output 10 probabilities.

- **MNIST test accuracy: {test["accuracy"]:.2%}** (loss {test["loss"]:.4f}, {test["count"]} images,
  evaluated once after training; the epoch was chosen on the validation split only)
- Command: `{card["command"]}`
{_start_line(card.get("init_from"))}- Seed {card["seed"]}; {card["epochs_run"]} epochs run, best epoch \
{card["best_epoch"]} by validation accuracy; training took {card["training_seconds"] / 60:.1f} min on \
{card["versions"]["machine"]}
- Data: {card["data"]["source"]}, sha256:
{chr(10).join(f"  - `{name}` {digest}" for name, digest in card["data"]["sha256"].items())}
- Versions: {", ".join(f"{k} {v}" for k, v in card["versions"].items() if k != "machine")}

## Per-class accuracy (digits 0-9)

| 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 |
|---|---|---|---|---|---|---|---|---|---|
| {per_class} |

## Confusion matrix (rows: actual, columns: predicted)

| | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 |
|---|---|---|---|---|---|---|---|---|---|---|
{matrix}
"""
    )


def load_model_card(model_path: Path) -> dict | None:
    json_path, _ = card_paths(model_path)
    return json.loads(json_path.read_text()) if json_path.is_file() else None
