"""A 2D U-Net for whole-tumour segmentation of BraTS slices, in Keras 3 (TensorFlow by default)."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from fedrun.runners.keras import KerasTaskRunner

SMOOTH = 1.0


@keras.saving.register_keras_serializable(package="fedrun_tf_2dunet")
def soft_dice_loss(y_true: Any, y_pred: Any) -> Any:
    """1 - soft Dice of each image (smoothed, so empty masks give 0 loss when predicted empty)."""
    y_true = ops.cast(y_true, y_pred.dtype)
    axes = tuple(range(1, len(y_pred.shape)))
    intersection = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return 1.0 - (2.0 * intersection + SMOOTH) / (total + SMOOTH)


@keras.saving.register_keras_serializable(package="fedrun_tf_2dunet")
def dice_bce_loss(y_true: Any, y_pred: Any) -> Any:
    """Soft Dice loss plus pixel-wise binary cross-entropy (stable early in training)."""
    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))
    return soft_dice_loss(y_true, y_pred) + bce


@keras.saving.register_keras_serializable(package="fedrun_tf_2dunet")
class DiceCoefficient(keras.metrics.Metric):
    """Dice of the thresholded prediction over the whole data set: 2|P and T| / (|P| + |T|).

    Counts are summed over every batch before dividing, so slices without tumour do not drag
    the score to 0 or 1 one by one. 1.0 when both prediction and truth are empty.
    """

    def __init__(self, threshold: float = 0.5, name: str = "dice", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.threshold = float(threshold)
        self.intersection = self.add_variable(shape=(), initializer="zeros", name="intersection")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        truth = ops.cast(ops.greater(y_true, 0.5), "float32")
        guess = ops.cast(ops.greater(y_pred, self.threshold), "float32")
        self.intersection.assign_add(ops.sum(truth * guess))
        self.total.assign_add(ops.sum(truth) + ops.sum(guess))

    def result(self) -> Any:
        return ops.where(
            ops.greater(self.total, 0.0),
            2.0 * self.intersection / ops.maximum(self.total, 1.0),
            1.0,
        )

    def reset_state(self) -> None:
        self.intersection.assign(0.0)
        self.total.assign(0.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "threshold": self.threshold}


class TensorFlow2DUNet(KerasTaskRunner):
    """U-Net: ``depth`` encoder levels of two 3x3 ReLU convolutions and 2x2 max pooling
    (``base_filters`` doubling per level), a bottleneck, a mirrored decoder of 2x2 transposed
    convolutions with skip connections, and a 1x1 sigmoid output. Loss: soft Dice + binary
    cross-entropy; metric ``dice``; Adam (``learning_rate``, default 1e-3). The input side must
    be divisible by 2**depth.
    """

    def __init__(
        self,
        base_filters: int = 16,
        depth: int = 4,
        learning_rate: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model = self.build_model(
            self.feature_shape, int(base_filters), int(depth), float(learning_rate)
        )
        self.initialize_tensorkeys_for_functions()

    def build_model(
        self,
        input_shape: tuple[int, ...],
        base_filters: int = 16,
        depth: int = 4,
        learning_rate: float = 1e-3,
    ) -> keras.Model:
        side = int(input_shape[0])
        if side % (2**depth):
            raise ValueError(
                f"the U-Net input side {side} is not divisible by 2**depth = {2**depth}; "
                "change data_loader image_size or task_runner depth"
            )

        def block(x: Any, filters: int, name: str) -> Any:
            for i in (1, 2):
                x = layers.Conv2D(
                    filters,
                    3,
                    padding="same",
                    activation="relu",
                    kernel_initializer="he_normal",
                    name=f"{name}_conv{i}",
                )(x)
            return x

        inputs = keras.Input(shape=input_shape, name="mri")
        skips = []
        x = inputs
        for level in range(depth):
            x = block(x, base_filters * 2**level, f"down{level}")
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
        x = block(x, base_filters * 2**depth, "bottom")
        for level in reversed(range(depth)):
            filters = base_filters * 2**level
            x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}_upconv")(x)
            x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
            x = block(x, filters, f"up{level}")
        outputs = layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x)
        model = keras.Model(inputs, outputs, name="unet2d")
        model.compile(
            loss=dice_bce_loss,
            optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
            metrics=[DiceCoefficient(name="dice")],
        )
        return model
