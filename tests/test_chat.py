"""End to end, the way people use Telegram: groups (privacy mode), edits, channels, albums, other members'
buttons. The real `digitbot run` process against the fake Bot API server."""

from __future__ import annotations

import csv
import io
import sys
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from storage.db import connect, sqlite_url
from storage.repository import Store
from tests.fake_telegram import BOT_USER, BotProcess, FakeTelegram
from tests.photos import synthetic_photo

TOKEN = "123456789:TEST-fake-token-chat"
ADMIN = 1
MENTION = f"@{BOT_USER['username']}"


@pytest.fixture(scope="module")
def fake():
    server = FakeTelegram(TOKEN)
    yield server
    server.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("chat-data")


@pytest.fixture(scope="module")
def bot(fake, data_dir, mnist):
    process = BotProcess(fake, data_dir, TOKEN, admins=str(ADMIN), rate_limit=30)
    yield process
    assert process.stop() == 0
    assert "Traceback" not in process.log()


@pytest.fixture
def store(data_dir):
    engine = connect(sqlite_url(data_dir))
    yield Store(engine)
    engine.dispose()


@pytest.fixture
def admin_bot(fake):
    """The bot as a group admin: Telegram delivers every group message, so the bot itself must choose."""
    fake.privacy = False
    yield
    fake.privacy = True


def answers(fake: FakeTelegram, chat_id: int, after: int) -> list[dict]:
    return [p for name, p in fake.calls_to(chat_id, after=after) if name == "sendMessage"]


