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


def vgg_cnn(input_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10, width: int = 16) -> keras.Model:
    """VGG-style 3x3 Conv+BN+ReLU stack: conv1 → pool → conv2 → conv3 → pool → conv4 → GAP → dense (logits).

    The benchmark network: plain convolutions as in the low-bit papers' MNIST/CIFAR models
    (BinaryConnect, TWN, DoReFa), so the hidden layers conv2..conv4 carry the sub-8-bit schemes
    while conv1 and fc stay int8 under the first/last policy. ``input_shape`` is
    ``(height, width, channels)`` (two 2x2 poolings: height and width ≥ 4); ~34k parameters at
    width 16, ~3.7M multiply-accumulates per 28x28 image.
    """

    def block(x, filters: int, name: str):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x)

    inputs = keras.Input(shape=input_shape, name="image")
    x = block(inputs, width, "conv1")
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = block(x, 2 * width, "conv2")
    x = block(x, 2 * width, "conv3")
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = block(x, 4 * width, "conv4")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, outputs, name="vgg_cnn")


def residual_concat_net(input_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10, width: int = 16) -> keras.Model:
    """A stem, a residual block, two concatenated branches and a linear-output conv head (logits).

    stem conv+BN+ReLU → pool → [conv+BN+ReLU → conv+BN (linear)] + skip → ReLU → concat(1x1 conv,
    3x3 conv) → pool → 3x3 conv (linear output) → GAP → dense. It holds the graph features
    integer export must get right: an ADD of two grids, a CONCATENATION whose inputs share one
    grid, signed (linear) conv outputs. ~30k parameters at width 16.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    y = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="res_a")(x)
    y = keras.layers.BatchNormalization(name="res_a_bn")(y)
    y = keras.layers.ReLU(name="res_a_relu")(y)
    y = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="res_b")(y)
    y = keras.layers.BatchNormalization(name="res_b_bn")(y)
    x = keras.layers.Add(name="res_add")([x, y])
    x = keras.layers.ReLU(name="res_relu")(x)
    a = keras.layers.Conv2D(width, 1, activation="relu", name="branch_a")(x)
    b = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="branch_b")(x)
    x = keras.layers.Concatenate(name="concat")([a, b])
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Conv2D(2 * width, 3, padding="same", name="head_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, outputs, name="residual_concat_net")


def resnet20(input_shape: tuple[int, int, int] = (32, 32, 3), num_classes: int = 10, width: int = 16) -> keras.Model:
    """The CIFAR ResNet-20 (He et al. 2016): a stem, three stages of three basic blocks, GAP, dense.

    Stages have ``width``, ``2·width``, ``4·width`` filters; the first block of stages 2 and 3
    halves the resolution and projects its shortcut with a strided 1x1 conv + BN. Each block is
    conv+BN+ReLU → conv+BN (a signed, linear output) → Add with the shortcut → ReLU: nine
    residual additions in a row, where any rounding the Keras model gets wrong compounds.
    ~0.27M parameters at width 16.
    """

    def block(x, filters: int, stride: int, name: str):
        y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
        y = keras.layers.BatchNormalization(name=f"{name}_bn1")(y)
        y = keras.layers.ReLU(name=f"{name}_relu1")(y)
        y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
        y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
        if stride != 1 or x.shape[-1] != filters:
            x = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
            x = keras.layers.BatchNormalization(name=f"{name}_proj_bn")(x)
        x = keras.layers.Add(name=f"{name}_add")([x, y])
        return keras.layers.ReLU(name=f"{name}_out")(x)

    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        for index in range(3):
            x = block(x, filters, 2 if (index == 0 and stage > 0) else 1, f"stage{stage + 1}_block{index + 1}")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, outputs, name="resnet20")

