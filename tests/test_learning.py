"""The learning loop: gate rules, hot swap, tampered files, fine-tuning runs (promoted, rejected, killed),
and the bot's /retrain, /rollback and schedule end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from bot.learning import held_out
from bot.model_store import LiveModel, ModelIntegrityError, install_shipped_model, load_active
from recognizer import Recognizer
from recognizer.finetune import judge
from storage.db import connect, sqlite_url
from storage.repository import Store
from tests.conftest import MNIST_DIR
from tests.fake_telegram import BotProcess, FakeTelegram
from tests.photos import synthetic_photo

FAST = {
    "DIGITBOT_RETRAIN_MNIST_SAMPLES": "1000",
    "DIGITBOT_RETRAIN_EPOCHS": "1",
    "DIGITBOT_MNIST_DIR": str(MNIST_DIR),
}
TOKEN = "123456789:LEARN-fake-token-not-real"


def test_gate_rules():
    assert judge(0.9960, 0.9940, 0.80, 0.90, max_mnist_drop=0.002) == (
        True,
        "no worse on MNIST test and on held-out feedback",
    )
    promote, reason = judge(0.9960, 0.9930, 0.80, 0.95, max_mnist_drop=0.002)
    assert not promote and "MNIST test accuracy dropped 0.30%" in reason
    promote, reason = judge(0.9960, 0.9970, 0.90, 0.85, max_mnist_drop=0.002)
    assert not promote and "held-out feedback dropped" in reason
    assert judge(0.9960, 0.9960, None, None, max_mnist_drop=0.002)[0]


def test_holdout_is_stable_and_about_the_share_asked():
    ids = range(1, 5001)
    share = sum(held_out(i, 20) for i in ids) / 5000
    assert 0.17 < share < 0.23
    assert [held_out(i, 20) for i in ids] == [held_out(i, 20) for i in ids]
    assert not any(held_out(i, 0) for i in ids)


def test_hot_swap_under_concurrent_requests_drops_nothing(tiny_model, mnist):
    models = {1: Recognizer.load(), 2: Recognizer.load(tiny_model)}
    live = LiveModel(models[1], 1)
    photo = synthetic_photo(mnist, "7", "clean", seed=7)
    results, errors = [], []

    def user() -> None:
        try:
            for _ in range(15):
                recognizer, version = live.current()
                results.append((version, recognizer is models[version], recognizer.read(photo).status))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=user) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(40):
        live.swap(models[2 - i % 2], 2 - i % 2)
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 60
    assert all(matches and status in {"ok", "unsure"} for _, matches, status in results)


def test_a_tampered_model_file_is_refused(tmp_path):
    store = Store(connect(sqlite_url(tmp_path)))
    install_shipped_model(store, tmp_path)
    assert load_active(store, 0.7).version == 1
    path = tmp_path / "models" / "v1.keras"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="refusing to load it"):
        load_active(store, 0.7)


def fill_corrections(data_dir, mnist, n=40) -> Store:
    store = Store(connect(sqlite_url(data_dir)))
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
    result = retrain_cli(tmp_path, DIGITBOT_MAX_MNIST_DROP="0.01")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "version 2 promoted" in result.stdout and "MNIST test" in result.stdout
    assert [(m.version, m.status) for m in store.model_versions()] == [(1, "retired"), (2, "active")]
    assert store.count_new_feedback() == 0 and store.last_run().status == "promoted"
    assert load_active(store, 0.7).version == 2  # written atomically, sha256 matches


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
    )
    child = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "retrain"], env=environ, stderr=subprocess.PIPE, text=True
    )
    for line in child.stderr:  # wait until it is training
        if "fine-tuning on" in line:
            break
    time.sleep(2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert store.last_run().status == "running"  # nobody could close it...
    assert store.fail_stale_runs() == 1  # ...until the next start sees its process is gone
    assert store.last_run().status == "failed"
    assert [(m.version, m.status) for m in store.model_versions()] == [(1, "active")]
    assert load_active(store, 0.7).version == 1
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
        assert store.count_new_feedback() == 0
    finally:
        assert bot.stop() == 0
