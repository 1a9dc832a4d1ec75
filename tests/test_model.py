import json
import threading

import keras
import numpy as np
import pytest

from bot.cli import main
from recognizer import NOT_ONE_DIGIT, Prediction, Recognizer
from recognizer.evaluate import evaluate_arrays
from recognizer.model import build_model
from tests.conftest import MNIST_DIR, ROOT


def test_model_contract():
    model = build_model()
    out = model(np.zeros((2, 28, 28, 1), np.float32))
    assert out.shape == (2, 10)
    np.testing.assert_allclose(np.asarray(out).sum(axis=1), 1.0, rtol=1e-5)


def test_quick_training_learns(tiny_model, test_images):
    x, y = test_images
    evaluation = evaluate_arrays(keras.models.load_model(tiny_model), x, y)
    assert evaluation.accuracy > 0.6, evaluation.accuracy  # chance is 0.1
    card = json.loads(tiny_model.with_suffix(".json").read_text())
    assert card["config"]["limit"] == 3000 and card["epochs_run"] == 3 and card["seed"] == 42
    assert set(card["data"]["sha256"]) == {f.name for f in MNIST_DIR.iterdir() if "ubyte" in f.name}
    assert len(card["test"]["per_class_accuracy"]) == 10
    assert "Per-class accuracy" in tiny_model.with_suffix(".md").read_text()


def test_fine_tune_starts_from_a_model_and_says_so(tiny_model, tmp_path):
    import hashlib

    output = tmp_path / "tuned.keras"
    args = ["train", "--mnist-dir", str(MNIST_DIR), "--limit", "600", "--epochs", "1"]
    assert main([*args, "--init-from", str(tiny_model), "--output", str(output)]) == 0
    card = json.loads(output.with_suffix(".json").read_text())
    assert card["init_from"]["sha256"] == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert card["init_from"]["command"].startswith("digitbot train")
    assert "Fine-tuned from a model with sha256" in output.with_suffix(".md").read_text()
    # Started from a trained model, one epoch on 540 images keeps most of what it knew.
    assert card["test"]["accuracy"] > 0.6


def test_a_failed_training_leaves_the_model_it_would_replace(tiny_model, tmp_path, monkeypatch):
    import recognizer.train

    class Killed(Exception):
        pass

    class KillAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise Killed

    real_fit = recognizer.train.fit
    monkeypatch.setattr(
        recognizer.train, "fit", lambda *a, **k: real_fit(*a, **k, extra_callbacks=[KillAfterFirstEpoch()])
    )
    output = tmp_path / "digitbot.keras"
    output.write_bytes(tiny_model.read_bytes())
    with pytest.raises(Killed):
        main(
            [
                "train",
                "--mnist-dir",
                str(MNIST_DIR),
                "--limit",
                "600",
                "--epochs",
                "3",
                "--output",
                str(output),
            ]
        )
    assert output.read_bytes() == tiny_model.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["digitbot.keras"]


def test_writing_styles_add_continental_ones_and_crossed_sevens(mnist):
    from recognizer.augment import add_writing_styles

    x, y = mnist.x_train[:1000], mnist.y_train[:1000]
    more_x, more_y = add_writing_styles(x, y, share=0.5, seed=1)
    added = more_y[len(y) :]
    assert np.array_equal(more_x[: len(x)], x) and more_x.dtype == np.uint8
    assert (added == 1).sum() == round(0.5 * (y == 1).sum()) and (added == 7).sum() == round(
        0.5 * (y == 7).sum()
    )
    new_ones = more_x[len(x) :][added == 1].astype(np.float32)
    # The up-stroke puts ink left of the stem, low in the top half, where a plain MNIST 1 has little.
    plain_ones = x[y == 1].astype(np.float32)
    assert new_ones[:, 8:14, 4:12].mean() > 1.5 * plain_ones[:, 8:14, 4:12].mean()


