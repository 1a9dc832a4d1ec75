"""End to end: the real `digitbot run` process against a fake Bot API server on 127.0.0.1, played by users."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from bot.handlers import RateLimiter
from bot.model_store import install_shipped_model
from storage.db import connect, sqlite_url
from storage.repository import Store
from tests.fake_telegram import ROOT, BotProcess, FakeTelegram
from tests.photos import encode, synthetic_photo

TOKEN = "123456789:TEST-fake-token-not-real"
ADMIN = 1
RATE_LIMIT = 6


@pytest.fixture(scope="module")
def fake():
    server = FakeTelegram(TOKEN)
    yield server
    server.close()


@pytest.fixture
def own_fake():
    """For tests that start their own bot: updates on the module's server could go to the module's bot."""
    server = FakeTelegram(TOKEN)
    yield server
    server.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bot-data")


@pytest.fixture(scope="module")
def bot(fake, data_dir, mnist):
    process = BotProcess(fake, data_dir, TOKEN, admins=f"{ADMIN},2", rate_limit=RATE_LIMIT)
    yield process
    assert process.stop() == 0
    log = process.log()
    assert TOKEN not in log and TOKEN.split(":")[1] not in log  # not even with -v (debug logging)
    assert "prediction" in log


@pytest.fixture
def store(data_dir):
    engine = connect(sqlite_url(data_dir))
    yield Store(engine)
    engine.dispose()


def photo_reply(fake: FakeTelegram, user: int, data: bytes) -> dict:
    mark = fake.mark()
    fake.send_photo(user, data)
    return fake.wait_for("sendMessage", after=mark, chat_id=user)


def text_reply(fake: FakeTelegram, user: int, text: str, reply_to: dict | None = None) -> dict:
    mark = fake.mark()
    fake.send_text(user, text, reply_to=reply_to)
    return fake.wait_for("sendMessage", after=mark, chat_id=user)


def test_start_help_and_command_menus(fake, bot):
    assert "photo of a handwritten digit" in text_reply(fake, 10, "/start")["text"]
    assert "/correct 7" in text_reply(fake, 10, "/help")["text"]
    menus = {
        p["scope"]["type"] + str(p["scope"].get("chat_id", "")): [c["command"] for c in p["commands"]]
        for name, p in fake.calls
        if name == "setMyCommands"
    }
    assert "retrain" not in menus["default"] and "stats" in menus["default"]
    assert {"retrain", "models", "rollback", "ban", "unban", "export", "stats"} <= set(menus[f"chat{ADMIN}"])


def test_photo_is_answered_with_the_digit_the_confidence_and_buttons(fake, bot, mnist):
    mark = fake.mark()
    photo = fake.send_photo(11, synthetic_photo(mnist, "7", "clean", seed=7))
    reply = fake.wait_for("sendMessage", after=mark, chat_id=11)
    assert reply["text"].startswith("7 - ") and "% sure" in reply["text"].splitlines()[0]
    assert reply["reply_parameters"]["message_id"] == photo["message_id"]
    buttons = [b["callback_data"] for row in reply["reply_markup"]["inline_keyboard"] for b in row]
    prediction = buttons[0].split(":")[1]
    assert buttons == [f"fb:{prediction}:ok", f"fix:{prediction}"] + [
        f"fb:{prediction}:{d}" for d in range(10)
    ] + [f"saw:{prediction}"]
    # The answer is the photo's only request to the chat: each counts against Telegram's flood limit, and
    # a "typing..." for an answer that takes a fraction of a second would halve the photos answered.
    assert [name for name, _ in fake.calls_to(11, after=mark)] == ["sendMessage"]
    largest = photo["photo"][-1]["file_id"]
    fake.wait_for("getFile", after=mark, file_id=largest)  # the largest size, not the thumbnail


def test_number_and_image_sent_as_a_file(fake, bot, mnist):
    assert photo_reply(fake, 12, synthetic_photo(mnist, "2024", "lined", seed=3))["text"].startswith(
        "2024 - "
    )
    mark = fake.mark()
    png = encode(Image.open(__import__("io").BytesIO(synthetic_photo(mnist, "5", "clean", seed=5))), "PNG")
    fake.send_document(12, png, "image/png", "five.png")
    assert fake.wait_for("sendMessage", after=mark, chat_id=12)["text"].startswith("5 - ")


def test_buttons_record_feedback_and_the_latest_wins(fake, bot, mnist, store):
    reply = photo_reply(fake, 13, synthetic_photo(mnist, "4", "clean", seed=4))
    answer = reply["_message"]
    prediction_id = int(reply["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1])
    mark = fake.mark()
    fake.press(13, answer, f"fb:{prediction_id}:9")
    edit = fake.wait_for("editMessageText", after=mark, chat_id=13)
    assert "Corrected to 9" in edit["text"] and edit["text"].startswith("4 - ")
    fake.wait_for("answerCallbackQuery", after=mark)
    mark = fake.mark()
    fake.press(13, answer, f"fb:{prediction_id}:ok")
    assert "Confirmed" in fake.wait_for("editMessageText", after=mark, chat_id=13)["text"]
    stats = store.stats(13)
    assert (stats.feedback, stats.confirmed) == (1, 1)


def test_correct_as_a_reply_and_for_the_latest_photo(fake, bot, mnist, store):
    first = photo_reply(fake, 14, synthetic_photo(mnist, "3", "clean", seed=3))
    photo_reply(fake, 14, synthetic_photo(mnist, "6", "clean", seed=6))
    ack = text_reply(fake, 14, "/correct 8", reply_to=first["_message"])
    assert "Recorded 8" in ack["text"]
    mark = fake.mark()
    fake.send_text(14, "/correct 0")  # no reply: the latest photo
    fake.wait_for("editMessageText", after=mark, chat_id=14, text=lambda t: "Corrected to 0" in t)
    mine = [p for p in store.labelled_photos().photos if p.user_id == 14]
    assert sorted(p.label for p in mine) == ["0", "8"]
    assert all(p.image is not None and p.image[:2] == b"\xff\xd8" for p in mine)  # the photo was kept
    assert "Usage" in text_reply(fake, 14, "/correct seven")["text"]
    assert "Send me a photo first" in text_reply(fake, 15, "/correct 1")["text"]


def test_a_correction_with_another_number_of_digits_is_explained(fake, bot, mnist, store):
    reply = photo_reply(fake, 24, synthetic_photo(mnist, "2024", "clean", seed=3))
    assert reply["text"].startswith("2024 - ")
    ack = text_reply(fake, 24, "/correct 123")["text"]
    assert "Recorded 123" in ack and "I saw 4 digits there, not 3" in ack
    assert "look for 3 digits in the photo again" in ack  # what happens with it
    assert "Thanks! Recorded 20" in text_reply(fake, 24, "/correct 2025")["text"]


def test_only_ascii_digits_are_labels(fake, bot, mnist, store):
    reply = photo_reply(fake, 23, synthetic_photo(mnist, "3", "clean", seed=3))
    prediction_id = reply["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1]
    fake.press(23, reply["_message"], f"fb:{prediction_id}:٣")  # an Arabic-Indic 3 matches regex \d
    assert "Usage" in text_reply(fake, 23, "/correct ²")["text"]  # str.isdigit() says yes to it
    assert store.stats(23).feedback == 0  # neither was stored
    store.labelled_photos()  # and training can read every stored label


def test_stats_text_and_chart(fake, bot, mnist):
    reply = photo_reply(fake, 16, synthetic_photo(mnist, "1", "clean", seed=1))
    mark = fake.mark()
    fake.press(16, reply["_message"], reply["reply_markup"]["inline_keyboard"][0][0]["callback_data"])
    fake.wait_for("editMessageText", after=mark, chat_id=16)
    mark = fake.mark()
    fake.send_text(16, "/stats")
    text = fake.wait_for("sendMessage", after=mark, chat_id=16)["text"]
    assert text.startswith("You: 1 photos, 1 answers rated, accuracy 100.0%")
    assert "Model: version 1, MNIST test accuracy 99." in text
    chart = fake.wait_for("sendPhoto", after=mark, chat_id=16)
    assert chart["photo"][:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_chart_is_drawn_in_threads_without_pyplot():
    code = """
