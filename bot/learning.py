"""The learning loop: corrections -> fine-tuned candidate -> gate -> promoted (hot-swapped) or rejected.

The fine-tuning runs in a separate process started with `spawn` (TensorFlow and `fork` hang, and a
`fit` on the bot's event loop would freeze every user); the bot only watches it, relays its progress
to the admin who asked, and swaps the model in when the database says a new version is active."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telegram import Message, Update
from telegram.error import TelegramError
from telegram.ext import Application, ContextTypes

from bot.model_store import LiveModel, load_version, model_path, write_atomically
from bot.settings import Settings
from storage.repository import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainJob:
    """Everything the fine-tuning process needs; plain values, so it crosses the process boundary."""

    run_id: int
    database_url: str
    data_dir: str
    mnist_dir: str | None
    epochs: int
    mnist_samples: int
    budget_s: float
    max_mnist_drop: float
    max_per_user: int
    holdout_percent: int
    min_confidence: float

    @classmethod
    def from_settings(cls, run_id: int, settings: Settings) -> RetrainJob:
        return cls(
            run_id,
            settings.resolved_database_url(),
            str(settings.data_dir),
            str(settings.mnist_dir) if settings.mnist_dir else None,
            settings.retrain_epochs,
            settings.retrain_mnist_samples,
            settings.retrain_budget,
            settings.max_mnist_drop,
            settings.max_corrections_per_user,
            settings.holdout_percent,
            settings.min_confidence,
        )


def held_out(feedback_id: int, percent: int) -> bool:
    """A fixed share of feedback, by id, is never trained on: it judges every candidate."""
    return (feedback_id * 2654435761) % 100 < percent  # Knuth's multiplicative hash spreads the ids


def retrain(job: RetrainJob, progress=lambda text: None) -> dict[str, Any]:
    """One fine-tuning run, start to end: train, gate, write the candidate, promote or reject, close the run.
    Runs in the spawned process (or in `digitbot retrain`)."""
    import keras
    import numpy as np

    from recognizer.data import load_mnist
    from recognizer.finetune import FineTuneConfig, fine_tune, gate
    from storage.db import connect

    store = Store(connect(job.database_url))
    try:
        active = store.active_model()
        base = load_version(active, job.min_confidence).model
        samples = store.training_set(max_per_user=job.max_per_user)
        holdout = np.array([held_out(f, job.holdout_percent) for f in samples.feedback_ids], bool)
        progress(f"{int((~holdout).sum())} corrected samples to learn from, {int(holdout.sum())} held out")
        mnist = load_mnist(job.mnist_dir)
        candidate = keras.models.clone_model(base)
        candidate.set_weights(base.get_weights())
        config = FineTuneConfig(
            epochs=job.epochs, mnist_samples=job.mnist_samples, time_budget_s=job.budget_s
        )
        fine_tune(candidate, mnist, samples.images[~holdout], samples.labels[~holdout], config, progress)
        progress("evaluating the candidate against the active model")
        verdict = gate(
            base, candidate, mnist, samples.images[holdout], samples.labels[holdout], job.max_mnist_drop
        )
        version = store.next_model_version()
        destination = model_path(Path(job.data_dir), version)
        scratch = destination.with_name(f".candidate-{job.run_id}.keras")
        candidate.save(scratch)
        sha = write_atomically(scratch, destination)
        scratch.unlink()
        store.add_model_version(
            version,
            str(destination),
            sha,
            parent_version=active.version,
            mnist_accuracy=verdict.candidate_mnist,
            feedback_accuracy=verdict.candidate_feedback,
            note=verdict.reason,
        )
        if verdict.promote:
            store.activate(version)
        else:
            store.set_model_status(version, "rejected", note=verdict.reason)
        status = "promoted" if verdict.promote else "rejected"
        store.finish_run(
            job.run_id,
            status,
            metrics=verdict.as_dict(),
            candidate_version=version,
            consumed=samples.feedback_ids,
        )
        log.info("training run %d: version %d %s (%s)", job.run_id, version, status, verdict.reason)
        return {"status": status, "version": version, "reason": verdict.reason, "table": verdict.table()}
    except Exception as exc:
        store.finish_run(job.run_id, "failed", error=f"{exc.__class__.__name__}: {exc}")
        raise
    finally:
        store.engine.dispose()


def _child(job: RetrainJob, pipe) -> None:
    """Entry point of the spawned process: report progress and the result through `pipe`."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [fine-tune]: %(message)s"
    )
    try:
        pipe.send(("done", retrain(job, progress=lambda text: pipe.send(("progress", text)))))
    except Exception as exc:
        log.exception("fine-tuning failed")
        pipe.send(("failed", f"{exc.__class__.__name__}: {exc}"))


