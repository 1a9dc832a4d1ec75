"""Decoding any image a user may send into a grayscale array, or a clear `ImageError`."""

from __future__ import annotations

import io
import math
import struct
import warnings
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import ExifTags, Image, UnidentifiedImageError

from recognizer.preprocess import within_page

pillow_heif.register_heif_opener()  # iPhones send HEIC when a photo goes as a file

# Decoders that only parse pixels; never EPS/PS (Pillow runs Ghostscript on them) or anything else Pillow
# knows but no phone sends.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF")
# Decoded at 1/2, 1/4 or 1/8 scale in the DCT domain; many phones' JPEGs open as MPO.
REDUCED_WHILE_DECODING = ("JPEG", "MPO")
MAX_BYTES = 20 * 1024 * 1024  # Telegram's download limit for bots
MAX_PIXELS = 50_000_000  # JPEG, HEIF: beyond this a "photo" is a decompression bomb, not a digit
# Other formats are decoded whole (4 bytes a pixel for colour): 24 MP is at most 96 MB, and the steps below
# add at most one 8-bit plane to it, so any accepted file costs < 150 MB more than a normal photo.
MAX_DECODED_PIXELS = 24_000_000
WORK_SIZE = 640  # longest side the pipeline works at; enough for digits, fast on 2 cores
# An image drawn near MNIST's own size (its shortest side under SMALL_IMAGE px: a digit, or a number's row of
# them) is enlarged by a whole factor towards MIN_WORK_SIZE: binarised at 28-40 px, a pixel or two of
# anti-aliased stroke, thickened to MNIST's width, filled a 6's loop (read 5). Larger small crops read as well
# or better as they are (blurred 90 px crops in a box).
SMALL_IMAGE = 56
MIN_WORK_SIZE = 112
STRIP_ROWS = 256  # transparency is flattened this many rows at a time
INK_COVERS = 1 / 3  # at most this share of a transparent image is drawn when what is drawn is the ink
UPRIGHT = {  # EXIF orientation -> the transpose that shows the image as the camera saw it
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


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
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            # libheif decodes an alpha plane at its own size, which nothing shows before decoding (14 KB with
            # a 32768x32768 one took 1.7 GB), and no phone camera saves one.
            if image.format == "HEIF" and "A" in image.getbands():
                raise ImageError("HEIF with transparency is not supported")
            width, height = _decoded_size(image)
            if width * height > _pixel_limit(image):
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


def _decoded_size(image: Image.Image) -> tuple[int, int]:
    """The size the decoder allocates: a HEIF grid's whole size, however small the crop it shows (a few KB
    of grid, cropped to 640x480, took 1.7 GB)."""
    tiling = image.info.get("tiling") or {}  # pillow_heif's, for a grid
    return max(image.width, tiling.get("image_width", 0)), max(image.height, tiling.get("image_height", 0))


def _pixel_limit(image: Image.Image) -> int:
    """MAX_PIXELS for JPEG, and for HEIF as phones save it (8 bits): decoded whole, it costs more
    (libheif's planes beside Pillow's copy: 340 MB at 48 MP), but phones save it at 24 MP (5712x4284, iPhones
    since the 15 by default) and 48 MP and send it so as a file, and at 24 MP a photo straight from the
    camera was refused as "too large". 10 bits cost up to 2.3 times as much (4:4:4): MAX_DECODED_PIXELS."""
    if image.format in REDUCED_WHILE_DECODING:
        return MAX_PIXELS
    if image.format == "HEIF" and image.info.get("bit_depth") == 8 and image.mode in ("RGB", "L"):
        return MAX_PIXELS
    return MAX_DECODED_PIXELS


def _shrunk_gray(image: Image.Image, work_size: int) -> Image.Image:
    """Any mode -> 8-bit grayscale, longest side <= work_size, with at most one 8-bit plane beside the
    decoded image: transparency is flattened strip by strip (`_flattened`), other modes shrink first."""
    box = (work_size, work_size)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = _flattened(image)
    elif image.mode.startswith("I;16"):
        array = np.array(image)  # uint16; Pillow cannot shrink these
        array >>= max(0, int(array.max()).bit_length() - 8)  # in place: the top 8 bits of the used range
        image = Image.fromarray(array.astype(np.uint8))
    elif image.mode in ("1", "P"):
        image = image.convert("L")  # shrinking these picks pixels (nearest), which loses thin strokes
    else:
        image.thumbnail(box, Image.Resampling.BILINEAR, reducing_gap=2.0)
    if image.mode in ("I", "F"):
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = array.min(), array.max()
        image = Image.fromarray(((array - low) * (255.0 / ((high - low) or 1.0))).astype(np.uint8))
    image = image.convert("L")
    image.thumbnail(box, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return image


def _flattened(image: Image.Image) -> Image.Image:
    """Transparency composited strip by strip onto paper the drawing stands out from: white, or black under a
    light drawing that covers little of the image (white strokes on a canvas exported without a background).
    A cut-out page is light too, but covers much of it."""
    strips = [
        (0, top, image.width, min(top + STRIP_ROWS, image.height))
        for top in range(0, image.height, STRIP_ROWS)
    ]
    drawn = light = 0  # opacity (0-255), and gray level times opacity, summed: faint strokes weigh little
    for strip in strips:
        rgba = image.crop(strip).convert("RGBA")
        # In integers: float64 copies of each strip took 25 MB more at 24 MP.
        opacity = np.asarray(rgba.getchannel("A"), dtype=np.uint32)
        drawn += int(opacity.sum())
        light += int((opacity * np.asarray(rgba.convert("L"), dtype=np.uint32)).sum())
    strokes = light > 127 * drawn and drawn < 255 * INK_COVERS * image.width * image.height
    gray = Image.new("L", image.size, 0 if strokes else 255)
    for strip in strips:
        rgba = image.crop(strip).convert("RGBA")
        gray.paste(rgba.convert("L"), strip[:2], rgba.getchannel("A"))
    return gray


def decode_image(source: bytes | str | Path, work_size: int = WORK_SIZE) -> np.ndarray:
    """Bytes or a path -> float32 (H, W) gray levels in [0, 1], EXIF-upright, longest side <= work_size; only
    the page when a desk shows all round it (`preprocess.within_page`); a very small image enlarged (see
    SMALL_IMAGE)."""
    image = _open(source)
    try:
        # Opened at the first frame (GIF, TIFF), a HEIF at its primary image, whose size _open checked.
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)  # gone once the image is shrunk
        if image.format in REDUCED_WHILE_DECODING:
            scale = work_size / max(image.size)
            image.draft("L", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        image = _shrunk_gray(image, work_size)
        if orientation in UPRIGHT:
            image = image.transpose(UPRIGHT[orientation])
        array = np.asarray(image, dtype=np.float32) / 255.0
    except MemoryError:
        raise ImageError("image is too large") from None
    except (OSError, ValueError, SyntaxError, EOFError, RuntimeError) as exc:  # RuntimeError: libheif's
        raise ImageError(f"corrupted or unsupported image ({exc.__class__.__name__})") from None
    if min(array.shape) < 8:
        raise ImageError(f"image is too small ({array.shape[1]}x{array.shape[0]} pixels)")
    return _enlarged(within_page(array), work_size)


def _enlarged(gray: np.ndarray, work_size: int) -> np.ndarray:
    """A gray image whose shortest side is under SMALL_IMAGE, scaled up (bicubic) by a whole factor: to at
    least MIN_WORK_SIZE, its longest side within work_size. Others as they are."""
    if min(gray.shape) >= SMALL_IMAGE:
        return gray
    scale = min(math.ceil(MIN_WORK_SIZE / min(gray.shape)), work_size // max(gray.shape))
    if scale <= 1:
        return gray
    size = (gray.shape[1] * scale, gray.shape[0] * scale)
    return np.clip(np.asarray(Image.fromarray(gray, "F").resize(size, Image.Resampling.BICUBIC)), 0.0, 1.0)
