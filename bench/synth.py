"""Synthetic phone photos of handwritten digits: MNIST *test* digits or handwriting fonts drawn onto
paper-like backgrounds with the variations real photos have. Deterministic for a given seed.

    python -m bench.synth OUT_DIR [--per-variation 20]    # writes JPEGs named <variation>_<i>_<label>.jpg
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from scipy import ndimage

from recognizer.augment import mnist_glyph

FONT_DIRS = [Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts/opentype")]
HANDWRITING_FONTS = [
    "dkg.ttf",
    "Breip.ttf",
    "femkeklaver.ttf",
    "Humor-Sans.ttf",
    "ComicNeue-Regular.otf",
    "BecauseWeLearn-Regular.otf",
    "BecauseWeCreate-Regular.otf",
]
VARIATIONS = [
    "clean",
    "lined",
    "squared",
    "shadow",
    "blue_pen",
    "pencil",
    "blur",
    "small_in_big",
    "chalk",
    "jpeg_low",
    "thick_marker",
    "thin_pen",
    "font",
    "table_edge",
]


@dataclass(frozen=True)
class Photo:
    label: str
    variation: str
    jpeg: bytes


def find_fonts() -> list[Path]:
    found = []
    for name in HANDWRITING_FONTS:
        for root in FONT_DIRS:
            found += sorted(root.rglob(name)) if root.is_dir() else []
    return found


def font_glyph(char: str, font: Path, height: int) -> np.ndarray:
    face = ImageFont.truetype(str(font), size=int(height * 1.4))
    left, top, right, bottom = face.getbbox(char)
    canvas = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(canvas).text((4 - left, 4 - top), char, fill=255, font=face)
    mask = np.asarray(canvas, np.float32) / 255
    ys, xs = np.nonzero(mask > 0.1)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def paper(h: int, w: int, rng: np.random.Generator, variation: str) -> np.ndarray:
    """RGB float (h, w, 3): paper colour, uneven light, and optional lines, grid or shadow."""
    if variation == "chalk":
        base = np.array([0.16, 0.24, 0.2]) + rng.uniform(-0.04, 0.04, 3)
    else:
        base = np.array([0.93, 0.91, 0.86]) + rng.uniform(-0.06, 0.05, 3)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    light = 1.0 + rng.uniform(-0.15, 0.15) * (xx - 0.5) + rng.uniform(-0.15, 0.15) * (yy - 0.5)
    light -= 0.12 * ((xx - rng.uniform(0.3, 0.7)) ** 2 + (yy - rng.uniform(0.3, 0.7)) ** 2)
    img = base[None, None, :] * light[..., None]
    line_colour = np.array([0.55, 0.65, 0.85])
    if variation in ("lined", "squared"):
        step = int(rng.uniform(0.05, 0.08) * h)
        offset = int(rng.integers(0, step))
        for y in range(offset, h, step):
            img[y : y + 2] = img[y : y + 2] * 0.3 + line_colour * 0.7
        if variation == "squared":
            for x in range(offset, w, step):
                img[:, x : x + 2] = img[:, x : x + 2] * 0.3 + line_colour * 0.7
    if variation == "shadow":
        edge = rng.uniform(0.2, 0.8) * w + (yy * max(h, w) - h / 2) * rng.uniform(-0.5, 0.5)
        shade = ndimage.gaussian_filter((xx * max(h, w) > edge).astype(np.float32), 25)
        img *= (1.0 - 0.45 * shade)[..., None]
    if variation == "table_edge":
        cut = int(rng.uniform(0.08, 0.15) * w)
        img[:, :cut] = np.array([0.35, 0.22, 0.12])  # a wooden table beside the sheet
    return img


def draw_number(
    label: str, glyphs: list[np.ndarray], h: int, w: int, rng: np.random.Generator, digit_height: int
) -> np.ndarray:
    """Place the glyphs side by side, slightly rotated and jittered, in an (h, w) ink layer."""
    rotated = [ndimage.rotate(g, rng.uniform(-8, 8), reshape=True, order=1) for g in glyphs]
    gaps = [int(rng.uniform(0.15, 0.45) * digit_height) for _ in rotated]
    total = sum(g.shape[1] for g in rotated) + sum(gaps[:-1])
    x = int(0.16 * w + rng.uniform(0, 1) * max(0, 0.8 * w - total))  # clear of a table edge on the left
    y_mid = int(rng.uniform(0.35, 0.65) * h)
    layer = np.zeros((h, w), np.float32)
    for glyph, gap in zip(rotated, gaps, strict=True):
        gh, gw = glyph.shape
        y = int(
            np.clip(y_mid - gh // 2 + rng.integers(-digit_height // 10, digit_height // 10 + 1), 0, h - gh)
        )
        gw = min(gw, w - x)
        if gw <= 0:
            break
        layer[y : y + gh, x : x + gw] = np.maximum(layer[y : y + gh, x : x + gw], glyph[:, :gw])
        x += gw + gap
    return np.clip(layer, 0, 1)


def make_photo(
    label: str,
    variation: str,
    rng: np.random.Generator,
    mnist_x: np.ndarray,
    mnist_y: np.ndarray,
    fonts: list[Path],
    size: tuple[int, int] = (1280, 960),
) -> Photo:
    w, h = size
    small = variation == "small_in_big"
    digit_height = int(
        h * rng.uniform(0.07, 0.1) if small else min(h * rng.uniform(0.18, 0.4), 0.45 * w / len(label))
    )
    stroke = {"thick_marker": 1.7, "thin_pen": 0.45}.get(variation, rng.uniform(0.8, 1.2))
    glyphs = []
    for char in label:
        if variation == "font" and fonts:
            glyphs.append(font_glyph(char, fonts[rng.integers(len(fonts))], digit_height))
        else:
            candidates = np.flatnonzero(mnist_y == int(char))
            glyphs.append(mnist_glyph(mnist_x[rng.choice(candidates)], digit_height, stroke))
    ink = draw_number(label, glyphs, h, w, rng, digit_height)
    img = paper(h, w, rng, variation)
    if variation == "chalk":
        ink *= rng.uniform(0.6, 1.0, ink.shape).astype(np.float32)  # chalk is grainy
        colour, strength = np.array([0.92, 0.92, 0.9]), 0.9
    else:
        colour = {"blue_pen": np.array([0.1, 0.2, 0.6]), "pencil": np.array([0.45, 0.45, 0.48])}.get(
            variation, np.array([0.08, 0.08, 0.1])
        )
        strength = 0.95
    img = img * (1 - strength * ink[..., None]) + colour * strength * ink[..., None]
    img = img + rng.normal(0, 0.015, img.shape)
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "RGB")
    if variation == "blur":
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(2.0, 3.5)))
    else:
        pil = pil.filter(ImageFilter.GaussianBlur(0.8))
    out = io.BytesIO()
    pil.save(out, "JPEG", quality=int(rng.integers(25, 40)) if variation == "jpeg_low" else 85)
    return Photo(label, variation, out.getvalue())


def make_set(
    mnist_x: np.ndarray, mnist_y: np.ndarray, per_variation: int, digits: tuple[int, int], seed: int = 0
) -> list[Photo]:
    """`per_variation` photos of each variation, labels of `digits[0]`..`digits[1]` digits."""
    rng = np.random.default_rng(seed)
    fonts = find_fonts()
    photos = []
    for variation in VARIATIONS:
        if variation == "font" and not fonts:
            continue
        for _ in range(per_variation):
            length = int(rng.integers(digits[0], digits[1] + 1))
            label = "".join(str(d) for d in rng.integers(0, 10, length))
            photos.append(make_photo(label, variation, rng, mnist_x, mnist_y, fonts))
    return photos


def main() -> None:
    from recognizer.data import load_mnist

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-variation", type=int, default=10)
    parser.add_argument("--min-digits", type=int, default=1)
    parser.add_argument("--max-digits", type=int, default=1)
    parser.add_argument("--mnist-dir")
    args = parser.parse_args()
    mnist = load_mnist(args.mnist_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    photos = make_set(mnist.x_test, mnist.y_test, args.per_variation, (args.min_digits, args.max_digits))
    for i, photo in enumerate(photos):
        (args.out / f"{photo.variation}_{i}_{photo.label}.jpg").write_bytes(photo.jpeg)


if __name__ == "__main__":
    main()
