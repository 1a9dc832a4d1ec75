"""digitbot reads handwritten digits from photos: train and evaluate its model, read photos, run the
Telegram bot, and fine-tune the model on users' corrections."""

# Each subcommand imports only what it needs: `digitbot db` should not wait for TensorFlow.

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from recognizer.devices import STRATEGIES

log = logging.getLogger("digitbot")


class UserError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""


def cmd_train(args: argparse.Namespace) -> int:
    from recognizer.data import load_mnist
    from recognizer.train import TrainConfig, train

    if args.strategy == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise UserError("--strategy multiworker needs TF_CONFIG naming the workers (see the README)")
        if args.tensorboard:
            raise UserError("--tensorboard is not offered with --strategy multiworker")
    options = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "validation_split": args.validation_split,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "limit": args.limit,
        "patience": args.patience,
        "tensorboard_dir": args.tensorboard,
        "init_from": args.init_from and str(args.init_from),
        "strategy": args.strategy,
        "worker_timeout": args.worker_timeout,
    }
    config = TrainConfig(
        augment=not args.no_augment,
        styles=not args.no_styles,
        **{k: v for k, v in options.items() if v is not None},
    )
    mnist = load_mnist(args.mnist_dir)
    card = train(mnist, config, args.output, command=args.command)
    if card is None:
        print("training done - this worker writes nothing, the chief writes the model and card")
        return 0
    print(f"test accuracy {card['test']['accuracy']:.4f} - model and card written to {args.output}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import keras

    from recognizer import DEFAULT_MODEL
    from recognizer.data import load_mnist, to_model_input
    from recognizer.evaluate import evaluate_arrays, write_report
    from recognizer.train import load_model_card

    model_path = Path(args.model or DEFAULT_MODEL)
    if not model_path.is_file():
        raise UserError(f"no model at {model_path}; train one with `digitbot train` or pass --model")
    mnist = load_mnist(args.mnist_dir)
    x = to_model_input(mnist.x_test)
    model = keras.models.load_model(model_path, compile=False, safe_mode=True)
    evaluation = evaluate_arrays(model, x, mnist.y_test)
    print(f"model     {model_path}")
    print(f"accuracy  {evaluation.accuracy:.4f} ({evaluation.count_correct}/{len(x)})")
    print(f"loss      {evaluation.loss:.4f}")
    print("digit  precision  recall  support")
    for digit, row in evaluation.per_class().items():
        print(f"{digit:>5}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['support']:7d}")
    if args.report_dir:
        card = load_model_card(model_path)
        for path in write_report(evaluation, x, Path(args.report_dir), card and card.get("history")):
            print(f"wrote {path}")
    if args.json:
        result = evaluation.as_dict()
        print(json.dumps({"model": str(model_path), **result}))
    return 0


def _image_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            files.append(path)
    return files


def save_what_i_saw(out_dir: Path, stem: str, gray, reading) -> None:
    """The bot's 🔍 What I saw picture: the photo with a box per digit, beside the 28x28 inputs and top-3."""
    from recognizer.report import what_i_saw

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.png").write_bytes(what_i_saw(gray, reading))


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bot.handlers import headline
    from bot.settings import load_settings
    from recognizer import ImageError, Recognizer
    from recognizer.images import decode_image

    files = _image_files(args.paths)
    if not files:
        raise UserError("no files to read")
    threshold = args.min_confidence if args.min_confidence is not None else load_settings().min_confidence
    rec = Recognizer.load(args.model, threshold)
    failures = 0
    for index, path in enumerate(tqdm(files, unit="photo", disable=None if len(files) > 1 else True)):
        try:
            gray = decode_image(path)
            reading = rec.read(gray)
        except (ImageError, OSError) as exc:
            failures += 1
            message = str(exc) if isinstance(exc, ImageError) else exc.strerror or str(exc)
            result = {"file": str(path), "digits": "", "confidence": 0.0, "status": "error", "error": message}
            tqdm.write(json.dumps(result) if args.json else f"{path}: error: {message}")
            continue
        if args.debug_dir:
            save_what_i_saw(args.debug_dir, f"{index:04d}_{path.stem}", gray, reading)
        tqdm.write(
            json.dumps({"file": str(path), **reading.as_dict()})
            if args.json
            else f"{path}: {headline(reading.digits, reading.confidence, reading.status)}"
        )
    return 1 if failures else 0


def cmd_db(args: argparse.Namespace) -> int:
    from bot.settings import load_settings
    from storage.db import downgrade, make_engine, upgrade
    from storage.repository import Store

    engine = make_engine(args.database_url or load_settings().resolved_database_url())
    if args.action == "upgrade":
        upgrade(engine)
        print(f"database at the newest schema: {engine.url.render_as_string(hide_password=True)}")
    elif args.action == "downgrade":
        downgrade(engine, args.revision)
        print(f"database downgraded to {args.revision}")
    else:
        upgrade(engine)
        print(f"dropped the stored images of {Store(engine).purge_samples(args.older_than)} predictions")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bot.app import StartError, run
    from bot.settings import load_settings

    overrides = {"webhook_url": args.webhook} if args.webhook else {}
    try:
        run(load_settings(**overrides))
    except StartError as exc:
        raise UserError(str(exc)) from None
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from bot.learning import result_text, retrain
    from bot.model_store import install_shipped_model
    from bot.settings import load_settings
    from storage.db import connect
    from storage.repository import Store

    settings = load_settings()
    run_id = args.run_id
    if run_id is None:
        store = Store(connect(settings.resolved_database_url()))
        store.fail_stale_runs()
        install_shipped_model(store, settings.data_dir)
        run_id = store.claim_run("cli", settings.run_lease)
        store.engine.dispose()
        if run_id is None:
            raise UserError("a fine-tuning run is already in progress")

    def progress(text: str) -> None:
        if args.json:
            print(json.dumps({"progress": text}), flush=True)
        else:
            log.info("%s", text)

    result = retrain(settings, run_id, progress)
    print(json.dumps({"result": result}) if args.json else result_text(run_id, result), flush=True)
    return 0 if result["status"] == "promoted" else 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digitbot", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def mnist_dir_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--mnist-dir",
            help="folder with the four MNIST IDX files (default: $DIGITBOT_MNIST_DIR, "
            "then ~/.keras/datasets/mnist.npz, then a download)",
        )

    train = commands.add_parser("train", help="train a model on MNIST and write its model card")
    mnist_dir_option(train)
    train.add_argument(
        "--output", type=Path, default=Path("models/digitbot.keras"), help="the .keras file to write"
    )
    # Defaults live in recognizer.train.TrainConfig; they are repeated in the help only.
    train.add_argument("--epochs", type=int, help="passes over the training data (30)")
    train.add_argument("--batch-size", type=int, help="images per step (128)")
    train.add_argument("--validation-split", type=float, help="fraction held out to choose the epoch (0.1)")
    train.add_argument(
        "--learning-rate", type=float, help="peak learning rate of the cosine schedule (0.002)"
    )
    train.add_argument("--seed", type=int, help="random seed for split, shuffling and augmentation (42)")
    train.add_argument("--limit", type=int, help="train on the first N training images only")
    train.add_argument("--patience", type=int, help="early stopping patience in epochs (10)")
    train.add_argument("--no-augment", action="store_true", help="train on the images as they are")
    train.add_argument(
        "--no-styles",
        action="store_true",
        help="do not add continental 1s, crossed 7s and touching digits to the training set",
    )
    train.add_argument(
        "--init-from",
        type=Path,
        metavar="MODEL",
        help="start from this .keras model (fine-tune) instead of scratch",
    )
    train.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard logs to DIR")
    train.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="default: one device (a GPU if TensorFlow sees one); mirrored: all GPUs of this machine; "
        "multiworker: all machines named in TF_CONFIG, the chief alone writes (--batch-size is then the "
        "global batch, split across them)",
    )
    train.add_argument(
        "--worker-timeout",
        type=float,
        metavar="SECONDS",
        help="multiworker: exit if the workers in TF_CONFIG have not all started within this time (300)",
    )
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="test accuracy, per-class metrics and plots")
    mnist_dir_option(evaluate)
    evaluate.add_argument("--model", type=Path, help="a .keras file (default: the shipped model)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    evaluate.add_argument("--report-dir", type=Path, help="write PNG plots to this folder")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser("predict", help="read the digits in photos (files or folders)")
    predict.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    predict.add_argument("--model", type=Path, help="a .keras file (default: the shipped model)")
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    predict.add_argument(
        "--debug-dir", type=Path, help="save what the model saw (boxes, 28x28 inputs, top-3) as PNG here"
    )
    predict.add_argument(
        "--min-confidence",
        type=float,
        help="below this a digit is reported as unsure (default: $DIGITBOT_MIN_CONFIDENCE or 0.7)",
    )
    predict.set_defaults(func=cmd_predict)

    run = commands.add_parser("run", help="start the Telegram bot (settings from the environment or .env)")
    run.add_argument(
        "--webhook",
        metavar="URL",
        help="receive updates on a webhook at this public URL "
        "(also DIGITBOT_WEBHOOK_URL, _PORT, _LISTEN, _SECRET) instead of long polling",
    )
    run.set_defaults(func=cmd_run)

    retrain = commands.add_parser(
        "retrain",
        help="fine-tune once on MNIST + the stored corrections, with the "
        "promotion gate (settings from the environment, like `run`)",
    )
    retrain.add_argument(
        "--run-id", type=int, help="carry out a run the bot already claimed (how the bot starts a run)"
    )
    retrain.add_argument(
        "--json", action="store_true", help="progress and result as JSON lines on stdout (for the bot)"
    )
    retrain.set_defaults(func=cmd_retrain)

    db = commands.add_parser("db", help="database schema and retention")
    db.add_argument(
        "--database-url", help="default: $DIGITBOT_DATABASE_URL, else SQLite in $DIGITBOT_DATA_DIR"
    )
    db_actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    db_actions.add_parser("upgrade", help="migrate the schema to the newest version (also done at start)")
    db_down = db_actions.add_parser("downgrade", help="undo migrations down to a revision")
    db_down.add_argument("revision", help='an Alembic revision id, or "base" for an empty database')
    db_purge = db_actions.add_parser("purge", help="drop stored images older than N days, keeping counts")
    db_purge.add_argument("--older-than", type=int, required=True, metavar="DAYS")
    db.set_defaults(func=cmd_db)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command = shlex.join(["digitbot", *(sys.argv[1:] if argv is None else argv)])  # for model cards
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from bot.model_store import ModelIntegrityError
    from bot.settings import ConfigError
    from recognizer.data import DataError

    try:
        return args.func(args)
    except (UserError, DataError, ConfigError, ModelIntegrityError) as exc:
        print(f"digitbot: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
