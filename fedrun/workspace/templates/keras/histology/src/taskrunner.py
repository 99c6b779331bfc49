"""A compact Keras CNN for the eight tissue classes of the colorectal histology tiles."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from fedrun.runners.keras import KerasTaskRunner


class KerasHistologyCNN(KerasTaskRunner):
    """Four strided 3x3 convolutions (32-64-128-128 filters, batch norm with momentum 0.9 so its
    statistics settle within a round, ReLU), global average
    pooling, dropout 0.3, softmax over the classes; Adam (``learning_rate``, default 1e-3),
    sparse categorical cross-entropy, accuracy. Layer names are fixed, so every process names
    the weights alike.
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
        inputs = keras.Input(shape=input_shape, name="tile")
        x = inputs
        for index, filters in enumerate((32, 64, 128, 128), start=1):
            x = layers.Conv2D(
                filters, 3, strides=2, padding="same", use_bias=False, name=f"conv{index}"
            )(x)
            x = layers.BatchNormalization(momentum=0.9, name=f"bn{index}")(x)
            x = layers.ReLU(name=f"relu{index}")(x)
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        x = layers.Dropout(0.3, name="dropout")(x)
        outputs = layers.Dense(num_classes, activation="softmax", name="classes")(x)
        model = keras.Model(inputs, outputs, name="histology_cnn")
        model.compile(
            loss="sparse_categorical_crossentropy",
            optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
            metrics=["accuracy"],
        )
        return model
