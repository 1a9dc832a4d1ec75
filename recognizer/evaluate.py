"""Evaluation the way the field reports it: accuracy, loss, per-class precision/recall, confusion matrix,
and PNG plots (confusion matrix, sample predictions, confident mistakes, training curves)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

EPSILON = 1e-7  # Keras' clip in cross-entropy, so our loss matches model.evaluate


@dataclass(frozen=True)
class Evaluation:
    labels: np.ndarray
    probabilities: np.ndarray  # (N, 10)

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def count_correct(self) -> int:
        return int((self.predicted == self.labels).sum())

    @property
    def accuracy(self) -> float:
        return self.count_correct / len(self.labels)

    @property
    def loss(self) -> float:
        p = np.clip(self.probabilities[np.arange(len(self.labels)), self.labels], EPSILON, 1.0)
        return float(-np.log(p).mean())

    @property
    def confusion(self) -> np.ndarray:
        matrix = np.zeros((10, 10), dtype=np.int64)
        np.add.at(matrix, (self.labels, self.predicted), 1)
        return matrix

    def per_class(self) -> dict[str, dict[str, float]]:
        matrix = self.confusion
        hits = np.diag(matrix)
        actual, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
        recall = np.divide(hits, actual, out=np.zeros(10), where=actual > 0)
        precision = np.divide(hits, predicted, out=np.zeros(10), where=predicted > 0)
        return {
            str(d): {"precision": float(precision[d]), "recall": float(recall[d]), "support": int(actual[d])}
            for d in range(10)
        }

    def as_dict(self) -> dict:
        per_class = self.per_class()
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "count": len(self.labels),
            "per_class": per_class,
            "per_class_accuracy": [per_class[str(d)]["recall"] for d in range(10)],
            "confusion": self.confusion.tolist(),
        }


def evaluate_arrays(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> Evaluation:
    probabilities = model.predict(x, batch_size=batch_size, verbose=0)
    return Evaluation(labels=np.asarray(y, dtype=np.int64), probabilities=np.asarray(probabilities))


def write_report(
    evaluation: Evaluation, images: np.ndarray, out_dir: Path, history: dict[str, list[float]] | None = None
) -> list[Path]:
    """Save the evaluation plots as PNG files in `out_dir`; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        path = out_dir / name
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(7, 6))
    matrix = evaluation.confusion
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        if count:
            ax.text(
                col,
                row,
                str(count),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if row == col else "black",
            )
    ax.set(
        xticks=range(10),
        yticks=range(10),
        xlabel="Predicted",
        ylabel="Actual",
        title=f"Confusion matrix (accuracy {evaluation.accuracy:.2%})",
    )
    save(fig, "confusion_matrix.png")

    def grid(indices: np.ndarray, title: str, name: str) -> None:
        fig, axes = plt.subplots(3, 5, figsize=(10, 6.5))
        for ax, i in zip(axes.flat, indices, strict=False):
            ax.imshow(images[i].squeeze(), cmap="gray")
            ax.set_title(
                f"Actual: {evaluation.labels[i]}, Predicted: {evaluation.predicted[i]}\n"
                f"({evaluation.probabilities[i].max():.1%})",
                fontsize=9,
            )
        for ax in axes.flat:
            ax.axis("off")
        fig.suptitle(title)
        save(fig, name)

    grid(np.arange(min(15, len(images))), "Sample predictions", "sample_predictions.png")
    wrong = np.flatnonzero(evaluation.predicted != evaluation.labels)
    confident_first = wrong[np.argsort(-evaluation.probabilities[wrong].max(axis=1))]
    grid(confident_first[:15], "Most confident mistakes", "confident_mistakes.png")

    if history and "loss" in history:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        epochs = np.arange(1, len(history["loss"]) + 1)
        for ax, metric in ((left, "loss"), (right, "accuracy")):
            ax.plot(epochs, history[metric], label="train")
            if f"val_{metric}" in history:
                ax.plot(epochs, history[f"val_{metric}"], label="validation")
            ax.set(xlabel="epoch", title=metric)
            ax.legend()
        save(fig, "training_curves.png")
    return written
