"""Wiring: settings -> database -> model -> python-telegram-bot Application, and `digitbot run`."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets

from telegram import BotCommand, BotCommandScopeChat, BotCommandScopeDefault, Update
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

from bot import handlers, i18n, metrics
from bot.handlers import Services
from bot.learning import Trainer, schedule
from bot.model_store import install_shipped_model, recover_active
from bot.reading import PhotoReader
from bot.settings import Settings
from recognizer.devices import describe_devices
from storage.db import connect
from storage.repository import Store

log = logging.getLogger(__name__)
# Updates handled at once: more buys no throughput (the cores are busy reading photos).
CONCURRENT_UPDATES = 32
# Keep-alive connections to Telegram, shared by those updates. httpx scans its whole pool whenever a request
# starts or ends (a syscall per idle connection): 32 connections cost about 8 ms of CPU a photo (bench.load).
# 16 carry Telegram's flood limit, 30 answers a second of 3 requests each, at up to 180 ms a request; a
# request that finds them all busy waits up to POOL_TIMEOUT for one, instead of failing after PTB's 1 s
# (well within the 30 s a stop is given).
CONNECTIONS = 16
POOL_TIMEOUT = 10.0


class StartError(Exception):
    """The bot could not start or stopped on an error; the message is one line, free of secrets."""


class Redact(logging.Filter):
    """python-telegram-bot and httpx log request URLs, which contain the token, and at debug level the
    webhook secret: replace them in every message and traceback."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "<secret>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self(record.exc_text)
        return True