def test_touching_digits_are_one_mark_of_two_or_three_digits(mnist):
    from scipy import ndimage

    from recognizer.augment import _written_after, add_writing_styles

    rng = np.random.default_rng(0)
    tall, short = np.ones((40, 6), bool), np.ones((30, 6), bool)
    for _ in range(20):
        number = _written_after(tall, short, rng)
        # one mark: the second bar, a little higher or lower, slid left until it touches the first, or a
        # little over it
        assert ndimage.label(number, np.ones((3, 3)))[1] == 1
        assert 12 - round(0.08 * 40) <= np.any(number, axis=0).sum() <= 12
    x, y = mnist.x_train[:1000], mnist.y_train[:1000]
    more_x, more_y = add_writing_styles(x, y, seed=1)
    marks = more_x[more_y == NOT_ONE_DIGIT]
    assert len(marks) == 70 and marks.dtype == np.uint8 and more_y.dtype == np.int64
    # made as the pipeline makes one mark: fit into 20x20 keeping its aspect, most wider than tall
    columns = (marks > 0).any(axis=1).sum(axis=1)
    rows = (marks > 0).any(axis=2).sum(axis=1)
    assert np.median(columns) == 20 and np.median(rows) < 18


def test_save_load_round_trip_predicts_identically(tiny_model, test_images, tmp_path):
    x, _ = test_images
    model = keras.models.load_model(tiny_model)
    copy = tmp_path / "copy.keras"
    model.save(copy)
    np.testing.assert_array_equal(
        model.predict(x[:200], verbose=0), keras.models.load_model(copy).predict(x[:200], verbose=0)
    )


def test_classify_single_and_batch(tiny_model, test_images):
    x, _ = test_images
    rec = Recognizer.load(tiny_model)
    reference = keras.models.load_model(tiny_model).predict(x[:32], verbose=0)
    single = rec.classify(x[0, :, :, 0])
    assert isinstance(single, Prediction)
    assert single.digit == int(reference[0].argmax())
    np.testing.assert_allclose(single.probabilities, reference[0], atol=1e-5)
    assert single.confidence == pytest.approx(max(single.probabilities))
    batch = rec.classify(x[:32])
    assert [p.digit for p in batch] == list(reference.argmax(axis=1))
    assert rec.classify(x[:1, :, :, 0])[0].digit == single.digit  # a batch of one stays a list


def test_classify_rejects_wrong_shapes(tiny_model):
    with pytest.raises(ValueError, match="28x28"):
        Recognizer.load(tiny_model).classify(np.zeros((32, 32)))


def test_classify_is_thread_safe(tiny_model, test_images):
    x, _ = test_images
    rec = Recognizer.load(tiny_model)
    expected = [p.digit for p in rec.classify(x[:64])]
    results: dict[int, list[int]] = {}

    def worker(k: int) -> None:
        results[k] = [rec.classify(x[i]).digit for i in range(64)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[k] == expected for k in range(8))


def test_evaluate_json_and_report(tiny_model, tmp_path, capsys):
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tiny_model),
                "--mnist-dir",
                str(MNIST_DIR),
                "--json",
                "--report-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"accuracy", "loss", "per_class", "model"} <= result.keys()
    assert 0.6 < result["accuracy"] <= 1 and result["model"] == str(tiny_model)
    assert set(result["per_class"]) == {str(d) for d in range(10)}
    for name in ("confusion_matrix", "sample_predictions", "confident_mistakes", "training_curves"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_shipped_model_reaches_target_with_plain_keras(mnist):
    """The shipped .keras file, loaded by plain Keras, matches its card and the >= 99.6% target."""
    path = ROOT / "models" / "digitbot.keras"
    card = json.loads(path.with_suffix(".json").read_text())
    model = keras.models.load_model(path)
    predicted = model.predict(mnist.x_test[..., None].astype("float32") / 255, batch_size=1000, verbose=0)
    accuracy = float((predicted.argmax(axis=1) == mnist.y_test).mean())
    assert accuracy >= 0.996
    assert accuracy == pytest.approx(card["test"]["accuracy"], abs=1e-9)
