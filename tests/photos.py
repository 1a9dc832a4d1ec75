"""Real image files for tests: digits drawn with PIL or by the bench's photo generator."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from bench.synth import make_photo
from recognizer.augment import mnist_glyph, place


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


def _rgb(gray_or_rgb: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(gray_or_rgb, 0, 1) * 255).astype(np.uint8))


def big_canvas_drawing(mnist, index: int) -> bytes:
    """A clean black digit drawn with a thick brush on a big white canvas (1500x800 PNG)."""
    glyph = mnist_glyph(mnist.x_test[index], 520, stroke=1.6)
    canvas = np.ones((800, 1500), np.float32)
    canvas -= place(glyph, canvas.shape, 140, 500)
    return encode(_rgb(canvas), "PNG")


def faint_blurred_pen(mnist, index: int) -> bytes:
    """Faint pen, out of focus, on beige paper in dim light, cropped close around the digit (90x75 px)."""
    h, w = 90, 75
    glyph = mnist_glyph(mnist.x_test[index], 60, stroke=1.5)
    beige = np.ones((h, w, 3), np.float32) * np.array([0.66, 0.62, 0.52])
    ink = place(glyph, beige.shape, (h - glyph.shape[0]) // 2, (w - glyph.shape[1]) // 2)
    ink = ndimage.gaussian_filter(ink, 1.5)[..., None]
    photo = beige * (1 - 0.45 * ink) + np.random.default_rng(index).normal(0, 0.01, beige.shape)
    return encode(_rgb(photo), "JPEG", quality=85)


def thin_pen_on_tilted_lines(mnist, index: int) -> bytes:
    """A thin pen digit on lined paper whose blue lines run slightly tilted and bowed across the photo."""
    h, w = 720, 960
    glyph = mnist_glyph(mnist.x_test[index], 190, stroke=0.45)
    paper = np.ones((h, w, 3), np.float32) * np.array([0.95, 0.95, 0.92])
    xx = np.arange(w)
    for y0 in range(40, h, 60):
        ys = y0 + 0.04 * xx + 8 * np.sin(np.pi * xx / w)  # 2.3 degrees of tilt and a slight bow
        for x, y in zip(xx, ys, strict=True):
            if 0 <= int(y) < h - 2:
                paper[int(y) : int(y) + 2, x] = [0.55, 0.65, 0.88]
    ink = place(glyph, paper.shape, 260, 400)[..., None]
    photo = paper * (1 - ink) + ink * np.array([0.1, 0.1, 0.2])
    return encode(_rgb(photo), "JPEG", quality=85)


def close_crop_on_ruled_paper(
    mnist, index: int, size: int = 160, paper_level: float = 0.95, squared: bool = False, count: int = 6
) -> bytes:
    """A pen digit on ruled paper, cropped close: `count` grey lines, 0.3 darker than the paper, run from
    edge to edge through it (both ways on squared paper)."""
    glyph = mnist_glyph(mnist.x_test[index], int(size * 0.7))
    lines = np.zeros((size, size), np.float32)
    for y in range(size // (2 * count), size, size // count):
        lines[y : y + 2] = 1
    if squared:
        lines = np.maximum(lines, lines.T)
    paper = paper_level - 0.3 * lines
    ink = place(glyph, paper.shape, (size - glyph.shape[0]) // 2, (size - glyph.shape[1]) // 2)
    return encode(_rgb(paper * (1 - ink) + 0.05 * ink), "PNG")


def close_crop_on_grey_ruled_paper(mnist, index: int) -> bytes:
    """The same on grey paper in dim light: the lines are half as dark as the ink, above its threshold."""
    return close_crop_on_ruled_paper(mnist, index, paper_level=0.65)


def close_crop_on_grey_squared_paper(mnist, index: int) -> bytes:
    """The same on squared paper (as many European schools use): each line crosses the others."""
    return close_crop_on_ruled_paper(mnist, index, paper_level=0.65, squared=True)


def close_crop_on_fine_squared_paper(mnist, index: int) -> bytes:
    """Smaller squares: a stroke passes near more crossings."""
    return close_crop_on_ruled_paper(mnist, index, paper_level=0.8, squared=True, count=9)


def thick_marker_small_crop(mnist, index: int, size: int = 140) -> bytes:
    """A thick marker digit filling a small crop of textured yellow paper."""
    glyph = mnist_glyph(mnist.x_test[index], int(size * 0.75), stroke=2.2)
    rng = np.random.default_rng(index)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 2) * 0.06
    paper = np.array([0.98, 0.9, 0.55]) * (0.9 + texture)[..., None]
    ink = place(glyph, paper.shape, (size - glyph.shape[0]) // 2, (size - glyph.shape[1]) // 2)[..., None]
    photo = paper * (1 - ink) + ink * np.array([0.12, 0.1, 0.3])
    return encode(_rgb(photo), "JPEG", quality=85)


def soft_doubled_light_on_dark(mnist, index: int) -> bytes:
    """A light digit on a dark board, its edges soft and doubled (camera shake: a fainter second image)."""
    glyph = mnist_glyph(mnist.x_test[index], 260, stroke=1.3)
    board = np.full((480, 640), 0.18, np.float32)
    ink = place(glyph, board.shape, 110, 250)
    shaken = 0.65 * ink + 0.45 * np.roll(ink, (5, 7), axis=(0, 1))
    photo = board + 0.6 * ndimage.gaussian_filter(np.clip(shaken, 0, 1), 3)
    return encode(_rgb(photo), "JPEG", quality=85)


def tiny_in_corner(mnist, index: int, size: int = 44) -> bytes:
    """A tiny image (44 px) with a small digit in its top-left corner."""
    glyph = mnist_glyph(mnist.x_test[index], size // 2)
    canvas = np.ones((size, size), np.float32) * 0.9
    canvas -= 0.8 * place(glyph, canvas.shape, 2, 3)
    return encode(_rgb(canvas), "PNG")


def sheet_on_a_desk(mnist, index: int) -> bytes:
    """A sheet with a digit, turned a little, on a grey desk that shows all round it (960x720 JPEG)."""
    sheet = digit_on_paper(mnist, index, size=(640, 500), height=150).rotate(6, Image.BILINEAR, expand=True)
    where = Image.new("L", (640, 500), 255).rotate(6, Image.BILINEAR, expand=True)
    grain = ndimage.zoom(np.random.default_rng(index).normal(0, 0.06, (47, 62)), 16, order=1)[:720, :960]
    photo = _rgb(0.5 + grain + np.linspace(0, 0.1, 960)[None])
    photo.paste(sheet, ((960 - sheet.width) // 2, (720 - sheet.height) // 2), where)
    return encode(photo, "JPEG", quality=85)


def small_sheet_on_a_desk(
    mnist,
    index: int,
    desk: float,
    angle: float,
    paper: float = 1.0,
    ruled: bool = False,
    squared: bool = False,
) -> np.ndarray:
    """A 300 px sheet of gray level `paper` with a digit (`ruled`: on grey lines 40 px apart, from edge to
    edge; `squared`: on a bold grid, 4 px lines 30 px apart, as grey as a mid-grey desk), turned by `angle`
    degrees, on a grainy desk of gray level `desk` (400x480 floats in [0, 1]), to be lit."""
    sheet = np.asarray(digit_on_paper(mnist, index, size=(300, 300), height=120), np.float32) * paper
    # The ink, written over a line, stays.
    if ruled:
        sheet[20::40] = np.minimum(sheet[20::40], 0.6 * 255 * paper)
    for offset in range(15, 19) if squared else ():
        sheet[offset::30] = np.minimum(sheet[offset::30], 0.55 * 255 * paper)
        sheet[:, offset::30] = np.minimum(sheet[:, offset::30], 0.55 * 255 * paper)
    turned = Image.fromarray(sheet.astype(np.uint8)).rotate(angle, Image.BILINEAR, expand=True)
    where = Image.new("L", (300, 300), 255).rotate(angle, Image.BILINEAR, expand=True)
    grain = ndimage.zoom(np.random.default_rng(2).normal(0, 0.06, (27, 32)), 16, order=3)[:400, :480]
    photo = Image.fromarray((np.clip(desk + grain, 0, 1) * 255).astype(np.uint8))
    photo.paste(turned, ((480 - turned.width) // 2, (400 - turned.height) // 2), where)
    return np.asarray(photo, np.float32) / 255


def canvas_in_a_screenshot(mnist, index: int) -> bytes:
    """A drawing app's black canvas with a white digit, screenshot with the app's grey window around it."""
    glyph = mnist_glyph(mnist.x_test[index], 200, stroke=1.5)
    screen = np.full((720, 640), 0.93, np.float32)
    screen[60:100] = 0.75  # the title bar
    screen[160:500, 150:490] = 0.0
    screen += place(glyph, screen.shape, 230, 320 - glyph.shape[1] // 2)
    return encode(_rgb(screen), "PNG")


def white_strokes_on_a_transparent_canvas(mnist, index: int) -> bytes:
    """A web canvas exported without a background: white strokes, everything else transparent black."""
    glyph = mnist_glyph(mnist.x_test[index], 200, stroke=1.5)
    alpha = place(glyph, (280, 280), 40, 140 - glyph.shape[1] // 2)
    rgba = np.zeros((280, 280, 4), np.uint8)
    rgba[..., :3] = 255 * (alpha > 0)[..., None]
    rgba[..., 3] = np.round(np.clip(alpha, 0, 1) * 255)
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def saved_small(mnist, indices: int | list[int], size: int = 32) -> bytes:
    """Digits drawn big on a canvas, side by side, and saved `size` px tall (about MNIST's own size), as
    drawing apps do."""
    indices = [indices] if isinstance(indices, int) else indices
    pages = [np.asarray(digit_on_paper(mnist, i, size=(400, 400), height=240)) for i in indices]
    canvas = Image.fromarray(np.hstack(pages))
    return encode(canvas.resize((size * len(indices), size), Image.Resampling.LANCZOS), "PNG")


def touching(mnist, indices: list[int], height: int = 160) -> bytes:
    """MNIST test digits written side by side, each slid left until its ink touches the digit before it
    (a number written quickly), dark pen on white paper, as a JPEG."""
    glyphs = [mnist_glyph(mnist.x_test[i], height) for i in indices]
    page = np.zeros((2 * height, sum(g.shape[1] for g in glyphs) + 2 * height), np.float32)
    left = height
    for glyph in glyphs:
        written = ndimage.binary_dilation(page > 0.5)
        while written.any() and left > 0 and not (_placed(glyph, page, left - 1) & written).any():
            left -= 1
        page = np.maximum(page, _placed(glyph, page, left))
        left += glyph.shape[1]
    return encode(_rgb(1 - 0.85 * page), "JPEG", quality=90)


def _placed(glyph: np.ndarray, page: np.ndarray, left: int) -> np.ndarray:
    return place(glyph, page.shape, (page.shape[0] - glyph.shape[0]) // 2, left) > 0.5


def half_faded(mnist, index: int) -> bytes:
    """The left half of a digit's ink four times fainter than the right, as a blurred photo loses a loop's
    thin side: above the paper, below the pipeline's stroke threshold."""
    gray = np.asarray(digit_on_paper(mnist, index), np.float32) / 255
    xs = np.flatnonzero((gray < 0.5).any(axis=0))
    left = (slice(None), slice(None, (xs[0] + xs[-1]) // 2))
    gray[left] = 1 - (1 - gray[left]) * 0.25
    return encode(_rgb(gray), "PNG")


def pencil_under_a_flash(mnist, index: int) -> bytes:
    """Faint pencil by a phone's flash: the paper bright in the middle, half as bright in the corners, which
    is farther from the paper's median than the pencil is."""
    gray = np.asarray(digit_on_paper(mnist, index, size=(300, 300), height=120), np.float32) / 255
    y, x = np.ogrid[-1:1:300j, -1:1:300j]
    return encode(_rgb((1 - 0.4 * (1 - gray)) * (1 - 0.5 * np.hypot(y, x) / np.sqrt(2))), "PNG")


def thick_marker_under_a_lamp(mnist, index: int) -> bytes:
    """A thick marker digit filling a canvas lit from above: the light falls to 30% at the bottom, where the
    paper is as dark as the ink near the top."""
    glyph = mnist_glyph(mnist.x_test[index], 380, stroke=1.6)
    canvas = 1 - 0.8 * place(glyph, (500, 500), (500 - glyph.shape[0]) // 2, (500 - glyph.shape[1]) // 2)
    light = np.linspace(1.0, 0.3, 500)[:, None]
    return encode(_rgb(canvas * light), "PNG")


def blank_page_under_a_lamp(low: float, fall: str, across: bool, size=(480, 480), seed: int = 0) -> bytes:
    """Nothing written: paper lit from one side, the light falling to `low` along the rows (`across`) or the
    columns, linearly, as a square or as a square root; sensor noise, JPEG."""
    h, w = size
    t = np.linspace(0, 1, w)[None, :] if across else np.linspace(0, 1, h)[:, None]
    curve = {"linear": t, "square": t * t, "root": np.sqrt(t)}[fall]
    light = low + (1 - low) * curve
    paper = 0.85 * light * np.ones(size) + np.random.default_rng(seed).normal(0, 0.015, size)
    return encode(_rgb(paper), "JPEG", quality=80)


def barely_darker_than_paper(mnist, index: int) -> bytes:
    """Ink only 6% darker than the paper: below the pipeline's contrast for ink, still plain to see."""
    gray = np.asarray(digit_on_paper(mnist, index), np.float32) / 255
    return encode(_rgb(1 - (1 - gray) * 0.06 / 0.9), "PNG")


def pen_page(
    strokes: list[list[tuple[float, float]]],
    width: int = 9,
    size: tuple[int, int] = (320, 320),
    paper_lines: tuple[float, ...] = (),
) -> Image.Image:
    """Strokes drawn with a pen on white paper; points are (x, y) fractions of the image's (w, h). The paper
    may have grey level lines, at `paper_lines` fractions of its height, under the strokes."""
    image = Image.new("L", size, 245)
    draw = ImageDraw.Draw(image)
    for y in paper_lines:
        draw.line([(0, y * size[1]), (size[0], y * size[1])], fill=130, width=2)
    for stroke in strokes:
        draw.line([(x * size[0], y * size[1]) for x, y in stroke], fill=30, width=width, joint="curve")
    return image


def pen_strokes(
    strokes: list[list[tuple[float, float]]],
    width: int = 9,
    size: tuple[int, int] = (320, 320),
    paper_lines: tuple[float, ...] = (),
) -> bytes:
    """pen_page as the JPEG a phone would send."""
    return encode(pen_page(strokes, width, size, paper_lines), "JPEG", quality=90)


CONTINENTAL_ONE = [[(0.32, 0.40), (0.58, 0.15), (0.52, 0.85)]]  # a long up-stroke into the stem
CROSSED_SEVEN = [[(0.3, 0.2), (0.7, 0.2), (0.45, 0.85)], [(0.42, 0.52), (0.7, 0.52)]]
# Cropped close: the bar (or foot) runs across the whole crop, as a paper line does.
SEVEN_ACROSS = [[(0.01, 0.08), (0.99, 0.08), (0.45, 0.98)]]
CROSSED_SEVEN_ACROSS = [*SEVEN_ACROSS, [(0.35, 0.5), (0.9, 0.5)]]
UPRIGHT_SEVEN_ACROSS = [[(0.02, 0.06), (0.92, 0.06), (0.92, 0.98)]]
FOUR_ACROSS = [[(0.3, 0.03), (0.04, 0.62), (0.97, 0.62)], [(0.68, 0.02), (0.68, 0.98)]]
# Square-cornered, its corners cut, filling a close crop: its sides run nearly edge to edge, as lines do.
SQUARE_ZERO = [
    [
        (0.07, 0.02),
        (0.93, 0.02),
        (0.98, 0.07),
        (0.98, 0.93),
        (0.93, 0.98),
        (0.07, 0.98),
        (0.02, 0.93),
        (0.02, 0.07),
        (0.07, 0.02),
    ]
]
TWO_ACROSS = [[(0.1, 0.3), (0.3, 0.05), (0.7, 0.05), (0.88, 0.3), (0.01, 0.97), (0.99, 0.97)]]
