"""The CNN: the original report's Conv2D/MaxPooling2D/Dense network, made strong with batch norm, dropout."""

from __future__ import annotations

import keras
from keras import layers


def conv_block(x, filters: int, convs: int, dropout: float):
    for _ in range(convs):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
    x = layers.MaxPooling2D(2)(x)
    return layers.Dropout(dropout)(x)


def build_model() -> keras.Model:
    """float32 (N, 28, 28, 1) in [0, 1], white ink on black -> 10 probabilities."""
    inputs = keras.Input(shape=(28, 28, 1), name="digit")
    x = conv_block(inputs, 32, convs=2, dropout=0.2)  # 14x14
    x = conv_block(x, 64, convs=2, dropout=0.3)  # 7x7
    x = conv_block(x, 128, convs=1, dropout=0.4)  # 3x3
    x = layers.Flatten()(x)
    x = layers.Dense(128, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="digitbot_cnn")
