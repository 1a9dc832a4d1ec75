"""The learning loop: gate rules, hot swap, tampered files, fine-tuning runs (promoted, rejected, killed),
and the bot's /retrain, /rollback and schedule end to end."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest

import bot.learning
from bot.learning import Sample, holdout_users, their_pages
from bot.model_store import LiveModel, ModelIntegrityError, cache_path, install_shipped_model, load_active
from recognizer import NOT_ONE_DIGIT, Recognizer
from recognizer.finetune import (
    FineTuneConfig,
    fine_tune,
    gate,
    judge,
    mcnemar_worse,
    repeats,
    training_mix,
)
from recognizer.labelled import inputs_for_label, read_and_keep
from recognizer.train import targets
from storage.db import connect, sqlite_url
from storage.repository import LabelledPhoto, Store
from tests.conftest import MNIST_DIR
from tests.fake_telegram import BotProcess, FakeTelegram
from tests.photos import synthetic_photo, touching

FAST = {
    "DIGITBOT_RETRAIN_MNIST_SAMPLES": "1000",
    "DIGITBOT_RETRAIN_EPOCHS": "1",
    "DIGITBOT_MNIST_DIR": str(MNIST_DIR),
}
TOKEN = "123456789:LEARN-fake-token-not-real"


def right(pattern: str) -> np.ndarray:
    return np.array([c == "1" for c in pattern])


def test_gate_rules():
    same = right("1" * 30)
    assert judge(0.9960, 0.9940, same, same, 5, max_mnist_drop=0.002)[0]
    promote, reason, _ = judge(0.9960, 0.9930, same, same, 5, max_mnist_drop=0.002)
    assert not promote and "MNIST test accuracy dropped 0.30%" in reason
    one_flip = right("0" + "1" * 29)  # one held-out sample flips: no evidence the candidate is worse
    promote, reason, p = judge(0.9960, 0.9960, same, one_flip, 5, max_mnist_drop=0.002)
    assert promote and p == 0.5 and "1 samples now wrong, 0 now right" in reason
    five_flips = right("0" * 5 + "1" * 25)  # 5 of 5 disagreements against it: p = 1/32
    promote, reason, p = judge(0.9960, 0.9970, same, five_flips, 5, max_mnist_drop=0.002)
    assert not promote and p == pytest.approx(1 / 32) and reason.startswith("worse on held-out feedback")
    promote, reason, p = judge(0.9960, 0.9960, right("1" * 10), right("0" * 10), 5, max_mnist_drop=0.002)
    assert promote and p is None and reason.startswith("too little held-out feedback to judge (10 samples")
    assert judge(0.9960, 0.9960, same, five_flips, 1, max_mnist_drop=0.002)[0]  # one user cannot judge


def test_mcnemar_is_the_exact_binomial_tail():
    assert mcnemar_worse(0, 0) == 1.0
    assert mcnemar_worse(3, 1) == pytest.approx(5 / 16)
    assert mcnemar_worse(6, 0) == pytest.approx(1 / 64)


def test_the_gate_with_its_default_settings(tiny_model, mnist):
    shipped, tiny = Recognizer.load().model, Recognizer.load(tiny_model).model
    x, y = mnist.x_test[:40], mnist.y_test[:40].astype(np.int64)
    verdict = gate(shipped, tiny, mnist, x, y, holdout_users=4)  # ~97% on MNIST: far more than 0.2 below
    assert not verdict.promote and verdict.reason.startswith("MNIST test accuracy dropped")
    assert verdict.candidate_mnist < verdict.active_mnist - 0.002
    verdict = gate(shipped, shipped, mnist, x, y, holdout_users=4)
    assert verdict.promote and (verdict.worse, verdict.better, verdict.p_value) == (0, 0, 1.0)
    assert verdict.active_feedback == verdict.candidate_feedback and verdict.holdout == 40


def sample(user: int, confirmed: bool, digits: int = 1) -> Sample:
    photo = LabelledPhoto(0, user, "1" * digits, confirmed, np.zeros((0, 28, 28), np.uint8), None, True)
    return Sample(photo, np.zeros((digits, 28, 28), np.uint8))


def test_the_holdout_takes_whole_users_with_the_fewest_corrections():
    samples = [sample(u, confirmed=True) for u in range(1, 11) for _ in range(8)]  # 10 users who confirm
    samples += [sample(u, confirmed=False) for u in (1, 2, 3) for _ in range(4)]  # 3 of them also correct
    judges = holdout_users(samples, 20)
    assert len(judges) >= 2 and judges.isdisjoint({1, 2, 3})  # corrections stay in training
    learn = {s.photo.user_id for s in samples if s.photo.user_id not in judges}
    assert learn.isdisjoint(judges) and learn | judges == set(range(1, 11))
    held = sum(len(s.inputs) for s in samples if s.photo.user_id in judges)
    assert 0.2 * len(samples) <= held < 0.2 * len(samples) + 8
    assert holdout_users(samples, 20) == judges  # the same feedback gives the same split


def test_a_mark_holding_several_digits_is_learnt_as_no_one_digit_and_judges_nothing():
    photo = LabelledPhoto(0, 7, "19", False, np.zeros((0, 28, 28), np.uint8), None, True)
    merged = Sample(photo, np.zeros((2, 28, 28), np.uint8), np.ones((1, 28, 28), np.uint8))
    images, labels, users = bot.learning._arrays([merged, sample(8, confirmed=True)])
    assert labels.tolist() == [1, 9, 1, NOT_ONE_DIGIT] and users.tolist() == [7, 7, 8, 7]
    assert (images[-1] == 1).all() and len(images) == 4
    assert bot.learning._arrays([merged], with_merged=False)[1].tolist() == [1, 9]  # the gate's held-out part
    assert "(3 digits, 1 mark holding several) from 2 users" in bot.learning.describe(
        [merged, sample(8, confirmed=True)], {}, 0
    )


def test_no_holdout_when_it_would_be_too_small_to_judge():
    assert holdout_users([sample(u, True) for u in range(1, 6) for _ in range(3)], 20) == set()  # 3 samples
    assert holdout_users([sample(1, True) for _ in range(200)], 20) == set()  # a single user
    assert holdout_users([sample(u, True) for u in range(1, 11) for _ in range(10)], 0) == set()


def test_repeats_are_capped_per_sample_and_per_user():
    config = FineTuneConfig()  # 25% share, 40 repeats, one user at most 25% of the corrections' part
    budget = 0.25 / 0.75 * 20_000
    few = repeats(np.array([1, 2, 3]), 20_000, config)
    assert few.tolist() == [40, 40, 40]  # 3 samples are not repeated 2,222 times each
    many = repeats(np.repeat(np.arange(300) % 10, 1), 20_000, config)
    assert many.max() <= 22 and many.sum() <= budget
    one_user = repeats(np.full(300, 7), 20_000, config)
    assert one_user.sum() <= 0.25 * budget + 300  # one user alone cannot fill the corrections' part
    assert one_user.min() >= 1


def test_pages_are_written_for_corrections_only_users_taking_turns_and_capped(monkeypatch, mnist):
    def photo(feedback_id: int, user: int, confirmed: bool, image: bytes | None) -> Sample:
        kept = LabelledPhoto(feedback_id, user, "8", confirmed, np.zeros((0, 28, 28), np.uint8), image, True)
        return Sample(kept, np.zeros((1, 28, 28), np.uint8))

    jpeg = synthetic_photo(mnist, "3", "lined", seed=1)  # "corrected" to 8: pages hold MNIST's own labels
    samples = [photo(9, 1, False, jpeg), photo(8, 2, True, jpeg), photo(7, 3, False, None)]
    samples += [photo(6, 1, False, jpeg), photo(5, 4, False, jpeg)]  # newest first, as they are stored
    shipped = Recognizer.load()
    monkeypatch.setattr(bot.learning, "MAX_PAGE_DIGITS_PER_RUN", 2)
    images, labels, users = their_pages(shipped, samples, mnist)
    assert users.tolist() == [1, 4] and images.shape == (2, 28, 28) and images.dtype == np.uint8
    monkeypatch.setattr(bot.learning, "MAX_PAGE_DIGITS_PER_RUN", 600)
    images, labels, users = their_pages(shipped, samples[:1], mnist)
    assert len(labels) == len(users) == 10 and set(users.tolist()) == {1}
    read = shipped.probabilities(images / 255).argmax(axis=1)
    assert (read == labels).sum() >= 8 and len(set(labels.tolist())) >= 4  # MNIST's digits and labels


def test_an_odd_photo_costs_its_pages_not_the_run(mnist):
    kept = LabelledPhoto(1, 1, "8", False, np.zeros((0, 28, 28), np.uint8), b"not an image", True)
    images, labels, users = their_pages(Recognizer.load(), [Sample(kept, np.zeros((1, 28, 28)))], mnist)
    assert images.shape == (0, 28, 28) and labels.shape == users.shape == (0,)


def test_the_fine_tune_mix_rehearses_the_ways_of_writing_training_added(mnist):
    # Without them a run on MNIST forgot continental 1s: a real one read as 7 again (bench.learning).
    corrections = np.zeros((3, 28, 28), np.uint8)
    config = FineTuneConfig(mnist_samples=2_000)
    x, y, each = training_mix(mnist, corrections, np.array([4, 4, 4]), np.array([1, 2, 3]), config)
    assert each.tolist() == [40, 40, 40] and (y[-120:] == 4).all()
    known_x, known_y = x[: len(x) - each.sum()], y[: len(y) - each.sum()]
    in_mnist = {image.tobytes() for image in mnist.x_train}
    drawn = np.array([image.tobytes() not in in_mnist for image in known_x])
    # continental 1s and crossed 7s, and marks of touching digits (no one digit), nothing else
    assert set(known_y[drawn].tolist()) == {1, 7, NOT_ONE_DIGIT}
    ones_and_sevens = np.isin(known_y[~drawn], [1, 7]).sum()
    styled = np.isin(known_y[drawn], [1, 7]).sum()
    assert len(known_x) - drawn.sum() == 2_000 and 0.25 < styled / ones_and_sevens < 0.35
    assert (known_y == NOT_ONE_DIGIT).sum() == round(0.07 * 2_000)


def test_a_corrected_touching_number_is_read_as_its_digits_after_a_fine_tune(mnist, tmp_path):
    # 2 and 1 touching read surely as one 2. Fine-tuned on its two digits alone it still reads 2; taught also
    # that the whole mark is no one digit, its halves win.
    shipped = Recognizer.load()
    photo = touching(mnist, [3105, 4719])
    assert shipped.read(photo).digits == "2"
    found = inputs_for_label(shipped, photo, "21")
    read = {}
    for merged in (found.merged[:0], found.merged):
        keras.utils.set_random_seed(0)
        model = keras.models.clone_model(shipped.model)
        model.set_weights(shipped.model.get_weights())
        images = (np.concatenate([found.digits, merged]) * 255).round().astype(np.uint8)
        labels = np.array([2, 1] + [NOT_ONE_DIGIT] * len(merged))
        config = FineTuneConfig(mnist_samples=2000, epochs=1)
        fine_tune(model, mnist, images, labels, np.zeros(len(labels), np.int64), config)
        read[len(merged) > 0] = Recognizer(model).read(photo).digits
    assert read == {False: "2", True: "21"}
    model.save(tmp_path / "candidate.keras")  # a built-in loss: loads wherever Keras does, compiled
    assert keras.models.load_model(tmp_path / "candidate.keras").loss == "categorical_crossentropy"


def test_targets_are_one_hot_digits_and_an_even_spread_for_a_mark_of_several():
    answer = targets(np.array([3, NOT_ONE_DIGIT, 0]))
    np.testing.assert_array_equal(answer[[0, 2]], np.eye(10, dtype=np.float32)[[3, 0]])
    np.testing.assert_allclose(answer[1], np.full(10, 0.1))
    with pytest.raises(ValueError, match="labels must be digits or NOT_ONE_DIGIT"):
        targets(np.array([3, -2]))


def test_hot_swap_under_concurrent_requests_drops_nothing(tiny_model, mnist):
    models = {1: Recognizer.load(), 2: Recognizer.load(tiny_model)}
    live = LiveModel(models[1], 1)
    photo = synthetic_photo(mnist, "7", "clean", seed=7)
    expected = {version: rec.read(photo).items[0].probabilities for version, rec in models.items()}
    assert expected[1] != expected[2]  # the two versions answer differently: a mix-up would show
    results, errors = [], []

    def user() -> None:
        try:
            for _ in range(15):
                recognizer, version = live.current()
                reading = recognizer.read(photo)
                results.append((version, reading.items[0].probabilities, reading.status))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=user) for _ in range(4)]
    for t in threads:
        t.start()
    # Swapping as long as requests run, however slowly a loaded machine runs them: a fixed number of swaps
    # could end before the threads read once, and only one version would be seen.
    deadline, swaps = time.monotonic() + 120, 0
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        live.swap(models[2 - swaps % 2], 2 - swaps % 2)
        swaps += 1
        time.sleep(0.005)
    for t in threads:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in threads), "requests hung during swaps"
    assert errors == [] and len(results) == 60
    assert {version for version, _, _ in results} == {1, 2}  # requests did run on both sides of swaps
    assert all(
        probabilities == expected[version] and status in {"ok", "unsure"}
        for version, probabilities, status in results
    )


def test_a_tampered_model_file_is_refused(tmp_path):
    store = Store(connect(sqlite_url(tmp_path)))
    install_shipped_model(store, tmp_path)
    assert load_active(store, tmp_path, 0.7).version == 1
    sha = store.active_model().sha256
    path = cache_path(tmp_path, sha)
    tampered = bytearray(path.read_bytes())
    tampered[-100] ^= 0xFF
    path.write_bytes(bytes(tampered))
    assert load_active(store, tmp_path, 0.7).version == 1  # the database's copy, never the tampered file
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha  # which it replaced
    store.keep_model_file(sha, bytes(tampered))  # the database's copy tampered with too
    path.write_bytes(bytes(tampered))
    with pytest.raises(ModelIntegrityError, match=r"the database's copy has sha256 .* refusing to load it"):
        load_active(store, tmp_path, 0.7)


def fill_corrections(data_dir, mnist, n=40, url: str | None = None) -> Store:
    store = Store(connect(url or sqlite_url(data_dir)))
    install_shipped_model(store, data_dir)
    for i in range(n):  # MNIST test digits the "model" got wrong, with their right labels
        wrong = str((int(mnist.y_test[i]) + 1) % 10)
        pid = store.record_prediction(
            user_id=500 + i % 4,
            chat_id=1,
            digits=wrong,
            confidence=0.6,
            status="ok",
            inputs=mnist.x_test[i : i + 1] / 255.0,
        )
        store.record_feedback(pid, 500 + i % 4, str(mnist.y_test[i]))
    return store


def retrain_cli(data_dir, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DIGITBOT_")}
    environ.update(FAST, DIGITBOT_DATA_DIR=str(data_dir), **env)
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "retrain"], env=environ, capture_output=True, text=True, timeout=600
    )


def test_retrain_promotes_a_candidate_that_passes_the_gate(tmp_path, mnist):
    store = fill_corrections(tmp_path, mnist)
    unmatched = store.record_prediction(  # a 2-digit answer from before photos were kept, corrected to 1
        user_id=600, chat_id=1, digits="11", confidence=0.5, status="ok", inputs=mnist.x_test[50:52] / 255
    )
    store.record_feedback(unmatched, 600, "7")
    reading, kept = read_and_keep(Recognizer.load(), touching(mnist, [3105, 4719]))  # 2 and 1, read 2
    touching_pair = store.record_prediction(
        user_id=700,
        chat_id=1,
        digits=reading.digits,
        confidence=0.9,
        status="ok",
        inputs=reading.inputs,
        image=kept,
    )
    store.record_feedback(touching_pair, 700, "21")
    result = retrain_cli(tmp_path, DIGITBOT_MAX_MNIST_DROP="0.01")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "version 2 promoted" in result.stdout and "MNIST test" in result.stdout
    assert (
        "learning from 41 corrections and 0 confirmations (42 digits, 1 mark holding several) from 5 users"
        in result.stdout
    )
    unusable = "not usable: 1 (no segmentation into the label's digits, or only into pieces of others)"
    assert unusable in result.stdout
    assert store.last_run().metrics["merged_marks"] == 1
    assert "too little held-out feedback to judge" in result.stdout
    assert [(m.version, m.status) for m in store.model_versions()] == [(1, "retired"), (2, "active")]
    assert store.count_new_feedback() == 0 and store.last_run().status == "promoted"
    assert load_active(store, tmp_path, 0.7).version == 2  # written atomically, sha256 matches


def test_a_rejected_candidate_leaves_the_active_model(tmp_path, mnist):
    store = fill_corrections(tmp_path, mnist)
    result = retrain_cli(tmp_path, DIGITBOT_MAX_MNIST_DROP="-1")  # must beat the active model by 100 pp
    assert result.returncode == 3, result.stderr[-2000:]
    assert "version 2 rejected - MNIST test accuracy dropped" in result.stdout
    assert [(m.version, m.status) for m in store.model_versions()] == [(1, "active"), (2, "rejected")]
    assert store.last_run().metrics["promote"] is False


def test_killing_the_fine_tune_leaves_everything_consistent(tmp_path, mnist):
    store = fill_corrections(tmp_path, mnist)
    new_before = store.count_new_feedback()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DIGITBOT_")}
    environ.update(
        FAST,
        DIGITBOT_DATA_DIR=str(tmp_path),
        DIGITBOT_RETRAIN_EPOCHS="50",
        DIGITBOT_RETRAIN_MNIST_SAMPLES="20000",
        DIGITBOT_RUN_LEASE="2",
    )
    child = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "retrain"], env=environ, stderr=subprocess.PIPE, text=True
    )
    for line in child.stderr:  # wait until it is training
        if "fine-tuning on" in line:
            break
    time.sleep(2)
    assert store.fail_stale_runs() == 0  # seconds past its 2 s lease: the process renews it
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert store.last_run().status == "running"  # nobody could close it...
    failed, deadline = 0, time.monotonic() + 10
    while not failed and time.monotonic() < deadline:  # ...until its lease expired
        failed = store.fail_stale_runs()
        time.sleep(0.2)
    assert failed == 1 and store.last_run().status == "failed"
    assert [(m.version, m.status) for m in store.model_versions()] == [(1, "active")]
    assert load_active(store, tmp_path, 0.7).version == 1
    assert store.count_new_feedback() == new_before  # its corrections wait for the next run
    assert retrain_cli(tmp_path, DIGITBOT_MAX_MNIST_DROP="0.01").returncode == 0
    assert store.count_new_feedback() == 0


@pytest.fixture
def fake():
    server = FakeTelegram(TOKEN)
    yield server
    server.close()


def photo_version(fake, store, user, photo) -> int:
    mark = fake.mark()
    fake.send_photo(user, photo)
    fake.wait_for("sendMessage", after=mark, chat_id=user)
    return store.latest_prediction(user).model_version


def test_admin_retrain_swaps_the_model_and_rollback_swaps_back(fake, tmp_path, mnist):
    store = fill_corrections(tmp_path, mnist)
    bot = BotProcess(fake, tmp_path, TOKEN, admins="1", extra_env={**FAST, "DIGITBOT_MAX_MNIST_DROP": "0.01"})
    try:
        photo = synthetic_photo(mnist, "3", "clean", seed=3)
        assert photo_version(fake, store, 60, photo) == 1
        mark = fake.mark()
        fake.send_text(1, "/retrain")
        fake.wait_for("sendMessage", after=mark, chat_id=1, text="Fine-tuning: starting...")
        fake.send_text(1, "/retrain")
        fake.wait_for("sendMessage", after=mark, chat_id=1, text="A fine-tuning run is already in progress.")
        done = fake.wait_for(
            "editMessageText",
            after=mark,
            chat_id=1,
            timeout=300,
            text=lambda t: "promoted" in t or "rejected" in t or "failed" in t,
        )
        assert "version 2 promoted" in done["text"] and "MNIST test" in done["text"]
        assert photo_version(fake, store, 60, photo) == 2  # answered by the new model, no restart
        mark = fake.mark()
        fake.send_text(1, "/rollback")
        assert "version 1" in fake.wait_for("sendMessage", after=mark, chat_id=1)["text"]
        assert photo_version(fake, store, 60, photo) == 1
        assert store.active_model().version == 1
    finally:
        assert bot.stop() == 0


def test_schedule_fires_and_skips_until_enough_corrections(fake, tmp_path, mnist):
    store = Store(connect(sqlite_url(tmp_path)))
    env = {
        **FAST,
        "DIGITBOT_RETRAIN_EVERY": "2",
        "DIGITBOT_RETRAIN_MIN_CORRECTIONS": "3",
        "DIGITBOT_MAX_MNIST_DROP": "0.01",
    }
    bot = BotProcess(fake, tmp_path, TOKEN, extra_env=env)
    try:
        deadline = time.monotonic() + 30
        while "skipped: 0 new corrections, 3 needed" not in bot.log() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "skipped: 0 new corrections, 3 needed" in bot.log()
        assert store.last_run() is None
        for i in range(3):
            mark = fake.mark()
            fake.send_photo(70, synthetic_photo(mnist, str(i), "clean", seed=i))
            fake.wait_for("sendMessage", after=mark, chat_id=70)
            fake.send_text(70, f"/correct {(i + 5) % 10}")
            fake.wait_for("sendMessage", after=mark, chat_id=70, text=lambda t: t.startswith("Thanks!"))
        deadline = time.monotonic() + 300
        while (
            store.last_run() is None or store.last_run().status == "running"
        ) and time.monotonic() < deadline:
            time.sleep(1)
        run = store.last_run()
        assert run.trigger == "schedule" and run.status in {"promoted", "rejected"}
        assert 20 <= run.metrics["page_digits"] <= 30  # MNIST digits written on the 3 corrected pages
        assert store.count_new_feedback() == 0
    finally:
        assert bot.stop() == 0


def test_shutdown_during_a_fine_tune_stops_it_and_exits_quickly(fake, tmp_path, mnist):
    store = fill_corrections(tmp_path, mnist)
    new_before = store.count_new_feedback()
    slow = {**FAST, "DIGITBOT_RETRAIN_EPOCHS": "50", "DIGITBOT_RETRAIN_MNIST_SAMPLES": "20000"}
    bot = BotProcess(fake, tmp_path, TOKEN, admins="1", extra_env=slow)
    fake.send_text(1, "/retrain")
    deadline = time.monotonic() + 120
    while "fine-tuning on" not in bot.log() and time.monotonic() < deadline:  # the child is training
        time.sleep(0.5)
    child = store.last_run().pid
    assert "fine-tuning on" in bot.log() and child != bot.process.pid
    started = time.monotonic()
    assert bot.stop() == 0
    assert time.monotonic() - started < 10
    run = store.last_run()
    assert run.status == "failed" and run.error == "the bot was shut down during the run"
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert [(m.version, m.status) for m in store.model_versions()] == [(1, "active")]
    assert store.count_new_feedback() == new_before
