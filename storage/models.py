"""The database schema: users, predictions, feedback, model versions and their files, training runs."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True)}  # noqa: RUF012 - SQLAlchemy reads it as is


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)  # Telegram user id
    name: Mapped[str] = mapped_column(String(256), default="")
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    banned: Mapped[bool] = mapped_column(Boolean, default=False)

    predictions: Mapped[list[Prediction]] = relationship(back_populates="user", passive_deletes=True)


class Prediction(Base):
    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    photo_message_id: Mapped[int | None] = mapped_column(BigInteger)
    answer_message_id: Mapped[int | None] = mapped_column(BigInteger)
    file_unique_id: Mapped[str | None] = mapped_column(String(128), index=True)
    model_version: Mapped[int | None] = mapped_column(Integer)
    digits: Mapped[str] = mapped_column(String(16), default="")
    confidence: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(String(16))  # ok / unsure / no_digit
    inputs: Mapped[bytes | None] = mapped_column(LargeBinary)  # uint8 (N, 28, 28), None once purged
    input_count: Mapped[int] = mapped_column(Integer, default=0)
    photo: Mapped[bytes | None] = mapped_column(LargeBinary)  # only when the settings ask to keep photos
    # The photo itself, gray, longest side <= 640 px (what the pipeline works at): training inputs are
    # derived from it when it gets feedback, with the pipeline of that day and the label's digit count.
    image: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    user: Mapped[User] = relationship(back_populates="predictions")
    feedback: Mapped[list[Feedback]] = relationship(back_populates="prediction", passive_deletes=True)


class Feedback(Base):
    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("prediction_id", "user_id", name="one_feedback_per_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    digits: Mapped[str] = mapped_column(String(16))  # the right answer
    confirmed: Mapped[bool] = mapped_column(Boolean)  # True when the user said the prediction was right
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id", ondelete="SET NULL"))

    prediction: Mapped[Prediction] = relationship(back_populates="feedback")


def _at_most_one(name: str, status: str) -> Index:
    """A partial unique index: at most one row in `status`, whatever two instances write at the same moment
    (SQLite and PostgreSQL alike)."""
    where = text(f"status = '{status}'")
    return Index(name, "status", unique=True, sqlite_where=where, postgresql_where=where)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    # At most one active version, whatever two instances promote or roll back at the same moment.
    __table_args__ = (_at_most_one("one_active_model", "active"),)

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # Where the replica that made it wrote the file. Replicas load versions from model_files (by sha256),
    # except those recorded before that table existed, which have no copy there until one loads its file.
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    parent_version: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    mnist_accuracy: Mapped[float | None] = mapped_column(Float)
    feedback_accuracy: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="candidate")  # candidate/active/rejected/retired
    note: Mapped[str] = mapped_column(Text, default="")


class ModelFile(Base):
    """A model file's bytes, by their sha256: every replica can load every version without a shared disk."""

    __tablename__ = "model_files"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class TrainingRun(Base):
    __tablename__ = "training_runs"
    # At most one fine-tuning run at a time, whatever two replicas claim at the same moment.
    __table_args__ = (_at_most_one("one_running_run", "running"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trigger: Mapped[str] = mapped_column(String(16))  # schedule / admin / cli
    requested_by: Mapped[int | None] = mapped_column(BigInteger)
    host: Mapped[str] = mapped_column(String(255), default="")  # where the fine-tuning process runs
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="running")  # running/promoted/rejected/failed
    # The process working on a running run renews this; once it has passed, the run is failed by whichever
    # replica notices (its process died, wherever it ran).
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    candidate_version: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str] = mapped_column(Text, default="")