import sys
from concurrent.futures import ThreadPoolExecutor
from bot.charts import stats_chart
from storage.repository import Stats
stats = Stats(
    predictions=4, feedback=4, confirmed=3, corrected=1, live_accuracy=0.75, per_digit={"1": 1.0, "7": 0.5},
    by_day=[("2026-11-24", 2, 0.5), ("2026-11-25", 2, 1.0)],
)
with ThreadPoolExecutor(8) as pool:
    charts = list(pool.map(lambda _: stats_chart(stats), range(16)))
assert len(set(charts)) == 1 and charts[0][:8] == b"\\x89PNG\\r\\n\\x1a\\n", "one and the same PNG"
assert "matplotlib.pyplot" not in sys.modules, "pyplot's global state is not thread-safe"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", ["/retrain", "/models", "/rollback", "/ban 17", "/unban 17", "/export"])
def test_admin_commands_refuse_everyone_else(fake, bot, store, command):
    before = [(m.version, m.status) for m in store.model_versions()]
    assert text_reply(fake, 17, command)["text"] == "Sorry, that command is for admins only."
    assert [(m.version, m.status) for m in store.model_versions()] == before
    assert not store.is_banned(17)  # /ban 17 did not ban anyone


def test_admin_commands_work_for_admins(fake, bot, mnist, store):
    assert "v1   active" in text_reply(fake, ADMIN, "/models")["text"]
    assert "Cannot roll back" in text_reply(fake, ADMIN, "/rollback")["text"]
    assert "banned" in text_reply(fake, ADMIN, "/ban 18")["text"]
    assert store.is_banned(18)
    mark = fake.mark()
    fake.send_photo(18, synthetic_photo(mnist, "2", "clean", seed=2))
    deadline = time.monotonic() + 30
    while "photo from banned user 18 ignored" not in bot.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "photo from banned user 18 ignored" in bot.log()  # it reached the bot, and was dropped
    time.sleep(0.5)
    assert fake.calls_to(18, after=mark) == []  # a banned user's photo gets no answer


