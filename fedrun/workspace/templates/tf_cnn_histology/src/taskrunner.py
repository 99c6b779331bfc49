"""A VGG-style CNN for the colorectal histology tiles, in Keras 3 (TensorFlow by default)."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from fedrun.runners.keras import KerasTaskRunner


class TensorFlowCNN(KerasTaskRunner):
    """Four blocks of two 3x3 ReLU convolutions (16, 32, 64, 128 filters) and 2x2 max pooling,
    then flatten, Dense(64, ReLU), dropout 0.5 and softmax over the classes; Adam
    (``learning_rate``, default 1e-3), sparse categorical cross-entropy, accuracy.
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
        model = keras.Sequential(name="tf_histology_cnn")
        model.add(keras.Input(shape=input_shape, name="tile"))
        for block, filters in enumerate((16, 32, 64, 128), start=1):
            for conv in (1, 2):
                model.add(
                    layers.Conv2D(
                        filters,
                        3,
                        padding="same",
                        activation="relu",
                        name=f"block{block}_conv{conv}",
                    )
                )
            model.add(layers.MaxPooling2D(2, name=f"block{block}_pool"))
        model.add(layers.Flatten(name="flatten"))
        model.add(layers.Dense(64, activation="relu", name="dense"))
        model.add(layers.Dropout(0.5, name="dropout"))
        model.add(layers.Dense(num_classes, activation="softmax", name="classes"))
        model.compile(
            loss="sparse_categorical_crossentropy",
            optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
            metrics=["accuracy"],
        )
        return model
