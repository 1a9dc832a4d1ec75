"""Copies of a labelled folder of real images, changed the same way for all of one writer's images: proxies
with errors to learn from and to read, where the dev set itself is read 100% right. They are our
transformations of real images, not new writers.

- `slanted`: each writer's images turned by one angle of 30-45 degrees, either way (that writer's slant).
- `ruled`: each writer's images on ruled paper: grey lines, a third as dark as black ink, from edge to edge,
  5-8 to the image's height (a close crop of a notebook page).
- `squared`: the same lines both ways, a square apart (squared paper, as many European schools use).
- `narrow`: each writer's images squeezed to 45-65% of their width (a writer of tall, narrow digits).
- `boxed`: a box drawn around each image's digit, as dark as black ink, a 30th of the image in from its edge
  (a form's box, a border drawn around a canvas).
- `lamp`: each writer's images lit from one side, the light falling to 25-50% across the image (a desk lamp,
  a window).
- `flash`: each writer's images lit by a phone's flash, brightest near the middle (where: the writer's seed),
  falling to about half in the far corner.
- `tiny`: each writer's images shrunk to 28-40 px tall (a drawing app saving at about MNIST's size).
- `desk`: each image turned by up to 8 degrees and laid on a desk (a darker or lighter textured surface)
  that shows on most sides, the image 35-70% of the photo (a sheet photographed from further away, a
  drawing app's canvas in a screenshot).
- `turned`: the same, each image turned 10-18 degrees, either way (a sheet photographed turned).
- `transparent`: each image's paper made transparent (black underneath), its ink kept as the ink's colour
  and opacity: a canvas exported without a background, white strokes as well as black ones.

And numbers, where the dev set has single digits only: six per writer with 4 or more images, each 2-4 of
that writer's images cropped to their ink and set side by side at one height on the writer's paper:

- `numbers`: 12-42% of a digit's height apart (as people space them).
- `touching`: -6% to +2% of a digit's height apart: touching or nearly (a number written quickly).

    python -m bench.variants slanted ../shared/data/realworld-dev /tmp/slanted
    python -m bench.variants desk+lamp ../shared/data/realworld-dev /tmp/desk-lamp   # changes in turn
    python -m bench.variants touching ../shared/data/realworld-dev /tmp/touching
    python -m bench.real /tmp/slanted
    python -m bench.learning --real /tmp/slanted

The folder holds images and `labels.csv` (file,label,...); file names give their source, one source = one
writer (`<source>__<name>`), and the copies keep them (as PNG).
"""

from __future__ import annotations

import argparse
import csv
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from scipy import ndimage


def source(file: str) -> str:
    """Who wrote an image: the part of its file name before "__" (one source = one writer)."""
    return file.split("__")[0]


def _paper(gray: np.ndarray) -> int:
    """The paper's gray level: the median of the image's edge."""
    return int(np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])))


def slant(gray: np.ndarray, writer_seed: int) -> np.ndarray:
    angle = (30 + writer_seed % 16) * (1 if writer_seed % 2 else -1)
    resample = Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(gray).rotate(angle, resample, expand=True, fillcolor=_paper(gray)))


