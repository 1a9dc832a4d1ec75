"""Training inputs derived from a kept photo and its label: as many inputs as the label has digits, even
where the answer found none or split a digit in two."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bot.learning import training_inputs
from recognizer import Recognizer
from recognizer.images import decode_image
from recognizer.labelled import inputs_for_label, read_and_keep
from recognizer.prepare import photo_to_keep
from storage.db import connect, sqlite_url
from storage.repository import Store
from tests.photos import digit_on_paper, encode, synthetic_photo


@pytest.fixture(scope="module")
def shipped():
    return Recognizer.load()


def zero_on_paper(mnist) -> np.ndarray:
    return np.asarray(digit_on_paper(mnist, int(np.flatnonzero(mnist.y_test == 0)[0])), np.float32) / 255


def png(gray: np.ndarray) -> bytes:
    return encode(Image.fromarray((gray * 255).round().astype(np.uint8)), "PNG")


def one_along_the_edge() -> bytes:
    """A 1 cut tight down the photo's left edge: the pipeline takes it for the photo's frame, no digit."""
    gray = np.ones((120, 60), np.float32)
    gray[:, :10] = 0.1
    return png(gray)


def split_zero(mnist) -> bytes:
    """A 0 with a gap down its middle: the pipeline reads two digits."""
    gray = zero_on_paper(mnist)
    ink = np.flatnonzero((gray < 0.5).any(axis=0))
    middle = (ink[0] + ink[-1]) // 2
    gray[:, middle - 4 : middle + 4] = 1.0
    return png(gray)


def corrected(store: Store, recognizer: Recognizer, photo: bytes, user: int, label: str):
    """The path a photo and its /correct take: read and kept, stored, corrected."""
    reading, kept = read_and_keep(recognizer, photo)
    prediction = store.record_prediction(
        user_id=user,
        chat_id=user,
        digits=reading.digits,
        confidence=reading.confidence,
        status=reading.status,
        inputs=reading.inputs,
        image=kept,
    )
    store.record_feedback(prediction, user, label)
    return reading, next(p for p in store.labelled_photos().photos if p.user_id == user)


def test_a_no_digit_and_a_split_digit_photo_reach_training_as_one_input_each(tmp_path, mnist, shipped):
    store = Store(connect(sqlite_url(tmp_path)))
    reading, photo = corrected(store, shipped, one_along_the_edge(), 1, "1")
    assert reading.status == "no_digit" and photo.image is not None
    inputs = training_inputs(shipped, photo)
    assert inputs.shape == (1, 28, 28) and inputs.dtype == np.uint8
    assert shipped.classify(inputs[0] / 255).digit == 1
    reading, photo = corrected(store, shipped, split_zero(mnist), 2, "0")
    assert len(reading.digits) == 2
    inputs = training_inputs(shipped, photo)
    assert inputs.shape == (1, 28, 28) and shipped.classify(inputs[0] / 255).digit == 0


def test_a_number_is_split_into_as_many_inputs_as_its_label(mnist, shipped):
    photo = synthetic_photo(mnist, "2024", "clean", seed=4)
    assert [shipped.classify(x).digit for x in inputs_for_label(shipped, photo, "2024")] == [2, 0, 2, 4]
    merged = inputs_for_label(shipped, photo, "202")  # one digit fewer: neighbours merge
    assert merged.shape == (3, 28, 28)


def test_a_blank_photo_cannot_be_matched_to_a_label(shipped):
    assert inputs_for_label(shipped, png(np.ones((300, 400), np.float32)), "7") is None


def test_the_kept_photo_is_small_gray_and_reads_the_same(mnist, shipped):
    photo = synthetic_photo(mnist, "5", "lined", seed=5)
    reading, kept = read_and_keep(shipped, photo)
    image = Image.open(io.BytesIO(kept))
    assert image.mode == "L" and max(image.size) <= 640 and len(kept) < 100_000
    assert shipped.read(decode_image(kept)).digits == reading.digits == "5"
    assert photo_to_keep(decode_image(kept))[:2] == b"\xff\xd8"  # JPEG


def test_rows_from_before_photos_were_kept_use_their_crops_when_the_count_matches(tmp_path, mnist, shipped):
    store = Store(connect(sqlite_url(tmp_path)))
    for user, label in ((1, "7"), (2, "77")):
        crops = mnist.x_test[user - 1 : user] / 255
        prediction = store.record_prediction(
            user_id=user, chat_id=user, digits="1", confidence=0.9, status="ok", inputs=crops
        )
        store.record_feedback(prediction, user, label)
    photos = {p.user_id: p for p in store.labelled_photos().photos}
    np.testing.assert_array_equal(training_inputs(shipped, photos[1]), mnist.x_test[:1])
    assert training_inputs(shipped, photos[2]) is None  # two digits asked, one crop stored, no photo
