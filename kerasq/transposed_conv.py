"""Transposed convolution with output channels last in its kernel, as kerasq quantizes Conv2DTranspose.

Keras keeps a ``Conv2DTranspose`` kernel as ``[h, w, out, in]``. Every weight quantizer, folded
batch norm and per-channel scale in kerasq reads output channels on the kernel's last axis, so
``quantize_model`` replaces each ``Conv2DTranspose`` (``kerasq.layer_table``, role ``"split"``)
by a ``TransposedConv2D`` that computes the same function from the same weights stored as
``[h, w, in, out]``. TFLite runs it as TRANSPOSE_CONV.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kerasq.compat import keras, tf
from kerasq.registry import register

__all__ = ["TransposedConv2D", "from_conv2d_transpose", "unsupported_transpose_reason"]


@register("layer")
class TransposedConv2D(keras.layers.Layer):
    """``Conv2DTranspose`` with a ``[h, w, in, out]`` kernel (no dilation, no output padding).

    Output size per spatial axis: ``n·s`` for ``"same"``, ``(n - 1)·s + k`` for ``"valid"``
    (``n`` input size, ``s`` stride, ``k`` kernel size), as ``Conv2DTranspose`` computes it.

    Args:
      filters: output channels. kernel_size, strides: two ints (or one for both).
      padding: ``"same"`` or ``"valid"``. use_bias: add a bias per output channel.
      activation: a Keras activation (kerasq moves it into the quantized wrapper).
    """

    def __init__(self, filters: int, kernel_size, strides=(1, 1), padding: str = "valid", use_bias: bool = True,
                 activation=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size)
        self.strides = _pair(strides)
        self.padding = padding.lower()
        if self.padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid'. Received: padding={padding!r}")
        self.use_bias = bool(use_bias)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.kernel = self.add_weight("kernel", shape=(*self.kernel_size, channels, self.filters), initializer="glorot_uniform")
        self.bias = self.add_weight("bias", shape=(self.filters,), initializer="zeros") if self.use_bias else None
        self.built = True

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.padding == "same":
            return height * self.strides[0], width * self.strides[1]
        return (height - 1) * self.strides[0] + self.kernel_size[0], (width - 1) * self.strides[1] + self.kernel_size[1]

    def transposed(self, inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        """The transposed convolution of ``inputs`` with a ``[h, w, in, out]`` ``kernel`` (any float dtype), no bias."""
        height, width = self.output_size(int(inputs.shape[1]), int(inputs.shape[2]))
        output_shape = tf.stack([tf.shape(inputs)[0], height, width, self.filters])
        return tf.nn.conv2d_transpose(
            inputs, tf.transpose(kernel, [0, 1, 3, 2]), output_shape, [1, *self.strides, 1], self.padding.upper()
        )

    def call(self, inputs):
        y = self.transposed(inputs, self.kernel)
        if self.use_bias:
            y = y + self.bias
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        height, width = self.output_size(int(input_shape[1]), int(input_shape[2]))
        return tf.TensorShape([input_shape[0], height, width, self.filters])

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "use_bias": self.use_bias,
            "activation": keras.activations.serialize(self.activation),
        }


def _pair(value) -> tuple[int, int]:
    values = (value, value) if isinstance(value, int) else tuple(value)
    return int(values[0]), int(values[1])


def unsupported_transpose_reason(layer: keras.layers.Layer) -> str | None:
    """Why a ``Conv2DTranspose`` cannot run as TRANSPOSE_CONV, or None."""
    if layer.data_format != "channels_last":
        return "only channels_last data is supported"
    if tuple(layer.dilation_rate) != (1, 1):
        return "a dilated transposed convolution has no TFLite kernel"
    if layer.output_padding is not None:
        return "output_padding is not supported (TRANSPOSE_CONV sizes its output from padding and strides)"
    if getattr(layer, "groups", 1) != 1:
        return "grouped transposed convolution has no TFLite kernel"
    return None


def from_conv2d_transpose(layer: keras.layers.Layer) -> list[tuple[keras.layers.Layer, list[np.ndarray]]]:
    """The ``TransposedConv2D`` (same name, weights ``[h, w, out, in]`` → ``[h, w, in, out]``) replacing ``layer``."""
    config = layer.get_config()
    replacement = TransposedConv2D(
        config["filters"], config["kernel_size"], config["strides"], config["padding"], config["use_bias"],
        config["activation"], name=layer.name,
    )
    weights = layer.get_weights()
    return [(replacement, [np.transpose(weights[0], (0, 1, 3, 2)), *weights[1:]])]
