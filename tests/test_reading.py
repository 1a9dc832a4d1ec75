"""The bot reads photos in two steps: the digits are found in worker processes without TensorFlow, and
the model reads them in the bot's own process (bot/reading.py)."""

from __future__ import annotations

import asyncio
import os
import signal
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest

from bot.reading import PhotoReader
from recognizer import ImageError, Recognizer
from recognizer.labelled import read_and_keep
from tests.photos import synthetic_photo

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def shipped():
    return Recognizer.load()


@pytest.fixture
def reader():
    reader = PhotoReader(workers=2)
    yield reader
    reader.close()


def workers() -> list[int]:
    """This process' children that multiprocessing spawned."""
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    return [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


async def test_workers_read_as_one_process_does(reader, shipped, mnist):
    photos = [EXAMPLES.joinpath(name).read_bytes() for name in ("digit_7.jpg", "number_2024.jpg")]
    photos += [synthetic_photo(mnist, label, "lined", seed=3) for label in ("5", "38")]
    readings = await asyncio.gather(*(reader.read(shipped, photo) for photo in photos))
    assert [reading.digits for reading, _ in readings] == ["7", "2024", "5", "38"]
    for photo, (reading, kept) in zip(photos, readings, strict=True):
        expected, expected_kept = read_and_keep(shipped, photo)
        assert (reading.digits, reading.status, kept) == (expected.digits, expected.status, expected_kept)
        np.testing.assert_array_equal(reading.inputs, expected.inputs)
        assert [item.box for item in reading.items] == [item.box for item in expected.items]
        assert reading.confidence == pytest.approx(expected.confidence)


async def test_workers_run_without_tensorflow(reader, shipped):
    await reader.start()
    await reader.read(shipped, EXAMPLES.joinpath("digit_7.jpg").read_bytes())
    assert len(workers()) == 2
    for pid in workers():
        assert "tensorflow" not in Path(f"/proc/{pid}/maps").read_text()


async def test_a_photo_that_is_not_an_image_is_refused_from_the_worker(reader, shipped):
    with pytest.raises(ImageError, match="not an image"):
        await reader.read(shipped, b"%PDF-1.4 not a photo")


async def test_photos_are_read_again_after_a_worker_dies(reader, shipped):
    photo = EXAMPLES.joinpath("digit_7.jpg").read_bytes()
    await reader.start()
    os.kill(workers()[0], signal.SIGKILL)
    for _ in range(20):  # the pool notices the death within moments; the photo read then fails
        try:
            await reader.read(shipped, photo)
        except BrokenProcessPool:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the pool never noticed its dead worker")
    assert (await reader.read(shipped, photo))[0].digits == "7"
