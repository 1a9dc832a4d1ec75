"""Training inputs derived from a kept photo and its label: as many inputs as the label has digits, even
where the answer found none or split a digit in two."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from bot.learning import training_sample
from recognizer import Recognizer
from recognizer.augment import ink_slant, mnist_glyph
from recognizer.images import decode_image
from recognizer.labelled import (
    MNIST_ASPECT,
    MNIST_SLANT,
    Hand,
    Page,
    _labelled_digits,
    _merged,
    inputs_for_label,
    on_their_page,
    read_and_keep,
    slant_and_aspect,
)
from recognizer.prepare import photo_to_keep
from recognizer.preprocess import ink_map, stroke_width
from storage.db import connect, sqlite_url
from storage.repository import Store
from tests.photos import digit_on_paper, encode, soft_doubled_light_on_dark, synthetic_photo, touching


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
    inputs = training_sample(shipped, photo).inputs
    assert inputs.shape == (1, 28, 28) and inputs.dtype == np.uint8
    assert shipped.classify(inputs[0] / 255).digit == 1
    reading, photo = corrected(store, shipped, split_zero(mnist), 2, "0")
    assert len(reading.digits) == 2
    inputs = training_sample(shipped, photo).inputs
    assert inputs.shape == (1, 28, 28) and shipped.classify(inputs[0] / 255).digit == 0


def test_a_number_is_split_into_as_many_inputs_as_its_label(mnist, shipped):
    # (seed 4's third digit, an odd 2, reads 4 at 0.17 since the model was taught touching digits, 2 at 0.58
    # before: the same crops, read otherwise)
    photo = synthetic_photo(mnist, "2024", "clean", seed=5)
    found = inputs_for_label(shipped, photo, "2024")
    assert [shipped.classify(x).digit for x in found.digits] == [2, 0, 2, 4]
    assert found.merged.shape == (0, 28, 28)  # spaced apart: no mark holds two of them
    # One digit fewer: neighbours merge, into a "2" that is not plausibly a 2 (labelled.PLAUSIBLE_DIGIT).
    assert inputs_for_label(shipped, photo, "202") is None
    # A digit found as the pipeline groups them is learnt however surely it reads otherwise (a 2 called 7:
    # 0.00), as a single digit is: the writer's word, not a piece the label's count cut out.
    assert inputs_for_label(shipped, photo, "2074").digits.shape == (4, 28, 28)


def test_a_number_with_a_digit_in_pieces_reaches_training_as_its_digits(mnist, shipped):
    seven = np.asarray(digit_on_paper(mnist, 0), np.float32) / 255  # test digit 0 is a 7
    photo = png(np.hstack([seven, np.asarray(Image.open(io.BytesIO(split_zero(mnist))), np.float32) / 255]))
    assert shipped.read(photo).digits == "761"  # the 0's halves read as 6 and 1
    found = inputs_for_label(shipped, photo, "70")  # the halves merge again
    assert [shipped.classify(x).digit for x in found.digits] == [7, 0]


@pytest.mark.parametrize("indices", [[3105, 4719], [3641, 6331], [3628, 818], [4551, 8396]])
def test_a_touching_number_reaches_training_as_its_digits(shipped, mnist, indices):
    # Each is read as one digit (2, 3, 2, 7: too narrow, or too sure, to be two); cut where the two meet, the
    # inputs read as the label.
    photo, label = touching(mnist, indices), "".join(str(mnist.y_test[i]) for i in indices)
    assert len(shipped.read(photo).digits) == 1
    inputs = inputs_for_label(shipped, photo, label).digits
    assert "".join(str(p.digit) for p in shipped.classify(inputs)) == label


def test_the_touching_mark_read_as_one_digit_is_found_and_no_single_digit_is(shipped, mnist):
    # 2 and 1 read as one 2; 1 and 3 as one 3, a narrow mark (as wide as tall)
    for indices, read, label in (([3628, 818], "2", "21"), ([3641, 6331], "3", "13")):
        photo = touching(mnist, indices)
        reading = shipped.read(photo)
        assert reading.digits == read
        merged = inputs_for_label(shipped, photo, label).merged
        assert any(np.abs(mark - reading.inputs[0]).max() < 1e-6 for mark in merged), label
    # A mistyped correction ("44" for a 4) teaches nothing: neither its pieces as 4s (they are not plausibly
    # 4s: labelled.PLAUSIBLE_DIGIT) nor the 4 as no digit. Nor 0s that reading may cut (0.7 and 1.14 times as
    # wide as tall), called the same digit twice or, a narrow mark, any two digits.
    four = touching(mnist, [6])  # one MNIST 4, alone
    assert shipped.read(four).digits == "4"
    assert inputs_for_label(shipped, four, "44") is None
    for index, label in ((28, "00"), (297, "00"), (28, "01")):
        zero = touching(mnist, [index])
        assert shipped.read(zero).digits == "0"
        assert inputs_for_label(shipped, zero, label) is None, (index, label)
    # Were its halves plausible, the 0 would be no one digit only if they read as the label's digits: called
    # the same digit twice, or (28, 0.7 times as wide as tall) a narrow mark called any two.
    for index, label in ((28, "00"), (297, "00"), (28, "01")):
        ink = ink_map(decode_image(touching(mnist, [index])))
        halves = _labelled_digits(shipped, ink, label).groups
        assert [len(_merged(ink, halves, label, np.array([read] * 2))) for read in (False, True)] == [0, 1]
    # Only marks that reading may cut: a 7 whose bar runs over the 1 beside it is one digit.
    page = Image.new("L", (600, 400), 255)
    for stroke in ([(200, 170), (260, 120), (260, 300)], [(245, 95), (380, 95), (300, 300)]):  # 1, 7
        ImageDraw.Draw(page).line(stroke, fill=30, width=12, joint="curve")
    assert shipped.read(png(np.asarray(page) / 255)).digits == "17"
    assert len(inputs_for_label(shipped, png(np.asarray(page) / 255), "17").merged) == 0


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
    np.testing.assert_array_equal(training_sample(shipped, photos[1]).inputs, mnist.x_test[:1])
    assert training_sample(shipped, photos[2]) is None  # two digits asked, one crop stored, no photo


def lined_five(mnist) -> np.ndarray:
    return decode_image(synthetic_photo(mnist, "5", "lined", seed=5))


def paper_lines(gray: np.ndarray) -> int:
    """Ruled lines: bands of rows darker than the paper across nine tenths of the image (a line may tilt
    by a pixel or two across it)."""
    dark = ndimage.binary_dilation(gray < np.median(gray) - 0.1, structure=np.ones((5, 1), bool))
    return ndimage.label(np.mean(dark, axis=1) > 0.9)[1]


def test_an_erased_digit_leaves_its_paper_lines_running_through(mnist, shipped):
    gray = lined_five(mnist)
    ink = ink_map(gray)
    assert paper_lines(gray) >= 5 and shipped.read(gray).digits == "5"
    blank = Page.erase(gray, ink, [ink.mask]).blank
    assert shipped.read(blank).status == "no_digit"
    assert paper_lines(blank) == paper_lines(gray)


def pen(gray: np.ndarray) -> tuple[float, float, tuple[float, float], float]:
    """A photo's one digit: height, stroke width, centre of mass (pixels), ink contrast."""
    ink = ink_map(gray)
    rows = np.flatnonzero(ink.mask.any(axis=1))
    return rows[-1] - rows[0] + 1, stroke_width(ink.mask), ndimage.center_of_mass(ink.mask), ink.solid