def prediction_id(answer: dict) -> int:
    return int(answer["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1])


def test_group_photo_is_read_only_when_the_bot_is_addressed(fake, bot, mnist, admin_bot):
    group = fake.group(-1001)
    photo = synthetic_photo(mnist, "7", "clean", seed=7)
    mark = fake.mark()
    fake.send_photo(50, photo, chat=group)  # chatter: no mention
    fake.send_other(50, "sticker", chat=group)
    fake.send_text(50, "nice weather today", chat=group)
    mentioned = fake.send_photo(50, photo, caption=f"{MENTION} what is this?", chat=group)
    # The same user's photos are answered in order: had the first been read, its answer came first.
    answer = fake.wait_for("sendMessage", after=mark, chat_id=group["id"])
    assert answer["reply_parameters"]["message_id"] == mentioned["message_id"]
    assert answer["text"].startswith("7 - ")
    assert len(answers(fake, group["id"], mark)) == 1


def test_group_photo_replying_to_the_bot_or_asked_with_read(fake, bot, mnist):
    group = fake.group(-1002)
    mark = fake.mark()
    fake.send_photo(51, synthetic_photo(mnist, "3", "clean", seed=3), caption=MENTION, chat=group)
    answer = fake.wait_for("sendMessage", after=mark, chat_id=group["id"])["_message"]
    mark = fake.mark()
    reply = fake.send_photo(51, synthetic_photo(mnist, "5", "clean", seed=5), chat=group, reply_to=answer)
    second = fake.wait_for("sendMessage", after=mark, chat_id=group["id"])
    assert second["text"].startswith("5 - ")
    assert second["reply_parameters"]["message_id"] == reply["message_id"]
    mark = fake.mark()
    silent = fake.send_photo(52, synthetic_photo(mnist, "4", "clean", seed=4), chat=group)  # not delivered
    fake.send_text(53, "/read", reply_to=silent, chat=group)
    read = fake.wait_for("sendMessage", after=mark, chat_id=group["id"])
    assert read["text"].startswith("4 - ") and read["reply_parameters"]["message_id"] == silent["message_id"]


def test_group_commands_with_and_without_the_bots_name(fake, bot, admin_bot):
    group = fake.group(-1003)
    mark = fake.mark()
    fake.send_text(54, "/stats@some_other_bot", chat=group)
    fake.send_text(54, "/weather@some_other_bot", chat=group)
    fake.send_text(54, "/weather", chat=group)  # for whichever bot knows it
    fake.send_text(54, f"/stats@{BOT_USER['username']}", chat=group)
    assert fake.wait_for("sendMessage", after=mark, chat_id=group["id"])["text"].startswith("You: 0 photos")
    mark = fake.mark()
    fake.send_text(54, f"/weather@{BOT_USER['username']}", chat=group)
    assert "don't know that command" in fake.wait_for("sendMessage", after=mark, chat_id=group["id"])["text"]
    mark = fake.mark()
    fake.send_text(54, f"{MENTION} hello!", chat=group)
    assert "/help" in fake.wait_for("sendMessage", after=mark, chat_id=group["id"])["text"]
    time.sleep(1)
    assert len(answers(fake, group["id"], mark)) == 1


def test_group_chatter_does_not_count_against_the_rate_limit(fake, bot, admin_bot):
    group = fake.group(-1020)
    for i in range(35):  # more than the bot's 30 a minute, none of it for the bot
        fake.send_text(75, f"chatter {i}", chat=group)
    mark = fake.mark()
    fake.send_text(75, f"/start@{BOT_USER['username']}", chat=group)
    assert (
        "photo of a handwritten digit"
        in fake.wait_for("sendMessage", after=mark, chat_id=group["id"])["text"]
    )


def test_text_and_unknown_commands_in_a_private_chat_point_to_help(fake, bot):
    mark = fake.mark()
    fake.send_text(55, "hello, what can you do?")
    assert "/help" in fake.wait_for("sendMessage", after=mark, chat_id=55)["text"]
    mark = fake.mark()
    fake.send_text(55, "/weather")
    assert "don't know that command" in fake.wait_for("sendMessage", after=mark, chat_id=55)["text"]


def test_only_the_photos_sender_can_rate_it(fake, bot, mnist, store):
    group = fake.group(-1004)
    mark = fake.mark()
    fake.send_photo(56, synthetic_photo(mnist, "2", "clean", seed=2), caption=MENTION, chat=group)
    answer = fake.wait_for("sendMessage", after=mark, chat_id=group["id"])
    mark = fake.mark()
    fake.press(57, answer["_message"], f"fb:{prediction_id(answer)}:8")  # another member
    refusal = fake.wait_for("answerCallbackQuery", after=mark)
    assert "Only the person who sent the photo" in refusal["text"]
    assert store.stats(56).feedback == 0 and store.stats(57).feedback == 0
    assert not [c for c in fake.calls[mark:] if c[0] == "editMessageText"]
    mark = fake.mark()
    fake.press(56, answer["_message"], f"fb:{prediction_id(answer)}:8")
    fake.wait_for("editMessageText", after=mark, chat_id=group["id"], text=lambda t: "Corrected to 8" in t)
    assert store.stats(56).feedback == 1


def test_only_the_asker_can_confirm_forget(fake, bot, mnist, store):
    group = fake.group(-1005)
    mark = fake.mark()
    fake.send_photo(58, synthetic_photo(mnist, "6", "clean", seed=6), caption=MENTION, chat=group)
    fake.wait_for("sendMessage", after=mark, chat_id=group["id"])
    mark = fake.mark()
    fake.send_text(58, f"/forget@{BOT_USER['username']}", chat=group)
    question = fake.wait_for("sendMessage", after=mark, chat_id=group["id"])
    yes = question["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    mark = fake.mark()
    fake.press(59, question["_message"], yes)
    assert "Only the person who asked" in fake.wait_for("answerCallbackQuery", after=mark)["text"]
    assert store.stats(58).predictions == 1
    mark = fake.mark()
    fake.press(58, question["_message"], yes)
    fake.wait_for("editMessageText", after=mark, chat_id=group["id"])
    assert store.stats(58).predictions == 0


def test_pressing_the_same_button_twice_is_harmless(fake, bot, mnist, store):
    mark = fake.mark()
    fake.send_photo(60, synthetic_photo(mnist, "1", "clean", seed=1))
    answer = fake.wait_for("sendMessage", after=mark, chat_id=60)
    for _ in range(2):
        mark = fake.mark()
        fake.press(60, answer["_message"], f"fb:{prediction_id(answer)}:ok")
        assert fake.wait_for("answerCallbackQuery", after=mark)["text"] == "Thanks!"
    time.sleep(1)
    # The second edit changed nothing (Telegram: 400 "message is not modified"): no error for the user.
    assert all("went wrong" not in p.get("text", "") for p in answers(fake, 60, mark))
    assert store.stats(60).confirmed == 1


def test_an_edited_caption_is_not_a_new_photo(fake, bot, mnist, store):
    mark = fake.mark()
    photo = fake.send_photo(61, synthetic_photo(mnist, "8", "clean", seed=8), caption="my eight")
    fake.wait_for("sendMessage", after=mark, chat_id=61)
    mark = fake.mark()
    fake.edit(photo, caption="my eight, edited")
    later = fake.send_photo(61, synthetic_photo(mnist, "9", "clean", seed=9))
    # Answers come in order: an answer to the edit would come before the new photo's.
    assert (
        fake.wait_for("sendMessage", after=mark, chat_id=61)["reply_parameters"]["message_id"]
        == later["message_id"]
    )
    assert store.stats(61).predictions == 2


def test_channel_posts_are_ignored_without_errors(fake, bot, mnist):
    mark = fake.mark()
    fake.channel_post(-1009, data=synthetic_photo(mnist, "2", "clean", seed=2))
    fake.channel_post(-1009, text="/start")
    time.sleep(3)
    assert fake.calls_to(-1009, after=mark) == []
    assert "error handling" not in bot.log()


def test_an_album_gets_one_answer_per_photo_in_order(fake, bot, mnist, admin_bot):
    """In a group the mention is in the first photo's caption only; with privacy mode on Telegram would
    not even deliver the others, so this group has the bot as an admin."""
    photos = [synthetic_photo(mnist, digit, "clean", seed=int(digit)) for digit in "372"]
    for chat, caption in ((None, None), (fake.group(-1010), MENTION)):
        mark = fake.mark()
        album = fake.send_album(62, photos, caption=caption, chat=chat)
        chat_id = chat["id"] if chat else 62
        deadline = time.monotonic() + 60
        while len(answers(fake, chat_id, mark)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        replies = answers(fake, chat_id, mark)
        assert [r["reply_parameters"]["message_id"] for r in replies] == [m["message_id"] for m in album]
        assert [r["text"][0] for r in replies] == ["3", "7", "2"]


def buttons(answer: dict) -> list[str]:
    return [b["text"] for row in answer["reply_markup"]["inline_keyboard"] for b in row]


def test_correct_button_asks_for_the_number_and_stores_the_reply(fake, bot, mnist, store):
    mark = fake.mark()
    fake.send_photo(63, synthetic_photo(mnist, "2024", "clean", seed=3))
    answer = fake.wait_for("sendMessage", after=mark, chat_id=63)
    # The text names only buttons that are there: no digit buttons under a number.
    assert buttons(answer) == ["✅ Right", "✏️ Correct", "🔍 What I saw"]
    assert "✏️ Correct" in answer["text"] and "digit" not in answer["text"].split("\n", 1)[1]
    mark = fake.mark()
    fake.press(63, answer["_message"], f"fix:{prediction_id(answer)}")
    question = fake.wait_for("sendMessage", after=mark, chat_id=63)
    assert question["reply_markup"]["force_reply"] is True
    mark = fake.mark()
    fake.send_text(63, "20x4", reply_to=question["_message"])
    retry = fake.wait_for("sendMessage", after=mark, chat_id=63)
    assert "digits only" in retry["text"] and retry["reply_markup"]["force_reply"] is True
    mark = fake.mark()
    fake.send_text(63, "2021", reply_to=question["_message"])
    assert "Recorded 2021" in fake.wait_for("sendMessage", after=mark, chat_id=63)["text"]
    fake.wait_for("editMessageText", after=mark, chat_id=63, text=lambda t: "Corrected to 2021" in t)
    assert [(p.label, p.confirmed) for p in store.labelled_photos().photos if p.user_id == 63] == [
        ("2021", False)
    ]


def test_correct_button_is_for_the_photos_sender_only(fake, bot, mnist, store):
    group = fake.group(-1011)
    mark = fake.mark()
    fake.send_photo(64, synthetic_photo(mnist, "5", "clean", seed=5), caption=MENTION, chat=group)
    answer = fake.wait_for("sendMessage", after=mark, chat_id=group["id"])
    mark = fake.mark()
    fake.press(65, answer["_message"], f"fix:{prediction_id(answer)}")
    assert "Only the person who sent the photo" in fake.wait_for("answerCallbackQuery", after=mark)["text"]
    mark = fake.mark()
    fake.press(64, answer["_message"], f"fix:{prediction_id(answer)}")
    question = fake.wait_for("sendMessage", after=mark, chat_id=group["id"])
    assert question["reply_markup"]["selective"] is True
    mark = fake.mark()
    fake.send_text(65, "3", reply_to=question["_message"], chat=group)  # someone else answers the question
    assert "Only the person who sent the photo" in fake.wait_for("sendMessage", after=mark)["text"]
    assert store.stats(64).feedback == 0 and store.stats(65).feedback == 0


def what_i_saw(fake: FakeTelegram, user: int, photo: bytes) -> tuple[int, int]:
    mark = fake.mark()
    fake.send_photo(user, photo)
    answer = fake.wait_for("sendMessage", after=mark, chat_id=user)
    assert buttons(answer)[-1] == "🔍 What I saw"
    mark = fake.mark()
    fake.press(user, answer["_message"], f"saw:{prediction_id(answer)}")
    png = fake.wait_for("sendPhoto", after=mark, chat_id=user)["photo"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(png)).size


def test_what_i_saw_grows_with_the_number_of_digits(fake, bot, mnist):
    one = what_i_saw(fake, 66, synthetic_photo(mnist, "7", "clean", seed=7))
    four = what_i_saw(fake, 66, synthetic_photo(mnist, "2024", "clean", seed=3))
    assert four[0] > one[0] and four[1] == one[1]


def test_privacy_says_what_is_stored_and_start_links_to_it(fake, bot):
    mark = fake.mark()
    fake.send_text(67, "/start")
    assert "/privacy" in fake.wait_for("sendMessage", after=mark, chat_id=67)["text"]
    mark = fake.mark()
    fake.send_text(67, "/privacy")
    text = fake.wait_for("sendMessage", after=mark, chat_id=67)["text"]
    assert "28x28" in text and "not the original photo" in text  # DIGITBOT_KEEP_PHOTOS is off here
    assert "small gray copy" in text and "within a day unless you rate" in text
    assert "until you delete them with /forget" in text  # no retention set
    assert "admins" in text and "cannot undo what a model already learned" in text


def rate(fake: FakeTelegram, user: int, photo: bytes, choice: str) -> None:
    mark = fake.mark()
    fake.send_photo(user, photo)
    answer = fake.wait_for("sendMessage", after=mark, chat_id=user)
    mark = fake.mark()
    fake.press(user, answer["_message"], f"fb:{prediction_id(answer)}:{choice}")
    fake.wait_for("editMessageText", after=mark, chat_id=user)


def test_admin_unban(fake, bot, mnist, store):
    mark = fake.mark()
    fake.send_text(ADMIN, "/ban 68")
    fake.wait_for("sendMessage", after=mark, chat_id=ADMIN, text=lambda t: "banned" in t)
    assert store.is_banned(68)
    mark = fake.mark()
    fake.send_text(68, "/unban 68")  # not for users
    assert "admins only" in fake.wait_for("sendMessage", after=mark, chat_id=68)["text"]
    assert store.is_banned(68)
    mark = fake.mark()
    fake.send_text(ADMIN, "/unban 68")
    assert "no longer banned" in fake.wait_for("sendMessage", after=mark, chat_id=ADMIN)["text"]
    assert not store.is_banned(68)
    mark = fake.mark()
    fake.send_photo(68, synthetic_photo(mnist, "6", "clean", seed=6))
    assert fake.wait_for("sendMessage", after=mark, chat_id=68)["text"].startswith("6 - ")


def test_export_zip_matches_the_stored_corrections(fake, bot, mnist, store):
    rate(fake, 69, synthetic_photo(mnist, "4", "clean", seed=4), "9")
    rate(fake, 70, synthetic_photo(mnist, "1", "clean", seed=1), "ok")
    mark = fake.mark()
    fake.send_text(ADMIN, "/export")
    document = fake.wait_for("sendDocument", after=mark, chat_id=ADMIN)
    archive = zipfile.ZipFile(io.BytesIO(document["document"]))
    rows = list(csv.DictReader(io.StringIO(archive.read("labels.csv").decode())))
    expected = [
        (f"images/{p.feedback_id}_{i}.png", label, str(int(p.confirmed)), p.created_at, p.model_version, p)
        for p in store.labelled_photos(sys.maxsize, with_images=False).photos
        if len(p.label) == len(p.inputs)
        for i, label in enumerate(p.label)
    ]
    assert len(rows) == len(expected) >= 2
    codes = {}
    for row, (name, label, confirmed, created, version, photo) in zip(rows, expected, strict=True):
        assert (row["file"], row["label"], row["confirmed"]) == (name, label, confirmed)
        assert row["time"] == created.isoformat(timespec="seconds") and row["model_version"] == str(version)
        assert codes.setdefault(photo.user_id, row["user"]) == row["user"]  # one code per user
        assert str(photo.user_id) not in row["user"] and len(row["user"]) == 16
        image = np.asarray(Image.open(io.BytesIO(archive.read(name))))
        assert np.array_equal(image, photo.inputs[int(name.rsplit("_", 1)[1][:-4])])
    assert len(set(codes.values())) == len(codes)
    mine = [r for r, e in zip(rows, expected, strict=True) if e[5].user_id == 69]
    assert [r["label"] for r in mine] == ["9"] and mine[0]["confirmed"] == "0"


def test_admin_stats_add_versions_and_the_confusion_matrix(fake, bot, mnist, store):
    rate(fake, 71, synthetic_photo(mnist, "3", "clean", seed=3), "5")  # read 3, truly 5
    mark = fake.mark()
    fake.send_text(71, "/stats")
    fake.wait_for("sendPhoto", after=mark, chat_id=71)
    assert not any("<pre>" in p["text"] for p in answers(fake, 71, mark))  # not for users
    mark = fake.mark()
    fake.send_text(ADMIN, "/stats")
    extra = fake.wait_for("sendMessage", after=mark, chat_id=ADMIN, text=lambda t: "<pre>" in t)
    assert extra["parse_mode"] == "HTML" and "v1: " in extra["text"]
    table = extra["text"].split("<pre>")[1].split("</pre>")[0].splitlines()[1:]
    matrix = [[0 if n == "." else int(n) for n in line.split()[1:]] for line in table]
    assert np.array_equal(matrix, store.stats().confusion) and matrix[5][3] >= 1


def test_a_russian_user_gets_russian_and_a_spanish_user_spanish(fake, bot, mnist):
    fake.languages.update({72: "ru", 73: "es-419", 74: "de"})
    mark = fake.mark()
    fake.send_text(72, "/start")
    assert fake.wait_for("sendMessage", after=mark, chat_id=72)["text"].startswith("Пришлите мне фото")
    mark = fake.mark()
    fake.send_photo(72, synthetic_photo(mnist, "7", "clean", seed=7))
    answer = fake.wait_for("sendMessage", after=mark, chat_id=72)
    assert answer["text"].startswith("7 - уверен на ") and "Верно?" in answer["text"]
    assert buttons(answer)[:2] == ["✅ Верно", "✏️ Исправить"] and buttons(answer)[-1] == "🔍 Что я увидел"
    mark = fake.mark()
    fake.press(72, answer["_message"], f"fix:{prediction_id(answer)}")
    question = fake.wait_for("sendMessage", after=mark, chat_id=72)
    mark = fake.mark()
    fake.send_text(72, "1", reply_to=question["_message"])  # the Russian question is understood too
    assert (
        fake.wait_for("sendMessage", after=mark, chat_id=72)["text"] == "Спасибо! Записал 1 для этого фото."
    )
    mark = fake.mark()
    fake.send_text(73, "/privacy")
    assert fake.wait_for("sendMessage", after=mark, chat_id=73)["text"].startswith("Qué guardo sobre ti")
    mark = fake.mark()
    fake.send_text(74, "/privacy")  # no German catalog: English
    assert fake.wait_for("sendMessage", after=mark, chat_id=74)["text"].startswith("What I store about you")


def test_command_menus_in_every_language(fake, bot):
    menus = {
        (p["scope"]["type"], p.get("language_code")): {c["command"]: c["description"] for c in p["commands"]}
        for name, p in fake.calls
        if name == "setMyCommands"
    }
    assert menus[("default", None)]["privacy"] == "What the bot stores about you"
    assert menus[("default", "ru")]["privacy"] == "Что бот хранит о вас"
    assert menus[("default", "es")]["privacy"] == "Qué guarda el bot sobre ti"
    assert menus[("chat", "ru")]["export"] == "Скачать исправления как датасет (zip)"
    assert "export" not in menus[("default", "ru")]