def test_forget_deletes_after_confirmation(fake, bot, mnist, store):
    photo_reply(fake, 19, synthetic_photo(mnist, "9", "clean", seed=9))
    question = text_reply(fake, 19, "/forget")
    assert store.stats(19).predictions == 1
    yes, no = [b["callback_data"] for b in question["reply_markup"]["inline_keyboard"][0]]
    mark = fake.mark()
    fake.press(19, question["_message"], no)
    assert "Nothing was deleted" in fake.wait_for("editMessageText", after=mark, chat_id=19)["text"]
    assert store.stats(19).predictions == 1
    mark = fake.mark()
    fake.press(19, question["_message"], yes)
    assert "deleted" in fake.wait_for("editMessageText", after=mark, chat_id=19)["text"]
    assert store.stats(19).predictions == 0


@pytest.mark.parametrize("kind", ["sticker", "video", "voice"])
def test_media_that_is_not_a_photo_gets_a_clear_reply(fake, bot, kind):
    mark = fake.mark()
    fake.send_other(20, kind)
    assert "only read handwritten digits" in fake.wait_for("sendMessage", after=mark, chat_id=20)["text"]


def test_bad_files_get_clear_replies(fake, bot):
    def document(data: bytes, mime: str, name: str, declared: int | None = None) -> str:
        mark = fake.mark()
        fake.send_document(21, data, mime, name, declared)
        return fake.wait_for("sendMessage", after=mark, chat_id=21)["text"]

    assert "only read handwritten digits" in document(b"just some notes", "text/plain", "notes.txt")
    assert "couldn't read that image: not an image" in document(b"plain text", "image/jpeg", "fake.jpg")
    truncated = encode(Image.new("RGB", (400, 300), "white"), "JPEG")[:300]
    assert "couldn't read that image: corrupted" in document(truncated, "image/jpeg", "cut.jpg")
    bomb = encode(Image.new("1", (9000, 9000), 1), "PNG")
    assert "too large" in document(bomb, "image/png", "bomb.png")
    mark = fake.mark()
    assert "up to 20 MB" in document(b"x" * 100, "image/jpeg", "huge.jpg", declared=30 * 2**20)
    assert not [c for c in fake.calls[mark:] if c[0] == "getFile"]  # refused before downloading
    blank = photo_reply(fake, 21, encode(Image.new("RGB", (1280, 960), (236, 233, 225)), "JPEG"))
    assert blank["text"].startswith("No digit found") and "send the image as a file" in blank["text"]