@pytest.mark.parametrize("photo", ["lined five", "light on dark"])
def test_a_digit_is_written_in_place_of_another_in_the_writers_pen(mnist, shipped, photo):
    gray = lined_five(mnist) if photo == "lined five" else decode_image(soft_doubled_light_on_dark(mnist, 4))
    ink = ink_map(gray)
    three = mnist.x_train[mnist.y_train == 3][0]
    written = Page.erase(gray, ink, [ink.mask]).write([three])
    assert shipped.read(written).digits == "3"
    (height, width, (y, x), contrast), (was_height, was_width, (was_y, was_x), was_contrast) = (
        pen(written),
        pen(gray),
    )
    assert abs(height - was_height) <= 0.1 * was_height
    assert abs(width - was_width) <= 0.3 * was_width and abs(contrast - was_contrast) <= 0.2 * was_contrast
    assert np.hypot(y - was_y, x - was_x) <= 0.1 * was_height
    if photo == "lined five":
        assert paper_lines(written) == paper_lines(gray)


def test_mnists_slant_and_width_are_its_medians(mnist):
    # a random fifth: MNIST's training set comes in groups of writers
    some = np.random.default_rng(0).choice(len(mnist.x_train), 12_000, replace=False)
    measured = np.array([slant_and_aspect(image > 30) for image in mnist.x_train[some]])
    for digit in range(10):
        median = np.median(measured[mnist.y_train[some] == digit], axis=0)
        # within 0.05: a writer's hand is measured far more roughly (one real writer's digits differ in
        # slant by about 0.3 among themselves)
        assert median == pytest.approx((MNIST_SLANT[digit], MNIST_ASPECT[digit]), abs=0.05), digit


