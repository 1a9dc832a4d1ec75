"""Real-image bench: exact-match accuracy on a labelled folder of real photos (overall, per kind, per source),
the error/reject trade-off of the confidence threshold, a reliability table, and the time per image, for the
photo pipeline and for the original report's naive pipeline.

    python -m bench.real ../shared/data/realworld-dev [--model PATH] [--json OUT] [--errors]

The folder holds images and a `labels.csv` with columns file,label,kind,repo (kind and repo optional).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.photos import naive_read, trade_off, trade_off_table
from recognizer import ImageError, Recognizer

BINS = [0.0, 0.5, 0.7, 0.9, 0.99, 1.0001]


def load_labels(folder: Path) -> list[dict]:
    with open(folder / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def read_all(rec: Recognizer, folder: Path, rows: list[dict]) -> list[dict]:
    results = []
    for row in tqdm(rows, unit="image"):
        data = (folder / row["file"]).read_bytes()
        start, cpu = time.perf_counter(), time.process_time()
        try:
            reading = rec.read(data)
            digits, confidence, status = reading.digits, reading.confidence, reading.status
        except ImageError as exc:
            digits, confidence, status = "", 0.0, f"error: {exc}"
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        try:
            naive = naive_read(rec, data)
        except OSError:
            naive = ""
        results.append(
            {
                "file": row["file"],
                "label": row["label"],
                "kind": row.get("kind", ""),
                "source": row.get("repo", ""),
                "digits": digits,
                "confidence": confidence,
                "status": status,
                "naive": naive,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
            }
        )
    return results


def _share(results: list[dict], key: str = "digits") -> float:
    return sum(r[key] == r["label"] for r in results) / max(1, len(results))


def summarise(results: list[dict]) -> dict:
    by_kind, by_source = defaultdict(list), defaultdict(list)
    for r in results:
        by_kind[r["kind"]].append(r)
        by_source[r["source"]].append(r)
    confidence = np.array([r["confidence"] for r in results])
    right = np.array([r["digits"] == r["label"] for r in results])
    reliability = []
    for low, high in pairwise(BINS):
        inside = (confidence >= low) & (confidence < high)
        if inside.any():
            reliability.append(
                {
                    "confidence": f"{low:.2f}-{min(high, 1.0):.2f}",
                    "images": int(inside.sum()),
                    "mean_confidence": round(float(confidence[inside].mean()), 4),
                    "accuracy": round(float(right[inside].mean()), 4),
                }
            )
    return {
        "images": len(results),
        "exact": round(_share(results), 4),
        "naive_exact": round(_share(results, "naive"), 4),
        "per_kind": {k: {"images": len(v), "exact": round(_share(v), 4)} for k, v in sorted(by_kind.items())},
        "per_source": {
            k: {"images": len(v), "exact": round(_share(v), 4)} for k, v in sorted(by_source.items())
        },
        "trade_off": trade_off(confidence, right),
        "reliability": reliability,
        "no_digit": sum(r["status"] == "no_digit" for r in results),
        "mean_ms": round(1000 * float(np.mean([r["seconds"] for r in results])), 1),
        # CPU time of the process per image: what a read costs when other work shares the cores.
        "mean_cpu_ms": round(1000 * float(np.mean([r["cpu_seconds"] for r in results])), 1),
    }


def markdown(summary: dict) -> str:
    lines = [
        f"**{summary['images']} real images**: pipeline **{summary['exact']:.1%}** exact, naive "
        f"{summary['naive_exact']:.1%}; {summary['no_digit']} read as 'no digit'; "
        f"mean {summary['mean_ms']} ms per image ({summary['mean_cpu_ms']} ms of CPU)",
        "",
        "| kind | images | exact |",
        "|---|---|---|",
        *(f"| {k} | {v['images']} | {v['exact']:.1%} |" for k, v in summary["per_kind"].items()),
        "",
        *trade_off_table(summary["trade_off"]),
        "",
        "| confidence | images | mean confidence | accuracy |",
        "|---|---|---|---|",
        *(
            f"| {r['confidence']} | {r['images']} | {r['mean_confidence']:.3f} | {r['accuracy']:.1%} |"
            for r in summary["reliability"]
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the summary and every result here")
    parser.add_argument("--errors", action="store_true", help="list every image read wrongly")
    args = parser.parse_args()
    rec = Recognizer.load(args.model)
    results = read_all(rec, args.folder, load_labels(args.folder))
    summary = summarise(results)
    print(markdown(summary))
    print("\n| source | images | exact |\n|---|---|---|")
    for source, value in summary["per_source"].items():
        print(f"| {source} | {value['images']} | {value['exact']:.1%} |")
    if args.errors:
        print()
        for r in results:
            if r["digits"] != r["label"]:
                print(
                    f"{r['file']}: label {r['label']}, read {r['digits'] or '-'} "
                    f"({r['confidence']:.2f}, {r['status']})"
                )
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
