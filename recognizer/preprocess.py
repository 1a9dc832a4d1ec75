"""Photo -> MNIST-style 28x28 inputs, following how MNIST itself was made.

gray image (decoding cuts out the page when a desk shows all round it: within_page) -> remove illumination
-> ink polarity -> binarize -> drop paper lines, frame edges, specks
-> group strokes into digits (left to right; a wide mark also cut where touching digits would meet)
-> per digit: normalise stroke width, fit a 20x20 box
keeping the aspect ratio, anti-alias, centre by centre of mass in 28x28
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage, spatial

MNIST_STROKE = 2.85  # median stroke width of MNIST digits in 28x28 pixels, measured with stroke_width()
MAX_DIGITS = 8  # more separate marks than this is a page of text or a texture, not a number
LINE_SPAN = 0.8  # a run of ink this much of the image long is a paper line, not a stroke
# How far from level a photographed paper line runs (tilt of the phone, bowing of the page).
LINE_ANGLES = (-4.5, -3.0, -1.5, 0.0, 1.5, 3.0, 4.5)  # degrees
LINE_SLOPES = tuple(np.tan(np.radians(LINE_ANGLES)).tolist())
MAX_LINE_TILT = 15  # degrees; lines further off than LINE_ANGLES (a notebook photographed askew) up to this
MAX_LEAN = 15  # degrees from upright that MNIST's writers lean, and the model learnt (with augmentation)
MIN_INK_CONTRAST = 0.08  # ink at least this much darker (or lighter) than the paper, in [0, 1] gray levels
PAGE_CONTRAST = 0.12  # a page stands out this much (gray levels) from the desk or screen around it,
MIN_PAGE = 0.2  # covers at least this share of the photo,
PAGE_FILL = 0.85  # fills at least this share of a rectangle,
PAGE_ASPECT = 3.0  # no longer than this times its width (a bold 1 filling a close crop is a long bar),
PAGE_INK_WIDTH = 0.25  # and what is on it like the desk is no wider than this share of it (a bold 0's loop)
PAGE_TILTS = np.arange(-20.0, 20.1, 2.5)  # degrees a page may be turned in the photo
# Paper lines and strokes up to 2 coarse pixels across (8 px at WORK_SIZE) are bridged where they cut a page
# (a closing, this many iterations), if no piece of it holds more than JOINED_PIECE of what stands out and
# there are three or more (two bold strokes side by side are two).
PAGE_BRIDGE = 1
JOINED_PIECE = 0.6
SMALLEST_PAGE_PHOTO = 128  # px; smaller images are crops and drawings (a bold 28 px 0, filled, is a square)
TOUCHING_ASPECT = 0.6  # a mark at least this many times as wide as tall may be two touching digits ("18"),
TOUCHING_HEIGHT = 0.8  # each of them at least this share of its height (half a slanted 8 is a 0, 55% as tall)
TOUCHING_CUT = 1.25  # and they touch where a cut crosses at most this many stroke widths of ink (a 0: 2)
TOUCHING_STROKES = 3  # a mark less than this many strokes tall is a dash or an underline, not two digits
TOUCHING_DIGITS = 4  # one mark is read as at most this many touching digits (a wide one is cut again)
TOUCHING_TRIES = 4  # cuts through different stretches of a mark tried before it is taken as one digit
SIDE_STEP = 0.2  # what a step sideways costs a cut between touching digits, against 1 for a pixel of ink
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class DigitCrop:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image width and height
    image: np.ndarray  # float32 (28, 28) in [0, 1], white ink on black: the model's input
    aspect: float = 1.0  # width / height, in pixels (read only where it has halves)
    halves: tuple[DigitCrop, DigitCrop] | None = None  # a wide mark cut where two touching digits would meet

    def pieces(self) -> list[DigitCrop]:
        """This crop and its halves, and theirs: every way reading may take part of this mark as a digit."""
        return [self, *(piece for half in self.halves or () for piece in half.pieces())]


@dataclass(frozen=True)
class Segmentation:
    crops: list[DigitCrop]  # left to right
    dark_ink: bool  # True for dark ink on light paper


def _shrink(gray: np.ndarray, factor: int) -> np.ndarray:
    """Block means of factor x factor pixels: fewer pixels to filter, and less sensor noise."""
    return np.asarray(Image.fromarray(gray, mode="F").reduce(factor))


def _resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize(shape[::-1], Image.BILINEAR))


def _quadratic(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The terms of a quadratic surface over a grid of (rows, cols) coordinates: shape (rows, cols, 6)."""
    y, x = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)


def _rim(shape: tuple[int, ...]) -> np.ndarray:
    """The outer two pixels all round an image of this shape, as a mask."""
    rim = np.ones(shape, bool)
    rim[2:-2, 2:-2] = False
    return rim


