"""Everything the bot and the trainer ask of the database, one transaction per call. No SQL leaks out."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import Engine, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from recognizer.data import to_uint8
from storage.db import for_writing
from storage.models import Feedback, ModelFile, ModelVersion, Prediction, TrainingRun, User, utcnow

MODEL_STATUSES = ("candidate", "active", "rejected", "retired")
# ASCII only: str.isdigit() and regex \d also accept "²" or "٣", which training's int() then chokes on.
LABEL = re.compile(r"[0-9]{1,16}")


@dataclass(frozen=True)
class LabelledPhoto:
    """One photo with the right answer a user gave for it (a correction or a confirmation)."""

    feedback_id: int
    user_id: int
    label: str  # the right digits, ASCII 0-9
    confirmed: bool  # the model's answer was right
    inputs: np.ndarray  # uint8 (N, 28, 28): what the model saw when it answered (N may differ from the label)
    image: bytes | None  # the photo, downscaled; None for rows stored before photos were kept
    new: bool  # no training run has consumed it yet
    created_at: datetime | None = None  # when the feedback was given (for /export)
    model_version: int | None = None  # the model that answered (for /export)


@dataclass(frozen=True)
class FeedbackSet:
    """The feedback a training run may learn from, and what the rules left out (reason -> count)."""

    photos: list[LabelledPhoto]
    left_out: dict[str, int]
    left_out_ids: list[int]

    @property
    def considered_ids(self) -> list[int]:
        """Every feedback row this selection looked at: a run that finishes consumes them all."""
        return [p.feedback_id for p in self.photos] + self.left_out_ids


@dataclass(frozen=True)
class Stats:
    predictions: int
    feedback: int
    confirmed: int
    corrected: int
    live_accuracy: float | None  # share of predictions with feedback that were right
    per_digit: dict[str, float] = field(default_factory=dict)  # true digit -> accuracy
    by_version: dict[int, float] = field(default_factory=dict)  # model version -> live accuracy
    by_day: list[tuple[str, int, float]] = field(default_factory=list)  # (date, feedback count, accuracy)
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((10, 10), np.int64))  # [true, read] counts


class RunClosed(Exception):
    """The training run was closed meanwhile: another replica failed it when its lease had expired."""


UNRATED_PHOTO_LIFETIME = timedelta(days=1)
ACTIVATION_LOCK = 7243192


def _serialise(s: Session, key: int) -> None:
    """One such transaction at a time across instances. SQLite: BEGIN IMMEDIATE already does this."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _keep_file(s: Session, sha256: str, data: bytes) -> None:
    """Insert or replace (a damaged copy heals) the file's bytes: one statement, whoever does it at once."""
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[s.get_bind().dialect.name]
    new = insert(ModelFile).values(sha256=sha256, data=data)
    s.execute(new.on_conflict_do_update(index_elements=["sha256"], set_={"data": new.excluded.data}))


def _lock_running(s: Session, run_id: int) -> TrainingRun:
    """The run, locked until the transaction ends; RunClosed when it is not running any more."""
    run = s.get(TrainingRun, run_id, with_for_update=True)
    if run is None or run.status != "running":
        why = f"{run.status}: {run.error}" if run else "no such run"
        raise RunClosed(f"training run {run_id} was closed meanwhile ({why})")
    return run


def _close_run(
    s: Session,
    run: TrainingRun,
    status: str,
    metrics: dict | None,
    error: str,
    candidate_version: int | None,
    consumed: list[int] | None,
) -> None:
    run.status, run.finished_at, run.error = status, utcnow(), error
    run.metrics, run.candidate_version = metrics or {}, candidate_version
    if consumed:
        s.execute(update(Feedback).where(Feedback.id.in_(consumed)).values(training_run_id=run.id))


def pack_inputs(inputs: np.ndarray) -> bytes:
    """float (N, 28, 28) in [0, 1] -> N*784 bytes (uint8), the compact form kept for training."""
    return to_uint8(inputs).tobytes()


