"""One-image `classify` latency vs `model.predict`, batch throughput and peak RSS, on one model.

python bench/inference.py [--model PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import numpy as np

from recognizer import Recognizer


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a .keras file (default: the shipped model)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rec = Recognizer.load(args.model)
    rss_after_load_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(0)
    one = rng.random((28, 28), dtype=np.float32)
    batch = rng.random((10_000, 28, 28, 1), dtype=np.float32)

    classify_ms = statistics.median(timed(lambda: rec.classify(one), args.repeats)) * 1000
    predict_ms = (
        statistics.median(
            timed(lambda: rec.model.predict(one[None, :, :, None], verbose=0), args.repeats // 4)
        )
        * 1000
    )
    batch_s = statistics.median(timed(lambda: rec.probabilities(batch), 5))
    result = {
        "model": str(rec.path),
        "classify_one_ms_p50": round(classify_ms, 3),
        "model_predict_one_ms_p50": round(predict_ms, 3),
        "speedup": round(predict_ms / classify_ms, 1),
        "batch_images_per_s": round(len(batch) / batch_s),
        "peak_rss_after_load_mb": round(rss_after_load_mb),
        "peak_rss_end_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:26} {value}")


if __name__ == "__main__":
    main()