def sync_live_model(store: Store, live: LiveModel, min_confidence: float) -> bool:
    """Answer with the version the database says is active (promoted here, on another instance, or rolled
    back). True if the model was swapped."""
    active = store.active_model()
    if active is None or active.version == live.version:
        return False
    live.swap(load_version(active, min_confidence), active.version)
    return True


class Trainer:
    """Starts fine-tuning runs (one at a time, across instances), watches them, swaps the model in."""

    def __init__(self, settings: Settings, store: Store, live: LiveModel) -> None:
        self.settings, self.store, self.live = settings, store, live
        self.running = False

    async def request(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/retrain from an admin: run now, whatever the number of new corrections."""
        if self.running:
            await update.effective_message.reply_text("A fine-tuning run is already in progress.")
            return
        self.running = True  # before any await: a second /retrain must see it
        try:
            message = await update.effective_message.reply_text("Fine-tuning: starting...")
            await self.run("admin", update.effective_user.id, message)
        finally:
            self.running = False

    async def on_schedule(self, context: ContextTypes.DEFAULT_TYPE) -> None:
        if self.running:
            return
        self.running = True
        try:
            new = await asyncio.to_thread(self.store.count_new_feedback)
            if new < self.settings.retrain_min_corrections:
                log.info(
                    "scheduled fine-tuning skipped: %d new corrections, %d needed",
                    new,
                    self.settings.retrain_min_corrections,
                )
                return
            await self.run("schedule", None, None)
        finally:
            self.running = False

    async def run(self, trigger: str, user_id: int | None, message: Message | None) -> str:
        """Claim the run in the database (one at a time across instances), watch it, follow its result."""
        run_id = await asyncio.to_thread(self.store.claim_run, trigger, user_id)
        if run_id is None:
            if message:
                await message.edit_text("A fine-tuning run is already in progress (on another instance).")
            return "busy"
        outcome, report = await self._watch(RetrainJob.from_settings(run_id, self.settings), message)
        await asyncio.to_thread(sync_live_model, self.store, self.live, self.settings.min_confidence)
        log.info(report)
        if message:  # after the swap: once the admin reads "promoted", answers come from the new version
            await _edit(message, report)
        return outcome

    async def _watch(self, job: RetrainJob, message: Message | None) -> tuple[str, str]:
        """Run the job in a spawned process; relay its progress; return (status, report)."""
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        process = context.Process(
            target=_child, args=(job, send), name=f"fine-tune-{job.run_id}", daemon=True
        )
        process.start()
        send.close()
        await asyncio.to_thread(self.store.set_run_pid, job.run_id, process.pid)
        log.info("training run %d started in process %d", job.run_id, process.pid)
        deadline = time.monotonic() + 2 * job.budget_s + 300
        result: tuple[str, Any] | None = None
        last_edit = 0.0
        while result is None and time.monotonic() < deadline:
            ready = await asyncio.to_thread(receive.poll, 1.0)
            if not ready:
                if not process.is_alive():
                    break
                continue
            try:
                kind, payload = receive.recv()
            except EOFError:
                break
            if kind == "progress":
                if message and time.monotonic() - last_edit > 3:  # one message, edited; not a flood
                    last_edit = time.monotonic()
                    await _edit(message, f"Fine-tuning run {job.run_id}: {payload}")
            else:
                result = (kind, payload)
        if process.is_alive():
            process.kill()
        await asyncio.to_thread(process.join, 10)
        if await asyncio.to_thread(self.store.run_status, job.run_id) == "running":
            why = f"the fine-tuning process stopped (exit code {process.exitcode})"
            await asyncio.to_thread(self.store.finish_run, job.run_id, "failed", error=why)
            result = ("failed", why)
        kind, payload = result or ("failed", "no result")
        if kind == "done":
            text = (
                f"Fine-tuning run {job.run_id}: version {payload['version']} {payload['status']} - "
                f"{payload['reason']}.\n{payload['table']}"
            )
        else:
            text = f"Fine-tuning run {job.run_id} failed: {payload}. The active model is unchanged."
        return (payload["status"] if kind == "done" else "failed"), text


async def _edit(message: Message, text: str) -> None:
    try:
        await message.edit_text(text)
    except TelegramError as exc:
        log.warning("could not update the progress message: %s", exc)


def schedule(application: Application, trainer: Trainer, settings: Settings) -> None:
    """The nightly (or every-N-seconds) fine-tuning job, and a minute-ly check for a new active model."""
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

    async def follow_active_model(context: ContextTypes.DEFAULT_TYPE) -> None:
        await asyncio.to_thread(sync_live_model, trainer.store, trainer.live, settings.min_confidence)

    jobs.run_repeating(follow_active_model, interval=60, first=60, name="follow-active-model")
