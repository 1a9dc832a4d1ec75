"""Synthetic-photo bench: exact-match accuracy per variation for the photo pipeline and for the original
report's naive pipeline (grayscale, resize to 28x28, scale to [0, 1]), the error/reject trade-off of the
confidence threshold, and the latency of reading one 1280x960 JPEG.

    python -m bench.photos [--singles 40] [--numbers 25] [--model PATH] [--json OUT]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections import defaultdict

import numpy as np
from PIL import Image
from tqdm import tqdm

from bench.synth import Photo, make_set
from recognizer import Recognizer
from recognizer.data import load_mnist

THRESHOLDS = [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99]


def naive_read(rec: Recognizer, jpeg: bytes) -> str:
    """The original report's upload test: one image -> one digit, no segmentation, no inversion."""
    image = Image.open(io.BytesIO(jpeg)).convert("L").resize((28, 28))
    return str(rec.classify(np.asarray(image, np.float32) / 255).digit)


def trade_off(confidences: np.ndarray, correct: np.ndarray) -> list[dict]:
    """Per confidence threshold: the share of photos answered, and the share of those answered wrongly."""
    rows = []
    for threshold in THRESHOLDS:
        answered = confidences >= threshold
        rows.append(
            {
                "threshold": threshold,
                "answered": round(float(answered.mean()), 4),
                "wrong_among_answered": round(float((answered & ~correct).sum() / max(1, answered.sum())), 4),
            }
        )
    return rows


def trade_off_table(rows: list[dict]) -> list[str]:
    return [
        "| threshold | answered | wrong among answered |",
        "|---|---|---|",
        *(f"| {t['threshold']} | {t['answered']:.1%} | {t['wrong_among_answered']:.1%} |" for t in rows),
    ]


def run(rec: Recognizer, photos: list[Photo]) -> dict:
    per_variation = defaultdict(lambda: [0, 0, 0])  # photos, pipeline right, naive right
    confidences, correct, latencies = [], [], []
    for photo in tqdm(photos, unit="photo"):
        start = time.perf_counter()
        reading = rec.read(photo.jpeg)
        latencies.append(time.perf_counter() - start)
        right = reading.digits == photo.label
        row = per_variation[photo.variation]
        row[0] += 1
        row[1] += right
        row[2] += naive_read(rec, photo.jpeg) == photo.label
        confidences.append(reading.confidence)
        correct.append(right)
    total = sum(r[0] for r in per_variation.values())
    return {
        "photos": total,
        "exact": round(sum(r[1] for r in per_variation.values()) / total, 4),
        "naive_exact": round(sum(r[2] for r in per_variation.values()) / total, 4),
        "per_variation": {
            v: {"photos": n, "exact": round(ok / n, 4), "naive_exact": round(naive / n, 4)}
            for v, (n, ok, naive) in per_variation.items()
        },
        "trade_off": trade_off(np.array(confidences), np.array(correct)),
        "read_ms_p50": round(statistics.median(latencies) * 1000, 1),
        "read_ms_p95": round(float(np.percentile(latencies, 95)) * 1000, 1),
    }


def markdown(name: str, result: dict) -> str:
    lines = [
        f"**{name}** ({result['photos']} photos): pipeline **{result['exact']:.1%}** exact, "
        f"naive {result['naive_exact']:.1%}; read p50 {result['read_ms_p50']} ms, "
        f"p95 {result['read_ms_p95']} ms",
        "",
        "| variation | pipeline | naive |",
        "|---|---|---|",
    ]
    lines += [
        f"| {v} | {r['exact']:.1%} | {r['naive_exact']:.1%} |" for v, r in result["per_variation"].items()
    ]
    lines += ["", *trade_off_table(result["trade_off"])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--singles", type=int, default=40, help="single-digit photos per variation")
    parser.add_argument("--numbers", type=int, default=25, help="2-5 digit photos per variation")
    parser.add_argument("--model")
    parser.add_argument("--mnist-dir")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    mnist = load_mnist(args.mnist_dir)
    rec = Recognizer.load(args.model, min_confidence=0.0)
    rec.read(make_set(mnist.x_test, mnist.y_test, 1, (1, 1), seed=99)[0].jpeg)  # warm-up
    results = {
        "single digits": run(rec, make_set(mnist.x_test, mnist.y_test, args.singles, (1, 1), seed=1)),
        "2-5 digit numbers": run(rec, make_set(mnist.x_test, mnist.y_test, args.numbers, (2, 5), seed=2)),
    }
    for name, result in results.items():
        print(markdown(name, result), end="\n\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": str(rec.path), **results}, f, indent=2)


if __name__ == "__main__":
    main()
