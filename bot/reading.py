"""Where the bot reads a photo. Decoding it and finding its digits (most of the CPU a photo costs, much of
it Python) run in worker processes without TensorFlow, one per core: in threads they held the GIL that the
event loop needs to talk to Telegram and the database. The model runs in this process, where it is loaded."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from recognizer.classify import Reading, Recognizer
from recognizer.prepare import prepare_photo


class PhotoReader:
    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or len(os.sched_getaffinity(0))
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # Spawned, not forked: a fork of this process would copy TensorFlow's memory and threads mid-use.
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    async def start(self) -> None:
        """Start the workers now (each imports NumPy, SciPy and Pillow), not on the first users' photos."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, os.getpid) for _ in range(self.workers)))

    async def read(self, recognizer: Recognizer, photo: bytes) -> tuple[Reading, bytes]:
        """The digits in the photo, and the copy of it to keep (recognizer.labelled.read_and_keep in one
        process). Raises recognizer.images.ImageError for what is not a readable image."""
        pool = self._pool
        try:
            prepared = await asyncio.get_running_loop().run_in_executor(pool, prepare_photo, photo)
        except BrokenProcessPool:
            if self._pool is pool:  # a worker died (killed for memory?): the next photos get new ones
                self._pool = self._new_pool()
                pool.shutdown(wait=False)
            raise
        return await asyncio.to_thread(recognizer.reading, prepared.segmentations), prepared.kept

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)
