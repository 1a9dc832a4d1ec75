"""A fake Telegram Bot API server on 127.0.0.1 that also plays the users talking to the bot.

It implements the methods the bot uses (getMe, getUpdates with long polling, sendMessage, sendPhoto,
editMessageText, editMessageReplyMarkup, answerCallbackQuery, getFile and file download, setMyCommands,
sendChatAction, deleteWebhook) and records every call so tests can wait for the bot's answers."""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
BOT_USER = {"id": 4242, "is_bot": True, "first_name": "digitbot", "username": "digitbot_test_bot"}
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
        self.messages: dict[tuple[int, int], dict] = {}
        self._updates: list[dict] = []
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/bot"

    @property
    def file_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/file/bot"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- the users' side -------------------------------------------------------------------------------
    def _user(self, user_id: int) -> dict:
        return {"id": user_id, "is_bot": False, "first_name": f"User{user_id}"}

    def _push(self, kind: str, payload: dict) -> dict:
        with self._cond:
            self._updates.append({"update_id": next(self._ids), kind: payload})
            self._cond.notify_all()
        return payload

    def _message(self, user_id: int, **fields: Any) -> dict:
        message = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "from": self._user(user_id),
            "chat": {"id": user_id, "type": "private", "first_name": f"User{user_id}"},
            **fields,
        }
        return self._push("message", message)

    def _file(self, data: bytes, declared_size: int | None = None) -> dict:
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = data
        return {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": declared_size or len(data)}

    def send_photo(self, user_id: int, data: bytes, thumbnail: bytes = b"") -> dict:
        """A photo with a thumbnail size first, as Telegram sends them: the bot must use the largest."""
        sizes = [
            {**self._file(thumbnail or b"thumb"), "width": 90, "height": 67},
            {**self._file(data), "width": 1280, "height": 960},
        ]
        return self._message(user_id, photo=sizes)

    def send_document(
        self, user_id: int, data: bytes, mime_type: str, file_name: str, declared_size: int | None = None
    ) -> dict:
        document = {**self._file(data, declared_size), "mime_type": mime_type, "file_name": file_name}
        return self._message(user_id, document=document)

    def send_text(self, user_id: int, text: str, reply_to: dict | None = None) -> dict:
        fields: dict[str, Any] = {"text": text}
        if text.startswith("/"):
            fields["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        if reply_to is not None:
            fields["reply_to_message"] = reply_to
        return self._message(user_id, **fields)

    def send_other(self, user_id: int, kind: str) -> dict:
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
        return self._message(user_id, **{kind: {**media, **extra}})

    def press(self, user_id: int, message: dict, data: str) -> None:
        self._push(
            "callback_query",
            {
                "id": str(next(self._ids)),
                "from": self._user(user_id),
                "chat_instance": "ci",
                "message": message,
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
            return 200, self._get_updates(params)
        if method == "getMe":
            return 200, BOT_USER
        if method in (
            "deleteWebhook",
            "setWebhook",
            "setMyCommands",
            "sendChatAction",
            "answerCallbackQuery",
        ):
            return 200, True
        if method in ("sendMessage", "sendPhoto"):
            return 200, self._bot_message(params)
        if method in ("editMessageText", "editMessageReplyMarkup"):
            key = (int(params["chat_id"]), int(params["message_id"]))
            if key not in self.messages:
                return 400, "Bad Request: message to edit not found"
            message = self.messages[key]
            message.update({k: params[k] for k in ("text", "reply_markup") if k in params})
            return 200, message
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
            "chat": {"id": chat_id, "type": "private"},
        }
        if "text" in params:
            message["text"] = params["text"]
        if "photo" in params:
            file = self._file(params["photo"])
            message["photo"] = [{**file, "width": 900, "height": 340}]
            message["caption"] = params.get("caption", "")
        if "reply_markup" in params:
            message["reply_markup"] = params["reply_markup"]
        self.messages[(chat_id, message["message_id"])] = message
        return message

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
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


class BotProcess:
    """`digitbot -v run` in a subprocess, talking to the fake server; its log goes to a file."""

    def __init__(
        self,
        fake: FakeTelegram,
        data_dir: Path,
        token: str,
        admins: str = "",
        rate_limit: int = 20,
        extra_env: dict[str, str] | None = None,
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
                [sys.executable, "-m", "bot.cli", "-v", "run"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
            )
        try:
            fake.wait_for("setMyCommands", timeout=120, after=mark)
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


def _matches(value: Any, expected: Any) -> bool:
    if callable(expected):
        return bool(value is not None and expected(value))
    return str(value) == str(expected)
