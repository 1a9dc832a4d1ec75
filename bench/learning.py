"""Does the learning loop work? (bench, not CI)

Real writers (`--real DIR`): a folder of labelled images whose file names give their source, one source
= one writer (`<source>__<name>`, labels in `labels.csv`: file,label). Writers with at least 6 images
take part. Per split, each writer's images are shuffled and halved: one half is sent to the bot through
the code path a photo takes (read, stored with the copy kept for learning) and the writer gives the
feedback `/correct` and ✅ give (every wrong answer corrected, every second right one confirmed); the
other half is held out. Then one fine-tuning run with the default settings (the `retrain` that `digitbot
retrain` and the bot run), and everything is read again.

Fonts (no `--real`): simulated users write like handwriting fonts; they correct photos in half of the
fonts, and the fresh photos measured before and after are in the other half, never corrected.

Slanted, narrow, ruled or squared writers: the same, on a copy of the folder that `bench.variants` made
(the dev set is read 100% right as it is; turned by each writer's slant 92%, squeezed narrow 92%, on ruled
or squared paper 99.5%): errors to learn from.

Writing styles (`--styles`): one run with no feedback at all; continental 1s and crossed 7s drawn from the
MNIST test set's 1s and 7s (a seed training does not use) read before and after. A run must not forget
what training added to MNIST.

Poisoning (`--poison N`): N accounts send `--photos` photos of MNIST test digits, each "corrected" to the
next digit.

    python -m bench.learning --real ../shared/data/realworld-dev [--splits 3] [--mnist-dir DIR]
    python -m bench.variants ruled ../shared/data/realworld-dev /tmp/ruled
    python -m bench.learning --real /tmp/ruled
    python -m bench.learning [--photos 300] [--mnist-dir DIR]
    python -m bench.learning --styles
    python -m bench.learning --poison 1 [--photos 300]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.variants import source
from bot.learning import retrain
from bot.model_store import install_shipped_model, load_active, load_version
from bot.settings import load_settings
from recognizer import ImageError, Recognizer
from recognizer.augment import add_writing_styles
from recognizer.data import load_mnist, to_model_input
from recognizer.labelled import read_and_keep
from storage.db import connect, sqlite_url
from storage.repository import Store

MIN_IMAGES_PER_WRITER = 6


def give_feedback(
    store: Store, rec: Recognizer, photo: bytes | Path, label: str, user: int, confirm: bool
) -> bool:
    """One photo through the bot's path into a stored prediction, then its writer's feedback: a
    correction when the answer is wrong, a confirmation (if `confirm`) when it is right. True if corrected."""
    reading, kept = read_and_keep(rec, photo)
    pid = store.record_prediction(
        user_id=user,
        chat_id=user,
        digits=reading.digits,
        confidence=reading.confidence,
        status=reading.status,
        inputs=reading.inputs,
        model_version=1,
        image=kept,
    )
    if reading.digits != label:
        store.record_feedback(pid, user, label)
        return True
    if confirm:
        store.record_feedback(pid, user, None)
    return False


def digits_read(rec: Recognizer, photo: Path) -> str:
    """What `rec` reads in the photo; "" (wrong) for a photo it cannot decode, which the bot answers with
    the reason, as it does a 25 MP PNG."""
    try:
        return rec.read(photo).digits
    except ImageError:
        return ""


def one_run(data_dir: Path, mnist_dir: str | None) -> tuple[dict, float]:
    settings = load_settings(data_dir=data_dir, mnist_dir=mnist_dir)
    store = Store(connect(settings.resolved_database_url()))
    run_id = store.claim_run("cli", settings.run_lease)
    started = time.monotonic()
    result = retrain(settings, run_id)
    return {**result, "metrics": store.last_run().metrics}, time.monotonic() - started


def fresh_store(data_dir: Path) -> Store:
    store = Store(connect(sqlite_url(data_dir)))
    install_shipped_model(store, data_dir)
    return store


def writers(folder: Path) -> dict[str, list[tuple[Path, str]]]:
    """source -> [(image, label)], sources with at least MIN_IMAGES_PER_WRITER images."""
    by_source = defaultdict(list)
    with open(folder / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            by_source[source(row["file"])].append((folder / row["file"], row["label"]))
    return {s: images for s, images in sorted(by_source.items()) if len(images) >= MIN_IMAGES_PER_WRITER}


def real_split(folder: Path, seed: int, mnist_dir: str | None, shipped: Recognizer, tmp: Path) -> dict:
    rng = np.random.default_rng(seed)
    sent, held = [], []
    for user, images in enumerate(writers(folder).values(), start=1000):
        order = rng.permutation(len(images))
        half = len(images) // 2
        sent += [(user, *images[i]) for i in order[:half]]
        held += [(user, *images[i]) for i in order[half:]]
    data_dir = tmp / f"split{seed}"
    store = fresh_store(data_dir)
    corrected, unreadable, right_answers = [], [], 0
    for user, path, label in sent:
        try:
            was_wrong = give_feedback(store, shipped, path, label, user, confirm=right_answers % 2 == 0)
        except ImageError:  # answered with the reason: nothing to correct
            unreadable.append(path.name)
            continue
        if was_wrong:
            corrected.append((path, label))
        else:
            right_answers += 1
    result, seconds = one_run(data_dir, mnist_dir)
    after = load_active(store, data_dir, shipped.min_confidence).current()[0]
    before_read = [digits_read(shipped, p) for _, p, _ in held]
    after_read = [digits_read(after, p) for _, p, _ in held]
    corrected_read = [digits_read(after, p) for p, _ in corrected]
    before_right = [digits == label for digits, (_, _, label) in zip(before_read, held, strict=True)]
    after_right = [digits == label for digits, (_, _, label) in zip(after_read, held, strict=True)]
    metrics = result["metrics"]
    return {
        "split": seed,
        "writers": len({u for u, _, _ in sent}),
        "run": result["status"],
        "reason": result["reason"],
        "report": result["report"],
        "corrected": len(corrected),
        "corrected_right_after": sum(
            now == label for now, (_, label) in zip(corrected_read, corrected, strict=True)
        ),
        "corrected_still_wrong": [
            f"{p.name}: {label}, read {now or 'no digit'}"
            for now, (p, label) in zip(corrected_read, corrected, strict=True)
            if now != label
        ],
        "sent_unreadable": unreadable,
        "held_out": len(held),
        "held_out_right_before": sum(before_right),
        "held_out_right_after": sum(after_right),
        "errors_fixed": sum(a and not b for b, a in zip(before_right, after_right, strict=True)),
        "new_errors": sum(b and not a for b, a in zip(before_right, after_right, strict=True)),
        "changed": [  # held-out images now read otherwise: what to look at
            f"{path.name}: {label}, read {was or 'no digit'} -> {now or 'no digit'}"
            for (_, path, label), was, now in zip(held, before_read, after_read, strict=True)
            if now != was
        ],
        "mnist_before": metrics["active_mnist"],
        "mnist_after": metrics["candidate_mnist"],
        "run_seconds": round(seconds, 1),
    }


def real_table(splits: list[dict]) -> str:
    lines = [
        "| split | corrected images right after | held-out right before -> after | errors fixed | "
        "new errors | MNIST before -> after | run | run time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in splits:
        lines.append(
            f"| {s['split']} | {s['corrected_right_after']}/{s['corrected']} | "
            f"{s['held_out_right_before']}/{s['held_out']} -> {s['held_out_right_after']}/{s['held_out']} | "
            f"{s['errors_fixed']}/{s['held_out'] - s['held_out_right_before']} | {s['new_errors']} | "
            f"{s['mnist_before']:.2%} -> {s['mnist_after']:.2%} | {s['run']} | {s['run_seconds']:.0f} s |"
        )
    corrected = sum(s["corrected"] for s in splits)
    errors = sum(s["held_out"] - s["held_out_right_before"] for s in splits)
    lines.append(
        f"| all | {sum(s['corrected_right_after'] for s in splits)}/{corrected} | | "
        f"{sum(s['errors_fixed'] for s in splits)}/{errors} | {sum(s['new_errors'] for s in splits)} | | | |"
    )
    return "\n".join(lines)


def styles_kept(args: argparse.Namespace, shipped: Recognizer, tmp: Path) -> dict:
    mnist = load_mnist(args.mnist_dir)
    ones_and_sevens = np.isin(mnist.y_test, [1, 7])
    x, y = add_writing_styles(
        mnist.x_test[ones_and_sevens], mnist.y_test[ones_and_sevens], 1.0, seed=5, touching=0.0
    )
    drawn_x, drawn_y = to_model_input(x[ones_and_sevens.sum() :]), y[ones_and_sevens.sum() :]
    store = fresh_store(tmp / "styles")
    result, seconds = one_run(tmp / "styles", args.mnist_dir)
    after = load_active(store, tmp / "styles", shipped.min_confidence).current()[0]

    def right(model: Recognizer, digit: int) -> float:
        read = model.probabilities(drawn_x[drawn_y == digit]).argmax(axis=1)
        return round(float((read == digit).mean()), 4)

    return {
        "run": result["status"],
        "continental_1s_before": right(shipped, 1),
        "continental_1s_after": right(after, 1),
        "crossed_7s_before": right(shipped, 7),
        "crossed_7s_after": right(after, 7),
        "mnist_before": result["metrics"]["active_mnist"],
        "mnist_after": result["metrics"]["candidate_mnist"],
        "run_seconds": round(seconds, 1),
    }


def font_photos(n: int, fonts: list[Path], seed: int) -> list:
    """Single digits in the users' handwriting (fonts), on paper, through the photo generator."""
    from bench.synth import make_photo

    rng = np.random.default_rng(seed)
    return [
        make_photo(str(rng.integers(10)), "font", rng, np.zeros((1, 28, 28)), np.zeros(1), fonts)
        for _ in range(n)
    ]


