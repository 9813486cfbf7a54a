"""Small reference networks used by the demo, the benchmarks and the tests."""

from __future__ import annotations

from kerasq.compat import keras


def demo_cnn(
    input_shape: tuple[int, int, int] = (8, 8, 1), num_classes: int = 10, width: int = 16, softmax: bool = False
) -> keras.Model:
    """Conv+BN+ReLU → depthwise+BN+ReLU → pointwise+BN+ReLU → pool → dense (logits).

    The shape of a MobileNet block at toy size: every layer kind kerasq exports (Conv2D,
    DepthwiseConv2D, BatchNormalization folded, ReLU fused, MaxPooling2D, GlobalAveragePooling2D,
    Dense). ``input_shape`` is ``(height, width, channels)``; ~1.4k parameters at width 16.

    The model outputs logits by default (train with ``from_logits=True``): an int8 softmax output
    has a fixed 1/256 grid on which a 1-LSB difference of the logits becomes several LSBs, so
    deployed classifiers compare and argmax on logits. ``softmax=True`` appends the softmax.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    if input_shape[0] > 8:
        x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.Conv2D(2 * width, 1, use_bias=False, name="pw2")(x)
    x = keras.layers.BatchNormalization(name="bn3")(x)
    x = keras.layers.ReLU(name="relu3")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax" if softmax else None, name="fc")(x)
    return keras.Model(inputs, outputs, name="demo_cnn")
