"""Fast, thread-safe classification of 28x28 digit images with a loaded model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from recognizer import DEFAULT_MODEL, MIN_CONFIDENCE
from recognizer.images import decode_image
from recognizer.preprocess import DigitCrop, Segmentation, segmentations, upright

# Turning is a second guess, and a digit's long axis is not always its slant: it makes fewer wrong answers
# when it must be this sure (unsure MNIST training digits made wrong: 21 at 0.7, 5 at 0.99), and the turned
# slanted digits it fixed read 0.999 and more.
SURE_WHEN_TURNED = 0.99
# A mark wider than this is two touching digits when its halves read surely, however surely it reads as one:
# MNIST's widest 0s and 4s (1.1-1.25 times as wide as tall) cut in two read surely as 17, 67, 21 or 61;
# touching pairs of the dev writers' digits were 1.15-1.9.
TWO_DIGITS_ASPECT = 1.4
# How surely the halves of a wide mark must read (and the whole must not) for it to be two digits: the
# answer's threshold, min_confidence, may be set to anything (bench.photos sets 0: a 4 then read "11").
SURE_WHEN_SPLIT = 0.7
# Most single digits are narrower than this, and two narrow digits touching ("81", "57") are too: such a mark
# is two only when its halves read all but certainly, as a turned digit must (an unsure 7 on the rim of a
# page, cut, read 0.94 and 1.00: "71").
NARROW_PAIR_ASPECT = 1.1
SURE_WHEN_NARROW_SPLIT = 0.99


@dataclass(frozen=True)
class Prediction:
    digit: int
    confidence: float
    probabilities: tuple[float, ...]  # 10 values, index = digit

    def top(self, k: int = 3) -> list[tuple[int, float]]:
        order = np.argsort(self.probabilities)[::-1][:k]
        return [(int(d), float(self.probabilities[d])) for d in order]


@dataclass(frozen=True)
class DigitReading(Prediction):
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # x0, y0, x1, y1, fractions of the image


@dataclass(frozen=True)
class Reading:
    """What was read from one image. status: "ok", "unsure" (some digit below the threshold; `digits` is
    then the best guess) or "no_digit"."""

    digits: str
    confidence: float  # the chance that the whole string is right: the product of the digits' confidences
    status: str
    items: list[DigitReading]
    inputs: np.ndarray  # float32 (N, 28, 28): what the model saw, left to right

    def as_dict(self) -> dict:
        return {
            "digits": self.digits,
            "confidence": round(self.confidence, 4),
            "status": self.status,
            "items": [
                {
                    "digit": d.digit,
                    "confidence": round(d.confidence, 4),
                    "box": [round(v, 4) for v in d.box],
                    "top3": [[digit, round(p, 4)] for digit, p in d.top(3)],
                }
                for d in self.items
            ],
        }


class Recognizer:
    """A loaded model behind one compiled call; safe to share between threads."""

    def __init__(self, model: keras.Model, path: Path | None = None, min_confidence: float = MIN_CONFIDENCE):
        self.model = model
        self.path = path
        self.min_confidence = min_confidence
        # One traced graph for any batch size: a single image costs a fraction of a millisecond,
        # where model.predict spends tens of ms setting up its data pipeline.
        self._call = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)],
        )
        self._call(tf.zeros([1, 28, 28, 1]))  # trace now, under one thread, not on the first request

    @classmethod
    def load(cls, path: str | Path | None = None, min_confidence: float = MIN_CONFIDENCE) -> Recognizer:
        """Load a .keras model; the shipped default model when `path` is None."""
        path = Path(path) if path else DEFAULT_MODEL
        # safe_mode (with keras>=3.11) refuses files that carry code: a model file is not trusted input.
        return cls(keras.models.load_model(path, compile=False, safe_mode=True), path, min_confidence)

    def probabilities(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """(N, 28, 28[, 1]) floats in [0, 1] -> (N, 10) probabilities."""
        x = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28, 1)
        if len(x) <= batch_size:
            return self._call(x).numpy()
        return np.concatenate(
            [self._call(x[i : i + batch_size]).numpy() for i in range(0, len(x), batch_size)]
        )

    def classify(self, images: np.ndarray) -> Prediction | list[Prediction]:
        """One 28x28 image -> a Prediction; a batch (N, 28, 28[, 1]) -> a list of them."""
        images = np.asarray(images)
        single = images.shape in ((28, 28), (28, 28, 1))
        if not single and (images.ndim not in (3, 4) or images.shape[1:3] != (28, 28)):
            raise ValueError(f"expected a 28x28 image or a batch (N, 28, 28[, 1]), got shape {images.shape}")
        probabilities = self.probabilities(images)
        predictions = [
            Prediction(int(p.argmax()), float(p.max()), tuple(float(v) for v in p)) for p in probabilities
        ]
        return predictions[0] if single else predictions

    def read(self, image: bytes | str | Path | np.ndarray) -> Reading:
        """A photo (bytes, a path, or a gray (H, W) array in [0, 1]) -> the digits written in it.

        Raises recognizer.images.ImageError for input that is not a readable image."""
        gray = image if isinstance(image, np.ndarray) else decode_image(image)
        return self.reading(segmentations(gray))

    def reading(self, options: list[Segmentation]) -> Reading:
        """The digits in a photo, from its segmentations (preprocess.segmentations), read by the model.

        An unsure reading's unsure digits are read again turned upright (preprocess.upright): a writer's
        slant or a turned photo leans a digit farther than MNIST's writers did. Taken only if each turned
        digit reads at least SURE_WHEN_TURNED: turning is a second guess, and a digit's long axis is not
        always its slant (the stem of a 7 stands up as a 1)."""
        chosen = choose(self._readings([option.crops for option in options]))
        if chosen.status != "unsure":
            return chosen
        images = list(chosen.inputs)
        crops = [
            DigitCrop(item.box, upright(image) if item.confidence < self.min_confidence else image)
            for item, image in zip(chosen.items, images, strict=True)
        ]
        if all(crop.image is image for crop, image in zip(crops, images, strict=True)):
            return chosen  # nothing leans far enough to turn
        turned = self._readings([crops])[0]
        least_sure = min(
            item.confidence
            for item, kept in zip(turned.items, chosen.items, strict=True)
            if kept.confidence < self.min_confidence
        )
        return turned if turned.status == "ok" and least_sure >= SURE_WHEN_TURNED else chosen

    def _readings(self, options: list[list[DigitCrop]]) -> list[Reading]:
        """Each segmentation's digits read, all of them (and the halves of wide ones) in one model call."""
        crops = [piece for option in options for crop in option for piece in crop.pieces()]
        predictions = self.classify(np.stack([crop.image for crop in crops])) if crops else []
        predicted = {id(crop): prediction for crop, prediction in zip(crops, predictions, strict=True)}
        readings = [
            self._reading([digit for crop in option for digit in _digits(crop, predicted)])
            for option in options
        ]
        return readings or [self._reading([])]

    def _reading(self, digits: list[tuple[DigitCrop, Prediction]]) -> Reading:
        inputs = np.array([crop.image for crop, _ in digits], np.float32).reshape(-1, 28, 28)
        if not digits:
            return Reading("", 0.0, "no_digit", [], inputs)
        items = [DigitReading(p.digit, p.confidence, p.probabilities, crop.box) for crop, p in digits]
        confident = all(item.confidence >= self.min_confidence for item in items)
        return Reading(
            digits="".join(str(item.digit) for item in items),
            confidence=float(np.prod([item.confidence for item in items])),
            status="ok" if confident else "unsure",
            items=items,
            inputs=inputs,
        )