def _log_light(coarse: np.ndarray) -> np.ndarray:
    """The light falling on the paper, as log gray levels at `coarse`'s resolution: a smooth surface fitted
    to the log gray levels with the ink left out. Distances from it are reflectance ratios: ink darkens
    paper by a factor wherever it is, under a lamp's or a flash's uneven light as in even light."""
    logs = np.log(coarse + 0.02)
    step = max(1, max(coarse.shape) // 64)  # the light is smooth: 64 points across describe it
    sample = logs[::step, ::step]
    terms = _quadratic(*(np.linspace(-1.0, 1.0, n) for n in sample.shape)).reshape(-1, 6)
    values = sample.ravel()
    # The paper's spread is measured on the rim, mostly paper: a bold digit filling a close crop is half its
    # pixels, and a fit to them all bends towards the ink and takes it for paper.
    rim = _rim(sample.shape).ravel()
    residual = values - np.median(values[rim])  # the first fit: even light
    for _ in range(3):  # leave out what is far from the fit (ink), fit again
        paper = np.abs(residual) < 3 * 1.4826 * np.median(np.abs(residual[rim])) + 1e-3
        used = terms[paper]  # least squares by the normal equations (6x6; a tiny image leaves them singular)
        fit = np.linalg.lstsq(used.T @ used, used.T @ values[paper], rcond=None)[0]
        residual = values - terms @ fit
    return _resize((terms @ fit).reshape(sample.shape), coarse.shape)


def has_dark_ink(coarse: np.ndarray) -> bool:
    """Which way is ink? Most of the photo is paper (or board); ink is the far tail of reflectance against
    it. Against the light, not the gray levels: a flash's bright centre and dark corners would otherwise
    pass for light ink on darker paper."""
    reflectance = np.log(coarse + 0.02) - _log_light(coarse)
    # Far tails, at full resolution: a small digit in a big photo is a fraction of a percent of its pixels.
    darkest, lightest = np.percentile(reflectance, [0.05, 99.95])
    return -darkest >= lightest


def within_page(gray: np.ndarray) -> np.ndarray:
    """The page, when the photo shows one with something else around it on most sides (a sheet on a desk, a
    drawing app's canvas in a screenshot): the rest of the pipeline takes a photo's rim for paper, and there
    it is the desk, so the page passed for one huge stroke. The photo as it is otherwise.

    The page is the largest region that stands out from the rim (under uneven light also by log gray levels),
    its ink filled in, bits of desk that stand out as it does opened away: at least a fifth of the photo,
    reaching at most two adjacent edges of it, nearly a rectangle (turned up to 20 degrees) no more than
    three times as long as wide, standing out itself nearly everywhere, what is on it like the desk pen
    strokes, thin beside the page, and something written on it. A bold digit filling a close crop also
    stands out from its rim: a 1 is a long bar or has nothing on it, a 0 or an 8 is no rectangle, or its
    loops are wide. Where none is found so, pieces that paper lines as grey as the desk cut it into are joined
    (`_page`). Round the page, its own light stands in for the desk; a turned page is turned upright."""
    if min(gray.shape) < SMALLEST_PAGE_PHOTO:
        return gray
    factor = 4  # a page is large and its edges straight: a quarter of the resolution finds it
    coarse = _shrink(gray, factor)
    terms = _quadratic(*(np.linspace(-1.0, 1.0, n) for n in coarse.shape))
    # Under uneven light also by log gray levels: a lamp darkens the page and the desk by one factor, and the
    # page's dim side is as dark as the desk on its lit side.
    found = [_off_the_desk(coarse, terms), _off_the_desk(np.log(coarse + 0.02), terms, only_if_uneven=True)]
    found = [away for away in found if away is not None]
    if not found:
        return gray
    lighter, darker = (np.logical_or.reduce([side * away > 1 for away in found]) for side in (1, -1))
    standing_out = lighter | darker
    # Paper lines and strokes as dark as the desk, running off the page's edge, cut it into pieces that fill
    # no rectangle (squared paper turned on a desk): bridged, where the page is not found without. Only then:
    # bridging also joins bits of a grainy desk to the page.
    located = _page(standing_out, lighter, darker) or _page(standing_out, lighter, darker, bridged=True)
    if located is None:
        return gray
    page, tilt = located
    # Its convex hull: a stroke running off the page's edge, dark as the desk, cuts into the region.
    points = np.argwhere(page)[:, ::-1]  # (x, y)
    outline = Image.new("1", page.shape[::-1])
    ImageDraw.Draw(outline).polygon(points[spatial.ConvexHull(points).vertices].ravel().tolist(), fill=1)
    hull = np.asarray(outline, bool)
    box = ndimage.find_objects(hull.astype(np.int8))[0]
    rows, cols = _full_size(box, factor)
    # The desk round the page, corners of it inside a turned page's box, and the page's edge and the shadow
    # along it become paper: a margin, so a digit near the edge does not touch the image's edge as a frame.
    # Paper as the page is lit there: one gray level under a lamp is darker than the page's lit side, and
    # the step between them was read as a stroke.
    on_page = page & standing_out
    lit = terms @ _smooth_surface(coarse[on_page], terms[on_page])
    lit = np.clip(lit, lit[on_page].min(), lit[on_page].max())  # off the page no lighter or darker than on it
    paper = _resize(lit, gray.shape)[rows, cols]
    inner = ndimage.binary_erosion(hull, iterations=2)
    inside = _resize(inner.astype(np.float32), gray.shape) > 0.5
    cut = np.where(inside[rows, cols], gray[rows, cols], paper)
    # A page holds ink; a bold stroke taken for one is ink all over (and a blank sheet is read as it was).
    if np.mean(np.abs(cut - paper) > PAGE_CONTRAST / 2) < 0.001:
        return gray
    # Turned upright, what is written on it is as written and its lines level (line removal looks for lines
    # up to 4.5 degrees off level), and cut to the page, or its lines would not run across the image. The
    # page fits in its box turned so; the box's rim is the page's light, and carries on into its corners.
    tilt = _rectangle(page, np.linspace(tilt - 2.0, tilt + 2.0, 9))[3]  # to half a degree
    if not tilt:
        return cut
    turned = ndimage.rotate(cut.astype(np.float32), tilt, reshape=False, order=1, mode="nearest")
    upright = ndimage.find_objects(np.asarray(Image.fromarray(hull[box]).rotate(tilt), np.int8))[0]
    return turned[_full_size(upright, factor)]


def _page(
    standing_out: np.ndarray, lighter: np.ndarray, darker: np.ndarray, bridged: bool = False
) -> tuple[np.ndarray, float] | None:
    """within_page's page in `standing_out` (at a quarter of the resolution) and its tilt; None where there
    is none. `bridged`: pieces joined across thin gaps (PAGE_BRIDGE), which may be up to a third of it (a
    bold grid's lines and a stroke: a quarter; a comb of thin strokes, bridged into a block: half). Only
    pieces, three or more: a closing also rounds off a single region's notches (a shadow or a lamp's spot on
    a sheet filling the photo, one piece, then passed for a page), and joins two bold strokes side by side
    (a marker's "11" was a dark page with a light 1 on it)."""
    joined = (
        standing_out | ndimage.binary_closing(standing_out, iterations=PAGE_BRIDGE)
        if bridged
        else standing_out
    )
    labels, count = ndimage.label(ndimage.binary_fill_holes(joined))
    if count == 0:
        return None
    sizes = ndimage.sum_labels(np.ones(labels.shape), labels, np.arange(1, count + 1))
    region = labels == 1 + int(np.argmax(sizes))
    # Bits of a flash-lit desk's grain, standing out as the page does, touch it and would stretch it over the
    # desk: opened away. Less from a small region: an opening clips a small page's turned corners, and takes
    # from a shadow on a sheet with no desk the strokes (as dark) that keep it from filling a rectangle. What
    # stands out the other way (ink) stays, but for specks: strokes touching a lamp's bright spot on a sheet.
    other = region & (darker if lighter[region].sum() >= darker[region].sum() else lighter)
    marks, _ = ndimage.label(other, _EIGHT_CONNECTED)
    kept = ndimage.sum_labels(other, marks, np.arange(1, marks.max() + 1)) >= 0.01 * region.sum()
    other = np.isin(marks, 1 + np.flatnonzero(kept))
    size = int(np.clip(np.sqrt(region.sum()) / 20, 1, 3))
    page = ndimage.binary_opening(region & ~other, _EIGHT_CONNECTED, iterations=size) | other
    top, bottom, left, right = (bool(side.any()) for side in (page[0], page[-1], page[:, 0], page[:, -1]))
    if (
        page.sum() < MIN_PAGE * page.size  # most photos end here: their largest such region is a digit
        # The desk is a strip along one side (the rest of the pipeline takes it for a shadow), or the "page"
        # is the lit (or shaded) band across the photo by a shadow: a page shows the desk on 2 adjacent sides.
        or top + bottom + left + right > 2
        or (top and bottom)
        or (left and right)
        or standing_out[page].mean() < (2 / 3 if bridged else 0.8)
    ):
        return None
    fill, length, width, tilt = _rectangle(page)
    widest_ink = 2 * float(ndimage.distance_transform_edt(page & ~standing_out).max())
    if fill < PAGE_FILL or length > PAGE_ASPECT * width or widest_ink > PAGE_INK_WIDTH * width:
        return None
    if bridged:
        on_page = standing_out & page
        pieces, _ = ndimage.label(on_page)
        shares = np.bincount(pieces.ravel())[1:] / on_page.sum()
        if shares.max() > JOINED_PIECE or np.sum(shares >= 0.01) < 3:
            return None
    return page, tilt


def _full_size(box: tuple[slice, ...], factor: int) -> tuple[slice, ...]:
    """A box found at 1/factor of the size (as within_page finds the page), at full size."""
    return tuple(slice(side.start * factor, side.stop * factor) for side in box)


def _off_the_desk(levels: np.ndarray, terms: np.ndarray, only_if_uneven: bool = False) -> np.ndarray | None:
    """How far each pixel is from the desk on the photo's rim, in the desk's spreads (over 1 or under -1:
    standing out), or None where the rim is mostly not one surface (or, asked `only_if_uneven`, evenly
    lit)."""
    # The desk's gray level: the rim's median, or, lit unevenly (a lamp, a flash), a smooth surface fitted to
    # the rim, the page left out, where it fits the rim far better (under even light its bends are noise).
    on_rim = _rim(levels.shape)
    values, used = levels[on_rim], terms[on_rim]
    desk = np.median(values)
    even = values - desk
    fit = _smooth_surface(values, used)
    residual = values - used @ fit
    if np.median(np.abs(residual)) < 0.5 * np.median(np.abs(even)):
        desk = terms @ fit
    elif only_if_uneven:
        return None
    else:
        residual = even
    spread = max(PAGE_CONTRAST, 3 * 1.4826 * float(np.median(np.abs(residual))))
    if np.mean(np.abs(residual) > spread) > 0.45:
        return None
    return (levels - desk) / spread


def _smooth_surface(values: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """The quadratic surface (its coefficients) through `values` at `terms`, fitted again three times
    without what lies far from it (the page beside the desk, the ink on the page)."""
    step = max(1, len(values) // 4096)  # a smooth surface: 4,096-8,191 points describe it (of up to 19,200)
    values, terms = values[::step], terms[::step]
    residual = values - np.median(values)
    for _ in range(3):
        kept = np.abs(residual) < max(PAGE_CONTRAST, 3 * 1.4826 * np.median(np.abs(residual)))
        used = terms[kept]  # least squares by the normal equations (6x6), as _log_light solves them
        fit = np.linalg.lstsq(used.T @ used, used.T @ values[kept], rcond=None)[0]
        residual = values - terms @ fit
    return fit


def _rectangle(region: np.ndarray, tilts: np.ndarray = PAGE_TILTS) -> tuple[float, float, float, float]:
    """The tightest rectangle around `region`, turned by any of `tilts` (degrees): how much of it the region
    fills, its length, its width and its tilt."""
    ys, xs = np.nonzero(region)
    best = (0.0, 0.0, 0.0, 0.0)
    for tilt in tilts:
        cos, sin = np.cos(np.radians(tilt)), np.sin(np.radians(tilt))
        u = np.ptp(xs * cos + ys * sin) + 1
        v = np.ptp(ys * cos - xs * sin) + 1
        best = max(best, (ys.size / (u * v), max(u, v), min(u, v), float(tilt)))
    return best


def _otsu(values: np.ndarray) -> float:
    """The level that best splits `values` into two classes (Otsu's between-class variance)."""
    counts, edges = np.histogram(values, bins=64, range=(0.0, max(1.0, float(values.max()))))
    weight = np.cumsum(counts)
    mean = np.cumsum(counts * edges[:-1])
    total, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total) ** 2 / (weight * (total - weight))
    return float(edges[1:][np.argmax(np.nan_to_num(between[:-1]))])  # all NaN: one gray level, no split


def _thickest_stroke(ink: np.ndarray) -> float:
    """Width, in pixels, of the thickest pen strokes in a rough ink mask: each mark's width is twice the 90th
    percentile of its distance transform. Only stroke-like marks count (much thinner than long): a shadow, a
    vignette or the table beside the page is as wide as it is long."""
    labels, count = ndimage.label(ink)
    if count == 0 or ink.all():
        return 0.0
    depth = ndimage.distance_transform_edt(ink)
    widest = 0.0
    for index, where in enumerate(ndimage.find_objects(labels), start=1):
        inside = depth[where][labels[where] == index]
        if inside.size < 4:
            continue
        width = 2.0 * float(np.percentile(inside, 90))
        if width < max(where[0].stop - where[0].start, where[1].stop - where[1].start) / 3:
            widest = max(widest, width)
    return widest


def remove_background(gray: np.ndarray, dark_ink: bool) -> np.ndarray:
    """Ink contrast: how much darker (or lighter) than the paper around it each pixel is, >= 0.

    The paper is a grey closing (opening for light ink) with a window wider than any stroke: it erases
    strokes but keeps uneven light and shadow edges, which the subtraction then removes. Taken twice: of the
    gray levels, and of what the paper reflects (the smooth light divided out first, multiplied back after).
    A closing lies on or above every pixel (an opening below), so the nearer of the two wins: on gray levels
    it raises the paper near the photo's dim edge under a lamp, by the light's slope times half its window,
    and blank paper there passed for ink; the light's fit is a poor guess in a close crop that a digit and a
    box fill."""
    coarse = _shrink(gray, 4)  # the paper is smooth: a quarter of the resolution describes it
    light = np.exp(_log_light(coarse))
    reflectance = (coarse + 0.02) / light
    # Wider than any stroke, junctions included (a thick marker's 0 is a tenth of the image wide); no wider,
    # so a shadow's edge still counts as paper. Strokes are split from paper by Otsu's threshold on gray
    # levels, and on reflectance where ink is at least twice as dark as the paper (as light, on a board):
    # under a lamp the far side's paper is as dark as the near side's ink, and joins the strokes there on
    # gray levels; a shadow's edge, which the smooth light does not follow, is a band a little darker.
    by_gray, by_reflectance = _otsu(coarse), _otsu(reflectance)
    if dark_ink:
        strokes = coarse < by_gray, reflectance < min(by_reflectance, 0.5)
    else:
        strokes = coarse > by_gray, reflectance > max(by_reflectance, 2.0)
    thickest = max(_thickest_stroke(ink) for ink in strokes)
    window = max(3, int(np.clip(3 * thickest, max(coarse.shape) // 10, max(coarse.shape) // 2)))
    envelope = ndimage.grey_closing if dark_ink else ndimage.grey_opening
    on_gray = envelope(coarse, size=(window, window), mode="nearest")
    on_reflectance = envelope(reflectance, size=(window, window), mode="nearest") * light - 0.02
    paper = _resize((np.minimum if dark_ink else np.maximum)(on_gray, on_reflectance), gray.shape)
    return np.maximum(paper - gray if dark_ink else gray - paper, 0.0)


@dataclass(frozen=True)
class InkMap:
    """A photo's ink: how far each pixel is from the paper towards the ink, and the pipeline's mask of it."""

    mask: np.ndarray  # bool (H, W): ink, paper lines removed
    contrast: np.ndarray  # float (H, W), >= 0
    solid: float  # the contrast of a solid stroke (of the brightest ink where the mask is empty)
    dark_ink: bool
    lines: np.ndarray  # bool (H, W): the paper lines line removal took away
    tilt: float  # degrees off level of the paper lines, when beyond LINE_ANGLES (line_tilt)


def ink_map(gray: np.ndarray) -> InkMap:
    """The pipeline's binarization: ink above the noise, paper lines removed, strokes above 0.4 of solid."""
    dark_ink = has_dark_ink(_shrink(gray, 2))
    ink = remove_background(gray, dark_ink)
    sample = ink[::2, ::2]
    # Most pixels are paper: their level and spread are the noise (sensor, JPEG, grain) ink must rise above.
    typical = np.median(sample)
    noise = typical + 6.0 * 1.4826 * np.median(np.abs(sample - typical))
    # A blurred digit filling a small crop is no longer "most pixels": the noise estimate then measures the
    # ink itself, so it may not rise above half the contrast of the darkest strokes.
    floor = max(min(noise, 0.5 * np.percentile(sample, 99.95)), MIN_INK_CONTRAST / 2)
    above = ink > floor
    tilt = line_tilt(above)
    lines = find_lines(above, tilt=tilt)[0]
    candidates = remove_lines(above, lines)
    strong = ink[candidates]
    solid = float(np.percentile(strong, 90) if strong.size else np.percentile(ink, 99.9))
    if solid < MIN_INK_CONTRAST:
        return InkMap(np.zeros(ink.shape, bool), ink, solid, dark_ink, lines, tilt)
    return InkMap(candidates & (ink > 0.4 * solid), ink, solid, dark_ink, lines, tilt)


def ink_masks(ink: InkMap) -> Iterator[np.ndarray]:
    """Masks to cut into digits: the pipeline's first, then ones that keep what its thresholds may have
    dropped (line removal's cuts put back where they bridge gaps in the strokes it left, not the stubs of
    lines beside them; all ink above its stroke threshold; faint ink, the thin parts of a blurred stroke).
    The classifier chooses among them.

    None of them may put back a paper line: joined to every digit it crosses, it turns a 0 into an 8."""
    yield ink.mask
    for mask in _more_ink(ink):
        if not _puts_back_lines(mask, ink):
            yield mask


def _puts_back_lines(mask: np.ndarray, ink: InkMap) -> bool:
    """Does `mask` put paper lines back where the pipeline's mask has none? Lines are looked for in the ink
    it adds (a line crossing a digit, broken by the strokes) and in the whole mask (where the strokes join
    its pieces), at up to twice line removal's width: a faint line is wider at a low threshold. Three or
    more are ruled paper: no digit has three level strokes. Two or more each way, on all four sides of the
    pipeline's ink, are a box around the digit. Other lines are paper lines if they are fainter than the
    strokes away from them, as a printed line is lighter than a pen's: a thin 7's bar across a close crop,
    taken for a line by line removal, is as dark as its stem. So are the lines line removal took, put back
    away from the digit: a faint mask may hold only the darker part of each (lit by a flash), too short to
    be found as a line again."""
    (in_added, added_counts), (in_mask, mask_counts) = (
        find_lines(ink_in, widest=0.03, tilt=ink.tilt) for ink_in in (mask & ~ink.mask, mask)
    )
    counts = np.maximum(added_counts, mask_counts)  # upright, level
    near = ndimage.binary_dilation(ink.mask, iterations=3)
    lines = (in_added | in_mask) & ~near
    # Beyond what _more_ink's closing of the pipeline's mask may add to bridge line removal's cuts.
    taken = mask & ink.lines & ~ndimage.binary_dilation(near, iterations=2)
    if not (lines | taken).any():
        return False
    return (
        counts.max() >= 3
        or (counts.min() >= 2 and _around_all_sides(lines, ink.mask))
        or float(np.median(ink.contrast[lines | taken])) < 0.75 * ink.solid
    )


def _around_all_sides(lines: np.ndarray, inner: np.ndarray) -> bool:
    """Do `lines` run above, below, left and right of most of the ink in `inner` (a digit may poke through
    them), clear of it? A box around the digit does; a digit's own bar or stem, taken for a line, has
    strokes on both sides of it. A level line is a band of rows, as tall as its tilt makes it, with line
    pixels across half the image; an upright one the same, turned."""
    ys, xs = np.nonzero(inner)
    if ys.size == 0:
        return False
    sides = []
    for along, ink_at in ((lines, ys), (lines.T, xs)):  # level lines, then upright ones
        tilt = max(1, round(LINE_SLOPES[-1] * along.shape[1]))
        band = ndimage.maximum_filter1d(along, tilt, axis=0).sum(axis=1) >= 0.5 * along.shape[1]
        # Clear of it: a close-cropped square 0's own sides, taken for lines, touch what is left of it.
        clear = 0.05 * along.shape[0]
        first, last = np.percentile(ink_at, [5, 95])
        rows = np.flatnonzero(band)
        sides += [(rows < first - clear).any(), (rows > last + clear).any()]
    return all(sides)


def _more_ink(ink: InkMap) -> Iterator[np.ndarray]:
    if ink.solid < MIN_INK_CONTRAST / 2:
        return
    raw = ink.contrast > 0.4 * ink.solid
    if (raw & ~ink.mask).any():  # else line removal took nothing: both masks would be the pipeline's
        if ink.mask.any():
            yield ink.mask | (raw & ndimage.binary_closing(ink.mask, iterations=4))
        if raw.mean() < 0.3:  # more ink than that is paper texture or lines, not a digit
            yield raw
    faint = ink.contrast > 0.25 * ink.solid
    # A few more pixels along the edges of sharp strokes read the same: only a blurred photo's faint ink,
    # more than a tenth of the strokes, can change a digit.
    if faint.mean() < 0.3 and (faint & ~ink.mask).sum() > 0.1 * ink.mask.sum():
        yield faint


def _may_have_lines(mask: np.ndarray, axis: int) -> bool:
    """A cheap look before the openings: a line running along `axis` across LINE_SPAN of the image, even
    tilted, has ink in most of the columns (or rows) of one band a tenth of the image high."""
    height = max(8, mask.shape[1 - axis] // 10)
    across = mask.shape[1 - axis] // height * height
    if not across:  # fewer rows than one band: an image a few pixels high holds no paper lines
        return False
    bands = np.moveaxis(mask, 1 - axis, 0)[:across].reshape(across // height, height, -1).any(axis=1)
    return bands.mean(axis=1).max() > 0.5 * LINE_SPAN


@functools.lru_cache(maxsize=32)
def _shear_rows(height: int, width: int, slope: float, sign: int) -> np.ndarray:
    shift = np.round(sign * slope * np.arange(width)).astype(np.intp)
    return (np.arange(height, dtype=np.intp)[:, None] + shift) % height


def _shear(mask: np.ndarray, slope: float, sign: int = 1) -> np.ndarray:
    """Shift column x of `mask` up by round(slope * x) (down with sign=-1), wrapping around: a line rising
    with that slope becomes level."""
    return np.take_along_axis(mask, _shear_rows(*mask.shape, slope, sign), axis=0)


def _level_runs(mask: np.ndarray, run: int) -> np.ndarray:
    """Pixels on a level run of ink at least `run` long: an opening by a `run`-long segment."""
    inside = ndimage.uniform_filter1d(mask.astype(np.float32), run, axis=1) > 0.99
    # An even-sized window is a pixel off centre: spread back the other way, or each run would shift by one
    # (a pixel past a run, sheared back, falls beside the line and makes it look thick there).
    return ndimage.uniform_filter1d(inside.astype(np.float32), run, axis=1, origin=run % 2 - 1) > 0.01


def remove_lines(mask: np.ndarray, lines: np.ndarray | None = None) -> np.ndarray:
    """Drop ruled or squared paper lines (see find_lines; or `lines`, found so), re-joining the strokes they
    crossed."""
    cleaned = mask & ~(find_lines(mask)[0] if lines is None else lines)
    if cleaned.sum() < mask.sum():
        cleaned |= ndimage.binary_closing(cleaned, iterations=2) & mask
    return cleaned


def find_lines(
    mask: np.ndarray, widest: float = 0.015, tilt: float | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Ruled or squared paper lines in `mask`: thin ink (at most `widest` of the image across it, and a
    pixel at half resolution) that runs across most of the image. -> (their pixels, how many upright lines
    a row crosses and how many level lines a column crosses, mostly).

    Openings by a long segment at a few small slopes find straight runs (a photo of lined paper is rarely
    level, and its lines bow a little); runs that chain across the image and are thin are lines. Where a
    stroke crosses a line, the stroke is not part of it: the ink there reaches well beyond the line's own
    width. Where two lines cross (squared paper), each is the other's crossing stroke and leaves a gap in
    it: a gap as narrow as the other line, in both, is a crossing and goes too.

    Lines tilted beyond the slopes of LINE_ANGLES are looked for around their tilt (`tilt`, of the level
    lines; line_tilt finds it when not given): a page turned so tilts its upright lines as far the other way.
    """
    small = _half_size(mask)
    tilt = _line_tilt(small) if tilt is None else tilt
    removed, crossed = np.zeros_like(small), [0, 0]
    both = []  # per axis (upright lines first): the lines removed from `small`, and their width
    for axis in (0, 1):
        if not _may_have_lines(small, axis):
            continue
        along = small if axis == 1 else small.T  # lines run along axis 1 from here on
        slopes = _slopes_around(tilt if axis == 1 else -tilt) if tilt else LINE_SLOPES
        lines, width, count = _lines_along(along, widest, slopes)
        if count:
            # Beyond the image is paper: a line along its edge is not a stroke crossing it.
            crossing = ndimage.uniform_filter1d(
                along.astype(np.float32), 2 * width + 1, axis=0, mode="constant"
            )
            crossing = crossing > 0.99
            crossing = ndimage.maximum_filter1d(crossing, 2 * width + 1, axis=0)
            lines = (lines & ~crossing) if axis == 1 else (lines & ~crossing).T
            removed |= lines
            both.append((lines, width))
            crossed[axis] = count
    if len(both) == 2:
        (upright, upright_width), (level, level_width) = both
        (left, right), (above, below) = (
            _beside(level, upright_width, axis=1),
            _beside(upright, level_width, axis=0),
        )
        # Where lines cross, each left a gap as wide as the other: filled if both did. Where the sides of a
        # box meet, each ends at the other: the corner goes too.
        removed |= (left & right & above & below) | ((left ^ right) & (above ^ below))
    found = np.repeat(np.repeat(removed, 2, axis=0), 2, axis=1)[: mask.shape[0], : mask.shape[1]]
    return found & mask, (crossed[0], crossed[1])


def _beside(mask: np.ndarray, reach: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels with `mask` (or the image's edge) within `reach` pixels before them along `axis`, and those
    with it after them. Both: a gap in a line at most 2 * reach - 1 wide (a stroke crossing it leaves a
    wider one); one: where a line ends."""
    before, after = np.zeros_like(mask), np.zeros_like(mask)
    line, ahead, behind = (np.moveaxis(array, axis, 0) for array in (mask, before, after))
    ahead[:reach] = behind[-reach:] = True
    for shift in range(1, reach + 1):
        ahead[shift:] |= line[:-shift]
        behind[:-shift] |= line[shift:]
    return before, after


def _half_size(mask: np.ndarray) -> np.ndarray:
    """Lines are found at half resolution (2x2 blocks with any ink): a quarter of the work, and a thin line
    stays a line. An odd last row or column is a block of its own: a line may run along the edge."""
    h, w = mask.shape[0] + mask.shape[0] % 2, mask.shape[1] + mask.shape[1] % 2
    even = np.zeros((h, w), bool)
    even[: mask.shape[0], : mask.shape[1]] = mask
    return even.reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3))


def line_tilt(mask: np.ndarray) -> float:
    """How far off level the paper lines in `mask` run, in degrees, where that is further than LINE_ANGLES
    reach (else 0): found once for a photo, for each find_lines on its masks. From the level lines alone: a
    digit's strokes are more often upright than level."""
    return _line_tilt(_half_size(mask))


def _line_tilt(along: np.ndarray) -> float:
    """How far off level (degrees, up to MAX_LINE_TILT either way) lines run along axis 1 of `along` when
    they run further off than LINE_ANGLES reach, else 0. Sheared level, a line's pixels fill one band of rows
    across the image: at half the size again (2x2 blocks with any ink), a band as thick as a degree off
    makes it. Only a tilt whose band is filled clearly better than any within LINE_ANGLES counts (squared
    paper fills many bands at many tilts), and only where two bands or more are lines: one long straight
    stroke across a close crop (a 4's bar drawn with a thin pen) is no ruled paper."""
    if not _may_have_lines(along, 1):
        return 0.0
    small = _half_size(along)
    if small.shape[1] < 8:
        return 0.0
    band = math.ceil(np.tan(np.radians(1.0)) * small.shape[1]) + 1
    ys, xs = np.nonzero(small)
    filled = {}  # angle -> the share of the image's width each band of rows covers
    for angle in range(-MAX_LINE_TILT, MAX_LINE_TILT + 1):
        sheared = np.zeros_like(small)  # as _shear does, without its cache of shifts: 31 tilts
        sheared[(ys - np.round(np.tan(np.radians(angle)) * xs).astype(np.intp)) % small.shape[0], xs] = True
        filled[float(angle)] = ndimage.maximum_filter1d(sheared, band, axis=0).mean(axis=1)
    best = max(rows.max() for rows in filled.values())
    ties = [angle for angle, rows in filled.items() if rows.max() == best]
    tilt = float(np.median(ties))  # the middle of a tie
    level = max(rows.max() for angle, rows in filled.items() if abs(angle) <= LINE_ANGLES[-1])
    if abs(tilt) <= LINE_ANGLES[-1] or best < max(LINE_SPAN, level + 0.1):
        return 0.0
    lines = ndimage.label(filled[min(ties, key=lambda angle: abs(angle - tilt))] >= LINE_SPAN)[1]
    return tilt if lines >= 2 else 0.0


def _slopes_around(tilt: float) -> tuple[float, ...]:
    """LINE_ANGLES turned by `tilt` degrees, as slopes."""
    return tuple(np.tan(np.radians(np.add(LINE_ANGLES, tilt))).tolist())


def _lines_along(along: np.ndarray, widest: float, slopes: tuple[float, ...]) -> tuple[np.ndarray, int, int]:
    """The lines running along axis 1 of `along` (see find_lines), found at `slopes` -> (their pixels,
    width, count)."""
    height, length = along.shape
    run = max(8, length // 8)
    line = np.zeros_like(along)
    for slope in slopes:
        line |= _shear(_level_runs(_shear(along, slope), run), slope, sign=-1)
    # Pieces of one line found at different slopes, or broken where it bows, are chained across gaps; so
    # are the lines a digit's strokes touch, and a stroke beside a line.
    chains, count = ndimage.label(ndimage.maximum_filter(line, size=(3, run)))
    # A line is made of thin runs across (a pixel or a few) that reach across the page. Where a stroke
    # crosses it, or a level stroke touches it along its length (a 4's bar, a 2's foot), the run across is
    # thick: not the line's, so it stays.
    runs, run_count = ndimage.label(line, structure=[[0, 1, 0], [0, 1, 0], [0, 1, 0]])
    rows, columns = np.nonzero(line)
    run_at = runs[rows, columns]
    run_column, run_chain = np.zeros(run_count + 1, np.intp), np.zeros(run_count + 1, np.intp)
    run_column[run_at], run_chain[run_at] = columns, chains[rows, columns]
    run_length = np.bincount(run_at, minlength=run_count + 1)
    thickest = widest * height + 1
    thin = (run_length > 0) & (run_length <= thickest)
    first, last = np.full(count + 1, length), np.full(count + 1, -1)
    np.minimum.at(first, run_chain[thin], run_column[thin])
    np.maximum.at(last, run_chain[thin], run_column[thin])
    # A paper line crosses the page; a digit's straight stroke (a 1, a 4's or 7's stem) stops.
    accepted = last - first + 1 >= LINE_SPAN * length
    accepted[0] = False
    kept = thin & accepted[run_chain]
    if not kept.any():
        return np.zeros_like(along), 0, 0
    width = max(1, round(float(np.median(run_length[kept]))))
    lines_crossed = int(np.median(np.bincount(run_column[kept], minlength=length)))  # by a column, mostly
    # A thin stroke just beside a line (a 2's foot sitting on it, not touching) is chained with it: of thin
    # runs side by side, the line's are on the longer piece, its gaps where other lines cross it bridged.
    on_lines = kept[runs]
    bridged = ndimage.binary_dilation(on_lines, [[1, 1, 1]], iterations=math.ceil(thickest))
    pieces, _ = ndimage.label(bridged, structure=_EIGHT_CONNECTED)
    piece_length = np.array([0] + [where[1].stop - where[1].start for where in ndimage.find_objects(pieces)])
    length_at = np.where(on_lines, piece_length[pieces], 0)
    # Chained runs are at most two rows apart, so a longer piece beside a run is within a run's length and
    # two rows of it. A piece that reaches across the page itself is a line, whatever runs beside it (a
    # box's side beside the image's edge).
    beside = ndimage.maximum_filter1d(length_at, 2 * math.ceil(thickest) + 5, axis=0) > length_at
    beside &= length_at < LINE_SPAN * length
    return on_lines & ~beside, width, max(1, lines_crossed)


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary shape: a strip w wide and L long has area wL and ~2L edge pixels."""
    edge = mask & ~ndimage.binary_erosion(mask)
    return 2.0 * mask.sum() / max(int(edge.sum()), 1)


@dataclass
class _Marks:
    """Connected marks taken as one digit: their bounding box in pixels and their labels."""

    x0: int
    x1: int
    y0: int
    y1: int
    labels: list[int]

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def gap_to(self, other: _Marks) -> int:
        """Horizontal distance to `other` (negative where they overlap)."""
        return max(other.x0 - self.x1, self.x0 - other.x1)

    def absorb(self, other: _Marks) -> None:
        self.x0, self.x1 = min(self.x0, other.x0), max(self.x1, other.x1)
        self.y0, self.y1 = min(self.y0, other.y0), max(self.y1, other.y1)
        self.labels += other.labels


def _digit_groups(mask: np.ndarray) -> list[np.ndarray]:
    """Connected strokes -> one boolean mask per digit, left to right."""
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    # How far each mark runs along the image's border, as a share of that side (the most of the four).
    # A table edge, a screenshot's frame, a page border runs along a side for most of it; a tightly
    # cropped digit touches the border too, but only with the ends of its strokes.
    sides = (labels[:2].T, labels[-2:].T, labels[:, :2], labels[:, -2:])
    on_rim = np.max(
        [np.bincount(side.max(axis=1), minlength=count + 1)[1:] / len(side) for side in sides], axis=0
    )
    areas[on_rim > 0.5] = 0
    marks = [
        _Marks(cols.start, cols.stop, rows.start, rows.stop, [index])
        for index, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1)
        if areas[index - 1] >= max(6, 0.03 * areas.max())  # not frames (area 0 now), specks or dust
    ]
    groups: list[_Marks] = []
    for part in sorted(marks, key=lambda m: m.x0):
        # Strokes overlapping in x are one digit (a 5's detached bar, a 4 in two strokes).
        for group in groups:
            overlap = min(group.x1, part.x1) - max(group.x0, part.x0)
            vertical_gap = max(group.y0, part.y0) - min(group.y1, part.y1)
            narrowest = min(group.x1 - group.x0, part.x1 - part.x0)
            if overlap >= 0.5 * narrowest and vertical_gap < 0.5 * max(group.height, part.height):
                group.absorb(part)
                break
        else:
            groups.append(part)
    if not groups:
        return []
    _join_fragments(groups)
    tallest = max(g.height for g in groups)
    groups = [g for g in groups if g.height >= 0.4 * tallest]  # dots, dashes, underlines
    if len(groups) > MAX_DIGITS:
        return []
    return [np.isin(labels, g.labels) for g in sorted(groups, key=lambda g: g.x0)]


def _join_fragments(groups: list[_Marks]) -> None:
    """A short fragment right beside a digit belongs to it: a 4's detached left stroke, a 7's loose bar.
    Short and right beside are against the tallest mark: for a piece above or below the digit, the digit as
    it grows when fragments join it (a stroke broken along a paper line, joined, is as tall as the digit
    was); for a mark beside it, the tallest there was before any joined, so that a digit grown by a piece
    below it does not take in the next digit of a number."""
    tallest = grown = max(g.height for g in groups)
    joined = True
    while joined:  # a piece too far from the digit before it grew may be near it now
        joined = False
        for fragment in sorted(groups, key=lambda g: g.height):
            if fragment.height >= 0.6 * grown or len(groups) == 1:
                break
            digit = min((g for g in groups if g is not fragment), key=fragment.gap_to)
            # Above or below it: the ends of a slanted stroke's pieces, cut across, may overlap a little.
            stacked = min(fragment.y1, digit.y1) - max(fragment.y0, digit.y0) < 0.2 * fragment.height
            limit = grown if stacked else tallest
            if fragment.height < 0.6 * limit and fragment.gap_to(digit) < 0.2 * limit:
                digit.absorb(fragment)
                groups.remove(fragment)
                grown, joined = max(grown, digit.height), True


def split_touching(digit: np.ndarray, labelled: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """A digit's mask cut in two where two touching digits meet, or None: along the path from its top to its
    bottom through the least ink (a step sideways costs a little, so it runs straight where it can; among
    equal paths the one nearest the middle), crossing at most TOUCHING_CUT stroke widths of it, both sides
    at least TOUCHING_HEIGHT as tall as the whole (a 7's bar cut off is no digit), the whole at least
    TOUCHING_STROKES strokes tall (a dash is no two digits). Where a label says it is two digits
    (`labelled`), the cheapest cut through its middle half is taken, as the label-constrained segmentation
    needs one."""
    if not digit.any():
        return None
    rows, cols = ndimage.find_objects(digit.astype(np.int8))[0]
    box = digit[rows, cols]
    height, width = box.shape
    if width < 4:  # a column on each side of the cut, and the cut
        return None
    stroke = 0.0 if labelled else stroke_width(box)  # a label needs no limits
    if height < TOUCHING_STROKES * stroke:
        return None
    most_ink = np.inf if labelled else TOUCHING_CUT * stroke
    ink = box.astype(np.float64)
    margin = width // 4 if labelled else max(1, width // 8)  # a cut, not a trim of the edge
    ink[:, :margin] = ink[:, width - margin :] = np.inf
    aslant = math.sqrt(2) * ink + SIDE_STEP  # a diagonal step goes sqrt(2) times as far through ink
    # total[y, x]: the cheapest path from the top to (y, x), which came from column x + step[y, x] above.
    total, step = ink.copy(), np.zeros(box.shape, np.int64)
    above = np.full(width + 2, np.inf)  # the row above, with a wall on each side
    for y in range(1, height):
        above[1:-1] = total[y - 1]
        best = above[1:-1] + ink[y]
        for side in (-1, 1):  # straight down wins a tie, then from the left
            came = above[1 + side : width + 1 + side] + aslant[y]
            better = came < best
            best[better], step[y, better] = came[better], side
        total[y] = best
    tall = box.any(axis=1).sum()
    tried: list[int] = []
    for end in np.lexsort((np.abs(np.arange(width) - width / 2), total[-1])):
        if not np.isfinite(total[-1, end]) or total[-1, end] - SIDE_STEP * height > most_ink:
            break  # this path crosses more ink than that, and so does every one after it (they cost more)
        if any(abs(end - other) < width / 16 for other in tried):
            continue  # the same valley
        if len(tried) == TOUCHING_TRIES:
            break
        tried.append(int(end))
        cut = np.empty(height, np.int64)
        cut[-1] = end
        for y in range(height - 1, 0, -1):
            cut[y - 1] = cut[y] + step[y, cut[y]]
        moved = np.r_[False, cut[1:] != cut[:-1]]
        if (box[np.arange(height), cut] * np.where(moved, math.sqrt(2), 1.0)).sum() > most_ink:
            continue
        left, right = box & (np.arange(width) < cut[:, None]), box & (np.arange(width) > cut[:, None])
        shortest = min(left.any(axis=1).sum(), right.any(axis=1).sum())
        if shortest >= TOUCHING_HEIGHT * tall or (labelled and shortest > 0):
            parts = []
            for side in (left, right):
                part = np.zeros_like(digit)
                part[rows, cols] = side
                parts.append(part)
            return parts[0], parts[1]
    return None


def to_mnist(digit: np.ndarray) -> np.ndarray:
    """A boolean mask of one digit -> float32 (28, 28): stroke width normalised, fit into 20x20 keeping the
    aspect ratio, anti-aliased by area averaging, and centred by its centre of mass, as MNIST was made."""
    rows, cols = ndimage.find_objects(digit.astype(np.int8))[0]
    digit = digit[rows, cols]
    scale = 20.0 / max(digit.shape)
    wanted = MNIST_STROKE / scale  # the stroke width, in crop pixels, that becomes MNIST's after scaling
    width = stroke_width(digit)
    pad = int(np.ceil(wanted)) + 2
    digit = np.pad(digit, pad)
    if width < 0.75 * wanted:
        digit = ndimage.distance_transform_edt(~digit) <= (wanted - width) / 2
    elif width > 1.5 * wanted:
        thinner = ndimage.distance_transform_edt(digit) > (width - wanted) / 2
        digit = thinner if thinner.sum() > 0.2 * digit.sum() else digit
    rows, cols = ndimage.find_objects(digit.astype(np.int8))[0]
    digit = digit[rows, cols]
    height, width_px = digit.shape
    size = (max(1, round(width_px * 20 / max(digit.shape))), max(1, round(height * 20 / max(digit.shape))))
    resample = Image.Resampling.BOX if max(digit.shape) > 20 else Image.Resampling.BILINEAR
    small = np.asarray(Image.fromarray(digit.astype(np.float32), mode="F").resize(size, resample))
    canvas = np.zeros((28, 28), np.float32)
    top, left = (28 - small.shape[0]) // 2, (28 - small.shape[1]) // 2
    canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
    cy, cx = ndimage.center_of_mass(canvas)
    shift_y = int(np.clip(round(14 - cy), -top, 28 - top - small.shape[0]))
    shift_x = int(np.clip(round(14 - cx), -left, 28 - left - small.shape[1]))
    return np.clip(np.roll(canvas, (shift_y, shift_x), axis=(0, 1)), 0.0, 1.0)


def upright(image: np.ndarray) -> np.ndarray:
    """A digit (a 28x28 model input) turned so that its long axis stands upright, and normalised again; as it
    is when it leans less than MAX_LEAN degrees, or is too round to have a long axis (its second moments
    differ less than twice)."""
    total = float(image.sum())
    if total <= 0:
        return image
    y, x = np.mgrid[0:28, 0:28]
    cy, cx = float((image * y).sum()) / total, float((image * x).sum()) / total
    xx = float((image * (x - cx) ** 2).sum()) / total
    yy = float((image * (y - cy) ** 2).sum()) / total
    xy = float((image * (x - cx) * (y - cy)).sum()) / total
    shortest, longest = np.linalg.eigvalsh([[xx, xy], [xy, yy]])
    if longest < 2 * shortest:
        return image
    axis = math.degrees(0.5 * math.atan2(2 * xy, xx - yy))  # the long axis, from the image's rows
    lean = axis - 90 if axis > 0 else axis + 90
    if abs(lean) < MAX_LEAN:
        return image
    turned = ndimage.rotate(ndimage.zoom(image, 4, order=1), lean, reshape=True, order=1) > 0.5
    return to_mnist(turned) if turned.any() else image


def _crop(digit: np.ndarray, most: int = TOUCHING_DIGITS) -> DigitCrop:
    """One digit's mask -> its model input; a wide one also cut in two, as if it were up to `most` touching
    digits (the classifier decides which it is)."""
    h, w = digit.shape
    ys, xs = np.nonzero(digit)
    aspect = (xs.max() + 1 - xs.min()) / (ys.max() + 1 - ys.min())
    halves = split_touching(digit) if aspect >= TOUCHING_ASPECT and most >= 2 else None
    return DigitCrop(
        box=(xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h),
        image=to_mnist(digit),
        aspect=float(aspect),
        halves=None if halves is None else (_crop(halves[0], most // 2), _crop(halves[1], most // 2)),
    )


def segment(mask: np.ndarray, dark_ink: bool) -> Segmentation:
    """An ink mask -> its digits as MNIST-style inputs, left to right."""
    return Segmentation(crops=[_crop(digit) for digit in _digit_groups(mask)], dark_ink=dark_ink)


def segmentations(gray: np.ndarray) -> list[Segmentation]:
    """Gray image (H, W) in [0, 1] -> the ways to read it as digits (see ink_masks), the pipeline's first."""
    return segment_ink(ink_map(gray))


def segment_ink(ink: InkMap) -> list[Segmentation]:
    """A photo's ink -> the ways to read it as digits: each different mask of ink_masks, segmented."""
    masks: list[np.ndarray] = []
    for mask in ink_masks(ink):
        if not any(np.array_equal(mask, seen) for seen in masks):
            masks.append(mask)
    return [segment(mask, ink.dark_ink) for mask in masks]
