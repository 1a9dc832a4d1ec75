"""Telegram handlers: where a photo enters (on_photo), how feedback comes back, /stats and admin commands."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import html
import logging
import math
import re
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field

from telegram import (
    Bot,
    Document,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    MessageEntity,
    PhotoSize,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatAction, ChatType, ParseMode
from telegram.error import BadRequest
from telegram.ext import ApplicationHandlerStop, ContextTypes

from bot import metrics
from bot.export import corrections_zip
from bot.i18n import N_, _
from bot.learning import Trainer
from bot.model_store import LiveModel, ModelIntegrityError, rollback
from bot.reading import PhotoReader
from bot.settings import Settings
from recognizer import ImageError
from recognizer.classify import Reading, Recognizer
from recognizer.images import MAX_BYTES, decode_image
from recognizer.report import what_i_saw
from storage.models import Prediction
from storage.repository import Stats, Store

log = logging.getLogger(__name__)

PHOTO_TIPS = N_(
    "Tips: write the digit large and dark on plain paper, fill the frame with it, avoid shadows, and "
    "hold the phone straight. Telegram compresses photos: send the image as a file for full quality."
)
HELP = N_(
    "Send me a photo of a handwritten digit (or a number) and I'll tell you what it says.\n\n"
    "If I'm wrong, tap the right digit under my answer, or ✏️ Correct to type the right number "
    "(or reply to my answer with /correct 7 or /correct 2024). Your corrections teach me: I keep a small "
    "copy of each photo you rate (up to 640 px, gray) to learn from; photos nobody rates are dropped "
    "within a day.\n"
    "🔍 What I saw shows the digits I found and how I read each one.\n\n"
    "In a group, mention me in the photo's caption or reply /read to a photo.\n\n"
    "/stats - how well I'm doing\n/privacy - what I store about you\n"
    "/forget - delete everything I stored about you\n/help - this message"
)
USER_COMMANDS = [
    ("start", N_("What this bot does")),
    ("help", N_("How to send a good photo")),
    ("stats", N_("How well the bot reads digits")),
    ("correct", N_("Correct my last answer: /correct 7")),
    ("read", N_("Read the photo you reply to (in groups)")),
    ("privacy", N_("What the bot stores about you")),
    ("forget", N_("Delete your data")),
]
ADMIN_COMMANDS = [
    ("retrain", N_("Fine-tune on the corrections now")),
    ("models", N_("Model versions")),
    ("rollback", N_("Re-activate the previous model")),
    ("ban", N_("Ban a user: /ban <user id>")),
    ("unban", N_("Lift a ban: /unban <user id>")),
    ("export", N_("Download the corrections as a dataset (zip)")),
]


class RateLimiter:
    """At most `limit` updates per user in any `window` seconds. Users quiet for a window are forgotten,
    so memory follows the users active now, not everyone ever seen."""

    def __init__(self, limit: int, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._events: dict[int, deque[float]] = {}
        self._warned: dict[int, float] = {}  # user -> when they were told to slow down
        self._swept = clock()

    def __len__(self) -> int:
        """How many users it remembers."""
        return len(self._events) + len(self._warned.keys() - self._events.keys())

    def retry_after(self, user_id: int) -> float:
        """0 if the user may go ahead now (and counts it), else the seconds to wait."""
        now = self.clock()
        self._forget_quiet_users(now)
        events = self._events.setdefault(user_id, deque())
        while events and now - events[0] > self.window:
            events.popleft()
        if len(events) >= self.limit:
            return self.window - (now - events[0])
        events.append(now)
        return 0.0

    def first_warning(self, user_id: int) -> bool:
        """True the first time in a window: one "slow down" per window, not one per message."""
        now = self.clock()
        if now - self._warned.get(user_id, -math.inf) < self.window:
            return False
        self._warned[user_id] = now
        return True

    def _forget_quiet_users(self, now: float) -> None:
        if now - self._swept < self.window:
            return
        self._swept = now
        self._events = {u: e for u, e in self._events.items() if e and now - e[-1] <= self.window}
        self._warned = {u: t for u, t in self._warned.items() if now - t < self.window}


class InOrder:
    """Work with the same key runs one at a time, in arrival order (asyncio.Lock wakes waiters first come,
    first served): a user's album is answered photo by photo. A key is forgotten when nobody holds it."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, list[None]]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, key: Hashable) -> AsyncIterator[None]:
        lock, holders = self._locks.setdefault(key, (asyncio.Lock(), []))
        holders.append(None)
        try:
            async with lock:
                yield
        finally:
            holders.pop()
            if not holders:
                del self._locks[key]