def redact_in_logs(secrets: list[str]) -> Redact:
    redact = Redact(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise, even redacted
    return redact


def add_handlers(application: Application) -> None:
    application.add_handler(TypeHandler(Update, i18n.use_language), group=-2)  # before any other handler
    # Then the rate limit (one handler per group runs, so it needs a group of its own).
    application.add_handler(TypeHandler(Update, handlers.gate), group=-1)
    # New messages only: an edited caption or command is not a second request, and channel posts (no
    # user to answer) match no handler at all.
    new = filters.UpdateType.MESSAGE
    private = filters.ChatType.PRIVATE
    image_document = filters.Document.IMAGE

    def command(names: str | list[str], callback) -> CommandHandler:
        return CommandHandler(names, callback, filters=new)

    application.add_handler(command(["start", "help"], handlers.on_start))
    application.add_handler(MessageHandler(new & (filters.PHOTO | image_document), handlers.on_photo))
    application.add_handler(command("read", handlers.on_read))
    application.add_handler(command("correct", handlers.on_correct))
    application.add_handler(command("stats", handlers.on_stats))
    application.add_handler(command("forget", handlers.on_forget))
    application.add_handler(command("retrain", handlers.on_retrain))
    application.add_handler(command("models", handlers.on_models))
    application.add_handler(command("rollback", handlers.on_rollback))
    application.add_handler(command("ban", handlers.on_ban))
    application.add_handler(command("unban", handlers.on_unban))
    application.add_handler(command("export", handlers.on_export))
    application.add_handler(command("privacy", handlers.on_privacy))
    application.add_handler(
        CallbackQueryHandler(handlers.on_feedback_button, pattern=r"^fb:[0-9]+:(ok|[0-9])$")
    )
    application.add_handler(CallbackQueryHandler(handlers.on_correct_button, pattern=r"^fix:[0-9]+$"))
    application.add_handler(CallbackQueryHandler(handlers.on_saw_button, pattern=r"^saw:[0-9]+$"))
    application.add_handler(
        CallbackQueryHandler(handlers.on_forget_button, pattern=r"^forget:(yes|no):[0-9]+$")
    )
    not_images = (
        filters.Sticker.ALL
        | filters.VIDEO
        | filters.VOICE
        | filters.AUDIO
        | filters.ANIMATION
        | filters.VIDEO_NOTE
        | (filters.Document.ALL & ~image_document)
    )
    application.add_handler(MessageHandler(new & private & not_images, handlers.on_not_an_image))
    application.add_handler(MessageHandler(new & filters.TEXT, handlers.on_text))
    application.add_error_handler(handlers.on_error)


async def set_command_menus(application: Application) -> None:
    """Everyone sees the user commands; admins, in their own chats, the admin commands too. Each in every
    language of the catalogs (Telegram shows the one matching the user's app, the default otherwise)."""
    admin_ids = application.bot_data["services"].settings.admin_ids
    for language in i18n.LANGUAGES:
        translate = i18n.translations(language).gettext
        code = None if language == "en" else language
        user_commands = [BotCommand(name, translate(text)) for name, text in handlers.USER_COMMANDS]
        admin_commands = [BotCommand(name, translate(text)) for name, text in handlers.ADMIN_COMMANDS]
        await application.bot.set_my_commands(
            user_commands, scope=BotCommandScopeDefault(), language_code=code
        )
        for admin_id in admin_ids:
            try:
                await application.bot.set_my_commands(
                    user_commands + admin_commands, scope=BotCommandScopeChat(admin_id), language_code=code
                )
            except TelegramError as exc:  # the admin has not started a chat with the bot yet
                log.warning("could not set the admin menu for %d: %s", admin_id, exc)


async def tell_admins(application: Application, text: str) -> None:
    for admin_id in application.bot_data["services"].settings.admin_ids:
        try:
            await application.bot.send_message(admin_id, text)
        except TelegramError as exc:  # the admin has not started a chat with the bot yet
            log.warning("could not tell admin %d: %s", admin_id, exc)


def build_application(settings: Settings) -> Application:
    """Everything the bot needs, loaded once: database (migrated), model, handlers."""
    token = settings.token
    store = Store(connect(settings.resolved_database_url()))
    install_shipped_model(store, settings.data_dir)
    live, model_problem = recover_active(store, settings.data_dir, settings.min_confidence)
    log.info("the model runs on %s", describe_devices())
    servers = []  # the metrics server, when DIGITBOT_METRICS_PORT asks for one

    reader = PhotoReader()

    async def post_init(application: Application) -> None:
        await reader.start()
        if settings.metrics_port:
            port, listen = settings.metrics_port, settings.metrics_listen
            servers.append(metrics.serve(listen, port, store.engine, lambda: live.version))
        await set_command_menus(application)
        if model_problem:
            await tell_admins(application, f"⚠️ {model_problem}")
        me = application.bot.bot
        log.info("bot @%s started, model version %d", me.username, live.version)

    async def post_stop(application: Application) -> None:
        await trainer.stop()  # a run in progress: its process is stopped and the run marked failed

    async def post_shutdown(application: Application) -> None:
        for server in servers:
            server.shutdown()
        store.engine.dispose()
        reader.close()

    application = (
        Application.builder()
        .token(token)
        .base_url(settings.api_url)
        .base_file_url(settings.file_url)
        .concurrent_updates(CONCURRENT_UPDATES)
        .connection_pool_size(CONNECTIONS)
        .pool_timeout(POOL_TIMEOUT)
        .rate_limiter(AIORateLimiter(overall_max_rate=settings.send_rate, max_retries=2))
        .post_init(post_init)
        .post_stop(post_stop)
        .post_shutdown(post_shutdown)
        .build()
    )
    trainer = Trainer(settings, store, live)
    application.bot_data["services"] = Services(
        settings=settings, store=store, model=live, reader=reader, trainer=trainer
    )
    add_handlers(application)
    schedule(application, trainer, settings)
    if settings.retention_days:
        application.job_queue.run_daily(purge_old_samples, time=dt.time(4, 0), name="retention")
    application.job_queue.run_repeating(drop_unrated_photos, interval=3600, first=60, name="unrated-photos")
    return application


async def purge_old_samples(context: ContextTypes.DEFAULT_TYPE) -> None:
    svc = handlers.services(context)
    purged = await asyncio.to_thread(svc.store.purge_samples, svc.settings.retention_days)
    log.info("retention: dropped the stored images of %d old predictions", purged)


async def drop_unrated_photos(context: ContextTypes.DEFAULT_TYPE) -> None:
    dropped = await asyncio.to_thread(handlers.services(context).store.drop_unrated_photos)
    if dropped:
        log.info("dropped the kept copies of %d photos nobody rated within a day", dropped)


def run(settings: Settings) -> None:
    """Long polling by default; a webhook when DIGITBOT_WEBHOOK_URL is set. SIGINT/SIGTERM stop it cleanly.
    Any error while starting, running or stopping becomes a StartError without the token: PTB's own
    messages quote it ("The token `...` was rejected"), and systemd would repeat them every restart."""
    # The token's secret part (after the colon) also hides the token where a URL encodes the colon.
    token_secret = settings.token.partition(":")[2]
    # Without a webhook secret anyone who reaches the port could post updates as any user, admins included:
    # Telegram sends the secret we register with setWebhook in a header, and PTB refuses posts without it.
    webhook_secret = (
        settings.webhook_secret.get_secret_value() if settings.webhook_secret else secrets.token_urlsafe(32)
    )
    redact = redact_in_logs([token_secret, webhook_secret])
    try:
        application = build_application(settings)
        if settings.webhook_url:
            application.run_webhook(
                listen=settings.webhook_listen,
                port=settings.webhook_port,
                url_path="telegram",
                webhook_url=settings.webhook_url,
                secret_token=webhook_secret,
                allowed_updates=Update.ALL_TYPES,
            )
        else:
            application.run_polling(allowed_updates=Update.ALL_TYPES, poll_interval=0.0, timeout=10)
    except InvalidToken:
        raise StartError(
            "Telegram rejected the token (TELEGRAM_BOT_TOKEN); check it with @BotFather"
        ) from None
    except NetworkError as exc:
        raise StartError(f"cannot reach the Bot API at {settings.api_url}: {redact(str(exc))}") from None
    except Exception as exc:
        log.critical("the bot stopped on an unexpected error", exc_info=exc)  # redacted by the log filter
        raise StartError(f"the bot stopped: {redact(str(exc)) or exc.__class__.__name__}") from None
