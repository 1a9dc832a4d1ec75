"""Images -> digits: MNIST data, the CNN, training, evaluation and photo preprocessing."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter is not our log

__all__ = ["DEFAULT_MODEL", "ImageError", "Prediction", "Reading", "Recognizer"]


def __getattr__(name: str):
    # Lazy, so that `recognizer.data` or `recognizer.images` alone do not pay TensorFlow's import time.
    if name == "ImageError":
        from recognizer.images import ImageError

        return ImageError
    if name in __all__:
        from recognizer import classify

        return getattr(classify, name)
    raise AttributeError(f"module 'recognizer' has no attribute {name!r}")
