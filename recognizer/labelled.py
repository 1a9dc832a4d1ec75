"""Training inputs from a photo and the right answer a user gave for it.

When the model misread a photo, the crops it saw are often wrong too: line removal ate a stroke, a digit
was split in two, or nothing was found at all. The label says how many digits there are, so at training
time the stored photo is segmented again, with the current pipeline, into exactly that many digits:
several segmentation hypotheses (the pipeline's own, strokes that line removal ate put back, a lower ink
threshold; groups merged or split until the count matches) and the one whose crops the model finds most
likely to be the labelled digits wins.

A corrected photo also shows the writer's page and hand: `on_their_page` writes MNIST digits of every kind
where its digits were, in the writer's pen and hand, and reads them off that page the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from recognizer.augment import ink_slant, mnist_glyph, place
from recognizer.classify import NARROW_PAIR_ASPECT, Reading, Recognizer
from recognizer.data import to_uint8
from recognizer.images import decode_image
from recognizer.prepare import prepare_photo
from recognizer.preprocess import (
    InkMap,
    _digit_groups,
    ink_map,
    ink_masks,
    segment_ink,
    split_touching,
    stroke_width,
    to_mnist,
)

# A number's digits, found only by cutting and merging its marks until there are as many as its label has, may
# be pieces of other digits: a 0's two arcs taught as the 5 and 0 of "1750", a stub of a 4 as the 1 of "214"
# (13 of the touching dev copy's 20 misread numbers). Taught so, they made 1-3 right numbers of their writers
# wrong in a run. Such a number is learnt only if the model finds each of its digits at least this likely to
# be that digit: more than the 0.1 it is taught to give a mark of several digits (train.targets). Digits
# found as the pipeline groups them are learnt however surely they were misread, as a single digit is.
PLAUSIBLE_DIGIT = 0.15

# MNIST's training digits, the median for each digit of their slant and their width once upright (Hand.of):
# a writer's digits against these say how they slant and how narrow they write. tests/test_labelled.py checks.
MNIST_SLANT = (-0.21, -0.21, -0.08, -0.05, -0.05, -0.21, -0.02, -0.03, -0.18, 0.0)
MNIST_ASPECT = (0.88, 0.11, 0.91, 0.72, 0.75, 0.79, 0.67, 0.74, 0.63, 0.62)


def read_and_keep(recognizer: Recognizer, photo: bytes | str | Path) -> tuple[Reading, bytes]:
    """Read a photo, and the copy of it to keep: feedback on the answer is learned from that copy. The bot
    does the same in two steps, prepare_photo in a worker process and Recognizer.reading (bot/reading.py)."""
    prepared = prepare_photo(photo)
    return recognizer.reading(prepared.segmentations), prepared.kept


def _columns(mask: np.ndarray) -> tuple[int, int]:
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(xs[-1]) + 1


def _merge_closest(groups: list[np.ndarray]) -> list[np.ndarray]:
    """Two neighbours (left to right) with the smallest horizontal gap become one digit."""
    spans = [_columns(g) for g in groups]
    gaps = [spans[i + 1][0] - spans[i][1] for i in range(len(groups) - 1)]
    i = int(np.argmin(gaps))
    return [*groups[:i], groups[i] | groups[i + 1], *groups[i + 2 :]]


def _split_widest(groups: list[np.ndarray]) -> list[np.ndarray] | None:
    """The widest group cut in two where two touching digits would meet (preprocess.split_touching)."""
    i = int(np.argmax([np.subtract(*_columns(g)[::-1]) for g in groups]))
    halves = split_touching(groups[i], labelled=True)
    return None if halves is None else [*groups[:i], *halves, *groups[i + 1 :]]


def _exactly(groups: list[np.ndarray], count: int) -> list[np.ndarray] | None:
    while len(groups) > count:
        groups = _merge_closest(groups)
    while groups and len(groups) < count:
        groups = _split_widest(groups)
        if groups is None:
            return None
    return groups if len(groups) == count else None


def _hypotheses(ink: InkMap, count: int) -> Iterator[tuple[list[np.ndarray], np.ndarray, bool]]:
    """Candidate segmentations into `count` digits: a mask per digit, the inputs (float32, 28x28 each), and
    whether groups had to be merged or cut to make that many."""
    seen = set()
    for mask in ink_masks(ink):
        groups = _digit_groups(mask)
        if not groups and mask.any():  # everything filtered (a digit touching the edge): all ink is one
            groups = [mask]
        forced = len(groups) != count
        groups = _exactly(groups, count)
        if groups is None:
            continue
        crops = np.stack([to_mnist(g) for g in groups])
        key = crops.round(2).tobytes()
        if key not in seen:
            seen.add(key)
            yield groups, crops, forced


@dataclass(frozen=True)
class _Found:
    """A photo's segmentation into a label's digits."""

    groups: list[np.ndarray]  # a mask per digit
    crops: np.ndarray  # their inputs, float32 (N, 28, 28)
    probabilities: np.ndarray  # the model's for each, (N, 10)
    forced: bool  # groups were merged or cut to make the label's count


def _labelled_digits(recognizer: Recognizer, ink: InkMap, label: str) -> _Found | None:
    """The segmentation into the label's digits that the model finds most likely to be them."""
    digits = [int(d) for d in label]
    candidates = []
    for groups, crops, forced in _hypotheses(ink, len(label)):
        found = _Found(groups, crops, recognizer.probabilities(crops), forced)
        if not candidates and (found.probabilities.argmax(axis=1) == digits).all():
            return found  # the preferred segmentation reads so (most confirmations)
        candidates.append((np.log(found.probabilities[np.arange(len(label)), digits] + 1e-9).sum(), found))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def _merged(ink: InkMap, digits: list[np.ndarray], label: str, read_as_label: np.ndarray) -> np.ndarray:
    """float32 (K, 28, 28): the marks that reading may take as one digit or as two (those it may cut, see
    classify._digits; in any of the ink masks, whole or a half of one: DigitCrop.pieces) whose box holds
    the centres of two or more of the label's `digits`. Where the mark may well be one digit, only if those
    digits `read_as_label`: a narrow mark (classify.NARROW_PAIR_ASPECT; most single digits are), or one the
    label calls the same digit twice (a double tap: "44" for a 4, "00" for a 0, whose halves read as no
    0s). Left out too: a 7 whose bar runs over the 1 beside it (reading may not cut it)."""
    height, width = ink.contrast.shape
    centres = [ndimage.center_of_mass(digit) for digit in digits]
    found: dict[bytes, np.ndarray] = {}
    for option in segment_ink(ink):
        for crop in (piece for whole in option.crops for piece in whole.pieces()):
            x0, y0, x1, y1 = crop.box
            held = [x0 * width <= x < x1 * width and y0 * height <= y < y1 * height for y, x in centres]
            named = [digit for digit, inside in zip(label, held, strict=True) if inside]
            if crop.halves is None or len(named) < 2:
                continue
            doubtful = crop.aspect < NARROW_PAIR_ASPECT or len(set(named)) == 1
            if read_as_label[held].all() or not doubtful:
                found[crop.image.round(2).tobytes()] = crop.image
    return np.stack(list(found.values())) if found else np.zeros((0, 28, 28), np.float32)


