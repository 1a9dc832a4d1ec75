"""Load test (bench, not CI): N simulated users send photos at once to the real bot process (logging as
deployed: no -v) through the fake Bot API server on 127.0.0.1; reports replies per second, p50/p95 reply
latency, and the CPU seconds the bot, its worker processes and this process (the fake server and the
users) spent meanwhile. Every photo must get one answer with its digit: otherwise it exits with status 1.

    python -m bench.load [--users 50] [--photos 4] [--send-rate N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.synth import make_photo
from recognizer.data import load_mnist
from tests.fake_telegram import BotProcess, FakeTelegram

TOKEN = "123456789:LOAD-fake-token-not-real"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time of a process, and of its children that are running now (the bot's worker processes)."""
    own = children = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
        if stat.parent.name == str(pid):
            own += seconds
        elif fields[1] == str(pid):  # its parent
            children += seconds
    return own, children


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--photos", type=int, default=4, help="photos per user, all sent at once")
    parser.add_argument(
        "--send-rate",
        help="the bot's DIGITBOT_SEND_RATE (default: the bot's own, Telegram's 30 a second; 0: no limit)",
    )
    parser.add_argument("--mnist-dir")
    args = parser.parse_args()
    mnist = load_mnist(args.mnist_dir)
    rng = np.random.default_rng(0)
    photos = [
        make_photo(str(rng.integers(10)), "clean", rng, mnist.x_test, mnist.y_test, []) for _ in range(20)
    ]
    extra_env = {} if args.send_rate is None else {"DIGITBOT_SEND_RATE": args.send_rate}
    fake = FakeTelegram(TOKEN)
    with tempfile.TemporaryDirectory() as data_dir:
        bot = BotProcess(fake, Path(data_dir), TOKEN, rate_limit=1000, extra_env=extra_env, verbose=False)
        mark = fake.mark()
        sent = {}
        cpu_start = (*cpu_seconds(bot.process.pid), time.process_time())
        start = time.monotonic()
        for i in range(args.photos):
            for user in range(1000, 1000 + args.users):
                photo = photos[(user + i) % len(photos)]
                sent[(user, fake.send_photo(user, photo.jpeg)["message_id"])] = (
                    time.monotonic(),
                    photo.label,
                )
        # Answers are replies to the photo; any other message (an error) also ends a photo's wait.
        replies, others, seen, deadline = {}, [], mark, time.monotonic() + 300
        while len(replies) + len(others) < len(sent) and time.monotonic() < deadline:
            calls = fake.calls[seen:]
            seen += len(calls)
            for name, params in calls:
                if name != "sendMessage":
                    continue
                if "reply_parameters" in params:
                    key = (int(params["chat_id"]), params["reply_parameters"]["message_id"])
                    replies.setdefault(key, params)
                else:
                    others.append(params["text"])
            time.sleep(0.05)
        cpu_end = (*cpu_seconds(bot.process.pid), time.process_time())
        bot.stop()
    fake.close()
    latencies = np.array([replies[k]["_at"] - sent[k][0] for k in replies])
    right = sum(replies[k]["text"].startswith(sent[k][1] + " ") for k in replies)
    result = {
        "users": args.users,
        "photos": len(sent),
        "answered": len(replies),
        "right": right,
        "other_messages": len(others),
        "replies_per_s": round(len(replies) / (max(r["_at"] for r in replies.values()) - start), 1)
        if replies
        else 0.0,
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 2),
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 2),
        "cpu_s_bot": round(cpu_end[0] - cpu_start[0], 1),
        "cpu_s_bot_workers": round(cpu_end[1] - cpu_start[1], 1),
        "cpu_s_bench": round(cpu_end[2] - cpu_start[2], 1),
    }
    print(json.dumps(result))
    if right < len(sent):
        sys.exit(f"{len(sent) - right} of {len(sent)} photos not answered right; other messages: {others}")


if __name__ == "__main__":
    main()
