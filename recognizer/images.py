"""Decoding any image a user may send into a grayscale array, or a clear `ImageError`."""

from __future__ import annotations

import io
import math
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_BYTES = 20 * 1024 * 1024  # Telegram's download limit for bots
MAX_PIXELS = 50_000_000  # beyond this a "photo" is a decompression bomb, not a digit
WORK_SIZE = 640  # longest side the pipeline works at; enough for digits, fast on 2 cores


class ImageError(ValueError):
    """The input is not an image we can read; the message is fit to show a user."""


def _open(source: bytes | str | Path) -> Image.Image:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.stat().st_size > MAX_BYTES:
            raise ImageError(f"file is larger than {MAX_BYTES // 2**20} MB")
        data = path.read_bytes()
    else:
        data = bytes(source)
    if not data:
        raise ImageError("empty file")
    if len(data) > MAX_BYTES:
        raise ImageError(f"file is larger than {MAX_BYTES // 2**20} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"image is too large ({width}x{height} pixels)")
            return image
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (or a format we cannot read)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageError("image is too large") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:  # a header cut short or mangled
        raise ImageError(f"corrupted or unsupported image ({exc.__class__.__name__})") from None


def _flatten(image: Image.Image) -> Image.Image:
    """Any mode -> 8-bit grayscale; transparency is composited onto white paper."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        high = array.max() or 1.0
        image = Image.fromarray((array * (255.0 / high)).astype(np.uint8))
    elif image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = array.min(), array.max()
        image = Image.fromarray(((array - low) * (255.0 / ((high - low) or 1.0))).astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("L")


def decode_image(source: bytes | str | Path, work_size: int = WORK_SIZE) -> np.ndarray:
    """Bytes or a path -> float32 (H, W) gray levels in [0, 1], EXIF-upright, longest side <= work_size."""
    image = _open(source)
    try:
        image.seek(0)  # GIF and TIFF: the first frame
        if image.format == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale in the DCT domain: big photos decode fast.
            scale = work_size / max(image.size)
            image.draft("L", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        image = ImageOps.exif_transpose(image)
        image = _flatten(image)
        image.thumbnail((work_size, work_size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        array = np.asarray(image, dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"corrupted or unsupported image ({exc.__class__.__name__})") from None
    if min(array.shape) < 8:
        raise ImageError(f"image is too small ({array.shape[1]}x{array.shape[0]} pixels)")
    return array