@dataclass(frozen=True)
class LabelledInputs:
    """What a labelled photo teaches the model, float32 (N, 28, 28) each."""

    digits: np.ndarray  # the label's digits as the model should see them, left to right
    merged: np.ndarray  # marks that reading may take as one digit but hold several: to read as no one digit


def inputs_for_label(recognizer: Recognizer, photo: bytes | np.ndarray, label: str) -> LabelledInputs | None:
    """The label's digits in `photo` (bytes of an image or a gray array) as the model should see them, and
    the marks holding several of them; None when no segmentation finds that many digits, or a number's
    digits found are not all plausibly its digits (PLAUSIBLE_DIGIT).

    Touching digits are one mark, and a mark that reads surely as one digit is kept whole however surely its
    halves read (classify._digits): the label's digits alone teach nothing about the mark."""
    gray = photo if isinstance(photo, np.ndarray) else decode_image(photo)
    ink = ink_map(gray)
    found = _labelled_digits(recognizer, ink, label)
    if found is None:
        return None
    if len(label) == 1:  # one digit has no marks holding several: the segmentations need not be made again
        return LabelledInputs(found.crops, np.zeros((0, 28, 28), np.float32))
    digits = [int(d) for d in label]
    if found.forced and found.probabilities[np.arange(len(label)), digits].min() < PLAUSIBLE_DIGIT:
        return None
    read_as_label = found.probabilities.argmax(axis=1) == digits
    return LabelledInputs(found.crops, _merged(ink, found.groups, label, read_as_label))


