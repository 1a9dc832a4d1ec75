"""Storage against a real SQLite file and the real PostgreSQL server (a fresh schema per test)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import inspect, text, update
from sqlalchemy.exc import IntegrityError

from storage.db import connect, downgrade, make_engine, sqlite_url, upgrade
from storage.models import Feedback, ModelVersion, Prediction, User, utcnow
from storage.repository import RunClosed, Store

LEASE = 60.0  # seconds


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'digitbot.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(db_url):
    engine = connect(db_url)
    yield Store(engine)
    engine.dispose()


def inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 28, 28), dtype=np.float32)


def predict(store: Store, user: int, digits: str, seed: int = 0, **kwargs) -> int:
    return store.record_prediction(
        user_id=user,
        chat_id=user,
        digits=digits,
        confidence=0.9,
        status="ok",
        inputs=inputs(len(digits), seed),
        **kwargs,
    )


def test_an_old_database_is_upgraded_in_place(db_url):
    engine = make_engine(db_url)
    upgrade(engine, "0001")
    store = Store(engine)
    with store.session.begin() as s:
        s.execute(
            text(
                "INSERT INTO users (id, name, first_seen, last_seen, banned) "
                "VALUES (5, 'old', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, false)"
            )
        )
    connect(db_url).dispose()  # a start with the new code: the newest schema, data kept
    assert store.is_banned(5) is False and store.claim_run("cli", LEASE) is not None
    store.saw_user(5, "new")
    with store.read() as s:
        assert s.get(User, 5).name == "new"
    engine.dispose()


def test_migrations_from_empty_to_head_and_back(db_url):
    engine = connect(db_url)
    tables = set(inspect(engine).get_table_names())
    assert {
        "users",
        "predictions",
        "feedback",
        "model_versions",
        "training_runs",
        "alembic_version",
    } <= tables
    with engine.connect() as c:
        assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"
    connect(db_url).dispose()  # a second start finds nothing to do
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert "predictions" in inspect(engine).get_table_names()
    engine.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    engine = connect(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    with engine.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_sqlite_readers_do_not_wait_for_a_writer(tmp_path):
    import sqlite3

    url = sqlite_url(tmp_path)
    store = Store(connect(url))
    store.record_feedback(predict(store, 1, "3"), 1, "8")
    writer = sqlite3.connect(tmp_path / "digitbot.sqlite3", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a writer holds the lock, e.g. a slow migration or the bot
    results = []
    reader = threading.Thread(
        # The ban check too: every photo asks it.
        target=lambda: results.append(
            (store.stats().feedback, len(store.labelled_photos().photos), store.is_banned(1))
        ),
        daemon=True,
    )
    reader.start()
    reader.join(timeout=10)  # with BEGIN IMMEDIATE it would wait for the writer (30 s), then fail
    read_beside_the_writer = not reader.is_alive()
    writer.rollback()
    reader.join()
    assert read_beside_the_writer and results == [(1, 1, False)]
    store.engine.dispose()


def test_asking_whether_a_user_is_banned_writes_nothing(store):
    assert store.is_banned(9) is False
    with store.read() as s:
        assert s.get(User, 9) is None
    store.set_banned(9)
    assert store.is_banned(9)


def test_inputs_round_trip_compactly(store):
    x = inputs(3)
    pid = predict(store, 1, "123")
    with store.session() as s:
        stored = s.get(Prediction, pid)
    assert len(stored.inputs) == 3 * 784 and stored.input_count == 3
    np.testing.assert_allclose(
        np.frombuffer(stored.inputs, np.uint8).reshape(3, 28, 28) / 255, x, atol=1 / 255
    )


def test_concurrent_writers_lose_nothing(store):
    errors = []

    def user_session(user: int) -> None:
        try:
            for i in range(25):
                pid = predict(store, user, str(i % 10), seed=i)
                store.record_feedback(pid, user, None if i % 2 else str((i + 1) % 10))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=user_session, args=(u,)) for u in range(1, 13)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = store.stats()
    assert (stats.predictions, stats.feedback) == (12 * 25, 12 * 25)
    assert stats.confirmed == 12 * 12


WRITER = """
import sys
import numpy as np
from storage.db import connect
from storage.repository import Store
store = Store(connect(sys.argv[1]))
for i in range(100000):
    pid = store.record_prediction(user_id=7, chat_id=7, digits="42", confidence=0.5, status="ok",
                                  inputs=np.zeros((2, 28, 28), np.float32))
    store.record_feedback(pid, 7, "43")
    print(pid, flush=True)
