"""Training: `digitbot train` fits the CNN on MNIST, keeps the best epoch by validation accuracy,
evaluates once on the test set and writes the model with its model card. On several machines
(`--strategy multiworker`) every worker trains and the chief alone writes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from recognizer import NOT_ONE_DIGIT
from recognizer.augment import add_writing_styles, augment
from recognizer.data import Mnist, to_model_input
from recognizer.devices import describe_devices, is_chief, make_strategy, worker_count
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
    styles: bool = True  # add continental 1s, crossed 7s, touching digits (augment.add_writing_styles)
    patience: int = 10  # early stopping on validation accuracy
    tensorboard_dir: str | None = None
    init_from: str | None = None  # start from this .keras model's weights (a fine-tune) instead of scratch
    strategy: str = "default"  # one of recognizer.devices.STRATEGIES
    worker_timeout: float = 300.0  # multiworker: seconds to wait for every worker TF_CONFIG names to start


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


def make_optimizer(learning_rate: float, steps: int) -> keras.optimizers.Optimizer:
    """Adam with a short warm-up then cosine decay to zero over `steps` batches."""
    warmup = max(1, steps // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / 10,
        decay_steps=max(1, steps - warmup),
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )
    return keras.optimizers.Adam(schedule)


def targets(labels: np.ndarray) -> np.ndarray:
    """Labels -> the probabilities the model should answer, float32 (N, 10): the digit's one-hot row, or for
    NOT_ONE_DIGIT an even spread over the ten, as outlier exposure trains what is no digit (Hendrycks et
    al., 2019). A built-in loss on them, so that a trained model loads anywhere Keras does."""
    labels = np.asarray(labels, np.int64)
    several = labels == NOT_ONE_DIGIT
    if not ((labels >= 0) & (labels <= 9) | several).all():
        raise ValueError(f"labels must be digits or NOT_ONE_DIGIT, got {sorted(set(labels.tolist()))}")
    answer = np.eye(10, dtype=np.float32)[np.where(several, 0, labels)]
    answer[several] = 0.1
    return answer


def compile_model(model: keras.Model, learning_rate: float, steps: int) -> None:
    model.compile(
        optimizer=make_optimizer(learning_rate, steps),
        loss="categorical_crossentropy",
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
    """Fit with the schedule above, on labels that are digits or NOT_ONE_DIGIT (the accuracy it reports
    takes those as right when read as 0). With a validation set, stop early and end with the weights of the
    best epoch by validation accuracy."""
    steps = config.epochs * int(np.ceil(len(train[0]) / config.batch_size))
    compile_model(model, config.learning_rate, steps)
    callbacks = list(extra_callbacks or [])
    validating = validation is not None and len(validation[0]) > 0
    if validating:
        validation = (validation[0], targets(validation[1]))
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy", patience=config.patience, restore_best_weights=True
            )
        )
    if config.tensorboard_dir:
        callbacks.append(keras.callbacks.TensorBoard(config.tensorboard_dir))
    history = model.fit(
        training_dataset(train[0], targets(train[1]), config),
        validation_data=validation if validating else None,
        epochs=config.epochs,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # training_dataset() shuffles, seeded
    )
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def fit_multi_worker(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    strategy: tf.distribute.MultiWorkerMirroredStrategy,
) -> dict[str, list[float]]:
    """fit() under MultiWorkerMirroredStrategy, where Keras 3's Model.fit fails (keras-team/keras#20585): the
    custom training loop of TensorFlow's multi-worker guide, with fit()'s schedule, history, early stopping
    and best epoch. `config.batch_size` is the global batch. Each step's collectives wait for every worker, so
    all of them must run the same steps: a fixed number per epoch over endlessly repeated shards, and the
    same decision to stop."""
    x, y = train[0], targets(train[1])
    steps_per_epoch = max(1, len(x) // config.batch_size)
    with strategy.scope():
        optimizer = make_optimizer(config.learning_rate, config.epochs * steps_per_epoch)

    def shard(context: tf.distribute.InputContext) -> tf.data.Dataset:
        mine = slice(context.input_pipeline_id, None, context.num_input_pipelines)
        per_replica = replace(config, batch_size=context.get_per_replica_batch_size(config.batch_size))
        return training_dataset(x[mine], y[mine], per_replica).repeat()

    batches = iter(strategy.distribute_datasets_from_function(shard))

    def replica_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            per_example = keras.losses.categorical_crossentropy(labels, probabilities)
            loss = tf.nn.compute_average_loss(per_example)  # over the global batch: gradients are summed
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)  # all-reduced (summed) across replicas
        hits = tf.reduce_sum(
            tf.cast(tf.argmax(probabilities, axis=1) == tf.argmax(labels, axis=1), tf.float32)
        )
        return tf.stack([loss, hits, tf.cast(tf.shape(labels)[0], tf.float32)])

    @tf.function
    def train_step() -> tf.Tensor:
        """The global batch's [mean loss, correct answers, images], summed over the replicas."""
        return strategy.reduce("SUM", strategy.run(replica_step, args=next(batches)), axis=None)

    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    best_weights, epochs_without_gain = None, 0
    for epoch in range(1, config.epochs + 1):
        losses, hits, images = np.array([train_step().numpy() for _ in range(steps_per_epoch)]).T
        history["loss"].append(float(losses.mean()))
        history["accuracy"].append(float(hits.sum() / images.sum()))
        if len(validation[0]):
            val_loss, val_accuracy = _validate_across_workers(model, validation, strategy)
            history["val_loss"].append(val_loss)
            history["val_accuracy"].append(val_accuracy)
            if val_accuracy > max(history["val_accuracy"][:-1], default=-1.0):
                best_weights, epochs_without_gain = model.get_weights(), 0
            else:
                epochs_without_gain += 1
        log.info(
            "epoch %d/%d: %s",
            epoch,
            config.epochs,
            ", ".join(f"{k} {v[-1]:.4f}" for k, v in history.items() if v),
        )
        if epochs_without_gain >= config.patience:
            break
    if best_weights is not None:
        model.set_weights(best_weights)
    return {key: values for key, values in history.items() if values}


