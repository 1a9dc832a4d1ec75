"""Images -> digits: MNIST data, the CNN, training, evaluation and photo preprocessing."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter is not our log

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "digitbot.keras"  # the shipped model
MIN_CONFIDENCE = 0.7  # below this a digit is "unsure"; bench/photos.py shows the error/reject trade-off
# A training label for a mark that holds several digits, which a reading took for one (two touching digits):
# it is to be read as surely no one digit (train.targets), so that its halves win (classify._digits).
NOT_ONE_DIGIT = -1

__all__ = ["DEFAULT_MODEL", "NOT_ONE_DIGIT", "ImageError", "Prediction", "Reading", "Recognizer", "percent"]


def percent(value: float | None, decimals: int = 1, width: int = 0) -> str:
    """0.9712 -> "97.1%"; None (nothing measured yet) -> "n/a"; right-aligned in `width` characters."""
    return ("n/a" if value is None else f"{value:.{decimals}%}").rjust(width)


def __getattr__(name: str):
    # Lazy, so that `recognizer.data` or `recognizer.images` alone do not pay TensorFlow's import time.
    if name == "ImageError":
        from recognizer.images import ImageError

        return ImageError
    if name in ("Prediction", "Reading", "Recognizer"):
        from recognizer import classify

        return getattr(classify, name)
    raise AttributeError(f"module 'recognizer' has no attribute {name!r}")