"""


def test_killed_writer_leaves_a_consistent_database(db_url):
    connect(db_url).dispose()
    child = subprocess.Popen([sys.executable, "-c", WRITER, db_url], stdout=subprocess.PIPE, text=True)
    committed = []
    deadline = time.monotonic() + 60
    while len(committed) < 40 and time.monotonic() < deadline:
        committed.append(int(child.stdout.readline()))
    child.send_signal(signal.SIGKILL)
    child.wait()
    committed += [int(line) for line in child.stdout.read().split()]
    assert len(committed) >= 40
    engine = connect(db_url)
    store = Store(engine)
    with store.session() as s:
        ids = set(s.scalars(text("SELECT id FROM predictions")))
        orphans = s.execute(
            text(
                "SELECT count(*) FROM feedback f LEFT JOIN predictions p "
                "ON f.prediction_id = p.id WHERE p.id IS NULL"
            )
        ).scalar()
        if engine.dialect.name == "sqlite":
            assert s.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        truncated = s.execute(
            text("SELECT count(*) FROM predictions WHERE length(inputs) != 2 * 784")
        ).scalar()
    assert set(committed) <= ids  # every reported commit survived the kill
    assert len(ids) <= len(committed) + 1  # at most the one in flight, and then whole
    assert orphans == 0 and truncated == 0
    assert store.stats().feedback >= len(committed)
    engine.dispose()


def test_latest_feedback_wins(store):
    pid = predict(store, 1, "7")
    store.record_feedback(pid, 1, "1")
    store.record_feedback(pid, 1, "9")
    store.record_feedback(pid, 2, None)
    with store.session() as s:
        rows = {f.user_id: (f.digits, f.confirmed) for f in s.query(Feedback).all()}
    assert rows == {1: ("9", False), 2: ("7", True)}
    store.record_feedback(pid, 1, "7")  # changing one's mind to agree with the model is a confirmation
    assert store.stats().confirmed == 2


def test_latest_prediction_of_a_user_in_a_chat(store):
    here = predict(store, 1, "3")  # chat 1: the private chat
    elsewhere = store.record_prediction(
        user_id=1, chat_id=-100, digits="5", confidence=0.9, status="ok", inputs=inputs(1)
    )  # later, in a group
    assert store.latest_prediction(1, chat_id=1).id == here
    assert store.latest_prediction(1, chat_id=-100).id == elsewhere
    assert store.latest_prediction(1, chat_id=-200) is None


def test_feedback_on_unknown_prediction_is_an_error(store):
    with pytest.raises(KeyError):
        store.record_feedback(12345, 1, "3")


@pytest.mark.parametrize("label", ["²", "٣", "7a", "", "1" * 17])
def test_feedback_labels_are_ascii_digits_only(store, label):
    pid = predict(store, 1, "7")
    with pytest.raises(ValueError):
        store.record_feedback(pid, 1, label)
    assert store.stats().feedback == 0


def test_labelled_photos_caps_conflicts_and_bans(store):
    for i in range(6):  # user 1: six corrections, capped to the newest three
        store.record_feedback(predict(store, 1, "1", seed=i, image=b"photo%d" % i), 1, "7")
    store.record_feedback(predict(store, 2, "23", seed=50), 2, "28")
    store.record_feedback(predict(store, 2, "23", seed=51), 2, "238")  # the trainer matches lengths
    a = predict(store, 3, "5", seed=60, file_unique_id="same-photo")  # one photo, two different labels
    b = predict(store, 4, "5", seed=61, file_unique_id="same-photo")
    store.record_feedback(a, 3, "6")
    store.record_feedback(b, 4, "8")
    store.record_feedback(predict(store, 5, "0", seed=70), 5, "9")
    store.set_banned(5)
    chosen = store.labelled_photos(max_per_user=3)
    assert sorted((p.user_id, p.label) for p in chosen.photos) == [
        (1, "7"),
        (1, "7"),
        (1, "7"),
        (2, "238"),
        (2, "28"),
    ]
    assert chosen.left_out == {
        "over the cap of 3 photos per user": 3,
        "conflicting labels for one photo": 2,
        "banned user": 1,
    }
    newest = next(p for p in chosen.photos if p.user_id == 1)
    assert newest.image == b"photo5" and not newest.confirmed and newest.new
    np.testing.assert_array_equal(newest.inputs, (inputs(1, seed=5) * 255).round().astype(np.uint8))
    assert len(chosen.considered_ids) == 11
    assert store.count_new_feedback(max_per_user=3) == 5  # what a run would learn from, no more
    newest = store.labelled_photos(max_per_user=3, max_photos=2)
    assert [p.feedback_id for p in newest.photos] == [p.feedback_id for p in chosen.photos[:2]]
    assert newest.left_out["over a run's limit of 2 photos"] == 6  # user 1's six: none is taken
    assert store.count_new_feedback(max_per_user=3, max_photos=2) == 2
    assert all(p.image is None for p in store.labelled_photos(3, with_images=False).photos)


def test_forget_user_removes_everything_of_theirs(store):
    mine = predict(store, 1, "3")
    store.record_feedback(mine, 1, "8")
    store.record_feedback(mine, 2, "3")  # someone else's feedback on my prediction goes too
    theirs = predict(store, 2, "4")
    store.record_feedback(theirs, 1, "9")  # my feedback on their prediction goes
    assert store.forget_user(1)
    assert store.stats(1).predictions == 0
    assert store.latest_prediction(1) is None
    with store.session() as s:
        assert [(f.user_id, f.prediction_id) for f in s.query(Feedback).all()] == []
        assert [p.id for p in s.query(Prediction).all()] == [theirs]
    assert not store.forget_user(1)


def test_labels_stored_before_they_were_checked_are_left_out_of_training(store):
    good, bad = predict(store, 1, "7", seed=1), predict(store, 1, "2", seed=2)
    store.record_feedback(good, 1, "1")
    store.record_feedback(bad, 1, "3")
    with store.session.begin() as s:
        s.execute(update(Feedback).where(Feedback.prediction_id == bad).values(digits="²"))  # an old row
    chosen = store.labelled_photos()
    assert [p.label for p in chosen.photos] == ["1"]
    assert chosen.left_out == {"label not ASCII digits (stored before labels were checked)": 1}


def test_a_ban_survives_forget(store):
    store.record_feedback(predict(store, 1, "3", user_name="Spammer"), 1, "8")
    store.set_banned(1)
    assert store.forget_user(1)
    assert store.is_banned(1)  # still banned
    assert store.stats(1).predictions == 0 and store.labelled_photos().photos == []
    with store.session() as s:
        assert s.get(User, 1).name == ""  # nothing else of theirs is kept


def test_stats_on_a_known_fixture(store):
    store.add_model_version(1, "m1.keras", "a" * 64, status="active")
    p1 = predict(store, 1, "7", model_version=1)
    p2 = predict(store, 1, "12", model_version=1)
    p3 = predict(store, 2, "3", model_version=2)
    predict(store, 2, "5", model_version=2)  # no feedback
    store.record_feedback(p1, 1, None)  # right
    store.record_feedback(p2, 1, "17")  # wrong: 1 right, 2 should be 7
    store.record_feedback(p3, 2, "8")  # wrong
    overall = store.stats()
    assert (overall.predictions, overall.feedback, overall.confirmed, overall.corrected) == (4, 3, 1, 2)
    assert overall.live_accuracy == pytest.approx(1 / 3)
    assert overall.per_digit == {"1": 1.0, "7": 0.5, "8": 0.0}
    assert overall.by_version == {1: 0.5, 2: 0.0}
    assert len(overall.by_day) == 1 and overall.by_day[0][1:] == (3, pytest.approx(1 / 3))
    mine = store.stats(1)
    assert (mine.predictions, mine.feedback, mine.live_accuracy) == (2, 2, 0.5)


def test_exactly_one_active_model(store):
    store.add_model_version(1, "v1.keras", "1" * 64, status="active")
    store.add_model_version(2, "v2.keras", "2" * 64, parent_version=1, mnist_accuracy=0.997)
    assert store.active_model().version == 1
    store.activate(2)
    assert [(m.version, m.status) for m in store.model_versions()] == [(1, "retired"), (2, "active")]
    store.add_model_version(3, "v3.keras", "3" * 64, status="rejected", note="MNIST dropped 0.5 pp")
    assert store.active_model().version == 2 and store.next_model_version() == 4
    with pytest.raises(KeyError):
        store.activate(99)
    with pytest.raises(ValueError):
        store.set_model_status(2, "active")


def test_training_runs_consume_feedback_and_stale_runs_fail(store):
    pid = predict(store, 1, "4")
    store.record_feedback(pid, 1, "9")
    assert store.count_new_feedback() == 1
    run = store.claim_run("admin", LEASE, requested_by=1)
    assert store.claim_run("schedule", LEASE) is None  # one run at a time
    store.finish_run(
        run,
        "promoted",
        {"mnist": 0.996},
        candidate_version=2,
        consumed=store.labelled_photos().considered_ids,
    )
    assert store.count_new_feedback() == 0
    assert store.last_run().metrics == {"mnist": 0.996}
    store.record_feedback(pid, 1, "7")  # a changed label is new again
    assert store.count_new_feedback() == 1
    live = store.claim_run("schedule", 0.5)
    assert store.fail_stale_runs() == 0  # its lease runs
    assert store.renew_lease(live, 0.5)
    time.sleep(0.6)  # ...until its process stops renewing it, wherever that process ran
    assert store.claim_run("schedule", LEASE) is None  # still running until someone fails it
    assert store.fail_stale_runs() == 1
    run = store.last_run()
    assert run.id == live and run.status == "failed" and run.error.startswith("its lease expired")
    assert not store.renew_lease(live, LEASE)  # its process, were it alive, learns it must stop
    assert not store.finish_run(live, "promoted")  # and cannot close it as if nothing happened
    assert store.training_run(live).status == "failed"
    assert store.claim_run("schedule", LEASE) is not None


def test_retention_purges_old_samples_but_keeps_counts(store):
    old, new = predict(store, 1, "1", image=b"old photo"), predict(store, 1, "2")
    store.record_feedback(old, 1, "7")
    with store.session.begin() as s:
        s.get(Prediction, old).created_at = utcnow() - timedelta(days=40)
    assert store.purge_samples(older_than_days=30) == 1
    with store.session() as s:
        assert s.get(Prediction, old).inputs is None and s.get(Prediction, new).inputs is not None
    assert store.stats().predictions == 2 and store.stats().feedback == 1
    chosen = store.labelled_photos()
    assert chosen.photos == [] and chosen.left_out == {"stored images deleted (retention)": 1}


def test_a_run_consumes_the_feedback_it_could_not_use(store):
    for user in (1, 2):
        store.record_feedback(predict(store, user, "4", seed=user), user, "9")
    store.set_banned(2)
    assert store.count_new_feedback() == 1  # a banned user's corrections never trigger a run
    run = store.claim_run("schedule", LEASE)
    store.finish_run(run, "failed", consumed=store.labelled_photos().considered_ids)
    assert store.count_new_feedback() == 0
    store.set_banned(2, False)
    assert store.count_new_feedback() == 0  # considered once: not new again


def test_unrated_photos_are_dropped_after_a_day(store):
    rated, unrated, recent = (predict(store, 1, d, image=b"jpeg") for d in "123")
    store.record_feedback(rated, 1, "7")
    with store.session.begin() as s:
        for pid in (rated, unrated):
            s.get(Prediction, pid).created_at = utcnow() - timedelta(days=2)
    assert store.drop_unrated_photos() == 1
    with store.read() as s:
        kept = {pid: s.get(Prediction, pid).image for pid in (rated, unrated, recent)}
    assert kept == {rated: b"jpeg", unrated: None, recent: b"jpeg"}


def test_the_database_refuses_a_second_active_model(store):
    store.add_model_version(1, "v1.keras", "1" * 64, status="active")
    store.add_model_version(2, "v2.keras", "2" * 64, parent_version=1)
    with pytest.raises(IntegrityError), store.session.begin() as s:
        s.execute(text("UPDATE model_versions SET status = 'active' WHERE version = 2"))
    store.activate(2)  # the repository retires the old one first
    assert [(m.version, m.status) for m in store.model_versions()] == [(1, "retired"), (2, "active")]


def test_the_migration_keeps_only_the_newest_of_two_active_models(db_url):
    engine = make_engine(db_url)
    upgrade(engine, "0002")
    with engine.begin() as c:
        for version in (1, 2):
            c.execute(
                text(
                    "INSERT INTO model_versions (version, path, sha256, created_at, status, note) "
                    "VALUES (:v, 'm.keras', 'x', CURRENT_TIMESTAMP, 'active', '')"
                ),
                {"v": version},
            )
    upgrade(engine)
    assert [(m.version, m.status) for m in Store(engine).model_versions()] == [(1, "retired"), (2, "active")]
    engine.dispose()


def candidate(version: int, parent: int) -> ModelVersion:
    return ModelVersion(version=version, path=f"v{version}.keras", sha256="c" * 64, parent_version=parent)


MODEL_BYTES = b"the candidate's .keras file"


def test_promotion_is_one_transaction_that_a_rollback_during_the_run_wins(store):
    store.add_model_version(1, "v1.keras", "1" * 64, status="active")
    store.add_model_version(2, "v2.keras", "2" * 64, parent_version=1)
    store.activate(2)
    store.record_feedback(predict(store, 1, "4"), 1, "9")
    run = store.claim_run("admin", LEASE)
    store.activate(1)  # an admin's /rollback while the run (based on v2) trains
    status = store.finish_run_with_candidate(
        run, candidate(3, parent=2), MODEL_BYTES, True, {"p": 1}, store.labelled_photos().considered_ids
    )
    assert status == "rejected" and store.active_model().version == 1
    versions = {m.version: m for m in store.model_versions()}
    assert versions[3].status == "rejected" and "active version changed" in versions[3].note
    assert store.training_run(run).status == "rejected" and store.count_new_feedback() == 0
    run = store.claim_run("admin", LEASE)
    assert (
        store.finish_run_with_candidate(run, candidate(4, parent=1), MODEL_BYTES, True, {}, []) == "promoted"
    )
    assert store.active_model().version == 4 and store.training_run(run).candidate_version == 4
    assert store.model_file("c" * 64) == MODEL_BYTES  # every replica can load it


def test_a_failed_promotion_leaves_nothing_half_done(store):
    store.add_model_version(1, "v1.keras", "1" * 64, status="active")
    run = store.claim_run("admin", LEASE)
    with pytest.raises(IntegrityError):  # version 1 exists: the insert fails inside the transaction
        store.finish_run_with_candidate(run, candidate(1, parent=1), MODEL_BYTES, True, {}, [])
    assert store.active_model().version == 1 and store.training_run(run).status == "running"
    assert store.model_file("c" * 64) is None


def test_a_run_failed_by_another_replica_records_nothing_when_it_ends(store):
    store.add_model_version(1, "v1.keras", "1" * 64, status="active")
    store.record_feedback(predict(store, 1, "4"), 1, "9")
    run = store.claim_run("admin", 0.1)
    time.sleep(0.2)
    assert store.fail_stale_runs() == 1  # another replica saw its lease expire, and may start the next
    with pytest.raises(RunClosed, match="closed meanwhile"):
        store.finish_run_with_candidate(
            run, candidate(2, parent=1), MODEL_BYTES, True, {}, store.labelled_photos().considered_ids
        )
    assert [m.version for m in store.model_versions()] == [1] and store.active_model().version == 1
    assert store.model_file("c" * 64) is None and store.count_new_feedback() == 1
    assert store.training_run(run).status == "failed"


def test_one_of_many_simultaneous_claims_wins(store):
    start = threading.Barrier(8)
    claims = []

    def claim() -> None:
        start.wait()
        claims.append(store.claim_run("schedule", LEASE))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claims) == 8 and len([c for c in claims if c is not None]) == 1


def test_model_files_are_kept_by_sha256_and_a_damaged_copy_heals(store):
    store.add_model_version(1, "v1.keras", "a" * 64, status="active", data=b"version one")
    assert store.model_file("a" * 64) == b"version one" and store.model_file("b" * 64) is None
    with store.session.begin() as s:
        s.execute(text("UPDATE model_files SET data = :d"), {"d": b"damaged"})
    store.keep_model_file("a" * 64, b"version one")  # a replica with a good copy keeps it again
    assert store.model_file("a" * 64) == b"version one"


def test_the_migration_leaves_one_running_run_with_a_lease(db_url):
    engine = make_engine(db_url)
    upgrade(engine, "0003")
    with engine.begin() as c:
        for _ in range(2):
            c.execute(
                text(
                    "INSERT INTO training_runs (trigger, host, started_at, status, metrics, error) "
                    "VALUES ('cli', 'old', CURRENT_TIMESTAMP, 'running', '{}', '')"
                )
            )
    upgrade(engine)
    store = Store(engine)
    assert [(r.id, r.status) for r in (store.training_run(1), store.training_run(2))] == [
        (1, "failed"),
        (2, "running"),
    ]
    assert store.fail_stale_runs() == 0  # a run of the old code, maybe still going, gets time
    assert store.training_run(2).lease_expires_at is not None
    assert store.claim_run("cli", LEASE) is None
    engine.dispose()