def _digits(crop: DigitCrop, predicted: dict[int, Prediction]) -> list[tuple[DigitCrop, Prediction]]:
    """A crop read as one digit, or as the two touching digits of its halves: when each half reads at least
    SURE_WHEN_SPLIT (SURE_WHEN_NARROW_SPLIT for a mark narrower than NARROW_PAIR_ASPECT) and the whole does
    not, or the whole is wider than one digit is (TWO_DIGITS_ASPECT)."""
    whole = [(crop, predicted[id(crop)])]
    if crop.halves is None:
        return whole
    halves = [digit for half in crop.halves for digit in _digits(half, predicted)]
    sure = SURE_WHEN_SPLIT if crop.aspect >= NARROW_PAIR_ASPECT else SURE_WHEN_NARROW_SPLIT
    if all(p.confidence >= sure for _, p in halves) and (
        whole[0][1].confidence < SURE_WHEN_SPLIT or crop.aspect >= TWO_DIGITS_ASPECT
    ):
        return halves
    return whole


def choose(readings: list[Reading]) -> Reading:
    """The reading to answer with, from the photo's segmentations (the pipeline's first, then ones keeping
    more of the ink: see preprocess.ink_masks).

    A blurred stroke below the pipeline's threshold, or a stroke taken away with a paper line, leaves a
    fragment that reads surely as something else (most of a 9 is a 3, a lone stroke a 1). So the reading
    that keeps the most ink and still reads surely wins; when the pipeline's reading is sure, only
    segmentations of the same digits compete (around the pipeline's: see _around), not a table edge or a
    shadow that more ink lets in. Nothing sure: the surest guess, or "no digit" where the pipeline saw
    none."""
    first = readings[0]
    others = [reading for reading in readings[1:] if reading.digits]
    if first.status == "ok":
        others = [reading for reading in others if _around(first, reading)]
    sure = [reading for reading in others if reading.status == "ok"]
    if sure:
        return sure[-1]
    if first.status == "unsure":
        return max([first, *others], key=lambda reading: reading.confidence)
    return first


def _inside(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Box `a` (mostly) inside box `b`."""
    overlap = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return overlap >= 0.8 * (a[2] - a[0]) * (a[3] - a[1])


def _around(first: Reading, other: Reading) -> bool:
    """Does `other` read the pipeline's digits with more ink around them? As many digits, each of `first`'s
    (mostly) inside the box of `other`'s; or fewer, each made of some of `first`'s and surer than the least
    sure of those: a digit that line removal or a faint stroke had broken into pieces, joined again."""
    if len(other.items) == len(first.items):
        return all(_inside(a.box, b.box) for a, b in zip(first.items, other.items, strict=True))
    return (
        len(other.items) < len(first.items)
        and all(any(_inside(a.box, b.box) for b in other.items) for a in first.items)
        and all(any(_inside(a.box, b.box) for a in first.items) for b in other.items)
        and min(item.confidence for item in other.items) > min(item.confidence for item in first.items)
    )