def accuracy(rec: Recognizer, shots: list) -> float:
    return float(np.mean([rec.read(p.jpeg).digits == p.label for p in shots]))


def font_bench(args: argparse.Namespace, shipped: Recognizer, tmp: Path) -> dict:
    from bench.synth import find_fonts

    fonts = find_fonts()
    if len(fonts) < 2:
        raise SystemExit("too few handwriting fonts: apt-get install fonts-dkg-handwriting fonts-breip ...")
    corrected_fonts, fresh_fonts = fonts[::2], fonts[1::2]  # fresh photos: fonts nobody corrected
    test_set = font_photos(args.test_photos, fresh_fonts, seed=1000)
    report: dict = {
        "corrected_fonts": [f.name for f in corrected_fonts],
        "fresh_fonts": [f.name for f in fresh_fonts],
        "before": accuracy(shipped, test_set),
    }
    store = fresh_store(tmp / "learn")
    sent = font_photos(args.photos, corrected_fonts, seed=1)
    report["corrections_sent"] = sum(
        give_feedback(store, shipped, p.jpeg, p.label, 11 + i % 3, confirm=True) for i, p in enumerate(sent)
    )
    result, seconds = one_run(tmp / "learn", args.mnist_dir)
    after = load_active(store, tmp / "learn", shipped.min_confidence).current()[0]
    report.update(
        run=result["status"],
        run_seconds=round(seconds, 1),
        after=accuracy(after, test_set),
        mnist_before=result["metrics"]["active_mnist"],
        mnist_after=result["metrics"]["candidate_mnist"],
    )
    return report


