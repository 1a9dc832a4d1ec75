"""Training-time augmentation: the ways a photographed, pipeline-normalised digit differs from MNIST.

Geometry (rotation, shear, scale, shift), stroke thickness, hard thresholding, blur and sensor noise,
applied to whole batches inside tf.data so the saved model stays plain Keras layers.
"""

from __future__ import annotations

import math

import tensorflow as tf


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
