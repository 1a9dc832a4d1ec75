"""GET /metrics and /healthz of the real `digitbot run` process, with the fake Bot API server."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import make_url

from tests.fake_telegram import ROOT, BotProcess, FakeTelegram
from tests.photos import synthetic_photo

TOKEN = "123456789:TEST-fake-token-not-real"


@pytest.fixture
def fake():
    server = FakeTelegram(TOKEN)
    yield server
    server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    status, body = get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def health(port: int) -> tuple[int, dict]:
    status, body = get(port, "/healthz")
    return status, json.loads(body)


def test_a_photo_moves_the_counters_and_health_names_the_model(fake, mnist, tmp_path):
    port = free_port()
    env = {"DIGITBOT_METRICS_PORT": str(port)}
    bot = BotProcess(fake, tmp_path, TOKEN, rate_limit=3, extra_env=env)  # photo, button, photo, refused
    try:
        assert health(port) == (200, {"status": "ok", "model_version": 1, "database": True})
        before = scrape(port)
        assert value(before, "digitbot_active_model_version") == 1
        assert value(before, "digitbot_photos_total", status="ok") == 0

        mark = fake.mark()
        fake.send_photo(20, synthetic_photo(mnist, "7", "clean", seed=7))
        reply = fake.wait_for("sendMessage", after=mark, chat_id=20)
        assert reply["text"].startswith("7 - ")
        prediction = reply["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1]
        mark = fake.mark()
        fake.press(20, reply["_message"], f"fb:{prediction}:1")
        fake.wait_for("editMessageText", after=mark, chat_id=20)
        mark = fake.mark()
        fake.send_photo(20, synthetic_photo(mnist, "3", "clean", seed=3))  # the third request this minute
        fake.wait_for("sendMessage", after=mark, chat_id=20, text=lambda t: t.startswith("3 - "))
        mark = fake.mark()
        fake.send_photo(20, synthetic_photo(mnist, "5", "clean", seed=5))  # one too many
        fake.wait_for("sendMessage", after=mark, chat_id=20, text=lambda t: "a lot of photos" in t)

        after = scrape(port)
        assert value(after, "digitbot_photos_total", status="ok") == 2
        assert value(after, "digitbot_read_seconds_count") == 2
        assert 0 < value(after, "digitbot_read_seconds_sum") < 30
        assert value(after, "digitbot_feedback_total", kind="corrected") == 1
        assert value(after, "digitbot_feedback_total", kind="confirmed") == 0
        assert value(after, "digitbot_rate_limited_total") == 1
        assert get(port, "/nothing-here")[0] == 404
    finally:
        assert bot.stop() == 0


class TcpProxy:
    """127.0.0.1:port -> target; close() drops the listener and every connection, as a database host that
    went away; open() listens on the same port again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self.connections: list[socket.socket] = []
        self.open()

    def open(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.target)
            self.connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            end.close()

    def close(self) -> None:
        # shutdown() first: on Linux a close() alone neither wakes the thread blocked in accept() nor stops
        # the socket listening.
        for connection in [self.listener, *self.connections]:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self.connections = []


def test_health_is_503_while_postgresql_is_unreachable_in_webhook_mode(fake, postgres_url, tmp_path):
    database = make_url(postgres_url)
    host, port = database.host, database.port or 5432
    proxy = TcpProxy((host, port))
    metrics_port, webhook_port = free_port(), free_port()
    env = {
        "DIGITBOT_DATABASE_URL": postgres_url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}"),
        "DIGITBOT_METRICS_PORT": str(metrics_port),
        "DIGITBOT_WEBHOOK_URL": f"http://127.0.0.1:{webhook_port}/telegram",
        "DIGITBOT_WEBHOOK_PORT": str(webhook_port),
    }
    bot = BotProcess(fake, tmp_path, TOKEN, extra_env=env)
    try:
        assert health(metrics_port) == (200, {"status": "ok", "model_version": 1, "database": True})
        proxy.close()
        assert health(metrics_port) == (503, {"status": "unavailable", "model_version": 1, "database": False})
        assert value(scrape(metrics_port), "digitbot_active_model_version") == 1  # metrics still served
        proxy.open()
        assert health(metrics_port)[0] == 200  # back once the database is
    finally:
        assert bot.stop() == 0
        proxy.close()


def test_the_grafana_dashboard_queries_only_metrics_the_bot_exports():
    from prometheus_client import REGISTRY

    import bot.metrics  # noqa: F401 - registers the metrics

    # By family: a labelled counter has no samples before its first use.
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    exported = {f.name + suffix for f in REGISTRY.collect() for suffix in suffixes.get(f.type, [])}
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for query in queries for name in re.findall(r"\bdigitbot_\w+", query)}
    assert len(used) >= 6 and used <= exported, used - exported