def slant_and_upright_width(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    slant = ink_slant(mask)
    return slant, np.ptp(xs - slant * ys) + 1


@pytest.mark.parametrize(("width", "slant"), [(0.5, 0.5), (1.5, -0.5), (0.7, 0.0), (0.4, 1.0), (1.6, -1.0)])
def test_an_mnist_digit_is_drawn_as_wide_and_as_slanted_as_asked(mnist, width, slant):
    for image in mnist.x_train[:20]:
        plain_slant, plain_width = slant_and_upright_width(mnist_glyph(image, 160) > 0.5)
        drawn = mnist_glyph(image, 160, width=width, slant=slant) > 0.5
        drawn_slant, drawn_width = slant_and_upright_width(drawn)
        assert drawn_slant == pytest.approx(plain_slant + slant, abs=0.03)  # its own slant kept
        assert drawn_width == pytest.approx(plain_width * width, rel=0.1)


def in_a_narrow_slanted_hand(photo: Image.Image) -> Image.Image:
    """The photo squeezed to half its width, then sheared half a pixel right per pixel down."""
    width, height = photo.size
    narrow = photo.resize((width // 2, height), Image.Resampling.BILINEAR)
    shear = (1, -0.5, 0, 0, 1, 0)  # the input pixel of output (x, y): (x - y/2, y)
    return narrow.transform((width // 2 + height // 2, height), Image.Transform.AFFINE, shear, fillcolor=255)


def test_mnist_digits_are_written_on_a_page_in_its_writers_hand(mnist):
    four = digit_on_paper(mnist, int(np.flatnonzero(mnist.y_test == 4)[0]))
    three = mnist.x_train[mnist.y_train == 3][0]
    measured = {}
    for hand, photo in (("plain", four), ("narrow, slanted", in_a_narrow_slanted_hand(four))):
        gray = np.asarray(photo, np.float32) / 255
        ink = ink_map(gray)
        page = Page.erase(gray, ink, [ink.mask], Hand.of([ink.mask], "4"))
        written = ink_map(page.write([three])).mask
        measured[hand] = page.hand, slant_and_aspect(ink.mask)[0], slant_and_aspect(written)
    (plain, four_slant, (plain_slant, plain_aspect)), (theirs, _, (slant, aspect)) = measured.values()
    # Squeezed to half, the 4 leans half as much, then half a pixel more per pixel down.
    assert theirs.width == pytest.approx(plain.width / 2, rel=0.15)
    assert theirs.slant == pytest.approx(plain.slant + 0.5 - four_slant / 2, abs=0.05)
    # The 3 is written as they write: as slanted, and far narrower (not half exactly: its strokes are redrawn
    # as wide as their pen's, and measured so)
    assert slant == pytest.approx(plain_slant + theirs.slant - plain.slant, abs=0.15)
    assert aspect < 0.7 * plain_aspect


def test_a_narrow_writers_page_gives_narrow_mnist_digits(mnist, shipped):
    four = digit_on_paper(mnist, int(np.flatnonzero(mnist.y_test == 4)[0]))
    narrow = four.resize((four.width // 2, four.height), Image.Resampling.BILINEAR)
    digits = (mnist.x_train[:200], mnist.y_train[:200])
    widths = []
    for photo in (four, narrow):
        inputs, labels = on_their_page(
            shipped, png(np.asarray(photo) / 255), "4", digits, 8, np.random.default_rng(0)
        )
        assert len(labels) >= 6
        widths.append(np.median([slant_and_upright_width(x > 127)[1] for x in inputs[labels != 1]]))
    assert widths[1] < 0.75 * widths[0]


def test_a_corrected_page_gives_mnist_digits_with_their_own_labels(mnist, shipped):
    photo = png(lined_five(mnist))
    threes = (mnist.x_train[mnist.y_train == 3][:50], np.full(50, 3))
    inputs, labels = on_their_page(shipped, photo, "5", threes, times=6, rng=np.random.default_rng(0))
    assert inputs.shape == (6, 28, 28) and inputs.dtype == np.uint8 and labels.tolist() == [3] * 6
    read = [shipped.classify(x / 255).digit for x in inputs]
    assert read.count(3) >= 5, read  # the 3s written, not the 5 that was there
    again = on_their_page(shipped, photo, "5", threes, times=6, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(again[0], inputs)  # the same feedback gives the same pages
    blank = png(np.ones((300, 400), np.float32))  # no digit to write over: nothing, no error
    inputs, labels = on_their_page(shipped, blank, "7", threes, 6, np.random.default_rng(0))
    assert inputs.shape == (0, 28, 28) and labels.shape == (0,)


def test_a_number_page_gives_as_many_labelled_digits(mnist, shipped):
    digits = (mnist.x_train[:500], mnist.y_train[:500])
    photo = synthetic_photo(mnist, "2024", "lined", seed=4)
    inputs, labels = on_their_page(shipped, photo, "2024", digits, times=5, rng=np.random.default_rng(1))
    assert len(inputs) == len(labels) and len(labels) % 4 == 0 and len(labels) >= 8
    read = shipped.probabilities(inputs / 255).argmax(axis=1)
    assert (read == labels).mean() >= 0.8, (read, labels)
