"""Does the learning loop work? (bench, not CI)

Simulated users write like handwriting fonts (which the shipped MNIST model reads worse than MNIST).
They send a few hundred photos through the real pipeline and correct every answer through the storage
API; one fine-tuning run (the same `retrain` the bot and `digitbot retrain` use) follows. Measured on
fresh photos of the same users: accuracy before and after, MNIST test accuracy before and after, wall
time. Then the poisoning case: one user sends hundreds of wrong corrections.

    python -m bench.learning [--photos 300] [--mnist-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.synth import find_fonts, make_photo
from bot.learning import RetrainJob, retrain
from bot.model_store import install_shipped_model, load_active
from bot.settings import load_settings
from recognizer import Recognizer
from recognizer.data import load_mnist
from storage.db import connect, sqlite_url
from storage.repository import Store


def photos(n: int, fonts: list[Path], seed: int) -> list:
    """Single digits in the users' handwriting (fonts), on paper, through the photo generator."""
    rng = np.random.default_rng(seed)
    return [
        make_photo(str(rng.integers(10)), "font", rng, np.zeros((1, 28, 28)), np.zeros(1), fonts)
        for _ in range(n)
    ]


def accuracy(rec: Recognizer, shots: list) -> float:
    return float(np.mean([rec.read(p.jpeg).digits == p.label for p in shots]))


def send_and_correct(
    store: Store, rec: Recognizer, shots: list, users: list[int], wrong: bool = False
) -> int:
    """Each photo through the pipeline into a stored prediction, then the user's correction of it."""
    corrections = 0
    for i, photo in enumerate(shots):
        reading = rec.read(photo.jpeg)
        if len(reading.digits) != 1:
            continue
        user = users[i % len(users)]
        pid = store.record_prediction(
            user_id=user,
            chat_id=user,
            digits=reading.digits,
            confidence=reading.confidence,
            status=reading.status,
            inputs=reading.inputs,
            model_version=1,
        )
        label = str((int(photo.label) + 1) % 10) if wrong else photo.label
        store.record_feedback(pid, user, label)
        corrections += reading.digits != label
    return corrections


def one_run(data_dir: Path, mnist_dir: str | None) -> tuple[dict, float]:
    settings = load_settings(data_dir=data_dir, mnist_dir=mnist_dir)
    store = Store(connect(settings.resolved_database_url()))
    run_id = store.claim_run("cli")
    started = time.monotonic()
    result = retrain(RetrainJob.from_settings(run_id, settings))
    return {**result, "metrics": store.last_run().metrics}, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=300, help="corrected photos sent by the users")
    parser.add_argument("--test-photos", type=int, default=300, help="fresh photos to measure on")
    parser.add_argument("--mnist-dir")
    args = parser.parse_args()
    fonts = find_fonts()
    if not fonts:
        raise SystemExit("no handwriting fonts found: apt-get install fonts-dkg-handwriting fonts-breip ...")
    mnist_dir = args.mnist_dir
    load_mnist(mnist_dir)  # fail early with the clear message
    shipped = Recognizer.load()
    test_set = photos(args.test_photos, fonts, seed=1000)
    report: dict = {"fonts": [f.name for f in fonts], "before": accuracy(shipped, test_set)}

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "learn"
        store = Store(connect(sqlite_url(data_dir)))
        install_shipped_model(store, data_dir)
        report["corrections_sent"] = send_and_correct(
            store, shipped, photos(args.photos, fonts, seed=1), users=[11, 12, 13]
        )
        result, seconds = one_run(data_dir, mnist_dir)
        after = load_active(store, shipped.min_confidence).current()[0]
        report.update(
            run=result["status"],
            run_seconds=round(seconds, 1),
            after=accuracy(after, test_set),
            mnist_before=result["metrics"]["active_mnist"],
            mnist_after=result["metrics"]["candidate_mnist"],
        )
        errors_before, errors_after = 1 - report["before"], 1 - report["after"]
        report["errors_fixed"] = (
            round((errors_before - errors_after) / errors_before, 3) if errors_before else None
        )

        poisoned_dir = Path(tmp) / "poison"
        store = Store(connect(sqlite_url(poisoned_dir)))
        install_shipped_model(store, poisoned_dir)
        send_and_correct(store, shipped, photos(args.photos, fonts, seed=2), users=[666], wrong=True)
        result, seconds = one_run(poisoned_dir, mnist_dir)
        report["poisoning"] = {
            "run": result["status"],
            "reason": result["reason"],
            "seconds": round(seconds, 1),
            "samples_used_cap": load_settings().max_corrections_per_user,
            "mnist_before": result["metrics"]["active_mnist"],
            "mnist_after": result["metrics"]["candidate_mnist"],
            "active_version_after": store.active_model().version,
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
