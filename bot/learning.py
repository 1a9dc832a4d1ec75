"""The learning loop: users' feedback -> fine-tuned candidate -> gate -> promoted (hot-swapped) or rejected.

A run is one code path, `retrain`, whether `digitbot retrain` starts it from a shell or the bot does: the
bot claims the run in the database, starts `digitbot retrain --run-id N --json` as a child process (a
`fit` on the bot's event loop would freeze every user), relays the progress lines it prints to the admin
who asked, and swaps the model in when the database says a new version is active."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import sys
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from telegram import Message, Update
from telegram.error import TelegramError
from telegram.ext import Application, ContextTypes

from bot import metrics
from bot.lease import RunLease
from bot.model_store import LiveModel, keep_locally, load_version
from bot.settings import Settings
from storage.models import ModelVersion
from storage.repository import LabelledPhoto, Store

if TYPE_CHECKING:
    from recognizer import Recognizer
    from recognizer.data import Mnist

log = logging.getLogger(__name__)

# Deriving a photo's inputs costs about a reading (~50 ms; twice that for a number, whose merged marks are
# looked for too): the newest 2,000 photos keep that part of a run near 100 s, and more samples than that
# would be repeated once each anyway (see FineTuneConfig).
MAX_PHOTOS_PER_RUN = 2000
# MNIST digits written on each corrected photo's page (recognizer.labelled.on_their_page), 0.1-0.3 s per
# page: 10 pages per correction taught the ruled dev copies' writers 12 of 19 held-out errors (4 without);
# at most 600 digits in a run (a minute or two), users taking turns for them.
PAGES_PER_CORRECTION = 10
MAX_PAGE_DIGITS_PER_RUN = 600


@dataclass(frozen=True)
class Sample:
    """A labelled photo turned into the model's inputs: one per digit of its label, and one per mark that
    reading may take for one digit but holds several of them (taught as NOT_ONE_DIGIT)."""

    photo: LabelledPhoto
    inputs: np.ndarray  # uint8 (len(label), 28, 28)
    merged: np.ndarray = field(default_factory=lambda: np.zeros((0, 28, 28), np.uint8))  # uint8 (K, 28, 28)


def training_sample(recognizer, photo: LabelledPhoto) -> Sample | None:
    """The label's digits as inputs: from the kept photo, segmented again into exactly that many digits
    (and the marks holding several of them); for rows stored before photos were kept, the crops the model
    saw, if there are as many. None when the label's digits cannot be found."""
    from recognizer import ImageError
    from recognizer.data import to_uint8
    from recognizer.labelled import inputs_for_label

    if photo.image is None:
        return Sample(photo, photo.inputs) if len(photo.inputs) == len(photo.label) else None
    try:
        found = inputs_for_label(recognizer, photo.image, photo.label)
    except ImageError:
        return None
    if found is None:
        return None
    return Sample(photo, to_uint8(found.digits), to_uint8(found.merged))


def holdout_users(samples: list[Sample], percent: int) -> set[int]:
    """The users whose feedback judges the candidate instead of training it: whole users (a user's samples
    are all on one side, so nobody judges a model trained on their own samples), those with the fewest
    corrections first (corrections are scarce; confirmations show what a candidate must not break), until
    `percent` of the samples. None at all when that is too little to judge: then nothing is spent on it."""
    from recognizer.finetune import MIN_HOLDOUT_SAMPLES, MIN_HOLDOUT_USERS

    corrections, digits = defaultdict(int), defaultdict(int)
    for sample in samples:
        corrections[sample.photo.user_id] += not sample.photo.confirmed
        digits[sample.photo.user_id] += len(sample.inputs)
    wanted = percent / 100 * sum(digits.values())
    chosen, taken = set(), 0
    # crc32: a fixed order among equals that does not depend on Python's hash seed
    for user in sorted(digits, key=lambda u: (corrections[u], zlib.crc32(str(u).encode()))):
        if taken >= wanted:
            break
        chosen.add(user)
        taken += digits[user]
    if taken < MIN_HOLDOUT_SAMPLES or len(chosen) < MIN_HOLDOUT_USERS or len(chosen) == len(digits):
        return set()
    return chosen