def _lines(gray: np.ndarray, writer_seed: int, paper: int, step: int) -> np.ndarray:
    """Level lines `step` apart across `gray`."""
    width = max(1, gray.shape[0] // 200)
    ruled = gray.astype(np.int16)
    for top in range(writer_seed % step, gray.shape[0], step):
        band = ruled[top : top + width]
        # The line is printed on the paper and the ink written over it: where they meet, the ink stays.
        band[:] = np.minimum(band, paper - 85) if paper > 127 else np.maximum(band, paper + 85)
    return np.clip(ruled, 0, 255).astype(np.uint8)


def _step(gray: np.ndarray, writer_seed: int) -> int:
    return max(8, round(gray.shape[0] / (5 + writer_seed % 4)))


def rule(gray: np.ndarray, writer_seed: int) -> np.ndarray:
    return _lines(gray, writer_seed, _paper(gray), _step(gray, writer_seed))


def square(gray: np.ndarray, writer_seed: int) -> np.ndarray:
    paper, step = _paper(gray), _step(gray, writer_seed)
    return _lines(_lines(gray, writer_seed, paper, step).T, writer_seed // 7, paper, step).T


def narrow(gray: np.ndarray, writer_seed: int) -> np.ndarray:
    height, width = gray.shape
    squeezed = max(8, round(width * (0.45 + writer_seed % 5 / 20)))
    return np.asarray(Image.fromarray(gray).resize((squeezed, height), Image.Resampling.BILINEAR))


def box(gray: np.ndarray, writer_seed: int) -> np.ndarray:
    height, width = gray.shape
    inset, line = max(2, min(height, width) // 30), max(1, min(height, width) // 100)
    paper = _paper(gray)
    image = Image.fromarray(gray)
    corners = [inset, inset, width - 1 - inset, height - 1 - inset]
    ImageDraw.Draw(image).rectangle(corners, outline=max(0, paper - 150) if paper > 127 else 255, width=line)
    return np.asarray(image)


def lamp(gray: np.ndarray, writer_seed: int) -> np.ndarray:
    """Light from one side, falling to 25-50% across the image (which side: the writer's seed)."""
    axis = writer_seed % 2
    light = np.linspace(0.25 + writer_seed % 6 / 20, 1.0, gray.shape[axis])
    if writer_seed // 2 % 2:
        light = light[::-1]
    return (gray * np.expand_dims(light, 1 - axis)).astype(np.uint8)


def flash(gray: np.ndarray, writer_seed: int) -> np.ndarray:
    """A phone's flash: the light brightest near the middle, falling by 60% of the distance from there."""
    height, width = gray.shape
    y, x = np.ogrid[:height, :width]
    centre_y, centre_x = height * (0.3 + writer_seed % 5 / 10), width * (0.3 + writer_seed // 5 % 5 / 10)
    light = 1 - 0.6 * np.hypot((y - centre_y) / height, (x - centre_x) / width)
    return (gray * light).astype(np.uint8)


def tiny(gray: np.ndarray, writer_seed: int) -> np.ndarray:
    height = 28 + writer_seed % 13
    width = max(8, round(gray.shape[1] * height / gray.shape[0]))
    return np.asarray(Image.fromarray(gray).resize((width, height), Image.Resampling.LANCZOS))


def desk(gray: np.ndarray, writer_seed: int) -> np.ndarray:
    return _on_a_desk(gray, writer_seed, lambda rng: rng.uniform(-8, 8), room=1.0)


def turned(gray: np.ndarray, writer_seed: int) -> np.ndarray:
    """On a desk, turned 10-18 degrees (which way: the writer's seed), the desk 15% larger to hold it."""
    angle = (10 + writer_seed % 9) * (1 if writer_seed % 2 else -1)
    return _on_a_desk(gray, writer_seed, lambda rng: angle, room=1.15)


def _on_a_desk(
    gray: np.ndarray, writer_seed: int, turn: Callable[[np.random.Generator], float], room: float
) -> np.ndarray:
    rng = np.random.default_rng(writer_seed)
    height, width = gray.shape
    scale = room / np.sqrt(0.35 + writer_seed % 8 / 20)
    size = (round(width * scale), round(height * scale))
    tone = (30 + writer_seed % 5 * 30) if _paper(gray) > 127 else (140 + writer_seed % 3 * 40)
    grain = Image.fromarray(rng.normal(0, 15, (size[1] // 16 + 2, size[0] // 16 + 2)).astype(np.float32), "F")
    surface = np.clip(tone + np.asarray(grain.resize(size, Image.Resampling.BICUBIC)), 0, 255).astype(
        np.uint8
    )
    angle = turn(rng)  # drawn after the grain, as the desk copy always has been
    page = Image.fromarray(gray).rotate(angle, Image.Resampling.BILINEAR, expand=True)
    where = Image.new("L", gray.shape[::-1], 255).rotate(angle, Image.Resampling.BILINEAR, expand=True)
    photo = Image.fromarray(surface)
    spare = (max(0, size[0] - page.width), max(0, size[1] - page.height))
    photo.paste(page, (int(rng.uniform(0.2, 0.8) * spare[0]), int(rng.uniform(0.2, 0.8) * spare[1])), where)
    return np.asarray(photo)


def transparent(gray: np.ndarray, writer_seed: int) -> np.ndarray:
    """Gray and alpha (PNG mode LA): the ink's colour, as opaque as the ink stands out from the paper."""
    paper = _paper(gray)
    ink = int(gray.min() if paper > 127 else gray.max())
    alpha = np.clip((gray.astype(np.float64) - paper) / (ink - paper or 1), 0, 1)
    colour = np.where(alpha > 0, ink, 0)  # a transparent pixel is black underneath, as a canvas exports it
    return np.stack([colour, np.round(alpha * 255)], axis=-1).astype(np.uint8)


def _gray(path: Path) -> np.ndarray:
    """The image as 8-bit gray, upright, transparency onto white (the dev images are all opaque)."""
    image = ImageOps.exif_transpose(Image.open(path))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return np.asarray(image.convert("L"))


CHANGES: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "slanted": slant,
    "ruled": rule,
    "squared": square,
    "narrow": narrow,
    "boxed": box,
    "lamp": lamp,
    "flash": flash,
    "tiny": tiny,
    "desk": desk,
    "turned": turned,
    "transparent": transparent,
}


def _rows_to_copy(folder: Path, out: Path) -> list[dict]:
    """The rows of `folder`'s labels.csv; `out` must be another folder, or its labels.csv would be lost."""
    if out.resolve() == folder.resolve():
        raise SystemExit("the copies must go to another folder than the images")
    with open(folder / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def changed(folder: Path, out: Path, change: Callable[[np.ndarray, int], np.ndarray]) -> Path:
    """Copies of the labelled images in `folder`, each writer's changed alike, in `out` with labels.csv."""
    rows = _rows_to_copy(folder, out)
    names = [Path(row["file"]).stem + ".png" for row in rows]
    if len(set(names)) < len(names):
        raise SystemExit("two images differ only in their extension: their PNG copies would be one file")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "labels.csv", "w", newline="") as g:
        labels = csv.DictWriter(g, list(rows[0]) if rows else ["file", "label"])
        labels.writeheader()
        for row, name in zip(rows, names, strict=True):
            writer_seed = zlib.crc32(source(row["file"]).encode())  # the same for all of a writer's images
            Image.fromarray(change(_gray(folder / row["file"]), writer_seed)).save(out / name)
            labels.writerow({**row, "file": name})
    return out


NUMBER_GAPS = {"numbers": (0.12, 0.42), "touching": (-0.06, 0.02)}  # between digits, in digit heights
NUMBER_HEIGHT = 120  # px, each digit's ink
NUMBERS_PER_WRITER = 6  # (bench.learning --real takes writers with 6 or more images)


def _ink_crop(gray: np.ndarray) -> np.ndarray:
    """The image cut to its ink, with an eighth of the ink's height of paper around it; the ink: what is
    over halfway from the paper to the darkest (lightest) ink, without specks."""
    paper = _paper(gray)
    extreme = np.percentile(gray, 0.5 if paper > 127 else 99.5)
    ink = ndimage.binary_opening(np.abs(gray.astype(np.float64) - paper) > abs(extreme - paper) / 2)
    labels, count = ndimage.label(ink)
    if count:
        areas = np.bincount(labels.ravel())[1:]
        ink = np.isin(labels, 1 + np.flatnonzero(areas >= 0.05 * areas.max()))
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not rows.size:
        return gray
    pad = max(2, (rows[-1] - rows[0]) // 8)
    return gray[max(0, rows[0] - pad) : rows[-1] + 1 + pad, max(0, cols[0] - pad) : cols[-1] + 1 + pad]


def numbers(folder: Path, out: Path, kind: str) -> Path:
    """Numbers of each writer's digits (see the module's doc), in `out` with labels.csv."""
    writers: dict[str, list[dict]] = {}
    for row in _rows_to_copy(folder, out):
        writers.setdefault(source(row["file"]), []).append(row)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "labels.csv", "w", newline="") as g:
        labels = csv.DictWriter(g, ["file", "label"])
        labels.writeheader()
        for writer, own in writers.items():
            if len(own) < 4:
                continue
            rng = np.random.default_rng(zlib.crc32(writer.encode()))
            for k in range(NUMBERS_PER_WRITER):
                picked = [own[i] for i in rng.choice(len(own), int(rng.integers(2, 5)), replace=False)]
                name = f"{writer}__number{k}.png"
                number = _number([_gray(folder / r["file"]) for r in picked], kind, rng)
                Image.fromarray(number).save(out / name)
                labels.writerow({"file": name, "label": "".join(r["label"] for r in picked)})
    return out


def _number(digits: list[np.ndarray], kind: str, rng: np.random.Generator) -> np.ndarray:
    crops = [_ink_crop(gray) for gray in digits]
    papers = [_paper(crop) for crop in crops]
    paper = float(np.median(papers))
    dark = paper > 127
    height, pad = NUMBER_HEIGHT, NUMBER_HEIGHT // 8  # the ink's height and the paper around it, once scaled
    pieces = []
    for crop, own in zip(crops, papers, strict=True):
        matched = crop * (paper / max(own, 1)) if dark else crop + (paper - own)  # one paper for all
        scale = (height + 2 * pad) / crop.shape[0]
        size = (max(1, round(crop.shape[1] * scale)), height + 2 * pad)
        image = Image.fromarray(np.clip(matched, 0, 255).astype(np.uint8))
        pieces.append(np.asarray(image.resize(size, Image.Resampling.LANCZOS)).astype(np.float64))
    gap = round(rng.uniform(*NUMBER_GAPS[kind]) * height) - 2 * pad  # between the crops, not their ink
    page = np.full((2 * height, sum(p.shape[1] + gap for p in pieces) + height), paper)
    left = height // 2
    for piece in pieces:
        top = (page.shape[0] - piece.shape[0]) // 2 + int(rng.integers(-height // 10, height // 10 + 1))
        region = page[top : top + piece.shape[0], left : left + piece.shape[1]]
        region[...] = np.minimum(region, piece) if dark else np.maximum(region, piece)
        left += piece.shape[1] + gap
    return page.astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "change",
        help=f"one of {', '.join([*CHANGES, *NUMBER_GAPS])}, or changes joined by + (desk+lamp)",
    )
    parser.add_argument("folder", type=Path, help="labelled real images (labels.csv)")
    parser.add_argument("out", type=Path, help="where the copies go")
    args = parser.parse_args()
    if args.change in NUMBER_GAPS:
        numbers(args.folder, args.out, args.change)
        return
    names = args.change.split("+")
    if unknown := [name for name in names if name not in CHANGES]:
        parser.error(f"unknown change {', '.join(unknown)}")

    def change(gray: np.ndarray, writer_seed: int) -> np.ndarray:
        for name in names:
            gray = CHANGES[name](gray, writer_seed)
        return gray

    changed(args.folder, args.out, change)


if __name__ == "__main__":
    main()
