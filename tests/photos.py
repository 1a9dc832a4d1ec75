"""Real image files for tests: digits drawn with PIL or by the bench's photo generator."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bench.synth import make_photo, mnist_glyph


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def digit_on_paper(mnist, index: int = 0, size=(400, 300), height: int = 160) -> Image.Image:
    """MNIST test digit `index`, dark ink on white paper, as an 8-bit gray PIL image."""
    glyph = mnist_glyph(mnist.x_test[index], height)
    canvas = np.ones(size[::-1], np.float32)
    top, left = (size[1] - glyph.shape[0]) // 2, (size[0] - glyph.shape[1]) // 2
    canvas[top : top + glyph.shape[0], left : left + glyph.shape[1]] -= 0.9 * glyph
    return Image.fromarray((canvas * 255).astype(np.uint8), "L")


def synthetic_photo(mnist, label: str, variation: str, seed: int = 0) -> bytes:
    return make_photo(label, variation, np.random.default_rng(seed), mnist.x_test, mnist.y_test, []).jpeg