def test_flooding_user_is_rate_limited_politely(fake, bot, mnist):
    photo = synthetic_photo(mnist, "8", "clean", seed=8)
    mark = fake.mark()
    for _ in range(RATE_LIMIT + 3):
        fake.send_photo(22, photo)
    deadline = time.monotonic() + 60
    while len(fake.calls_to(22, after=mark)) < RATE_LIMIT + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    texts = [p["text"] for name, p in fake.calls_to(22, after=mark) if name == "sendMessage"]
    assert sum(t.startswith("8 - ") for t in texts) == RATE_LIMIT
    assert sum("a lot of photos" in t for t in texts) == 1  # one warning, not one per photo
    answer = next(
        p["_message"] for name, p in fake.calls_to(22, after=mark) if p.get("text", "").startswith("8 - ")
    )
    prediction_id = answer["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1]
    mark = fake.mark()
    fake.press(22, answer, f"fb:{prediction_id}:ok")  # buttons count too
    assert "Slow down" in fake.wait_for("answerCallbackQuery", after=mark)["text"]
    fake.send_text(22, "/stats")  # and commands: no answer, the warning was given
    time.sleep(2)
    assert [name for name, _ in fake.calls_to(22, after=mark)] == []
    assert [name for name, _ in fake.calls[mark:]] == ["answerCallbackQuery"]


def test_rate_limiter_warns_once_per_window_and_forgets_quiet_users():
    now = [0.0]
    limiter = RateLimiter(2, window=60, clock=lambda: now[0])
    assert [limiter.retry_after(1) for _ in range(3)] == [0, 0, 60]
    assert limiter.first_warning(1) and not limiter.first_warning(1)
    for user in range(2, 10_002):
        limiter.retry_after(user)
    assert len(limiter) == 10_001
    now[0] = 61.0
    assert limiter.retry_after(1) == 0 and limiter.first_warning(1)
    assert len(limiter) == 1  # the 10,000 quiet users are forgotten


def test_restart_on_the_same_data_dir_keeps_everything(own_fake, mnist, tmp_path):
    first = BotProcess(own_fake, tmp_path, TOKEN, admins=str(ADMIN))
    reply = photo_reply(own_fake, 30, synthetic_photo(mnist, "2", "clean", seed=2))
    mark = own_fake.mark()
    own_fake.press(
        30, reply["_message"], reply["reply_markup"]["inline_keyboard"][1][3]["callback_data"]
    )  # "3"
    own_fake.wait_for("editMessageText", after=mark, chat_id=30)
    assert first.stop() == 0
    second = BotProcess(own_fake, tmp_path, TOKEN, admins=str(ADMIN))
    try:
        text = text_reply(own_fake, 30, "/stats")["text"]
        assert text.startswith("You: 1 photos, 1 answers rated, accuracy 0.0%")
        ack = text_reply(own_fake, 30, "/correct 2")  # the stored prediction is still found
        assert "Recorded 2" in ack["text"]
    finally:
        assert second.stop() == 0


def test_a_missing_model_file_falls_back_and_tells_the_admins(own_fake, mnist, tmp_path):
    store = Store(connect(sqlite_url(tmp_path)))
    install_shipped_model(store, tmp_path)
    lost = str(tmp_path / "models" / "v2.keras")  # recorded before the database kept copies, then lost
    store.add_model_version(2, lost, "0" * 64, parent_version=1, status="active")
    mark = own_fake.mark()
    bot = BotProcess(own_fake, tmp_path, TOKEN, admins=str(ADMIN))  # it used to exit, and systemd restart it
    try:
        warning = own_fake.wait_for("sendMessage", after=mark, chat_id=ADMIN)["text"]
        assert "model version 2 cannot be loaded" in warning and "version 1 instead" in warning
        assert photo_reply(own_fake, 32, synthetic_photo(mnist, "4", "clean", seed=4))["text"].startswith(
            "4 - "
        )
    finally:
        assert bot.stop() == 0
    assert "model version 2 cannot be loaded" in bot.log()
    assert [(m.version, m.status) for m in store.model_versions()] == [(1, "active"), (2, "retired")]
    store.engine.dispose()


def test_sigterm_during_a_request_stops_cleanly(own_fake, mnist, tmp_path):
    bot = BotProcess(own_fake, tmp_path, TOKEN)
    mark = own_fake.mark()
    own_fake.send_photo(31, synthetic_photo(mnist, "5", "clean", seed=5))
    own_fake.wait_for("getFile", after=mark)
    started = time.monotonic()
    assert bot.stop(timeout=20) == 0
    assert time.monotonic() - started < 15
    assert "Traceback" not in bot.log()


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.parametrize("configured_secret", ["s3cret-value", None])
def test_webhook_mode_refuses_forged_updates(own_fake, tmp_path, configured_secret):
    import json
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/telegram"
    env = {"DIGITBOT_WEBHOOK_URL": url, "DIGITBOT_WEBHOOK_PORT": str(port)}  # listen: the default
    if configured_secret:
        env["DIGITBOT_WEBHOOK_SECRET"] = configured_secret
    mark = own_fake.mark()
    bot = BotProcess(own_fake, tmp_path, TOKEN, admins=str(ADMIN), extra_env=env)
    try:
        hook = own_fake.wait_for("setWebhook", after=mark)
        secret = hook["secret_token"]
        assert hook["url"] == url
        if configured_secret:
            assert secret == configured_secret
        else:  # none configured: a random one, never "no secret"
            assert len(secret) >= 32 and secret not in bot.log()

        def post(update_id: int, text: str, secret: str | None) -> int:
            update = {
                "update_id": update_id,
                "message": {
                    "message_id": update_id,
                    "date": int(time.time()),
                    "text": text,
                    "from": {"id": ADMIN, "is_bot": False, "first_name": "Admin"},
                    "chat": {"id": ADMIN, "type": "private"},
                    "entities": [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}],
                },
            }
            headers = {"Content-Type": "application/json"}
            if secret is not None:
                headers["X-Telegram-Bot-Api-Secret-Token"] = secret
            request = urllib.request.Request(url, json.dumps(update).encode(), method="POST", headers=headers)
            deadline = time.monotonic() + 20
            while True:
                try:
                    return urllib.request.urlopen(request, timeout=10).status
                except urllib.error.HTTPError as exc:
                    return exc.code
                except urllib.error.URLError:  # the webhook server starts just after setWebhook
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

        mark = own_fake.mark()
        assert post(900001, "/ban 41", None) == 403  # a stranger posing as the admin, no secret
        assert post(900002, "/ban 42", "wrong") == 403
        assert post(900003, "/start", secret) == 200
        assert "photo of a handwritten digit" in own_fake.wait_for("sendMessage", after=mark)["text"]
        assert len(own_fake.calls_to(ADMIN, after=mark)) == 1  # the forged updates were not processed
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only, unless told otherwise
    finally:
        assert bot.stop() == 0
    store = Store(connect(sqlite_url(tmp_path)))
    assert not store.is_banned(41) and not store.is_banned(42)
    store.engine.dispose()