def slant_and_aspect(mask: np.ndarray) -> tuple[float, float]:
    """A digit's slant (augment.ink_slant) and its width over its height once upright, strokes discounted
    (thick strokes widen a narrow digit)."""
    ys, xs = np.nonzero(mask)
    slant = ink_slant(mask)
    upright = xs - slant * (ys - ys.mean())
    stroke = stroke_width(mask)
    return slant, max(0.0, float((np.ptp(upright) + 1 - stroke) / max(np.ptp(ys) + 1 - stroke, 1.0)))


@dataclass(frozen=True)
class Hand:
    """How a writer's digits differ from MNIST's: `slant` more, and `width` times as wide once upright.

    Why: a writer of narrow digits has narrow 7s that the model, taught on MNIST's, reads as 1s; one who
    slants far has 1s that lean like 7s. MNIST digits written on their page in their hand teach the model
    that hand, where MNIST's own teach it a page only. From one corrected digit the measure is rough (a real
    writer's digits differ in slant by about 0.3 among themselves), but a hand measured a little off is
    still a hand people write in."""

    slant: float = 0.0
    width: float = 1.0

    @classmethod
    def of(cls, written: list[np.ndarray], label: str) -> Hand:
        """From the digits a writer wrote (masks, with their `label`): the medians of how each differs from
        MNIST's median for that digit; the width from digits other than 1s (a 1 has none to speak of)."""
        measured = [(*slant_and_aspect(mask), int(d)) for mask, d in zip(written, label, strict=True)]
        slant = np.median([s - MNIST_SLANT[d] for s, _, d in measured])
        widths = [a / MNIST_ASPECT[d] for _, a, d in measured if d != 1]
        width = np.clip(np.median(widths), 0.4, 1.6) if widths else 1.0
        return cls(float(np.clip(slant, -1.0, 1.0)), float(width))


@dataclass(frozen=True)
class Page:
    """A photo with its written digits erased: the writer's paper, light and pen, and their hand, to write
    other digits on."""

    blank: np.ndarray  # gray, the digits erased; paper lines run on through where they were
    paper: np.ndarray  # remove_background's estimate of the paper alone (no lines either)
    ink: InkMap  # the photo's: the pen's contrast and which way ink is
    written: list[np.ndarray]  # the digits that were there, a mask each: where new ones go, and how big
    hand: Hand  # how the writer's digits slant and how wide they are, against MNIST's

    @classmethod
    def erase(cls, gray: np.ndarray, ink: InkMap, written: list[np.ndarray], hand: Hand = Hand()) -> Page:
        strokes = np.logical_or.reduce(written)
        # Faint ink beside the strokes (a blurred or greyish pen's edges) goes too, or the old digit shows.
        near = ndimage.binary_dilation(strokes, iterations=max(3, round(2 * stroke_width(strokes))))
        erase = ndimage.binary_dilation(strokes | (near & (ink.contrast > 0.1 * ink.solid)), iterations=2)
        paper = gray + (1.0 if ink.dark_ink else -1.0) * ink.contrast
        return cls(_fill_rows(gray, erase), paper, ink, written, hand)

    def write(self, mnist_digits: list[np.ndarray]) -> np.ndarray | None:
        """The page with an MNIST digit (uint8 28x28) in place of each written digit: as tall, centred on the
        same point, with the same stroke width and ink contrast, in the writer's hand (slant and width). None
        if two of them would overlap side to side: the pipeline would read them as one, and the labels would
        go to the wrong digits."""
        page, spans = self.blank, []
        for digit, image in zip(self.written, mnist_digits, strict=True):
            rows = np.flatnonzero(digit.any(axis=1))
            glyph = mnist_glyph(
                image, int(rows[-1] - rows[0] + 1), width=self.hand.width, slant=self.hand.slant
            )
            glyph = _as_thick_as(glyph, stroke_width(digit))
            cy, cx = ndimage.center_of_mass(digit)
            gy, gx = ndimage.center_of_mass(glyph)
            placed = place(glyph, page.shape, round(cy - gy), round(cx - gx))
            columns = np.flatnonzero(placed.max(axis=0) > 0.1)
            spans.append((columns[0], columns[-1]) if columns.size else (0, -1))
            # Where a stroke crosses a paper line, the darker of the two shows, as on paper.
            drawn = self.paper - (1.0 if self.ink.dark_ink else -1.0) * self.ink.solid * placed
            page = np.minimum(page, drawn) if self.ink.dark_ink else np.maximum(page, drawn)
        spans.sort()
        if any(right[0] <= left[1] + 1 for left, right in itertools.pairwise(spans)):
            return None
        return np.clip(page, 0.0, 1.0).astype(np.float32)


