"""Two `digitbot run` replicas in webhook mode behind a round-robin proxy, on one PostgreSQL database and
without a shared disk: both answer; a version promoted on one is what both answer with; and when the
replica that trains dies mid-run, the other fails the run once its lease has expired and starts the next."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bot.model_store import cache_path
from tests.fake_telegram import BotProcess, FakeTelegram
from tests.photos import synthetic_photo
from tests.test_learning import FAST, fill_corrections, photo_version

TOKEN = "123456789:REPLICAS-fake-token-not-real"
ADMIN = 1
LEASE_S = 8  # short, so that a dead replica's run is failed within the test


class RoundRobin:
    """The reverse proxy in front of the replicas: each update to the next replica, or to the one after it
    when that one does not answer (as Caddy does with a replica that is down)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.routed: list[tuple[int, bytes]] = []  # (replica port, update) for each delivered update
        self._turns = itertools.count()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/telegram"

    def replica_of(self, user_id: int) -> int:
        """The port of the replica that got the user's latest update."""
        with self._lock:
            return next(port for port, body in reversed(self.routed) if f'"id": {user_id},'.encode() in body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                for _ in proxy.ports:
                    with proxy._lock:
                        port = proxy.ports[next(proxy._turns) % len(proxy.ports)]
                    request = urllib.request.Request(
                        f"http://127.0.0.1:{port}{self.path}", body, headers, method="POST"
                    )
                    try:
                        urllib.request.urlopen(request, timeout=10).close()
                    except urllib.error.HTTPError as exc:
                        self._reply(exc.code)
                        return
                    except OSError:  # the replica is down: the next one
                        continue
                    with proxy._lock:
                        proxy.routed.append((port, body))
                    self._reply(200)
                    return
                self._reply(502)

            def _reply(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.3)
    return value


@pytest.fixture
def fake():
    server = FakeTelegram(TOKEN)
    yield server
    server.close()


def test_two_replicas_share_versions_and_a_dead_replicas_run_is_failed(fake, postgres_url, mnist, tmp_path):
    store = fill_corrections(tmp_path / "seed", mnist, url=postgres_url)  # installs version 1 as well
    shutil.rmtree(tmp_path / "seed")  # its file, too: version 1 is in the database only
    ports = [free_port(), free_port()]
    proxy = RoundRobin(ports)
    env = {
        **FAST,
        "DIGITBOT_MAX_MNIST_DROP": "0.05",
        "DIGITBOT_DATABASE_URL": postgres_url,
        "DIGITBOT_WEBHOOK_URL": proxy.url,
        "DIGITBOT_WEBHOOK_SECRET": "one-secret-for-all-replicas",
        "DIGITBOT_RUN_LEASE": str(LEASE_S),
    }
    data_dirs = [tmp_path / "a", tmp_path / "b"]  # no shared disk: each replica its own data directory
    for data_dir in data_dirs:
        data_dir.mkdir()

    def start(i: int) -> BotProcess:
        extra = {**env, "DIGITBOT_WEBHOOK_PORT": str(ports[i])}
        return BotProcess(fake, data_dirs[i], TOKEN, admins=str(ADMIN), extra_env=extra)

    with ThreadPoolExecutor(2) as pool:
        starting = [pool.submit(start, i) for i in range(2)]
    try:
        replicas = {port: started.result() for port, started in zip(ports, starting, strict=True)}
        for port in ports:
            wait_listening(port)
        assert fake.webhook == (proxy.url, "one-secret-for-all-replicas")
        photo = synthetic_photo(mnist, "3", "clean", seed=3)

        # Both answer, with the version installed before they started (fetched from the database).
        for user in range(61, 65):
            assert photo_version(fake, store, user, photo) == 1
        assert {proxy.replica_of(user) for user in range(61, 65)} == set(ports)

        # /retrain on one promotes; the other, asked at the same time, says a run is in progress.
        mark = fake.mark()
        fake.send_text(ADMIN, "/retrain")
        fake.send_text(ADMIN, "/retrain")
        fake.wait_for(
            "editMessageText",
            after=mark,
            chat_id=ADMIN,
            text="A fine-tuning run is already in progress (on another instance).",
        )
        done = fake.wait_for(
            "editMessageText",
            after=mark,
            chat_id=ADMIN,
            timeout=300,
            text=lambda t: any(word in t for word in ("promoted", "rejected", "failed")),
        )
        assert "version 2 promoted" in done["text"]
        promoted, first_run = time.monotonic(), store.last_run().id

        # Both answer with the new version within a minute: the other replica fetches it from the database.
        answered_with, user = {}, 100
        while answered_with != dict.fromkeys(ports, 2):
            assert time.monotonic() - promoted < 60, answered_with
            user += 1
            version = photo_version(fake, store, user, photo)
            answered_with[proxy.replica_of(user)] = version
        sha = store.active_model().sha256
        assert all(cache_path(data_dir, sha).is_file() for data_dir in data_dirs)
        trained = [f"training run {first_run} started in process" in p.log() for p in replicas.values()]
        other = next(p for p, t in zip(replicas.values(), trained, strict=True) if not t)
        assert sorted(trained) == [False, True] and "model version 2 fetched from the database" in other.log()

        # The replica that trains dies mid-run, its fine-tuning process with it (the host went down).
        fake.send_text(ADMIN, "/retrain")
        run = wait_until(lambda: (r := store.last_run()).id > first_run and r.id, 60, "a second run")
        started = f"training run {run} started in process"
        dying_port = wait_until(
            lambda: next((port for port, p in replicas.items() if started in p.log()), None), 60, started
        )
        dying, survivor = replicas.pop(dying_port), next(iter(replicas.values()))
        for pid in (dying.process.pid, store.training_run(run).pid):
            os.kill(pid, signal.SIGKILL)
        dying.process.wait()
        assert store.training_run(run).status == "running"  # until its lease expires
        wait_until(lambda: store.training_run(run).status != "running", LEASE_S + 20, "the run failed")
        failed = store.training_run(run)
        assert failed.status == "failed" and failed.error.startswith("its lease expired")
        assert "failed 1 training run(s) whose lease expired" in survivor.log()

        # ...and the survivor starts the next one (stopping the survivor then fails it, as at any shutdown).
        fake.send_text(ADMIN, "/retrain")
        next_run = wait_until(lambda: (r := store.last_run()).id > run and r.id, 60, "the next run")
        wait_until(lambda: f"training run {next_run} started in process" in survivor.log(), 60, "it started")
        assert store.training_run(next_run).status == "running"
        assert [(m.version, m.status) for m in store.model_versions()] == [(1, "retired"), (2, "active")]
    finally:
        for started in starting:
            if started.exception() is None and started.result().process.poll() is None:
                assert started.result().stop() == 0
        proxy.close()
        store.engine.dispose()
