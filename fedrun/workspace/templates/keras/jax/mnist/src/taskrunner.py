"""OpenFL's Keras MNIST CNN: two strided convolutions, a dense layer, softmax over 10 digits."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from fedrun.runners.keras import KerasTaskRunner


class KerasCNN(KerasTaskRunner):
    """Conv2D(16, 4x4, stride 2) -> Conv2D(32, 4x4, stride 2) -> Dense(100) -> Dense(10).

    ReLU activations, softmax output, categorical cross-entropy, Adam (``learning_rate``,
    default 1e-3), accuracy metric. Layers have fixed names, so every process names the
    weights alike (``mnist_cnn/conv1/kernel``, ...).
    """

    def __init__(self, learning_rate: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = self.build_model(
            self.feature_shape, self.data_loader.num_classes, learning_rate=learning_rate
        )
        self.initialize_tensorkeys_for_functions()

    def build_model(
        self, input_shape: tuple[int, ...], num_classes: int, learning_rate: float = 1e-3
    ) -> keras.Model:
        model = keras.Sequential(
            [
                keras.Input(shape=input_shape, name="image"),
                layers.Conv2D(16, (4, 4), strides=2, activation="relu", name="conv1"),
                layers.Conv2D(32, (4, 4), strides=2, activation="relu", name="conv2"),
                layers.Flatten(name="flatten"),
                layers.Dense(100, activation="relu", name="dense1"),
                layers.Dense(num_classes, activation="softmax", name="classes"),
            ],
            name="mnist_cnn",
        )
        model.compile(
            loss="categorical_crossentropy",
            optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
            metrics=["accuracy"],
        )
        return model
