"""Training inputs from a photo and the right answer a user gave for it.

When the model misread a photo, the crops it saw are often wrong too: line removal ate a stroke, a digit
was split in two, or nothing was found at all. The label says how many digits there are, so at training
time the stored photo is segmented again, with the current pipeline, into exactly that many digits:
several segmentation hypotheses (the pipeline's own, strokes that line removal ate put back, a lower ink
threshold; groups merged or split until the count matches) and the one whose crops the model finds most
likely to be the labelled digits wins.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from recognizer.classify import Reading, Recognizer
from recognizer.images import decode_image
from recognizer.prepare import prepare_photo
from recognizer.preprocess import _digit_groups, ink_map, ink_masks, to_mnist


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
    """The widest group is cut in two at the column with the least ink in its middle half (two touching
    digits meet where the ink is thinnest)."""
    widths = [np.subtract(*_columns(g)[::-1]) for g in groups]
    i = int(np.argmax(widths))
    x0, x1 = _columns(groups[i])
    if x1 - x0 < 4:
        return None
    profile = groups[i][:, x0:x1].sum(axis=0)
    lo, hi = (x1 - x0) // 4, max((x1 - x0) * 3 // 4, (x1 - x0) // 4 + 1)
    cut = x0 + lo + int(np.argmin(profile[lo:hi]))
    left, right = groups[i].copy(), groups[i].copy()
    left[:, cut:], right[:, :cut] = False, False
    if not left.any() or not right.any():
        return None
    return [*groups[:i], left, right, *groups[i + 1 :]]


def _exactly(groups: list[np.ndarray], count: int) -> list[np.ndarray] | None:
    while len(groups) > count:
        groups = _merge_closest(groups)
    while groups and len(groups) < count:
        groups = _split_widest(groups)
        if groups is None:
            return None
    return groups if len(groups) == count else None


def _hypotheses(gray: np.ndarray, count: int) -> Iterator[np.ndarray]:
    """Candidate inputs, float32 (count, 28, 28), one segmentation each."""
    seen = set()
    for mask in ink_masks(ink_map(gray)):
        groups = _digit_groups(mask)
        if not groups and mask.any():  # everything filtered (a digit touching the edge): all ink is one
            groups = [mask]
        groups = _exactly(groups, count)
        if groups is None:
            continue
        crops = np.stack([to_mnist(g) for g in groups])
        key = crops.round(2).tobytes()
        if key not in seen:
            seen.add(key)
            yield crops


def inputs_for_label(recognizer: Recognizer, photo: bytes | np.ndarray, label: str) -> np.ndarray | None:
    """float32 (len(label), 28, 28): the label's digits as the model should see them in `photo` (bytes of
    an image or a gray array), or None when no segmentation finds that many digits."""
    gray = photo if isinstance(photo, np.ndarray) else decode_image(photo)
    digits = [int(d) for d in label]
    candidates = []
    for crops in _hypotheses(gray, len(label)):
        probabilities = recognizer.probabilities(crops)
        if not candidates and (probabilities.argmax(axis=1) == digits).all():
            return crops  # the preferred segmentation already reads as the label (most confirmations)
        likelihood = np.log(probabilities[np.arange(len(label)), digits] + 1e-9).sum()
        candidates.append((likelihood, crops))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None
