"""Load test (bench, not CI): N simulated users send photos at once to the real bot process through the
fake Bot API server on 127.0.0.1; reports replies per second and p50/p95 reply latency.

    python -m bench.load [--users 50] [--photos 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.synth import make_photo
from recognizer.data import load_mnist
from tests.fake_telegram import BotProcess, FakeTelegram

TOKEN = "123456789:LOAD-fake-token-not-real"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--photos", type=int, default=4, help="photos per user, all sent at once")
    parser.add_argument("--mnist-dir")
    args = parser.parse_args()
    mnist = load_mnist(args.mnist_dir)
    rng = np.random.default_rng(0)
    photos = [
        make_photo(str(rng.integers(10)), "clean", rng, mnist.x_test, mnist.y_test, []) for _ in range(20)
    ]
    fake = FakeTelegram(TOKEN)
    with tempfile.TemporaryDirectory() as data_dir:
        bot = BotProcess(fake, Path(data_dir), TOKEN, rate_limit=1000)
        mark = fake.mark()
        sent = {}
        start = time.monotonic()
        for i in range(args.photos):
            for user in range(1000, 1000 + args.users):
                photo = photos[(user + i) % len(photos)]
                sent[(user, fake.send_photo(user, photo.jpeg)["message_id"])] = (
                    time.monotonic(),
                    photo.label,
                )
        replies, deadline = {}, time.monotonic() + 600
        while len(replies) < len(sent) and time.monotonic() < deadline:
            for name, params in fake.calls[mark:]:
                if name == "sendMessage" and "reply_parameters" in params:
                    key = (int(params["chat_id"]), params["reply_parameters"]["message_id"])
                    replies.setdefault(key, params)
            time.sleep(0.05)
        bot.stop()
    fake.close()
    latencies = np.array([replies[k]["_at"] - sent[k][0] for k in replies])
    right = sum(replies[k]["text"].startswith(sent[k][1] + " ") for k in replies)
    result = {
        "users": args.users,
        "photos": len(sent),
        "answered": len(replies),
        "right": right,
        "replies_per_s": round(len(replies) / (max(r["_at"] for r in replies.values()) - start), 1),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 2),
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
