"""Training-time augmentation: the ways a photographed, pipeline-normalised digit differs from MNIST.

Geometry (rotation, shear, scale, shift), stroke thickness, hard thresholding, blur and sensor noise,
applied to whole batches inside tf.data so the saved model stays plain Keras layers; and ways of writing
MNIST lacks (continental 1s and crossed 7s; digits that touch, which are no one digit), added once to the
training set. And MNIST digits drawn as ink of any size, to write on a page: a corrected photo's
(recognizer/labelled.py), a synthetic photo's (bench).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw
from scipy import ndimage

from recognizer import NOT_ONE_DIGIT
from recognizer.data import to_uint8
from recognizer.preprocess import stroke_width, to_mnist


def _affine(images: tf.Tensor, strength: float) -> tf.Tensor:
    n = tf.shape(images)[0]

    def uniform(limit: float) -> tf.Tensor:
        return tf.random.uniform([n], -limit, limit)

    angle = uniform(math.radians(12) * strength)
    shear = uniform(0.25 * strength)
    scale = 1.0 + uniform(0.15 * strength)
    aspect = 1.0 + uniform(0.1 * strength)
    dx, dy = uniform(2.5 * strength), uniform(2.5 * strength)
    # Inverse map (output pixel -> input pixel) about the image centre, as ImageProjectiveTransform expects.
    cos, sin = tf.cos(angle), tf.sin(angle)
    sx, sy = 1.0 / (scale * aspect), aspect / scale
    a0, a1 = cos * sx, (sin + shear * cos) * sx
    b0, b1 = -sin * sy, (cos - shear * sin) * sy
    c = 13.5
    a2 = c - a0 * (c + dx) - a1 * (c + dy)
    b2 = c - b0 * (c + dx) - b1 * (c + dy)
    zeros = tf.zeros([n])
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.constant([28, 28]),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def _per_image(n: tf.Tensor, low: float, high: float) -> tf.Tensor:
    return tf.random.uniform([n, 1, 1, 1], low, high)


def _chance(n: tf.Tensor, p: float) -> tf.Tensor:
    return tf.cast(tf.random.uniform([n, 1, 1, 1]) < p, tf.float32)


def _stroke_width(images: tf.Tensor) -> tf.Tensor:
    """Thicken or thin strokes by a random fraction of a 3x3 grey dilation / erosion."""
    n = tf.shape(images)[0]
    dilated = tf.nn.max_pool2d(images, 3, 1, "SAME")
    eroded = -tf.nn.max_pool2d(-images, 3, 1, "SAME")
    amount = _per_image(n, -0.6, 0.9)
    thicker = images + tf.maximum(amount, 0.0) * (dilated - images)
    return thicker + tf.minimum(amount, 0.0) * (images - eroded)


def _threshold(images: tf.Tensor) -> tf.Tensor:
    n = tf.shape(images)[0]
    level = _per_image(n, 0.25, 0.6)
    return tf.sigmoid((images - level) * 25.0)


def _blur(images: tf.Tensor) -> tf.Tensor:
    kernel = tf.constant([0.25, 0.5, 0.25])
    kernel = tf.reshape(kernel[:, None] * kernel[None, :], [3, 3, 1, 1])
    n = tf.shape(images)[0]
    blurred = tf.nn.conv2d(images, kernel, 1, "SAME")
    mix = _per_image(n, 0.3, 1.0)
    return images + mix * (blurred - images)


def augment(images: tf.Tensor, strength: float = 1.0) -> tf.Tensor:
    """float32 (N, 28, 28, 1) in [0, 1] -> a randomly distorted batch of the same shape."""
    n = tf.shape(images)[0]
    images = _affine(images, strength)
    images = images + _chance(n, 0.5) * (_stroke_width(images) - images)
    images = images + _chance(n, 0.2) * (_threshold(images) - images)
    images = images + _chance(n, 0.25) * (_blur(images) - images)
    noise = tf.random.normal(tf.shape(images), stddev=0.04) * _chance(n, 0.25)
    return tf.clip_by_value(images + noise, 0.0, 1.0)


def _pen_line(mask: np.ndarray, start: tuple[float, float], end: tuple[float, float], width: float) -> None:
    """Draw a stroke from start to end, (x, y) in pixels, onto a boolean mask in place."""
    canvas = Image.fromarray(mask)
    ImageDraw.Draw(canvas).line([start, end], fill=True, width=max(1, round(width)))
    mask |= np.asarray(canvas, bool)


def european_one(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An MNIST 1 (uint8 28x28) written the continental way, with a long up-stroke from its top, returned
    as the pipeline's 28x28 input (preprocess.to_mnist)."""
    mask = _enlarge(digit)
    ys, xs = np.nonzero(mask)
    top = (float(xs[ys == ys.min()].mean()), float(ys.min()))
    height = ys.max() - ys.min()
    length, angle = rng.uniform(0.25, 0.45) * height, np.radians(rng.uniform(30, 55))
    end = (top[0] - length * np.sin(angle), top[1] + length * np.cos(angle))
    _pen_line(mask, top, end, stroke_width(mask))
    return to_mnist(mask)


