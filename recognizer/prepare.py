"""A photo's bytes -> what the model reads and the copy of the photo that is kept, without TensorFlow: the
bot does this in worker processes (bot/reading.py), where importing TensorFlow would cost each one seconds
and hundreds of MB."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from recognizer.images import decode_image
from recognizer.preprocess import Segmentation, segmentations

PHOTO_QUALITY = 90  # JPEG quality of the kept photo: digits survive it, a 640 px photo is ~50 KB


@dataclass(frozen=True)
class PreparedPhoto:
    segmentations: list[Segmentation]  # the ways to read it as digits, as 28x28 inputs (Recognizer.reading)
    kept: bytes  # the copy of the photo to keep: feedback on the answer is learned from it


def photo_to_keep(gray: np.ndarray) -> bytes:
    """The decoded photo (gray, longest side <= 640 px: what the pipeline works at) as a small JPEG."""
    image = Image.fromarray((np.clip(gray, 0, 1) * 255).round().astype(np.uint8), mode="L")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=PHOTO_QUALITY)
    return out.getvalue()


def prepare_photo(photo: bytes | str | Path) -> PreparedPhoto:
    """Decode the photo, segment it into digits, and make the copy to keep.

    Raises recognizer.images.ImageError for input that is not a readable image."""
    gray = decode_image(photo)
    return PreparedPhoto(segmentations(gray), photo_to_keep(gray))
