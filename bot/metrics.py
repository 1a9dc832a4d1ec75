"""Prometheus metrics and the health check, served on DIGITBOT_METRICS_PORT: GET /metrics and GET /healthz."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import Engine

log = logging.getLogger(__name__)

PHOTOS = Counter(
    "digitbot_photos", "Photos handled, by outcome (ok, unsure, no_digit, unreadable, too_large)", ["status"]
)
READ_SECONDS = Histogram(
    "digitbot_read_seconds",
    "Seconds from handing a photo to the recognizer to its reading (waiting for a worker included)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FEEDBACK = Counter("digitbot_feedback", "Answers rated by their users (confirmed, corrected)", ["kind"])
ACTIVE_MODEL_VERSION = Gauge("digitbot_active_model_version", "The model version this instance answers with")
RETRAIN_RUNS = Counter(
    "digitbot_retrain_runs",
    "Fine-tuning runs by how they ended (promoted, rejected, failed), each counted by the replica that saw "
    "it end: a run whose replica died by the replica that failed it",
    ["outcome"],
)
RATE_LIMITED = Counter("digitbot_rate_limited", "Updates refused because their sender sent too many")


def count_feedback(confirmed: bool) -> None:
    FEEDBACK.labels("confirmed" if confirmed else "corrected").inc()


def database_reachable(engine: Engine) -> bool:
    """A round trip to the database. A raw DBAPI connection: SQLAlchemy's SQLite begin hook would take the
    write lock (BEGIN IMMEDIATE) and a health check must never wait behind a writer."""
    try:
        connection = engine.raw_connection()  # the pool's pre-ping replaces a dead PostgreSQL connection
        try:
            cursor = connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
        finally:
            connection.close()
    except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the answer is "not reachable"
        log.warning("health check: the database is not reachable: %s", exc.__class__.__name__)
        return False
    return True


def health(engine: Engine, model_version: Callable[[], int]) -> tuple[int, dict]:
    """200 when the database answers, else 503 (a load balancer then sends updates elsewhere)."""
    reachable = database_reachable(engine)
    body = {
        "status": "ok" if reachable else "unavailable",
        "model_version": model_version(),
        "database": reachable,
    }
    return (200 if reachable else 503), body


def serve(listen: str, port: int, engine: Engine, model_version: Callable[[], int]) -> ThreadingHTTPServer:
    """Start the metrics and health server in a daemon thread; `shutdown()` the result to stop it."""
    ACTIVE_MODEL_VERSION.set_function(model_version)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # a line per scrape is noise
            pass

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/metrics":
                self._reply(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                status, body = health(engine, model_version)
                self._reply(status, json.dumps(body).encode(), "application/json")
            else:
                self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((listen, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics, health on /healthz", listen, port)
    return server
