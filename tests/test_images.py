"""Decoding: every format a user may send, and every way a file can be bad."""

import subprocess
import sys

import numpy as np
import pillow_heif
import pytest
from PIL import Image

from recognizer.images import MAX_DECODED_PIXELS, MAX_PIXELS, WORK_SIZE, ImageError, decode_image
from recognizer.preprocess import segmentations
from tests.conftest import ROOT
from tests.photos import digit_on_paper, encode


@pytest.fixture(scope="module")
def seven(mnist):
    return digit_on_paper(mnist, index=0)  # MNIST test image 0 is a 7


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "HEIF"])
def test_common_formats_decode_alike(seven, fmt):
    gray = decode_image(encode(seven, fmt))
    reference = np.asarray(seven, np.float32) / 255
    assert gray.shape == reference.shape and gray.dtype == np.float32
    assert np.abs(gray - reference).mean() < 0.03


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "PPM"])
def test_formats_outside_the_allow_list_are_refused(seven, fmt):
    with pytest.raises(ImageError, match="not an image"):
        decode_image(encode(seven.convert("RGB"), fmt))


def test_postscript_is_never_handed_to_ghostscript(tmp_path):
    marker = tmp_path / "ran"
    eps = (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n"
        + f"({marker}) (w) file closefile\nshowpage\n%%EOF\n".encode()
    )
    with pytest.raises(ImageError, match="not an image"):
        decode_image(eps)
    assert not marker.exists()


def test_gif_uses_the_first_frame(seven):
    blank = Image.new("L", seven.size, 255)
    data = encode(seven, "GIF", save_all=True, append_images=[blank])
    assert decode_image(data).min() < 0.3  # the ink of frame 1, not the blank frame 2


def test_rgba_canvas_strokes_are_flattened_onto_white(seven):
    # A canvas drawing: black strokes, everything else fully transparent (and black underneath).
    alpha = 255 - np.asarray(seven)
    rgba = np.zeros((*alpha.shape, 4), np.uint8)
    rgba[..., 3] = alpha
    gray = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert gray[0, 0] == pytest.approx(1.0)  # transparent background became white paper
    assert gray.min() < 0.2