def _validate_across_workers(
    model: keras.Model, validation: tuple[np.ndarray, np.ndarray], strategy: tf.distribute.Strategy
) -> tuple[float, float]:
    """Loss and accuracy on the validation set, averaged over the workers. Each worker's BatchNormalization
    statistics are its own (Keras does not aggregate them), so their figures differ a little: the average is
    the same everywhere, and so is the decision to stop."""
    x, y = validation
    probabilities = np.concatenate([model(x[i : i + 1000], training=False) for i in range(0, len(x), 1000)])
    loss = float(keras.losses.sparse_categorical_crossentropy(y, probabilities).numpy().mean())
    accuracy = float((probabilities.argmax(axis=1) == y).mean())
    loss, accuracy = strategy.reduce("MEAN", tf.constant([loss, accuracy]), axis=None).numpy()
    return float(loss), float(accuracy)


def train(mnist: Mnist, config: TrainConfig, output: Path, command: str | None = None) -> dict | None:
    """Train a new model on MNIST, save it to `output` (.keras) and its card beside it; return the card.
    Under a multi-worker strategy only the chief writes and returns the card; the other workers get None."""
    strategy = make_strategy(config.strategy, config.worker_timeout)  # first: it sets up TensorFlow's runtime
    log.info(
        "training on %s: %s strategy, %d replica(s)",
        describe_devices(),
        config.strategy,
        strategy.num_replicas_in_sync,
    )
    output = Path(output)
    keras.utils.set_random_seed(config.seed)
    train_set, validation = split_train_validation(mnist, config)
    log.info("training on %d images, validating on %d", len(train_set[0]), len(validation[0]))
    start = _describe_start(config.init_from)  # before training: `output` may be the file we start from
    started = time.monotonic()
    with strategy.scope():  # the model and its optimizer are created (and mirrored) inside
        model = keras.models.load_model(config.init_from) if config.init_from else build_model()
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            history = fit_multi_worker(model, train_set, validation, config, strategy)
        else:
            history = fit(model, train_set, validation, config)
    seconds = time.monotonic() - started
    if not is_chief(strategy):
        log.info("training done; the chief writes the model")
        return None
    # Saved beside the target and moved into place: the model being replaced (perhaps the shipped one, or
    # the one a running bot reads) is never a half-written file.
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial.keras")
    model.save(partial)
    os.replace(partial, output)
    # The file as written, outside the strategy: under a multi-worker one predict() would wait for the others.
    written = keras.models.load_model(output, compile=False)
    evaluation = evaluate_arrays(written, to_model_input(mnist.x_test), mnist.y_test)
    distribution = {"workers": worker_count(strategy), "replicas": strategy.num_replicas_in_sync}
    card = model_card(
        model, output, config, mnist, history, seconds, evaluation, command, start, distribution
    )
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
    distribution: dict | None = None,
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
        "distribution": distribution,
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


def _distribution_line(card: dict) -> str:
    distribution = card.get("distribution")
    if not distribution:
        return ""
    return (
        f"- Trained with the {card['config']['strategy']} strategy: {distribution['workers']} worker(s), "
        f"{distribution['replicas']} replica(s)\n"
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
{_distribution_line(card)}- Data: {card["data"]["source"]}, sha256:
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