def poisoning(args: argparse.Namespace, shipped: Recognizer, tmp: Path) -> dict:
    """`--poison N`: N accounts send photos of MNIST test digits, each "corrected" to the next digit."""
    from bench.synth import make_photo

    mnist = load_mnist(args.mnist_dir)
    rng = np.random.default_rng(2)
    store = fresh_store(tmp / "poison")
    for i in range(args.photos):
        label = str(rng.integers(10))
        photo = make_photo(label, "clean", rng, mnist.x_test, mnist.y_test, [])
        give_feedback(store, shipped, photo.jpeg, str((int(label) + 1) % 10), 666 + i % args.poison, False)
    result, seconds = one_run(tmp / "poison", args.mnist_dir)
    # Did the lie take, promoted or not? Fresh photos of the same kind, read by the run's candidate.
    candidate = load_version(store, store.model_versions()[-1], tmp / "poison", shipped.min_confidence)
    fresh = [
        make_photo(str(rng.integers(10)), "clean", rng, mnist.x_test, mnist.y_test, []) for _ in range(200)
    ]
    read = {
        name: [model.read(p.jpeg).digits for p in fresh]
        for name, model in (("before", shipped), ("candidate", candidate))
    }
    return {
        "accounts": args.poison,
        "photos": args.photos,
        "run": result["status"],
        "reason": result["reason"],
        "report": result["report"],
        "seconds": round(seconds, 1),
        "mnist_before": result["metrics"]["active_mnist"],
        "mnist_after": result["metrics"]["candidate_mnist"],
        "active_version_after": store.active_model().version,
        "fresh_photos_read_right": {
            name: np.mean([d == p.label for d, p in zip(digits, fresh, strict=True)])
            for name, digits in read.items()
        },
        "fresh_photos_read_as_the_lie": np.mean(
            [d == str((int(p.label) + 1) % 10) for d, p in zip(read["candidate"], fresh, strict=True)]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--real", type=Path, help="labelled real images (labels.csv), one source per writer")
    parser.add_argument("--splits", type=int, default=3, help="with --real: random halvings to run")
    parser.add_argument("--photos", type=int, default=300, help="fonts: photos the users send and correct")
    parser.add_argument("--test-photos", type=int, default=300, help="fonts: fresh photos to measure on")
    parser.add_argument("--poison", type=int, metavar="ACCOUNTS", help="wrong corrections from N accounts")
    parser.add_argument("--styles", action="store_true", help="does a run keep continental 1s, crossed 7s?")
    parser.add_argument("--mnist-dir")
    args = parser.parse_args()
    load_mnist(args.mnist_dir)  # fail early with the clear message
    shipped = Recognizer.load()
    with tempfile.TemporaryDirectory() as tmp:
        if args.poison:
            print(json.dumps(poisoning(args, shipped, Path(tmp)), indent=2))
        elif args.styles:
            print(json.dumps(styles_kept(args, shipped, Path(tmp)), indent=2))
        elif args.real:
            splits = [
                real_split(args.real, seed, args.mnist_dir, shipped, Path(tmp)) for seed in range(args.splits)
            ]
            print(json.dumps(splits, indent=2))
            print(real_table(splits))
        else:
            print(json.dumps(font_bench(args, shipped, Path(tmp)), indent=2))


if __name__ == "__main__":
    main()
