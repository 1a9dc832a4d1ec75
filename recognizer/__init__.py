"""Images -> digits: MNIST data, the CNN, training, evaluation and photo preprocessing."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter is not our log

from recognizer.classify import DEFAULT_MODEL, Prediction, Reading, Recognizer
from recognizer.images import ImageError

__all__ = ["DEFAULT_MODEL", "ImageError", "Prediction", "Reading", "Recognizer"]