def their_pages(
    recognizer: Recognizer, samples: list[Sample], mnist: Mnist
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNIST digits written on the pages of the corrected photos among `samples`, as (images uint8
    (N, 28, 28), labels, users): PAGES_PER_CORRECTION pages each, fewer when that would pass
    MAX_PAGE_DIGITS_PER_RUN, users taking turns (each one's newest first), so one account's corrections
    cannot take every page. Their labels are MNIST's: a wrong correction does not make them wrong."""
    from recognizer.labelled import on_their_page

    corrected = defaultdict(list)
    for sample in samples:
        if not sample.photo.confirmed and sample.photo.image is not None:
            corrected[sample.photo.user_id].append(sample.photo)
    in_turn = [p for turn in itertools.zip_longest(*corrected.values()) for p in turn if p is not None]
    digits = sum(len(p.label) for p in in_turn)
    times = min(PAGES_PER_CORRECTION, max(1, MAX_PAGE_DIGITS_PER_RUN // max(1, digits)))
    images, labels, users, made = [np.zeros((0, 28, 28), np.uint8)], [np.zeros(0, np.int64)], [], 0
    for photo in in_turn:
        if made + times * len(photo.label) > MAX_PAGE_DIGITS_PER_RUN:
            break
        rng = np.random.default_rng(photo.feedback_id)  # the same pages for the same feedback in every run
        try:
            x, y = on_their_page(
                recognizer, photo.image, photo.label, (mnist.x_train, mnist.y_train), times, rng
            )
        except Exception:  # a page is extra: an odd photo must not fail the run
            log.warning("no pages written for feedback %d", photo.feedback_id, exc_info=True)
            continue
        images.append(x)
        labels.append(y)
        users += [photo.user_id] * len(y)
        made += len(y)
    return np.concatenate(images), np.concatenate(labels), np.array(users, np.int64)


def describe(samples: list[Sample], unusable: dict[str, int], page_digits: int) -> str:
    """'9 corrections and 40 confirmations (52 digits, 2 marks holding several) from 12 users, and 90 MNIST
    digits written on the corrected pages; not usable: ...'"""
    corrections = sum(not s.photo.confirmed for s in samples)
    users = len({s.photo.user_id for s in samples})
    merged = sum(len(s.merged) for s in samples)
    several = f", {merged} mark{'s' * (merged != 1)} holding several" if merged else ""
    text = (
        f"{corrections} corrections and {len(samples) - corrections} confirmations "
        f"({sum(len(s.inputs) for s in samples)} digits{several}) from {users} users"
    )
    if page_digits:
        text += f", and {page_digits} MNIST digits written on the corrected pages"
    if unusable:
        text += "; not usable: " + ", ".join(f"{n} ({why})" for why, n in sorted(unusable.items()))
    return text


def _arrays(samples: list[Sample], with_merged: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (images uint8 (N, 28, 28), labels, users), one row per digit, and (`with_merged`) one per mark
    holding several, labelled NOT_ONE_DIGIT."""
    from recognizer import NOT_ONE_DIGIT

    images = [np.zeros((0, 28, 28), np.uint8), *(s.inputs for s in samples)]
    labels = [int(d) for s in samples for d in s.photo.label]
    users = [s.photo.user_id for s in samples for _ in s.photo.label]
    if with_merged:
        images += [s.merged for s in samples]
        labels += [NOT_ONE_DIGIT] * sum(len(s.merged) for s in samples)
        users += [s.photo.user_id for s in samples for _ in s.merged]
    return np.concatenate(images), np.array(labels, np.int64), np.array(users, np.int64)


def retrain(
    settings: Settings, run_id: int, progress: Callable[[str], None] = lambda text: None
) -> dict[str, Any]:
    """One fine-tuning run, start to end: derive the samples, train, gate, write the candidate, promote or
    reject it and close the run (one transaction). Any failure marks the run failed. The run's lease is
    renewed meanwhile; should another replica fail the run (its lease expired), it stops at the next epoch."""
    from storage.db import connect

    started = time.monotonic()
    store = Store(connect(settings.resolved_database_url()))
    lease = RunLease(store, run_id, settings.run_lease)  # before TensorFlow's import: that takes seconds
    progress = lease.checking(progress)
    try:
        import keras

        from recognizer.data import load_mnist
        from recognizer.finetune import FineTuneConfig, fine_tune, gate

        active = store.active_model()
        data_dir = Path(settings.data_dir)
        recognizer = load_version(store, active, data_dir, settings.min_confidence)
        feedback = store.labelled_photos(settings.max_corrections_per_user, MAX_PHOTOS_PER_RUN)
        samples, unusable = [], dict(feedback.left_out)
        for photo in feedback.photos:
            sample = training_sample(recognizer, photo)
            if sample is None:
                reason = "no segmentation into the label's digits, or only into pieces of others"
                unusable[reason] = unusable.get(reason, 0) + 1
            else:
                samples.append(sample)
        judges = holdout_users(samples, settings.holdout_percent)
        learn = [s for s in samples if s.photo.user_id not in judges]
        judge_on = [s for s in samples if s.photo.user_id in judges]
        mnist = load_mnist(settings.mnist_dir)
        progress("writing MNIST digits on the corrected photos' pages")
        page_images, page_labels, page_users = their_pages(recognizer, learn, mnist)
        report = (
            f"learning from {describe(learn, unusable, len(page_labels))}; "
            f"judging on {len(judge_on)} photos of {len(judges)} other users"
        )
        progress(report)
        candidate = keras.models.clone_model(recognizer.model)
        candidate.set_weights(recognizer.model.get_weights())
        spent = time.monotonic() - started  # the budget is the whole run's, preparation included
        config = FineTuneConfig(
            epochs=settings.retrain_epochs,
            mnist_samples=settings.retrain_mnist_samples,
            time_budget_s=max(30.0, settings.retrain_budget - spent),
        )
        images, labels, users = (
            np.concatenate(parts)
            for parts in zip(_arrays(learn), (page_images, page_labels, page_users), strict=True)
        )
        fine_tune(candidate, mnist, images, labels, users, config, progress)
        progress("evaluating the candidate against the active model")
        held_images, held_labels, _ = _arrays(judge_on, with_merged=False)
        verdict = gate(
            recognizer.model, candidate, mnist, held_images, held_labels, len(judges), settings.max_mnist_drop
        )
        version = store.next_model_version()
        scratch = data_dir / "models" / f".candidate-{run_id}.keras"
        scratch.parent.mkdir(parents=True, exist_ok=True)
        candidate.save(scratch)
        data = scratch.read_bytes()
        scratch.unlink()
        destination, sha = keep_locally(data_dir, data)
        row = ModelVersion(
            version=version,
            path=str(destination),
            sha256=sha,
            parent_version=active.version,
            mnist_accuracy=verdict.candidate_mnist,
            feedback_accuracy=verdict.candidate_feedback,
            note=verdict.reason,
        )
        metrics = verdict.as_dict() | {
            "corrections": sum(not s.photo.confirmed for s in learn),
            "confirmations": sum(s.photo.confirmed for s in learn),
            "users": len({s.photo.user_id for s in learn}),
            "merged_marks": sum(len(s.merged) for s in learn),
            "page_digits": len(page_labels),
            "unusable": unusable,
        }
        lease.check()
        status = store.finish_run_with_candidate(
            run_id, row, data, verdict.promote, metrics, feedback.considered_ids
        )
        reason = verdict.reason if status == "promoted" or not verdict.promote else row.note
        log.info("training run %d: version %d %s (%s)", run_id, version, status, reason)
        return {
            "status": status,
            "version": version,
            "reason": reason,
            "table": verdict.table(),
            "report": report,
        }
    except Exception as exc:
        store.finish_run(run_id, "failed", error=f"{exc.__class__.__name__}: {exc}")
        raise
    finally:
        lease.stop()
        store.engine.dispose()


_syncing = threading.Lock()  # a finished run and the follow job may see a new version at once: load it once


def sync_live_model(store: Store, live: LiveModel, data_dir: Path, min_confidence: float) -> bool:
    """Answer with the version the database says is active (promoted here, on another replica, or rolled
    back), fetched from the database if this replica has no copy yet. True if the model was swapped."""
    with _syncing:
        active = store.active_model()
        if active is None or active.version == live.version:
            return False
        live.swap(load_version(store, active, data_dir, min_confidence), active.version)
        return True


def fail_stale_runs(store: Store) -> int:
    """Fail the runs whose lease expired (their replica died) and count them: nobody else will."""
    if stale := store.fail_stale_runs():
        log.warning("failed %d training run(s) whose lease expired", stale)
        metrics.RETRAIN_RUNS.labels("failed").inc(stale)
    return stale


def result_text(run_id: int, result: dict[str, Any]) -> str:
    return (
        f"Fine-tuning run {run_id}: version {result['version']} {result['status']} - {result['reason']}.\n"
        f"{result['report']}\n{result['table']}"
    )


class Trainer:
    """Starts fine-tuning runs (one at a time, across instances), watches them, swaps the model in."""

    def __init__(self, settings: Settings, store: Store, live: LiveModel) -> None:
        self.settings, self.store, self.live = settings, store, live
        self.task: asyncio.Task | None = None
        self.child: asyncio.subprocess.Process | None = None
        self.stopping = False

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def request(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/retrain from an admin: run now, whatever the number of new corrections."""
        if self.running:
            await update.effective_message.reply_text("A fine-tuning run is already in progress.")
            return
        # A task of its own, not this update's: shutdown must not wait minutes for it (see stop).
        self.task = asyncio.create_task(self.run("admin", update.effective_user.id, update.effective_message))

    async def on_schedule(self, context: ContextTypes.DEFAULT_TYPE) -> None:
        if self.running:
            return
        new = await asyncio.to_thread(
            self.store.count_new_feedback, self.settings.max_corrections_per_user, MAX_PHOTOS_PER_RUN
        )
        if new < self.settings.retrain_min_corrections:
            log.info(
                "scheduled fine-tuning skipped: %d new corrections, %d needed",
                new,
                self.settings.retrain_min_corrections,
            )
            return
        if not self.running:
            self.task = asyncio.create_task(self.run("schedule", None, None))

    async def run(self, trigger: str, user_id: int | None, asked: Message | None) -> str:
        """Claim the run in the database (one at a time across instances), watch it, follow its result."""
        message = await asked.reply_text("Fine-tuning: starting...") if asked else None
        await asyncio.to_thread(fail_stale_runs, self.store)
        run_id = await asyncio.to_thread(self.store.claim_run, trigger, self.settings.run_lease, user_id)
        if run_id is None:
            if message:
                await _edit(message, "A fine-tuning run is already in progress (on another instance).")
            return "busy"
        outcome, report = await self._watch(run_id, message)
        metrics.RETRAIN_RUNS.labels(outcome).inc()
        await asyncio.to_thread(
            sync_live_model, self.store, self.live, self.settings.data_dir, self.settings.min_confidence
        )
        log.info(report)
        if message:  # after the swap: once the admin reads "promoted", answers come from the new version
            await _edit(message, report)
        return outcome

    def _child_environment(self) -> dict[str, str]:
        """The bot's settings, pinned where they could resolve differently; never the token."""
        env = {
            k: v for k, v in os.environ.items() if k not in ("TELEGRAM_BOT_TOKEN", "TELEGRAM_BOT_TOKEN_FILE")
        }
        env["DIGITBOT_DATABASE_URL"] = self.settings.resolved_database_url()
        env["DIGITBOT_DATA_DIR"] = str(Path(self.settings.data_dir).resolve())
        return env

    async def _watch(self, run_id: int, message: Message | None) -> tuple[str, str]:
        """Run `digitbot retrain --run-id N --json`, relay its progress; return (status, report)."""
        self.child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.cli",
            "retrain",
            "--run-id",
            str(run_id),
            "--json",
            stdout=asyncio.subprocess.PIPE,
            env=self._child_environment(),
        )
        await asyncio.to_thread(self.store.set_run_pid, run_id, self.child.pid)
        log.info("training run %d started in process %d", run_id, self.child.pid)
        deadline = time.monotonic() + 2 * self.settings.retrain_budget + 300
        result, last_edit = None, 0.0
        try:
            while True:
                line = await asyncio.wait_for(self.child.stdout.readline(), deadline - time.monotonic())
                if not line:
                    break
                event = json.loads(line)
                if "result" in event:
                    result = event["result"]
                elif message and time.monotonic() - last_edit > 3:  # one message, edited; not a flood
                    last_edit = time.monotonic()
                    await _edit(message, f"Fine-tuning run {run_id}: {event['progress']}")
        except (TimeoutError, ValueError) as exc:
            log.error("training run %d: %s", run_id, exc.__class__.__name__)
        finally:
            await self._end_child()
        if result is not None:
            return result["status"], result_text(run_id, result)
        run = await asyncio.to_thread(self.store.training_run, run_id)
        if run.status == "running":
            why = (
                "the bot was shut down during the run"
                if self.stopping
                else f"the fine-tuning process stopped (exit code {self.child.returncode})"
            )
            await asyncio.to_thread(self.store.finish_run, run_id, "failed", error=why)
        else:
            why = run.error
        return "failed", f"Fine-tuning run {run_id} failed: {why}. The active model is unchanged."

    async def _end_child(self) -> None:
        """Terminate the child if it still runs; kill it if it does not stop within 3 s."""
        if self.child.returncode is None:
            self.child.terminate()
            try:
                await asyncio.wait_for(self.child.wait(), 3)
            except TimeoutError:
                self.child.kill()
        await self.child.wait()

    async def stop(self) -> None:
        """At shutdown: stop a run in progress (its child process, then the run is marked failed)."""
        if not self.running:
            return
        self.stopping = True
        if self.child is not None and self.child.returncode is None:
            self.child.terminate()
        await self.task


async def _edit(message: Message, text: str) -> None:
    try:
        await message.edit_text(text)
    except TelegramError as exc:
        log.warning("could not update the progress message: %s", exc)


FOLLOW_EVERY_S = 5  # how soon a replica answers with a version promoted elsewhere, or fails a dead run


def schedule(application: Application, trainer: Trainer, settings: Settings) -> None:
    """The nightly (or every-N-seconds) fine-tuning job, and a frequent look at the shared database."""
    from apscheduler.triggers.cron import CronTrigger

    jobs = application.job_queue
    if settings.retrain_every:
        jobs.run_repeating(
            trainer.on_schedule,
            interval=settings.retrain_every,
            first=settings.retrain_every,
            name="fine-tune",
        )
    else:
        jobs.run_custom(
            trainer.on_schedule,
            job_kwargs={"trigger": CronTrigger.from_crontab(settings.retrain_cron, timezone="UTC")},
            name="fine-tune",
        )

    async def follow_the_database(context: ContextTypes.DEFAULT_TYPE) -> None:
        """A run whose replica died is failed; a version activated on any replica is loaded here."""
        await asyncio.to_thread(fail_stale_runs, trainer.store)
        await asyncio.to_thread(
            sync_live_model, trainer.store, trainer.live, settings.data_dir, settings.min_confidence
        )

    jobs.run_repeating(follow_the_database, interval=FOLLOW_EVERY_S, first=0, name="follow-the-database")
    logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)  # 2 lines a job: every 5 s
