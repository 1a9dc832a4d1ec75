"""A fake Telegram Bot API server on 127.0.0.1 that also plays the users talking to the bot.

It implements the methods the bot uses (getMe, getUpdates with long polling, sendMessage, sendPhoto,
sendDocument, editMessageText, editMessageReplyMarkup, answerCallbackQuery, getFile and file download,
setMyCommands, sendChatAction, setWebhook, deleteWebhook) and records every call so tests can wait for the
bot's answers. While a webhook is set, it POSTs the updates to it instead, as Telegram does (in order, with
the secret token, again until one is accepted), and refuses getUpdates.

It is as strict as Telegram where the bot could get it wrong: an edit that changes nothing is a 400 "message
is not modified", a callback query can be answered once and only if it exists, and in groups a bot in
privacy mode (Telegram's default) only gets commands, messages that mention it and replies to it. Users can
also edit their messages, send albums (media groups), and channels can post."""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
BOT_USER = {"id": 4242, "is_bot": True, "first_name": "digitbot", "username": "digitbot_test_bot"}
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)
BAD_QUERY = "Bad Request: query is too old and response timeout expired or query ID is invalid"
WEBHOOK_IS_SET = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook "
    "first"
)
JSON_FIELDS = {
    "reply_markup",
    "commands",
    "scope",
    "allowed_updates",
    "reply_parameters",
    "entities",
    "link_preview_options",
}