@dataclass
class Services:
    settings: Settings
    store: Store
    model: LiveModel
    reader: PhotoReader
    rate: RateLimiter = field(init=False)
    in_order: InOrder = field(init=False, default_factory=InOrder)
    trainer: Trainer

    def __post_init__(self) -> None:
        self.rate = RateLimiter(self.settings.rate_limit)


def services(context: ContextTypes.DEFAULT_TYPE) -> Services:
    return context.application.bot_data["services"]


async def db(call, *args, **kwargs):
    """Database calls run in a worker thread: a slow query never stalls other users."""
    return await asyncio.to_thread(call, *args, **kwargs)


async def unless_unchanged(edit: Awaitable) -> None:
    """Telegram refuses an edit that changes nothing (the same button pressed twice): nothing to do then."""
    try:
        await edit
    except BadRequest as exc:
        if "message is not modified" not in exc.message.lower():
            raise


# --- who is talking to the bot -----------------------------------------------------------------------------
def is_private(message: Message) -> bool:
    return message.chat.type == ChatType.PRIVATE


def addressed(message: Message, bot: Bot) -> bool:
    """In a private chat every message is for the bot; in a group only one that mentions it or replies
    to it (what Telegram's privacy mode delivers, and all a bot that is a group admin should answer)."""
    if is_private(message):
        return True
    mention = f"@{bot.username}".lower()
    entities = message.parse_entities([MessageEntity.MENTION]) | message.parse_caption_entities(
        [MessageEntity.MENTION]
    )
    replied = message.reply_to_message
    return any(text.lower() == mention for text in entities.values()) or (
        replied is not None and replied.from_user is not None and replied.from_user.id == bot.id
    )