def crossed_seven(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An MNIST 7 (uint8 28x28) with a bar across its stem, as many Europeans write it, as the pipeline's
    input."""
    mask = _enlarge(digit)
    ys, xs = np.nonzero(mask)
    row = round(ys.min() + rng.uniform(0.45, 0.6) * (ys.max() - ys.min()))
    stem = np.nonzero(mask[row])[0]
    if stem.size == 0:
        return to_mnist(mask)
    centre, half = float(stem.mean()), rng.uniform(0.2, 0.32) * (xs.max() - xs.min())
    _pen_line(mask, (centre - half, row), (centre + half, row + rng.uniform(-2, 2)), stroke_width(mask))
    return to_mnist(mask)


def _enlarge(digit: np.ndarray, size: int = 112) -> np.ndarray:
    """uint8 28x28 -> a boolean ink mask `size` pixels square, as a photo's binarised digit would be."""
    big = Image.fromarray(digit).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(big) > 100


def _ink(mask: np.ndarray) -> np.ndarray:
    rows, cols = ndimage.find_objects(mask.astype(np.int8))[0]
    return mask[rows, cols]


def _written_after(number: np.ndarray, digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ink masks side by side, `digit` slid left until its ink touches `number`'s, a little above or below
    it, and up to 8% of the taller's height over it (a third digit up to about 13% of its own: the number's
    height then counts the room left above and below the first two): a number written quickly."""
    tallest = max(number.shape[0], digit.shape[0])
    margin = tallest // 10
    height = tallest + 2 * margin
    top = (height - digit.shape[0]) // 2 + int(rng.integers(-margin, margin + 1))
    placed = np.zeros((height, number.shape[1]), bool)
    placed[(height - number.shape[0]) // 2 :][: number.shape[0]] = number
    # Per row, the number's last ink (a row either way too: touching diagonally is touching) and the
    # digit's first: the digit may move left until they meet.
    last = ndimage.maximum_filter1d(
        np.where(placed.any(axis=1), placed.shape[1] - 1 - np.argmax(placed[:, ::-1], axis=1), -1), 3
    )[top : top + digit.shape[0]]
    first = np.where(digit.any(axis=1), np.argmax(digit, axis=1), digit.shape[1])
    meet = last >= 0
    left = int((last[meet] - first[meet]).max()) + 1 if meet.any() else number.shape[1]
    left = max(0, left - int(rng.integers(0, round(0.08 * tallest) + 1)))
    out = np.zeros((height, max(placed.shape[1], left + digit.shape[1])), bool)
    out[:, : placed.shape[1]] = placed
    out[top : top + digit.shape[0], left : left + digit.shape[1]] |= digit
    return out


def touching_digits(x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (count, 28, 28): marks of two digits of `x` (uint8 (N, 28, 28)), or three (one in five), written
    touching and made the pipeline's input as one mark is (preprocess.to_mnist).

    Reading keeps a mark whole when it reads surely as one digit (classify._digits), and MNIST has no digits
    that touch: "80" read surely as an 8, whatever its halves read. Taught as NOT_ONE_DIGIT, such a mark
    reads unsure, and its halves win."""
    marks = np.zeros((count, 28, 28), np.uint8)
    for i in range(count):
        digits = x[rng.integers(len(x), size=3 if rng.random() < 0.2 else 2)]
        number = None
        for digit in digits:
            ink = _ink(_enlarge(digit, round(112 * rng.uniform(0.85, 1.15))))
            number = ink if number is None else _written_after(number, ink, rng)
        marks[i] = to_uint8(to_mnist(number))
    return marks


def add_writing_styles(
    x: np.ndarray, y: np.ndarray, share: float = 0.3, seed: int = 0, touching: float = 0.07
) -> tuple[np.ndarray, np.ndarray]:
    """-> (x, y int64) with continental 1s and crossed 7s added, made from `share` of the 1s and 7s in
    (x uint8 (N, 28, 28), y): MNIST's US writers barely have them, many European users write nothing else.
    And `touching` times N marks of digits written touching, labelled NOT_ONE_DIGIT (touching_digits)."""
    rng = np.random.default_rng(seed)
    made, labels = [], []
    for label, style in ((1, european_one), (7, crossed_seven)):
        chosen = np.flatnonzero(y == label)
        chosen = rng.choice(chosen, round(share * len(chosen)), replace=False) if len(chosen) else chosen
        made += [to_uint8(style(x[i], rng)) for i in chosen]
        labels += [label] * len(chosen)
    marks = touching_digits(x, round(touching * len(x)), rng)
    made += list(marks)
    labels += [NOT_ONE_DIGIT] * len(marks)
    y = y.astype(np.int64)
    if not made:
        return x, y
    return np.concatenate([x, np.stack(made)]), np.concatenate([y, np.array(labels, np.int64)])


def ink_slant(mask: np.ndarray) -> float:
    """How far a shape's ink runs right per pixel down, by least squares: its slant."""
    ys, xs = np.nonzero(mask)
    return float(np.cov(xs, ys)[0, 1] / max(np.var(ys, ddof=1), 1e-9)) if len(ys) > 1 else 0.0


def mnist_glyph(
    image: np.ndarray, height: int, stroke: float = 1.0, width: float = 1.0, slant: float = 0.0
) -> np.ndarray:
    """A 28x28 uint8 MNIST digit -> an ink mask `height` pixels tall (strokes scaled by `stroke`), `width`
    times as wide once upright, and slanted `slant` more (pixels right per pixel down)."""
    ys, xs = np.nonzero(image > 30)
    crop = image[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32) / 255
    scale = height / crop.shape[0]
    big = np.asarray(
        Image.fromarray(crop, "F").resize(
            (max(2, round(crop.shape[1] * scale * width)), height), Image.Resampling.BICUBIC
        )
    )
    # Made narrower or wider, the digit's own slant is too: sheared back to it, and `slant` more.
    shear = slant + ((1 / width - 1) * ink_slant(big > 0.45) if width != 1 else 0.0)
    if shear:
        side = int(np.ceil(abs(shear) * height / 2)) + 1
        big = ndimage.affine_transform(
            np.pad(big, ((0, 0), (side, side))), [[1, 0], [-shear, 1]], offset=[0, shear * height / 2]
        )
    mask = big > 0.45
    if stroke != 1.0:
        pad = int(scale * 3)
        mask = np.pad(mask, pad)
        change = abs(stroke - 1.0) * scale
        mask = (
            (
                ndimage.distance_transform_edt(~mask) <= change
                if stroke > 1
                else ndimage.distance_transform_edt(mask) > change
            )
            if change >= 1
            else mask
        )
    return ndimage.gaussian_filter(mask.astype(np.float32), 0.6)


def place(glyph: np.ndarray, shape: tuple[int, ...], top: int, left: int) -> np.ndarray:
    """`glyph` on an empty image of `shape` (its first two sides), at (top, left), cut where it leaves it."""
    out = np.zeros(shape[:2], np.float32)
    if top >= out.shape[0] or left >= out.shape[1]:
        return out
    part = glyph[max(0, -top) : out.shape[0] - top, max(0, -left) : out.shape[1] - left]
    top, left = max(0, top), max(0, left)
    out[top : top + part.shape[0], left : left + part.shape[1]] = part
    return out