def run_bot_until_it_exits(token: str, api_url: str, data_dir) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGITBOT_", "TELEGRAM_"))}
    env.update(
        TELEGRAM_BOT_TOKEN=token,
        DIGITBOT_API_URL=api_url,
        DIGITBOT_DATA_DIR=str(data_dir),
        PYTHONPATH=str(ROOT),
    )
    command = [sys.executable, "-m", "bot.cli", "-v", "run"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=data_dir)


def test_a_rejected_token_is_one_clear_line_and_never_printed(fake, tmp_path):
    secret = "REJECTEDsecretPart-0123456789"
    done = run_bot_until_it_exits(f"987654321:{secret}", fake.api_url, tmp_path)  # the fake answers 401
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        "digitbot: error: Telegram rejected the token (TELEGRAM_BOT_TOKEN); check it with @BotFather"
    )
    assert secret not in done.stdout + done.stderr


def test_an_unreachable_bot_api_is_one_clear_line_without_the_token(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        api_url = f"http://127.0.0.1:{s.getsockname()[1]}/bot"  # nothing listens there
    secret = "UNREACHABLEsecretPart-0123456789"
    done = run_bot_until_it_exits(f"987654321:{secret}", api_url, tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith(f"digitbot: error: cannot reach the Bot API at {api_url}")
    assert secret not in done.stdout + done.stderr


@pytest.mark.parametrize(("send_rate", "slowest", "fastest"), [(20.0, 1.5, 60.0), (0.0, 0.0, 0.5)])
async def test_requests_to_chats_keep_to_the_send_rate(tmp_path, send_rate, slowest, fastest):
    """60 messages at DIGITBOT_SEND_RATE=20 take 2 s (20 at once, then 20 a second; the default 30 would
    take 1 s); with 0 they go at once."""
    from bot.app import build_application
    from bot.settings import Settings

    settings = Settings(
        _env_file=None,
        TELEGRAM_BOT_TOKEN="123456789:RATE-fake-token-not-real",
        data_dir=tmp_path,
        send_rate=send_rate,
    )
    limiter = build_application(settings).bot.rate_limiter

    async def send() -> bool:
        return True

    start = time.monotonic()
    for _ in range(60):
        await limiter.process_request(send, (), {}, "sendMessage", {"chat_id": 5}, None)
    assert slowest <= time.monotonic() - start <= fastest