def photo_for_me(message: Message, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """Whether to read this photo. In a group an album's caption (and so the mention) is on its first
    photo only: the chat remembers the album it was addressed in, and the album's other photos follow."""
    if addressed(message, context.bot):
        if message.media_group_id:
            context.chat_data["album"] = message.media_group_id
        return True
    return message.media_group_id is not None and context.chat_data.get("album") == message.media_group_id


# --- answers -----------------------------------------------------------------------------------------------
def headline(digits: str, confidence: float, status: str) -> str:
    """The answer's first line: the digits first, then how sure. Also rebuilt from a stored prediction, and
    printed by `digitbot predict`."""
    if status == "no_digit":
        return _("No digit found in this photo.")
    if status == "ok":
        return _("{digits} - {confidence} sure").format(digits=digits, confidence=f"{confidence:.0%}")
    return _("{digits}? - unsure ({confidence})").format(digits=digits, confidence=f"{confidence:.0%}")


def answer_text(reading: Reading) -> str:
    """The answer under the photo; its hint names only the buttons feedback_keyboard shows."""
    first = headline(reading.digits, reading.confidence, reading.status)
    if reading.status == "no_digit":
        return f"{first}\n\n{_(PHOTO_TIPS)}"
    single = len(reading.digits) == 1
    if reading.status == "ok":
        hint = (
            _("Right? Tap ✅, or the right digit.")
            if single
            else _("Right? Tap ✅, or ✏️ Correct to type it.")
        )
        return f"{first}\n{hint}"
    guesses = "\n".join(
        _("digit {n}: ").format(n=i + 1) * (len(reading.items) > 1)
        + ", ".join(f"{d} ({p:.0%})" for d, p in item.top(3))
        for i, item in enumerate(reading.items)
    )
    hint = _("Tap the right digit, or ✅ if I got it.") if single else _("Tap ✏️ Correct and type the number.")
    return "\n".join([first, _("Top guesses:") + " " + guesses, "", hint, _(PHOTO_TIPS)])


def feedback_keyboard(prediction_id: int, digits: str) -> InlineKeyboardMarkup:
    """✅ and ✏️ (type the right number), the ten digits when one digit was read, and 🔍 What I saw."""
    saw = [InlineKeyboardButton(_("🔍 What I saw"), callback_data=f"saw:{prediction_id}")]
    if not digits:
        return InlineKeyboardMarkup([saw])
    first_row = [
        InlineKeyboardButton(_("✅ Right"), callback_data=f"fb:{prediction_id}:ok"),
        InlineKeyboardButton(_("✏️ Correct"), callback_data=f"fix:{prediction_id}"),
    ]
    if len(digits) != 1:
        return InlineKeyboardMarkup([first_row, saw])
    numbers = [InlineKeyboardButton(str(d), callback_data=f"fb:{prediction_id}:{d}") for d in range(10)]
    return InlineKeyboardMarkup([first_row, numbers[:5], numbers[5:], saw])


def with_feedback(text: str, label: str, confirmed: bool) -> str:
    base = text.split("\n\n✔")[0]
    done = _("Confirmed") if confirmed else _("Corrected to {digits}").format(digits=label)
    return f"{base}\n\n✔ {done} - " + _("thank you!")


# --- every update passes here first -----------------------------------------------------------------------
def asks_me(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """Whether the update asks something of the bot: a button press, or a new message in a private chat,
    a command, or one addressed to the bot in a group (an addressed album's photos too). Group chatter
    is not counted, nor are its senders recorded."""
    if update.callback_query:
        return True
    message = update.message  # edited messages and channel posts ask nothing
    if message is None or message.from_user is None:
        return False
    if is_image(message):  # here first: an addressed album is remembered before its next photo arrives
        return photo_for_me(message, context)
    return addressed(message, context.bot) or (message.text or "").startswith("/")


async def gate(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """No one gets more than `rate_limit` requests a minute handled: photos, commands (a /stats chart
    costs more than a photo) and button presses alike, with one "slow down" per minute."""
    if not asks_me(update, context):
        return
    user = update.effective_user
    svc = services(context)
    wait = svc.rate.retry_after(user.id)
    if not wait:
        return
    metrics.RATE_LIMITED.inc()
    if update.callback_query:  # it must be answered anyway, or the button keeps spinning
        await update.callback_query.answer(f"Slow down, please: try again in {wait:.0f} s.")
    elif svc.rate.first_warning(user.id):
        await update.effective_message.reply_text(
            _(
                "That's a lot of photos! You can send {limit} a minute; please try again in {seconds} s."
            ).format(limit=svc.settings.rate_limit, seconds=f"{wait:.0f}")
        )
    raise ApplicationHandlerStop


# --- photos in, digits out ---------------------------------------------------------------------------------
async def on_photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A photo, or an image sent as a file: read it and answer with the digits and a feedback keyboard.
    In a group only when the bot is addressed."""
    if photo_for_me(update.effective_message, context):
        await read_photo(update, context, update.effective_message)


def is_image(message: Message) -> bool:
    document = message.document
    return bool(message.photo) or (document is not None and (document.mime_type or "").startswith("image/"))


def largest(message: Message) -> PhotoSize | Document:
    """The image of a message: the largest of a photo's sizes (the first is a thumbnail), or the file."""
    return message.photo[-1] if message.photo else message.document


async def download(attachment: PhotoSize | Document) -> bytes:
    return bytes(await (await attachment.get_file()).download_as_bytearray())


async def on_read(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/read as a reply to a photo: how a group asks the bot to read a photo that did not mention it."""
    photo = update.effective_message.reply_to_message
    if photo is None or not is_image(photo):
        await update.effective_message.reply_text(
            _("Reply /read to a photo, and I'll read the digits in it.")
        )
        return
    await read_photo(update, context, photo)


async def read_photo(update: Update, context: ContextTypes.DEFAULT_TYPE, message: Message) -> None:
    """Read the photo in `message` and answer it. The photo's sender owns the answer (only they may rate
    it); the one who asked (the sender, or who replied /read) is rate-limited. A user's photos in a chat
    are answered one at a time, in the order sent: an album gets its answers in order."""
    asker = update.effective_user
    user = message.from_user or asker
    svc = services(context)
    async with svc.in_order.turn((message.chat_id, asker.id)):
        if await db(svc.store.is_banned, asker.id):
            log.debug("photo from banned user %d ignored", asker.id)
            return  # banned users' photos are not read (they may still /forget, and see /privacy)
        attachment = largest(message)
        if attachment.file_size and attachment.file_size > MAX_BYTES:
            metrics.PHOTOS.labels("too_large").inc()
            await message.reply_text(
                _(
                    "That file is {size} MB; I can read images up to {limit} MB. Please send a smaller one."
                ).format(size=f"{attachment.file_size / 2**20:.0f}", limit=MAX_BYTES // 2**20)
            )
            return
        data = await download(attachment)
        recognizer, version = svc.model.current()
        try:
            with metrics.READ_SECONDS.time():
                reading, kept = await svc.reader.read(recognizer, data)
        except ImageError as exc:
            metrics.PHOTOS.labels("unreadable").inc()
            await message.reply_text(
                _(
                    "I couldn't read that image: {reason}. Please send a photo (JPEG or PNG) of a "
                    "handwritten digit."
                ).format(reason=exc)
            )
            return
        prediction_id = await db(
            svc.store.record_prediction,
            user_id=user.id,
            chat_id=message.chat_id,
            digits=reading.digits,
            confidence=reading.confidence,
            status=reading.status,
            inputs=reading.inputs,
            model_version=version,
            photo_message_id=message.message_id,
            file_unique_id=attachment.file_unique_id,
            user_name=user.full_name,
            photo=data if svc.settings.keep_photos else None,
            image=kept,
        )
        metrics.PHOTOS.labels(reading.status).inc()
        keyboard = feedback_keyboard(prediction_id, reading.digits)
        answer = await message.reply_text(answer_text(reading), reply_markup=keyboard, do_quote=True)
    await db(svc.store.set_answer_message, prediction_id, answer.message_id)
    log.info(
        "prediction %d: %r (%s, %.2f) by model v%d",
        prediction_id,
        reading.digits,
        reading.status,
        reading.confidence,
        version,
    )


async def on_not_an_image(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Stickers, videos, voice, audio and files that are not images (private chats only: in a group they
    are chatter)."""
    await update.effective_message.reply_text(
        _(
            "I can only read handwritten digits from photos. Please send a photo (or an image file) of a "
            "digit."
        )
    )


async def on_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Text and commands I don't know: a pointer to /help, in a group only when addressed."""
    message = update.effective_message
    if (prediction_id := correction_asked(message, context.bot)) is not None:
        await on_correction_reply(update, context, prediction_id)
        return
    command = message.text.startswith("/")
    if command and not is_private(message):
        # "/foo" in a group may be for another bot; "/foo@digitbot" is for me.
        if not message.text.split()[0].lower().endswith(f"@{context.bot.username}".lower()):
            return
    elif not addressed(message, context.bot):
        return
    if command:
        await message.reply_text(_("I don't know that command. /help lists what I can do."))
    else:
        await message.reply_text(
            _("I read handwritten digits from photos: send me one. /help tells you more.")
        )


# --- feedback ----------------------------------------------------------------------------------------------
def refusal(prediction: Prediction | None, user_id: int) -> str | None:
    """Why this user may not rate or correct this prediction, or None if they may: in a group anyone can
    press the buttons, but only the photo's sender knows what they wrote."""
    if prediction is None:
        return _("That answer is gone (its data was deleted).")
    if prediction.user_id != user_id:
        return _("Only the person who sent the photo can rate or correct my answer.")
    return None


async def on_feedback_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    prediction_id, choice = query.data.split(":")[1:]
    store = services(context).store
    prediction = await db(store.get_prediction, int(prediction_id))
    if reason := refusal(prediction, query.from_user.id):
        await query.answer(reason)
        return
    feedback = await db(
        store.record_feedback, prediction.id, query.from_user.id, None if choice == "ok" else choice
    )
    metrics.count_feedback(feedback.confirmed)
    await query.answer(_("Thanks!"))
    await unless_unchanged(
        query.edit_message_text(
            with_feedback(query.message.text, feedback.digits, feedback.confirmed),
            reply_markup=query.message.reply_markup,
        )
    )


def is_number(text: str) -> bool:
    """What a correction may be: 1 to 8 ASCII digits (str.isdigit() would let "²" in)."""
    return re.fullmatch(r"[0-9]{1,8}", text) is not None


async def on_correct(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/correct 7 or /correct 2024: as a reply to my answer or the photo, or for the user's latest photo."""
    message, user = update.effective_message, update.effective_user
    svc = services(context)
    if len(context.args) != 1 or not is_number(context.args[0]):
        await message.reply_text(
            _(
                "Usage: /correct 7 (or /correct 2024), as a reply to my answer, or alone to correct your "
                "latest photo."
            )
        )
        return
    reply = message.reply_to_message
    if reply is not None:
        prediction = await db(svc.store.find_prediction, message.chat_id, reply.message_id)
    else:
        prediction = await db(svc.store.latest_prediction, user.id, message.chat_id)
    if prediction is None:
        await message.reply_text(_("I found no answer of mine to correct. Send me a photo first."))
        return
    await correct(update, context, prediction, context.args[0])


async def correct(
    update: Update, context: ContextTypes.DEFAULT_TYPE, prediction: Prediction | None, digits: str
) -> None:
    """Store the user's right answer for a prediction, and show it under my answer."""
    message, user = update.effective_message, update.effective_user
    if reason := refusal(prediction, user.id):
        await message.reply_text(reason)
        return
    feedback = await db(services(context).store.record_feedback, prediction.id, user.id, digits)
    metrics.count_feedback(feedback.confirmed)
    seen, wanted = prediction.input_count, len(feedback.digits)
    thanks = _("Thanks! Recorded {digits} for that photo.").format(digits=feedback.digits)
    if wanted == seen:
        await message.reply_text(thanks)
    else:  # what happens with it: training looks for as many digits as the answer has
        saw = f"{seen} digit{'s' * (seen != 1)}" if seen else "no digits"
        await message.reply_text(
            f"{thanks} I saw {saw} there, not {wanted}: to learn from it I will look for {wanted} digits "
            "in the photo again, and if I cannot find them, it only counts in /stats."
        )
    if prediction.answer_message_id:
        original = headline(prediction.digits, prediction.confidence, prediction.status)
        await unless_unchanged(
            context.bot.edit_message_text(
                with_feedback(original, feedback.digits, feedback.confirmed),
                chat_id=prediction.chat_id,
                message_id=prediction.answer_message_id,
                reply_markup=feedback_keyboard(prediction.id, prediction.digits),
            )
        )


# The ✏️ question names its prediction ("#12"): the user's reply carries the question (Telegram nests the
# replied-to message), so the flow needs no state and survives a restart.
CORRECTION_QUESTION = re.compile(r"^✏️ .*#([0-9]+)")


async def on_correct_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """✏️ Correct: ask the photo's sender for the right number with a ForceReply."""
    query = update.callback_query
    prediction = await db(services(context).store.get_prediction, int(query.data.split(":")[1]))
    if reason := refusal(prediction, query.from_user.id):
        await query.answer(reason)
        return
    await query.answer()
    await context.bot.send_message(
        prediction.chat_id,
        _("✏️ What does photo #{id} say? Reply to this message with the right number.").format(
            id=prediction.id
        ),
        # In a group, selective shows the reply field only to the sender of the photo this replies to.
        reply_markup=ForceReply(selective=True, input_field_placeholder="2024"),
        reply_parameters=ReplyParameters(prediction.photo_message_id, allow_sending_without_reply=True),
    )


def correction_asked(message: Message, bot: Bot) -> int | None:
    """The prediction id if this message replies to my ✏️ question, else None."""
    question = message.reply_to_message
    if question is None or question.from_user is None or question.from_user.id != bot.id:
        return None
    match = CORRECTION_QUESTION.match(question.text or "")
    return int(match[1]) if match else None


async def on_correction_reply(update: Update, context: ContextTypes.DEFAULT_TYPE, prediction_id: int) -> None:
    message = update.effective_message
    digits = message.text.strip()
    if not is_number(digits):
        await message.reply_text(
            _("Please reply with digits only, like 2024."),
            reply_markup=ForceReply(selective=True, input_field_placeholder="2024"),
        )
        return
    prediction = await db(services(context).store.get_prediction, prediction_id)
    await correct(update, context, prediction, digits)


async def on_saw_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """🔍 What I saw: the photo with a box per digit, and the 28x28 inputs with the model's top-3."""
    query = update.callback_query
    photo = query.message.reply_to_message if query.message else None
    if photo is None or not is_image(photo):
        await query.answer(_("I can't see that photo any more."))
        return
    await query.answer()
    await context.bot.send_chat_action(query.message.chat_id, ChatAction.UPLOAD_PHOTO)
    recognizer = services(context).model.current()[0]
    data = await download(largest(photo))
    try:
        png = await asyncio.get_running_loop().run_in_executor(None, explain, recognizer, data)
    except ImageError as exc:
        await query.message.reply_text(_("I couldn't read that image: {reason}.").format(reason=exc))
        return
    await query.message.reply_photo(
        png, caption=_("What I saw: each digit I found, what it looked like to me, and my top 3 guesses.")
    )


def explain(recognizer: Recognizer, data: bytes) -> bytes:
    gray = decode_image(data)
    return what_i_saw(gray, recognizer.read(gray))


# --- commands ----------------------------------------------------------------------------------------------
async def on_start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await db(services(context).store.saw_user, update.effective_user.id, update.effective_user.full_name)
    await update.effective_message.reply_text(_(HELP) + "\n\n" + _(PHOTO_TIPS))


def privacy_text(settings: Settings) -> str:
    """What is stored, for how long, who sees it, and what /forget can and cannot undo."""
    original = (
        _("the original photo too")
        if settings.keep_photos
        else _("not the original photo (it stays on Telegram)")
    )
    kept = (
        _("Images and photo copies are deleted after {days} days; the counts stay.").format(
            days=settings.retention_days
        )
        if settings.retention_days
        else _("They are kept until you delete them with /forget.")
    )
    return _(
        "What I store about you:\n"
        "- your Telegram id and name;\n"
        "- for each photo: the digits I read, how sure I was, the 28x28 images of the digits I saw (what my "
        "model looks at), and a small gray copy of the photo (up to 640 px) to learn from, deleted within a "
        "day unless you rate my answer; {original};\n"
        "- your corrections and confirmations.\n\n"
        "{kept}\n\n"
        "Who can see it: only the bot's admins. They can download the digit images and corrections as a "
        "dataset, with your id replaced by a code. Your corrections teach the model that answers "
        "everyone.\n\n"
        "/forget deletes all of it for good. It cannot undo what a model already learned: versions trained "
        "on your corrections before you asked keep what they learned (but none of your data)."
    ).format(original=original, kept=kept)


async def on_privacy(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.effective_message.reply_text(privacy_text(services(context).settings))


async def on_stats(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    from bot.charts import stats_chart

    svc = services(context)
    mine, everyone = await db(svc.store.stats, update.effective_user.id), await db(svc.store.stats)
    active, last_run = await db(svc.store.active_model), await db(svc.store.last_run)

    def accuracy(value: float | None) -> str:
        return _("n/a") if value is None else f"{value:.1%}"

    lines = [
        _("You: {photos} photos, {rated} answers rated, accuracy {accuracy}").format(
            photos=mine.predictions, rated=mine.feedback, accuracy=accuracy(mine.live_accuracy)
        ),
        _(
            "Everyone: {photos} photos, {rated} rated ({corrected} corrected), live accuracy {accuracy}"
        ).format(
            photos=everyone.predictions,
            rated=everyone.feedback,
            corrected=everyone.corrected,
            accuracy=accuracy(everyone.live_accuracy),
        ),
    ]
    if everyone.per_digit:
        lines.append(
            _("Per digit:") + " " + ", ".join(f"{d}: {a:.0%}" for d, a in everyone.per_digit.items())
        )
    if active:
        lines.append(
            _("Model: version {version}, MNIST test accuracy {accuracy}").format(
                version=active.version, accuracy=accuracy(active.mnist_accuracy)
            )
        )
    if last_run:
        lines.append(
            _("Last retraining: {status} ({time})").format(
                status=last_run.status, time=f"{last_run.started_at:%Y-%m-%d %H:%M}"
            )
        )
    await update.effective_message.reply_text("\n".join(lines))
    if is_admin(update, context) and everyone.feedback:
        await update.effective_message.reply_text(admin_stats(everyone), parse_mode=ParseMode.HTML)
    if everyone.feedback:
        await context.bot.send_chat_action(update.effective_chat.id, ChatAction.UPLOAD_PHOTO)
        png = await asyncio.to_thread(stats_chart, everyone)
        await update.effective_message.reply_photo(png, caption=_("Accuracy over time and per digit"))


def admin_stats(stats: Stats) -> str:
    """Live accuracy per model version and the confusion matrix of live feedback, as HTML (a <pre> table)."""
    versions = ", ".join(f"v{v}: {a:.1%}" for v, a in sorted(stats.by_version.items()))
    header = "    " + " ".join(f"{d:>3}" for d in range(10))
    rows = [
        f"{t:>3} " + " ".join(f"{n:>3}" if n else "  ." for n in row) for t, row in enumerate(stats.confusion)
    ]
    table = html.escape("\n".join([header, *rows]))
    return (
        html.escape(_("Live accuracy by model version: {versions}").format(versions=versions or _("n/a")))
        + "\n"
        + html.escape(_("Confusion matrix of live feedback (rows: the right digit, columns: what I read):"))
        + f"\n<pre>{table}</pre>"
    )


async def on_forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    asker = update.effective_user.id  # in a group, only the asker may answer the question
    keyboard = InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(_("Yes, delete my data"), callback_data=f"forget:yes:{asker}"),
                InlineKeyboardButton(_("Cancel"), callback_data=f"forget:no:{asker}"),
            ]
        ]
    )
    await update.effective_message.reply_text(
        _(
            "Delete all your photos' results, the copies of your photos, stored digit images and "
            "corrections? This cannot be undone."
        ),
        reply_markup=keyboard,
    )


async def on_forget_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    choice, asker = query.data.split(":")[1:]
    if int(asker) != query.from_user.id:
        await query.answer(_("Only the person who asked can answer this."))
        return
    await query.answer()
    if choice != "yes":
        await query.edit_message_text(_("Nothing was deleted."))
        return
    await db(services(context).store.forget_user, query.from_user.id)
    await query.edit_message_text(_("Done: everything I stored about you is deleted."))


# --- admin commands ----------------------------------------------------------------------------------------
def is_admin(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    return update.effective_user.id in services(context).settings.admin_ids


def admin_only(handler):
    """Anyone else gets a short refusal and nothing happens."""

    async def guarded(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not is_admin(update, context):
            log.warning("user %d tried admin command %s", update.effective_user.id, handler.__name__)
            await update.effective_message.reply_text(_("Sorry, that command is for admins only."))
            return
        await handler(update, context)

    guarded.__name__ = handler.__name__
    return guarded


@admin_only
async def on_models(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    versions = await db(services(context).store.model_versions)

    def pct(value: float | None) -> str:
        return _("n/a").center(6) if value is None else f"{value:6.2%}"

    rows = [
        f"v{m.version:<3} {m.status:<9} MNIST {pct(m.mnist_accuracy)}  feedback {pct(m.feedback_accuracy)}"
        for m in versions
    ]
    await update.effective_message.reply_text(_("Model versions:") + "\n" + "\n".join(rows))


@admin_only
async def on_rollback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    svc = services(context)
    try:
        previous = await asyncio.to_thread(
            rollback, svc.store, svc.model, svc.settings.data_dir, svc.settings.min_confidence
        )
    except (LookupError, ModelIntegrityError) as exc:
        await update.effective_message.reply_text(_("Cannot roll back: {reason}.").format(reason=exc))
        return
    await update.effective_message.reply_text(
        _("Rolled back: now answering with model version {version}.").format(version=previous.version)
    )


@admin_only
async def on_ban(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    if len(context.args) != 1 or not context.args[0].lstrip("-").isdigit():
        await update.effective_message.reply_text(_("Usage: /ban <user id>"))
        return
    await db(services(context).store.set_banned, int(context.args[0]))
    await update.effective_message.reply_text(
        _("User {user} is banned: no answers, and their corrections are left out of training.").format(
            user=context.args[0]
        )
    )


@admin_only
async def on_unban(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    if len(context.args) != 1 or not context.args[0].lstrip("-").isdigit():
        await update.effective_message.reply_text(_("Usage: /unban <user id>"))
        return
    await db(services(context).store.set_banned, int(context.args[0]), False)
    await update.effective_message.reply_text(
        _("User {user} is no longer banned.").format(user=context.args[0])
    )


@admin_only
async def on_export(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The corrections as a zip of 28x28 PNGs and a CSV; users appear as keyed hashes of their ids."""
    svc = services(context)
    await context.bot.send_chat_action(update.effective_chat.id, ChatAction.UPLOAD_DOCUMENT)
    # What training would choose (no banned users, no photo with conflicting labels), without its cap.
    photos = (await db(svc.store.labelled_photos, sys.maxsize, with_images=False)).photos
    key = hashlib.sha256(b"digitbot export:" + svc.settings.token.encode()).digest()
    archive, count = await asyncio.to_thread(corrections_zip, photos, key)
    await update.effective_message.reply_document(
        archive,
        filename=f"digitbot-corrections-{dt.date.today():%Y%m%d}.zip",
        caption=_("{images} labelled 28x28 digit images from {photos} rated photos (see labels.csv).").format(
            images=count, photos=len(photos)
        ),
    )


@admin_only
async def on_retrain(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await services(context).trainer.request(update, context)


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log with the update's context, and tell the user something went wrong."""
    where = ""
    if isinstance(update, Update):
        user = update.effective_user.id if update.effective_user else None
        where = f"update {update.update_id} from user {user}"
    log.error("error handling %s", where or "a job", exc_info=context.error)
    if isinstance(update, Update) and update.effective_message and update.effective_user:
        try:
            await update.effective_message.reply_text(
                _("Sorry, something went wrong on my side. Please try again.")
            )
        except Exception:  # noqa: BLE001 - the original error is what matters and is logged above
            log.warning("could not tell the user about the error")