class FakeTelegram:
    def __init__(self, token: str) -> None:
        self.token = token
        self.calls: list[tuple[str, dict]] = []
        self.files: dict[str, bytes] = {}
        self.messages: dict[tuple[int, int], dict] = {}  # every message, the users' and the bot's
        self.chats: dict[int, dict] = {}
        self.languages: dict[int, str] = {}  # user id -> Telegram language_code
        self.privacy = True  # the bot's group privacy mode (Telegram's default); off = the bot is an admin
        self._open_queries: set[str] = set()
        self._updates: list[dict] = []
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self.webhook: tuple[str, str | None] | None = None  # (url, secret token) once the bot sets one
        self._closed = False
        self.server = _Server(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._deliver, daemon=True).start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/bot"

    @property
    def file_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/file/bot"

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def _deliver(self) -> None:
        """Webhook mode: the oldest update is POSTed until the webhook accepts it, then the next."""
        while True:
            with self._cond:
                while not self._closed and (self.webhook is None or not self._updates):
                    self._cond.wait()
                if self._closed:
                    return
                (url, secret), update = self.webhook, self._updates[0]
            headers = {"Content-Type": "application/json"}
            if secret:
                headers["X-Telegram-Bot-Api-Secret-Token"] = secret
            request = urllib.request.Request(url, json.dumps(update).encode(), headers, method="POST")
            try:
                urllib.request.urlopen(request, timeout=10).close()
            except OSError:  # refused, or not a 2xx answer: Telegram tries again a little later
                time.sleep(0.2)
                continue
            with self._cond:
                self._updates.remove(update)

    # --- the users' side -------------------------------------------------------------------------------
    def _user(self, user_id: int) -> dict:
        user = {"id": user_id, "is_bot": False, "first_name": f"User{user_id}"}
        if user_id in self.languages:
            user["language_code"] = self.languages[user_id]
        return user

    def group(self, chat_id: int, kind: str = "supergroup") -> dict:
        """A group chat (a negative id) the tests can pass as `chat=`."""
        chat = {"id": chat_id, "type": kind, "title": f"Group {chat_id}"}
        self.chats[chat_id] = chat
        return chat

    def _push(self, kind: str, payload: dict) -> dict:
        with self._cond:
            self._updates.append({"update_id": next(self._ids), kind: payload})
            self._cond.notify_all()
        return payload

    def _reaches_bot(self, message: dict) -> bool:
        """Privacy mode: in groups only commands, mentions of the bot and replies to the bot reach it."""
        if message["chat"]["type"] == "private" or not self.privacy:
            return True
        text = message.get("text") or message.get("caption") or ""
        replied = message.get("reply_to_message", {}).get("from", {})
        return (
            text.startswith("/") or f"@{BOT_USER['username']}" in text or replied.get("id") == BOT_USER["id"]
        )

    def _message(self, user_id: int, chat: dict | None = None, **fields: Any) -> dict:
        chat = chat or {"id": user_id, "type": "private", "first_name": f"User{user_id}"}
        message = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "from": self._user(user_id),
            "chat": chat,
            **fields,
        }
        if "reply_to_message" in message:  # nested one level deep only, as on Telegram
            message["reply_to_message"] = _shallow(message["reply_to_message"])
        for text_field, entities_field in (("text", "entities"), ("caption", "caption_entities")):
            if entities := _entities(message.get(text_field, "")):
                message[entities_field] = entities
        with self._cond:
            self.messages[(chat["id"], message["message_id"])] = message
        if self._reaches_bot(message):
            self._push("message", message)
        return message

    def _file(self, data: bytes, declared_size: int | None = None) -> dict:
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = data
        return {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": declared_size or len(data)}

    def _photo_sizes(self, data: bytes, thumbnail: bytes = b"") -> list[dict]:
        """A thumbnail size first, as Telegram sends them: the bot must use the largest."""
        return [
            {**self._file(thumbnail or b"thumb"), "width": 90, "height": 67},
            {**self._file(data), "width": 1280, "height": 960},
        ]

    def send_photo(
        self,
        user_id: int,
        data: bytes,
        thumbnail: bytes = b"",
        caption: str | None = None,
        chat: dict | None = None,
        reply_to: dict | None = None,
    ) -> dict:
        fields: dict[str, Any] = {"photo": self._photo_sizes(data, thumbnail)}
        if caption is not None:
            fields["caption"] = caption
        if reply_to is not None:
            fields["reply_to_message"] = reply_to
        return self._message(user_id, chat, **fields)

    def send_album(
        self, user_id: int, photos: list[bytes], caption: str | None = None, chat: dict | None = None
    ) -> list[dict]:
        """A media group: one message per photo, sharing a media_group_id; the caption is on the first."""
        group_id = f"album-{next(self._ids)}"
        messages = []
        for index, data in enumerate(photos):
            fields: dict[str, Any] = {"photo": self._photo_sizes(data), "media_group_id": group_id}
            if index == 0 and caption is not None:
                fields["caption"] = caption
            messages.append(self._message(user_id, chat, **fields))
        return messages

    def send_document(
        self, user_id: int, data: bytes, mime_type: str, file_name: str, declared_size: int | None = None
    ) -> dict:
        document = {**self._file(data, declared_size), "mime_type": mime_type, "file_name": file_name}
        return self._message(user_id, document=document)

    def send_text(
        self, user_id: int, text: str, reply_to: dict | None = None, chat: dict | None = None
    ) -> dict:
        fields: dict[str, Any] = {"text": text}
        if reply_to is not None:
            fields["reply_to_message"] = reply_to
        return self._message(user_id, chat, **fields)

    def send_other(self, user_id: int, kind: str, chat: dict | None = None) -> dict:
        media = self._file(b"\x00" * 64)
        extra = {
            "sticker": {
                "width": 512,
                "height": 512,
                "is_animated": False,
                "is_video": False,
                "type": "regular",
            },
            "video": {"width": 640, "height": 480, "duration": 3},
            "voice": {"duration": 2},
        }[kind]
        return self._message(user_id, chat, **{kind: {**media, **extra}})

    def edit(self, message: dict, **changes: Any) -> dict:
        """The user edits their message (a new caption or text): Telegram sends an edited_message."""
        edited = {**message, **changes, "edit_date": int(time.time())}
        for text_field, entities_field in (("text", "entities"), ("caption", "caption_entities")):
            edited.pop(entities_field, None)
            if entities := _entities(edited.get(text_field, "")):
                edited[entities_field] = entities
        with self._cond:
            self.messages[(edited["chat"]["id"], edited["message_id"])] = edited
        if self._reaches_bot(edited):
            self._push("edited_message", edited)
        return edited

    def channel_post(self, chat_id: int, data: bytes | None = None, text: str | None = None) -> dict:
        """A post in a channel where the bot is a member: no `from`, only the channel as sender_chat."""
        chat = {"id": chat_id, "type": "channel", "title": f"Channel {chat_id}"}
        post: dict[str, Any] = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": chat,
            "sender_chat": chat,
        }
        if data is not None:
            post["photo"] = self._photo_sizes(data)
        if text is not None:
            post["text"] = text
        return self._push("channel_post", post)

    def press(self, user_id: int, message: dict, data: str) -> None:
        """A button press on `message` as it is now (with the edits the bot made since)."""
        with self._cond:
            current = self.messages.get((message["chat"]["id"], message["message_id"]), message)
            query_id = str(next(self._ids))
            self._open_queries.add(query_id)
        self._push(
            "callback_query",
            {
                "id": query_id,
                "from": self._user(user_id),
                "chat_instance": "ci",
                "message": current,
                "data": data,
            },
        )

    # --- watching the bot ------------------------------------------------------------------------------
    def wait_for(self, method: str, timeout: float = 30.0, after: int = 0, **match: Any) -> dict:
        """The first call of `method` (from index `after`) whose params include `match`; waits for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for name, params in self.calls[after:]:
                    if name == method and all(_matches(params.get(k), v) for k, v in match.items()):
                        return params
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(n, p.get("text", "")) for n, p in self.calls[after:]][-10:]
                    raise AssertionError(f"no {method} {match} within {timeout}s; last calls: {seen}")
                self._cond.wait(left)

    def mark(self) -> int:
        with self._cond:
            return len(self.calls)

    def calls_to(self, chat_id: int, after: int = 0) -> list[tuple[str, dict]]:
        with self._cond:
            return [(n, p) for n, p in self.calls[after:] if str(p.get("chat_id")) == str(chat_id)]

    # --- the Bot API -----------------------------------------------------------------------------------
    def _api(self, method: str, params: dict) -> tuple[int, Any]:
        status, result = self._dispatch(method, params)
        if method != "getUpdates":
            if method in ("sendMessage", "sendPhoto") and status == 200:
                params["_message"] = result  # tests press buttons on it
            params["_at"] = time.monotonic()
            with self._cond:
                self.calls.append((method, params))
                self._cond.notify_all()
        return status, result

    def _dispatch(self, method: str, params: dict) -> tuple[int, Any]:
        if method == "getUpdates":
            if self.webhook is not None:
                return 409, WEBHOOK_IS_SET
            return 200, self._get_updates(params)
        if method == "getMe":
            return 200, BOT_USER
        if method in ("setWebhook", "deleteWebhook"):
            with self._cond:
                self.webhook = (params["url"], params.get("secret_token")) if method == "setWebhook" else None
                self._cond.notify_all()
            return 200, True
        if method in ("setMyCommands", "sendChatAction"):
            return 200, True
        if method == "answerCallbackQuery":
            with self._cond:
                if params.get("callback_query_id") not in self._open_queries:
                    return 400, BAD_QUERY
                self._open_queries.discard(params["callback_query_id"])
            return 200, True
        if method in ("sendMessage", "sendPhoto", "sendDocument"):
            return 200, self._bot_message(params)
        if method in ("editMessageText", "editMessageReplyMarkup"):
            return self._edit_message(params)
        if method == "getFile":
            file_id = params["file_id"]
            if file_id not in self.files:
                return 400, "Bad Request: invalid file_id"
            return 200, {
                "file_id": file_id,
                "file_unique_id": f"u{file_id}",
                "file_size": len(self.files[file_id]),
                "file_path": f"documents/{file_id}",
            }
        return 404, f"Not Found: {method} is not implemented by the fake server"

    def _get_updates(self, params: dict) -> list[dict]:
        offset, timeout = int(params.get("offset", 0) or 0), float(params.get("timeout", 0) or 0)
        deadline = time.monotonic() + timeout
        with self._cond:
            # An offset confirms every earlier update: Telegram forgets them, and so do we.
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
            while True:
                pending = [u for u in self._updates if u["update_id"] >= offset]
                left = deadline - time.monotonic()
                if pending or left <= 0:
                    return pending[:100]
                self._cond.wait(min(left, 0.5))

    def _bot_message(self, params: dict) -> dict:
        chat_id = int(params["chat_id"])
        message = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "from": BOT_USER,
            "chat": self.chats.get(chat_id, {"id": chat_id, "type": "private"}),
        }
        if "text" in params:
            message["text"] = params["text"]
        if "photo" in params:
            file = self._file(params["photo"])
            message["photo"] = [{**file, "width": 900, "height": 340}]
            message["caption"] = params.get("caption", "")
        if "document" in params:
            message["document"] = {**self._file(params["document"]), "file_name": "document"}
            message["caption"] = params.get("caption", "")
        if "inline_keyboard" in params.get("reply_markup", {}):  # ForceReply is not part of the message
            message["reply_markup"] = params["reply_markup"]
        replied = (params.get("reply_parameters") or {}).get("message_id")
        with self._cond:
            if replied is not None and (chat_id, int(replied)) in self.messages:
                # Telegram nests the replied-to message one level deep, without its own reply_to_message.
                message["reply_to_message"] = _shallow(self.messages[(chat_id, int(replied))])
            self.messages[(chat_id, message["message_id"])] = message
        return message

    def _edit_message(self, params: dict) -> tuple[int, Any]:
        key = (int(params["chat_id"]), int(params["message_id"]))
        with self._cond:
            if key not in self.messages:
                return 400, "Bad Request: message to edit not found"
            message = self.messages[key]
            changes = {k: params[k] for k in ("text", "reply_markup") if k in params}
            if all(message.get(k) == v for k, v in changes.items()) and (
                "reply_markup" in params or "reply_markup" not in message
            ):
                return 400, NOT_MODIFIED
            message.update(changes)
            if "reply_markup" not in params:
                message.pop("reply_markup", None)  # an edit without a keyboard removes it, as on Telegram
            return 200, message

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Telegram: the bot reuses its connections
            # Headers and body go out in two writes: with Nagle's algorithm the body waits for the
            # client's delayed ACK (40 ms) on a kept-alive connection.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = unquote(urlsplit(self.path).path)
                prefix = f"/file/bot{fake.token}/documents/"
                file_id = path[len(prefix) :] if path.startswith(prefix) else None
                if file_id in fake.files:
                    self._reply(200, fake.files[file_id], "application/octet-stream")
                else:
                    self._reply(404, b"not found", "text/plain")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                parts = unquote(urlsplit(self.path).path).strip("/").split("/")
                if len(parts) != 2 or parts[0] != f"bot{fake.token}":
                    self._answer(401, "Unauthorized")
                    return
                status, result = fake._api(parts[1], _params(self.headers.get("Content-Type", ""), body))
                self._answer(status, result)

            def _answer(self, status: int, result: Any) -> None:
                if status == 200:
                    payload = {"ok": True, "result": result}
                else:
                    payload = {"ok": False, "error_code": status, "description": result}
                self._reply(status, json.dumps(payload).encode())

        return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 resets connections when the bot sends a burst of requests at
    # once (a load test); Telegram takes them.
    request_queue_size = 128


class BotProcess:
    """`digitbot -v run` in a subprocess, talking to the fake server; its log goes to a file (without -v
    when not `verbose`: a load test measures the bot as deployed, not its debug logging)."""

    def __init__(
        self,
        fake: FakeTelegram,
        data_dir: Path,
        token: str,
        admins: str = "",
        rate_limit: int = 20,
        extra_env: dict[str, str] | None = None,
        verbose: bool = True,
    ) -> None:
        self.log_path = data_dir / f"bot-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGITBOT_", "TELEGRAM_"))}
        env.update(
            TELEGRAM_BOT_TOKEN=token,
            DIGITBOT_API_URL=fake.api_url,
            DIGITBOT_FILE_URL=fake.file_url,
            DIGITBOT_DATA_DIR=str(data_dir),
            DIGITBOT_ADMIN_IDS=admins,
            DIGITBOT_RATE_LIMIT=str(rate_limit),
            PYTHONPATH=str(ROOT),
            **(extra_env or {}),
        )
        mark = fake.mark()
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", *(["-v"] if verbose else []), "run"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
            )
        # Started: commands set in post_init, then the updater's bootstrap (a webhook set, or deleted before
        # polling). A stop signal before that lands in PTB's start-up, which cannot always shut down cleanly
        # from there (exit status 2: "Event loop stopped before Future completed").
        running = "setWebhook" if "DIGITBOT_WEBHOOK_URL" in (extra_env or {}) else "deleteWebhook"
        try:
            fake.wait_for("setMyCommands", timeout=120, after=mark)
            fake.wait_for(running, timeout=120, after=mark)
        except AssertionError:
            self.process.kill()
            raise AssertionError(self.log()) from None

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def _params(content_type: str, body: bytes) -> dict:
    if content_type.startswith("multipart/form-data"):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body
        )
        raw = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            raw[name] = payload if part.get_filename() else payload.decode()
    elif content_type.startswith("application/json"):
        raw = json.loads(body or b"{}")
    else:
        raw = {k: v[0] for k, v in parse_qs(body.decode()).items()}
    return {k: json.loads(v) if k in JSON_FIELDS and isinstance(v, str) else v for k, v in raw.items()}


def _shallow(message: dict) -> dict:
    """Telegram nests a replied-to message one level deep, without its own reply_to_message."""
    return {k: v for k, v in message.items() if k != "reply_to_message"}


def _entities(text: str) -> list[dict]:
    """What Telegram marks in a text: a leading /command and @mentions (offsets in UTF-16 units)."""

    def utf16(part: str) -> int:
        return len(part.encode("utf-16-le")) // 2

    entities = []
    if text.startswith("/"):
        entities.append({"type": "bot_command", "offset": 0, "length": utf16(text.split()[0])})
    for match in re.finditer(r"(?<![\w/])@\w+", text):
        entities.append(
            {"type": "mention", "offset": utf16(text[: match.start()]), "length": utf16(match[0])}
        )
    return entities


def _matches(value: Any, expected: Any) -> bool:
    if callable(expected):
        return bool(value is not None and expected(value))
    return str(value) == str(expected)