def unpack_inputs(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(-1, 28, 28)


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.session = sessionmaker(for_writing(engine), expire_on_commit=False)  # session.begin(): writes
        self.read = sessionmaker(engine, expire_on_commit=False)

    # --- users ---------------------------------------------------------------------------------------
    def _touch_user(self, s: Session, user_id: int, name: str | None) -> User:
        user = s.get(User, user_id)
        if user is None:
            user = User(id=user_id, name=name or "")
            s.add(user)
        else:
            user.last_seen = utcnow()
            if name:
                user.name = name
        return user

    def saw_user(self, user_id: int, name: str | None = None) -> None:
        """Records that the user was seen now, and their current name."""
        with self.session.begin() as s:
            self._touch_user(s, user_id, name)

    def is_banned(self, user_id: int) -> bool:
        """A read, not a write: every photo asks, and a write waits for SQLite's one writer."""
        with self.read() as s:
            return bool(s.scalar(select(User.banned).where(User.id == user_id)))

    def set_banned(self, user_id: int, banned: bool = True) -> None:
        with self.session.begin() as s:
            self._touch_user(s, user_id, None).banned = banned

    def forget_user(self, user_id: int) -> bool:
        """Delete everything of the user's (predictions, samples, feedback) and the user, but not a ban: a
        banned user's row stays, nameless, or /forget would lift it. True if they existed."""
        with self.session.begin() as s:
            s.execute(delete(Feedback).where(Feedback.user_id == user_id))
            s.execute(delete(Prediction).where(Prediction.user_id == user_id))
            user = s.get(User, user_id)
            if user is None:
                return False
            if user.banned:
                user.name = ""
            else:
                s.delete(user)
            return True

    # --- predictions and feedback ----------------------------------------------------------------------
    def record_prediction(
        self,
        user_id: int,
        chat_id: int,
        digits: str,
        confidence: float,
        status: str,
        inputs: np.ndarray,
        model_version: int | None = None,
        photo_message_id: int | None = None,
        file_unique_id: str | None = None,
        user_name: str | None = None,
        photo: bytes | None = None,
        image: bytes | None = None,
    ) -> int:
        with self.session.begin() as s:
            self._touch_user(s, user_id, user_name)
            prediction = Prediction(
                user_id=user_id,
                chat_id=chat_id,
                photo_message_id=photo_message_id,
                file_unique_id=file_unique_id,
                model_version=model_version,
                digits=digits,
                confidence=confidence,
                status=status,
                inputs=pack_inputs(inputs) if len(inputs) else None,
                input_count=len(inputs),
                photo=photo,
                image=image,
            )
            s.add(prediction)
            s.flush()
            return prediction.id

    def set_answer_message(self, prediction_id: int, message_id: int) -> None:
        with self.session.begin() as s:
            s.execute(
                update(Prediction).where(Prediction.id == prediction_id).values(answer_message_id=message_id)
            )

    def get_prediction(self, prediction_id: int) -> Prediction | None:
        with self.read() as s:
            return s.get(Prediction, prediction_id)

    def find_prediction(self, chat_id: int, message_id: int) -> Prediction | None:
        """The prediction answering (or answered by) this message of the chat."""
        with self.read() as s:
            return s.scalars(
                select(Prediction)
                .where(Prediction.chat_id == chat_id)
                .where(
                    (Prediction.answer_message_id == message_id) | (Prediction.photo_message_id == message_id)
                )
                .order_by(Prediction.id.desc())
            ).first()

    def latest_prediction(self, user_id: int, chat_id: int | None = None) -> Prediction | None:
        """The user's newest prediction (in this chat, when given)."""
        with self.read() as s:
            query = select(Prediction).where(Prediction.user_id == user_id)
            if chat_id is not None:
                query = query.where(Prediction.chat_id == chat_id)
            return s.scalars(query.order_by(Prediction.id.desc())).first()

    def record_feedback(self, prediction_id: int, user_id: int, digits: str | None) -> Feedback:
        """The user's answer to a prediction: `digits` is the right answer, None confirms the prediction.
        One feedback per user and prediction: a later call replaces the earlier one."""
        if digits is not None and not LABEL.fullmatch(digits):
            raise ValueError(f"a label is 1-16 ASCII digits, not {digits!r}")
        with self.session.begin() as s:
            prediction = s.get(Prediction, prediction_id)
            if prediction is None:
                raise KeyError(f"no prediction {prediction_id}")
            self._touch_user(s, user_id, None)
            confirmed = digits is None or digits == prediction.digits
            label = prediction.digits if digits is None else digits
            feedback = s.scalars(
                select(Feedback).where(Feedback.prediction_id == prediction_id, Feedback.user_id == user_id)
            ).first()
            if feedback is None:
                feedback = Feedback(
                    prediction_id=prediction_id, user_id=user_id, digits=label, confirmed=confirmed
                )
                s.add(feedback)
            else:
                feedback.digits, feedback.confirmed = label, confirmed
                # A new label: newest again for the per-user cap, and not yet consumed by a run.
                feedback.created_at, feedback.training_run_id = utcnow(), None
            s.flush()
            return feedback

    def count_new_feedback(self, max_per_user: int = 200, max_photos: int | None = None) -> int:
        """Corrections no training run has consumed yet, counted with the rules that choose what a run
        learns from: a banned user's, capped or conflicting corrections never trigger a run."""
        chosen = self.labelled_photos(max_per_user, max_photos, with_images=False).photos
        return sum(1 for photo in chosen if photo.new and not photo.confirmed)

    def labelled_photos(
        self, max_per_user: int = 200, max_photos: int | None = None, with_images: bool = True
    ) -> FeedbackSet:
        """The feedback a training run learns from, newest first. Left out, and counted by reason: banned
        users, labels such as "²" that older versions stored, photos whose stored images retention deleted,
        photos labelled differently by different feedback (the same Telegram file, or the same crops), each
        user's photos beyond their newest `max_per_user`, and all photos beyond the newest `max_photos`."""
        with self.read() as s:
            query = (
                select(
                    Feedback.id,
                    Feedback.user_id,
                    Feedback.digits,
                    Feedback.confirmed,
                    Feedback.training_run_id,
                    Feedback.created_at,
                    Prediction.model_version,
                    Prediction.id.label("prediction_id"),
                    Prediction.inputs,
                    Prediction.file_unique_id,
                    (Prediction.image.is_not(None)).label("has_image"),
                    User.banned,
                )
                .join(Prediction, Feedback.prediction_id == Prediction.id)
                .join(User, Feedback.user_id == User.id)
                .order_by(Feedback.created_at.desc(), Feedback.id.desc())
            )
            rows = s.execute(query).all()

        def photo_key(row) -> str | None:
            if row.file_unique_id:
                return row.file_unique_id
            return hashlib.sha1(row.inputs).hexdigest() if row.inputs else None

        labels_of = defaultdict(set)
        for row in rows:
            if key := photo_key(row):
                labels_of[key].add(row.digits)
        chosen, left_out, left_out_ids, per_user = [], defaultdict(int), [], defaultdict(int)
        for row in rows:
            key = photo_key(row)
            if row.banned:
                reason = "banned user"
            elif not LABEL.fullmatch(row.digits):
                reason = "label not ASCII digits (stored before labels were checked)"
            elif row.inputs is None and not row.has_image:
                reason = "stored images deleted (retention)"
            elif key and len(labels_of[key]) > 1:
                reason = "conflicting labels for one photo"
            elif per_user[row.user_id] >= max_per_user:
                reason = f"over the cap of {max_per_user} photos per user"
            elif max_photos is not None and len(chosen) >= max_photos:
                reason = f"over a run's limit of {max_photos} photos"
            else:
                per_user[row.user_id] += 1
                chosen.append(row)
                continue
            left_out[reason] += 1
            left_out_ids.append(row.id)
        images = self._images([row.prediction_id for row in chosen if row.has_image]) if with_images else {}
        photos = [
            LabelledPhoto(
                feedback_id=row.id,
                user_id=row.user_id,
                label=row.digits,
                confirmed=row.confirmed,
                inputs=unpack_inputs(row.inputs) if row.inputs else np.zeros((0, 28, 28), np.uint8),
                image=images.get(row.prediction_id),
                new=row.training_run_id is None,
                created_at=row.created_at,
                model_version=row.model_version,
            )
            for row in chosen
        ]
        return FeedbackSet(photos, dict(left_out), left_out_ids)

    def _images(self, prediction_ids: list[int]) -> dict[int, bytes]:
        with self.read() as s:
            rows = s.execute(
                select(Prediction.id, Prediction.image).where(Prediction.id.in_(prediction_ids))
            ).all()
        return {row.id: row.image for row in rows}

    def purge_samples(self, older_than_days: int) -> int:
        """Retention: drop the stored images of predictions older than N days, keeping rows and counts."""
        cutoff = utcnow() - timedelta(days=older_than_days)
        with self.session.begin() as s:
            result = s.execute(
                update(Prediction)
                .where(Prediction.created_at < cutoff)
                .where(
                    Prediction.inputs.is_not(None)
                    | Prediction.photo.is_not(None)
                    | Prediction.image.is_not(None)
                )
                .values(inputs=None, photo=None, image=None)
            )
            return result.rowcount

    def drop_unrated_photos(self, older_than: timedelta = UNRATED_PHOTO_LIFETIME) -> int:
        """Kept photos are for learning from feedback: drop those of predictions nobody rated in time."""
        rated = select(Feedback.prediction_id)
        with self.session.begin() as s:
            result = s.execute(
                update(Prediction)
                .where(Prediction.created_at < utcnow() - older_than, Prediction.image.is_not(None))
                .where(Prediction.id.not_in(rated))
                .values(image=None)
            )
            return result.rowcount

    # --- stats -----------------------------------------------------------------------------------------
    def stats(self, user_id: int | None = None) -> Stats:
        """Counts and live accuracy from feedback, overall or for one user (their predictions)."""
        with self.read() as s:
            predictions = select(func.count(Prediction.id))
            rows_query = select(
                Prediction.digits,
                Prediction.model_version,
                Feedback.digits,
                Feedback.confirmed,
                Feedback.created_at,
            ).join(Feedback, Feedback.prediction_id == Prediction.id)
            if user_id is not None:
                predictions = predictions.where(Prediction.user_id == user_id)
                rows_query = rows_query.where(Prediction.user_id == user_id)
            n_predictions = s.scalar(predictions) or 0
            rows = s.execute(rows_query).all()
        right_by_version, right_by_day = defaultdict(list), defaultdict(list)
        digit_hits, digit_total = defaultdict(int), defaultdict(int)
        confusion = np.zeros((10, 10), np.int64)
        for predicted, version, truth, confirmed, created in rows:
            right = confirmed or predicted == truth
            right_by_version[version].append(right)
            right_by_day[created.date().isoformat()].append(right)
            if len(predicted) == len(truth):
                for p, t in zip(predicted, truth, strict=True):
                    digit_total[t] += 1
                    digit_hits[t] += p == t
                    confusion[int(t), int(p)] += 1
        confirmed_count = sum(1 for r in rows if r[3])
        return Stats(
            predictions=n_predictions,
            feedback=len(rows),
            confirmed=confirmed_count,
            corrected=len(rows) - confirmed_count,
            live_accuracy=confirmed_count / len(rows) if rows else None,
            per_digit={d: digit_hits[d] / digit_total[d] for d in sorted(digit_total)},
            by_version={v: sum(r) / len(r) for v, r in right_by_version.items() if v is not None},
            by_day=[(day, len(r), sum(r) / len(r)) for day, r in sorted(right_by_day.items())],
            confusion=confusion,
        )

    # --- model versions --------------------------------------------------------------------------------
    def add_model_version(
        self,
        version: int,
        path: str,
        sha256: str,
        parent_version: int | None = None,
        mnist_accuracy: float | None = None,
        feedback_accuracy: float | None = None,
        status: str = "candidate",
        note: str = "",
        data: bytes | None = None,
    ) -> ModelVersion:
        """Record a version; `data`, the file's bytes, is kept for every replica to load it from."""
        if status not in MODEL_STATUSES:
            raise ValueError(f"unknown model status {status!r}")
        with self.session.begin() as s:
            if data is not None:
                _keep_file(s, sha256, data)
            model = ModelVersion(
                version=version,
                path=path,
                sha256=sha256,
                parent_version=parent_version,
                mnist_accuracy=mnist_accuracy,
                feedback_accuracy=feedback_accuracy,
                status="candidate",
                note=note,
            )
            s.add(model)
            s.flush()
            if status == "active":
                self._activate(s, version)
            else:
                model.status = status
            return model

    def keep_model_file(self, sha256: str, data: bytes) -> None:
        """Keep a copy of a model file (bytes whose sha256 the caller checked) for every replica."""
        with self.session.begin() as s:
            _keep_file(s, sha256, data)

    def model_file(self, sha256: str) -> bytes | None:
        with self.read() as s:
            return s.scalar(select(ModelFile.data).where(ModelFile.sha256 == sha256))

    def next_model_version(self) -> int:
        with self.read() as s:
            return (s.scalar(select(func.max(ModelVersion.version))) or 0) + 1

    def _activate(self, s: Session, version: int) -> None:
        _serialise(s, ACTIVATION_LOCK)
        s.execute(update(ModelVersion).where(ModelVersion.status == "active").values(status="retired"))
        s.flush()  # the old row retired before the new one is active: one active row at every step
        s.execute(update(ModelVersion).where(ModelVersion.version == version).values(status="active"))

    def activate(self, version: int) -> None:
        """Make `version` the one active model; the previously active one becomes retired."""
        with self.session.begin() as s:
            if s.get(ModelVersion, version) is None:
                raise KeyError(f"no model version {version}")
            self._activate(s, version)

    def finish_run_with_candidate(
        self,
        run_id: int,
        candidate: ModelVersion,
        data: bytes,
        promote: bool,
        metrics: dict,
        consumed: list[int],
    ) -> str:
        """Record the candidate and its file's bytes, promote it (only if its parent is still the active
        version: a /rollback or another promotion during the run wins) or reject it, and close the run: one
        transaction, so a kill at any moment leaves either all of it or none. Returns the run's status.
        Raises RunClosed, recording nothing, when the run was failed meanwhile (its lease had expired)."""
        with self.session.begin() as s:
            _serialise(s, ACTIVATION_LOCK)
            run = _lock_running(s, run_id)
            _keep_file(s, candidate.sha256, data)
            active = s.scalar(select(ModelVersion.version).where(ModelVersion.status == "active"))
            if promote and active != candidate.parent_version:
                promote = False
                candidate.note = (
                    f"not promoted: the active version changed during the run "
                    f"(v{candidate.parent_version} -> v{active})"
                )
            candidate.status = "candidate"
            s.add(candidate)
            s.flush()
            if promote:
                self._activate(s, candidate.version)
            else:
                candidate.status = "rejected"
            status = "promoted" if promote else "rejected"
            _close_run(s, run, status, metrics, "", candidate.version, consumed)
            return status

    def set_model_status(self, version: int, status: str, note: str | None = None) -> None:
        if status not in MODEL_STATUSES or status == "active":
            raise ValueError(f"use activate() for 'active'; unknown or invalid status {status!r}")
        with self.session.begin() as s:
            values = {"status": status} | ({"note": note} if note is not None else {})
            s.execute(update(ModelVersion).where(ModelVersion.version == version).values(**values))

    def active_model(self) -> ModelVersion | None:
        with self.read() as s:
            return s.scalars(select(ModelVersion).where(ModelVersion.status == "active")).first()

    def model_versions(self) -> list[ModelVersion]:
        with self.read() as s:
            return list(s.scalars(select(ModelVersion).order_by(ModelVersion.version)))

    # --- training runs ---------------------------------------------------------------------------------
    def claim_run(self, trigger: str, lease_s: float, requested_by: int | None = None) -> int | None:
        """Start a training run, leased for `lease_s` seconds to the process that will renew it (see
        renew_lease), or return None when one is already running on any replica: the database holds at
        most one running run (index one_running_run), so of two simultaneous claims one fails."""
        try:
            with self.session.begin() as s:
                run = TrainingRun(
                    trigger=trigger,
                    requested_by=requested_by,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    lease_expires_at=utcnow() + timedelta(seconds=lease_s),
                )
                s.add(run)
                s.flush()
                return run.id
        except IntegrityError:
            return None

    def renew_lease(self, run_id: int, lease_s: float) -> bool:
        """Extend a running run's lease to `lease_s` seconds from now. False when the run is no longer
        running (another replica failed it: its lease had expired), and then its process must stop."""
        with self.session.begin() as s:
            result = s.execute(
                update(TrainingRun)
                .where(TrainingRun.id == run_id, TrainingRun.status == "running")
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
            )
            return result.rowcount == 1

    def set_run_pid(self, run_id: int, pid: int) -> None:
        with self.session.begin() as s:
            s.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(pid=pid))

    def training_run(self, run_id: int) -> TrainingRun | None:
        with self.read() as s:
            return s.get(TrainingRun, run_id)

    def finish_run(
        self,
        run_id: int,
        status: str,
        metrics: dict | None = None,
        error: str = "",
        candidate_version: int | None = None,
        consumed: list[int] | None = None,
    ) -> bool:
        """Close a run; the feedback it considered (`consumed`) is marked with it in the same transaction.
        False, changing nothing, when the run was closed already (another replica failed it)."""
        try:
            with self.session.begin() as s:
                _close_run(s, _lock_running(s, run_id), status, metrics, error, candidate_version, consumed)
        except RunClosed:
            return False
        return True

    def fail_stale_runs(self, reason: str = "its lease expired: its process stopped during the run") -> int:
        """Fail the runs whose lease expired (their process died or hung, on whichever host). How many."""
        with self.session.begin() as s:
            result = s.execute(
                update(TrainingRun)
                .where(TrainingRun.status == "running", TrainingRun.lease_expires_at < utcnow())
                .values(status="failed", error=reason, finished_at=utcnow())
            )
            return result.rowcount

    def last_run(self) -> TrainingRun | None:
        with self.read() as s:
            return s.scalars(select(TrainingRun).order_by(TrainingRun.id.desc())).first()