def _fill_rows(gray: np.ndarray, erase: np.ndarray) -> np.ndarray:
    """`gray` with the `erase` pixels of each row interpolated from the row's others: paper lines, level
    or nearly, run on through the erased digit, as they did under it. A row erased from edge to edge (a
    blurred close crop) stays as it was: filled with the paper's estimate it would lose its lines, and
    pages without them taught half as much on the ruled dev copy (6 of 19 held-out errors fixed, not 12)."""
    page = gray.copy()
    columns = np.arange(gray.shape[1])
    for row in np.flatnonzero(erase.any(axis=1) & ~erase.all(axis=1)):
        keep = ~erase[row]
        page[row, ~keep] = np.interp(columns[~keep], columns[keep], gray[row, keep])
    return page


def _as_thick_as(glyph: np.ndarray, width: float) -> np.ndarray:
    """The glyph's strokes redrawn `width` pixels wide around their middle (the ridge of the distance
    to the paper): eroding a glyph many times thicker than a pen would break its thin parts."""
    shape = np.pad(glyph > 0.5, round(width) + 1)
    depth = ndimage.distance_transform_edt(shape)
    middle = shape & (depth >= ndimage.maximum_filter(depth, size=3) - 0.75)
    if middle.any():  # (the distance to nothing is not defined)
        shape = ndimage.distance_transform_edt(~middle) <= max(width - 1, 0) / 2
    return ndimage.gaussian_filter(shape.astype(np.float32), 0.6)


def on_their_page(
    recognizer: Recognizer,
    photo: bytes,
    label: str,
    mnist: tuple[np.ndarray, np.ndarray],
    times: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """-> (uint8 inputs (N, 28, 28), their labels): `times` over, MNIST digits (images, labels) written in
    place of a corrected photo's digits, in its writer's pen and hand (Hand), then read off that page by the
    pipeline.

    Why: what makes a writer's digits hard is mostly what all of them share, their paper (ruled), pen and
    light, while each is a different digit. Fine-tuned on one corrected 4, the model learns that one shape
    is a 4; on digits of every kind written on the same page, it learns to read that page."""
    gray = decode_image(photo)
    ink = ink_map(gray)
    found = _labelled_digits(recognizer, ink, label)
    inputs, labels = [np.zeros((0, 28, 28), np.uint8)], []
    if found is None:
        return inputs[0], np.zeros(0, np.int64)
    page = Page.erase(gray, ink, found.groups, Hand.of(found.groups, label))
    for _ in range(times):
        picks = rng.integers(len(mnist[0]), size=len(page.written))
        written = page.write([mnist[0][i] for i in picks])
        new_label = "".join(str(int(mnist[1][i])) for i in picks)
        found = None if written is None else _labelled_digits(recognizer, ink_map(written), new_label)
        if found is not None:
            inputs.append(to_uint8(found.crops))
            labels += [int(d) for d in new_label]
    return np.concatenate(inputs), np.array(labels, np.int64)