def test_light_strokes_on_a_transparent_canvas_are_flattened_onto_black(seven):
    # A web canvas exported without a background: white strokes; onto white paper they vanished.
    rgba = np.zeros((*seven.size[::-1], 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = 255 - np.asarray(seven)
    gray = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert gray[0, 0] == pytest.approx(0.0)
    assert gray.max() > 0.8


def test_translucent_dark_strokes_stay_on_white(seven):
    # A soft brush: black strokes at most 40% opaque.
    rgba = np.zeros((*seven.size[::-1], 4), np.uint8)
    rgba[..., 3] = (255 - np.asarray(seven)) * 0.4
    gray = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert gray[0, 0] == pytest.approx(1.0)
    assert gray.min() < 0.7


@pytest.mark.parametrize("darkest", [25, 140])  # a pen, a faint pencil
def test_a_cut_out_page_on_transparency_stays_on_white(seven, darkest):
    # An oval of light paper with its ink, transparent around it (a phone's "lift subject"): light, but
    # most of the image. Onto black, no rectangle, it would be one huge stroke.
    height, width = seven.height * 2, seven.width * 2
    rgba = np.zeros((height, width, 4), np.uint8)
    ink = 1 - np.asarray(seven.resize((width, height)), np.float32) / 255
    rgba[..., :3] = (235 - (235 - darkest) * ink)[..., None]
    yy, xx = np.mgrid[0:height, 0:width]
    rgba[..., 3] = 255 * (
        ((yy - height / 2) / (height / 2.1)) ** 2 + ((xx - width / 2) / (width / 2.1)) ** 2 < 1
    )
    gray = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert gray[0, 0] == pytest.approx(1.0)


def test_palette_with_transparency_and_sixteen_bit(seven):
    palette = seven.convert("P")
    palette.info["transparency"] = 255
    assert decode_image(encode(palette, "PNG"))[0, 0] == pytest.approx(1.0)
    sixteen = Image.fromarray(np.asarray(seven).astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    assert np.abs(decode_image(encode(sixteen, "PNG")) - np.asarray(seven) / 255).mean() < 0.01


def test_exif_orientation_is_applied(seven):
    # Stored rotated 90 degrees clockwise with orientation 8: viewers (and we) show it upright.
    stored = seven.transpose(Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = 8
    gray = decode_image(encode(stored.convert("RGB"), "JPEG", exif=exif.tobytes()))
    assert gray.shape == (seven.height, seven.width)
    assert np.abs(gray - np.asarray(seven) / 255).mean() < 0.03


def test_large_photo_is_downscaled_early(seven):
    big = seven.resize((6000, 4500))
    gray = decode_image(encode(big.convert("RGB"), "JPEG", quality=80))
    assert max(gray.shape) <= WORK_SIZE


def test_huge_image_is_refused_clearly():
    side = int(MAX_PIXELS**0.5) + 100
    data = encode(Image.new("1", (side, side), 1), "PNG")  # compresses to a few KB: a decompression bomb
    with pytest.raises(ImageError, match="too large"):
        decode_image(data)


def peak_rss_mb(path) -> float:
    """Peak RSS of a fresh process that decodes `path` (as `digitbot predict` does, less the model). Its own
    peak (VmHWM), not ru_maxrss: that keeps the parent's RSS at the fork across exec, and the test process,
    holding MNIST and the photos it made, was larger than any decode: every file measured the same."""
    code = (
        "import sys\nfrom recognizer.images import ImageError, decode_image\n"
        "try:\n    decode_image(sys.argv[1])\nexcept ImageError as exc:\n    print(exc, file=sys.stderr)\n"
        "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
        "print(int(hwm.split()[1]) / 1024)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


@pytest.fixture(scope="module")
def normal_photo_mb(tmp_path_factory) -> float:
    """Peak RSS of decoding a normal photo (1280x960 JPEG): what a costlier file is measured against."""
    normal = tmp_path_factory.mktemp("normal") / "normal.jpg"
    normal.write_bytes(encode(Image.new("RGB", (1280, 960), (236, 233, 225)), "JPEG"))
    return peak_rss_mb(normal)


def test_any_accepted_png_costs_less_than_150_mb_more_than_a_normal_photo(tmp_path, normal_photo_mb):
    width = 6000
    height = MAX_DECODED_PIXELS // width  # the largest accepted PNG, in the costliest mode
    canvas = tmp_path / "canvas.png"
    Image.new("RGBA", (width, height), (255, 255, 255, 0)).save(canvas)
    assert decode_image(canvas).shape == (round(WORK_SIZE * height / width), WORK_SIZE)
    bomb = tmp_path / "bomb.png"
    Image.new("RGBA", (7000, 7000), (255, 255, 255, 0)).save(bomb)  # 49 MP in a few hundred KB
    with pytest.raises(ImageError, match="too large"):
        decode_image(bomb)
    assert peak_rss_mb(canvas) - normal_photo_mb < 150
    assert peak_rss_mb(bomb) - normal_photo_mb < 150


@pytest.fixture(scope="module")
def heic_photos(seven, tmp_path_factory):
    """The seven as a phone saves a photo as HEIF: at 24 MP (an iPhone's default since the 15), 48 MP, and
    just over MAX_PIXELS; and in 10 bits just over MAX_DECODED_PIXELS."""
    folder = tmp_path_factory.mktemp("heic")
    photos = {}
    for name, size in [("24mp", (5712, 4284)), ("48mp", (8064, 6048)), ("over", (7200, 7000))]:
        photos[name] = folder / f"{name}.heic"
        seven.resize(size, Image.Resampling.BILINEAR).convert("RGB").save(photos[name], quality=50)
    photos["10bit"] = folder / "10bit.heic"
    rgb16 = np.full((5000, 5000, 3), 200 * 257, np.uint16)
    ten_bits = pillow_heif.from_bytes(mode="RGB;16", size=(5000, 5000), data=rgb16.tobytes())
    ten_bits.save(photos["10bit"], quality=50)
    return photos


@pytest.mark.parametrize("name", ["24mp", "48mp"])
def test_a_phones_full_size_heic_photo_is_read(seven, heic_photos, name):
    gray = decode_image(heic_photos[name])
    assert gray.shape == (480, 640)
    reference = np.asarray(seven.resize((640, 480), Image.Resampling.BILINEAR), np.float32) / 255
    assert np.abs(gray - reference).mean() < 0.03


def test_heic_costs_less_than_400_mb_more_than_a_normal_photo_and_larger_is_refused(
    heic_photos, normal_photo_mb
):
    assert MAX_PIXELS < 7200 * 7000
    with pytest.raises(ImageError, match="too large"):
        decode_image(heic_photos["over"])
    # In 10 bits decoding costs up to 2.3 times as much: these have the 24 MP of other formats.
    assert MAX_DECODED_PIXELS < 5000 * 5000 < MAX_PIXELS
    with pytest.raises(ImageError, match="too large"):
        decode_image(heic_photos["10bit"])
    assert peak_rss_mb(heic_photos["48mp"]) - normal_photo_mb < 400


def test_a_heic_with_transparency_is_refused(seven):
    """libheif decodes an alpha plane at its own size, which nothing shows before decoding: a 2048x2048
    image with a 32768x32768 alpha plane, 14 KB, took 1.7 GB."""
    with pytest.raises(ImageError, match="transparency"):
        decode_image(encode(seven.convert("RGBA"), "HEIF"))


def test_a_heic_grid_is_checked_at_its_whole_size():
    """A HEIF grid is decoded whole, then cropped: this one is an 8x8 grid of one 2048x2048 HEVC tile, cropped
    (its clap box) to 640x480, in 5.8 KB (boxes written by hand). It opens as 640x480, and decoding it took
    520 MB (32768x32768: 1.7 GB)."""
    with pytest.raises(ImageError, match=r"too large \(16384x16384"):
        decode_image(ROOT / "tests" / "data" / "grid_16384px_cropped_to_640x480.heic")


def test_a_heic_is_read_at_its_primary_image_not_its_first(seven, tmp_path):
    """The size checked is the primary image's (what Pillow opens): the first may be any size (81 MP took
    650 MB)."""
    photo = pillow_heif.from_pillow(Image.new("RGB", (96, 64), (90, 90, 90)))
    photo.add_from_pillow(seven.convert("RGB"))
    photo.save(tmp_path / "two.heic", primary_index=1, quality=90)
    gray = decode_image(tmp_path / "two.heic")
    assert gray.shape == (seven.height, seven.width)
    assert np.abs(gray - np.asarray(seven, np.float32) / 255).mean() < 0.03


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello, this is a text file renamed .jpg\n", "not an image"),
        (b"", "empty"),
        (b"%PDF-1.4\n%\xe2\xe3\n1 0 obj", "not an image"),
    ],
)
def test_non_images_are_refused(tmp_path, data, message):
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=message):
        decode_image(path)


@pytest.mark.parametrize("keep", [300, 0.33])  # cut inside the header, or in the image data
def test_truncated_jpeg_is_refused(seven, keep):
    data = encode(seven.convert("RGB"), "JPEG")
    with pytest.raises(ImageError, match="corrupted"):
        decode_image(data[: keep if isinstance(keep, int) else int(len(data) * keep)])


@pytest.mark.parametrize(
    ("size", "decoded"),
    [
        ((28, 28), (112, 112)),
        ((40, 30), (160, 120)),
        ((128, 32), (512, 128)),  # a number's row of digits
        ((300, 20), (600, 40)),  # no longer than the pipeline's work size
        ((60, 56), (60, 56)),
    ],
)
def test_an_image_drawn_at_mnists_size_is_enlarged(seven, size, decoded):
    # By a whole factor, its shortest side to at least 112 px; from 56 px on, as it is.
    gray = decode_image(encode(seven.resize(size, Image.Resampling.LANCZOS), "PNG"))
    assert gray.shape[::-1] == decoded
    assert gray.min() >= 0.0 and gray.max() <= 1.0


def test_tiny_image_is_refused():
    with pytest.raises(ImageError, match="too small"):
        decode_image(encode(Image.new("L", (3, 3)), "PNG"))


@pytest.mark.parametrize("size", [(8, 8), (10, 10), (15, 200), (200, 15)])
def test_images_just_large_enough_are_segmented(size):
    # Fewer rows (or columns) than one band of the look for paper lines: that look failed with a ValueError.
    gray = np.full(size[::-1], 240, np.uint8)
    gray[size[1] // 4 : 3 * size[1] // 4, size[0] // 2 - 1 : size[0] // 2 + 1] = 20
    options = segmentations(decode_image(encode(Image.fromarray(gray), "PNG")))
    assert len(options[0].crops) <= 1
