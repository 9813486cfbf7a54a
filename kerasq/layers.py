"""Keras layers that carry quantizers: ``QuantizedLayer`` (a wrapper) and ``QuantizeInput``.

``QuantizedLayer`` runs the wrapped layer with its kernel replaced by ``Q(kernel)``, then the
activation, with fake quantization where the integer model rounds:

    y = A_q( act( P_q( z + sign(z)·r ) ) ),   z = layer(x; Q(W)·f)

``r`` (``rounding_offset``, per output channel, zero unless the exporter sets it) reproduces
a runtime's rounding: TFLite's built-in kernels requantize with two roundings, and for
non-negative values ``round(round(v·2^k)/2^k)`` equals ``floor(v + 1/2 + 2^-(k+1))``: one
rounding of ``v`` shifted by ``2^-(k+1)`` output steps. Adding ``sign(z)·r`` before the output
quantizer makes Keras round where the integer model does.

``f`` is an optional trainable per-output-channel scale: the ``γ/σ`` of a BatchNormalization
folded into the layer. Keeping it outside ``Q`` lets a per-tensor scheme (BWN, TWN, DoReFa)
quantize the layer's own weights as its paper does, with batch norm after the convolution,
while the integer model still has a single op: ``f`` multiplies the per-channel weight scales.

``P_q`` (pre-activation) exists only for activations TFLite runs as a separate op (softmax,
sigmoid, tanh); for the fusable ones (linear, ReLU, ReLU with a cap) ``A_q`` alone rounds the
output, exactly as a fused int8 kernel does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kerasq import ops
from kerasq.compat import keras, tf
from kerasq.registry import register
from kerasq.quantizers import (
    ActivationQuantizer,
    FixedRangeQuantizer,
    MovingAverageQuantizer,
    Quantizer,
    WeightGrid,
    WeightQuantizer,
    deserialize,
    serialize,
)

# Fixed int8 output grids TFLite uses for its non-fusable activation kernels.
_FIXED_OUTPUT_RANGES = {"softmax": (0.0, 255.0 / 256.0), "sigmoid": (0.0, 255.0 / 256.0), "tanh": (-1.0, 127.0 / 128.0)}


@dataclass(frozen=True)
class ActivationSpec:
    """An activation kerasq can quantize: ``linear``, ``relu`` (optionally capped), softmax, sigmoid, tanh.

    ``relu`` with ``max_value=6`` is ReLU6, with ``max_value=1`` ReLU1 (``min(max(x, 0), 1)``).
    """

    kind: str = "linear"
    max_value: float | None = None

    KINDS = ("linear", "relu", "softmax", "sigmoid", "tanh")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"Unsupported activation {self.kind!r}; kerasq quantizes {', '.join(self.KINDS)}.")
        if self.max_value is not None and (self.kind != "relu" or self.max_value <= 0):
            raise ValueError(f"max_value applies to a positive ReLU cap only. Received: {self}")

    @classmethod
    def from_keras(cls, activation: Any) -> "ActivationSpec":
        """From a Keras activation (function, name, ``ReLU``/``Activation``/``Softmax`` layer)."""
        if isinstance(activation, ActivationSpec):
            return activation
        if isinstance(activation, dict):
            return cls(**activation)
        if isinstance(activation, keras.layers.ReLU):
            cfg = activation.get_config()
            if cfg.get("negative_slope") or cfg.get("threshold"):
                raise ValueError(f"ReLU layer {activation.name!r} with a negative slope or threshold is not supported.")
            cap = cfg.get("max_value")
            return cls("relu", None if cap is None else float(cap))
        if isinstance(activation, keras.layers.Softmax):
            if activation.get_config().get("axis", -1) not in (-1,):
                raise ValueError(f"Softmax layer {activation.name!r} must act on the last axis.")
            return cls("softmax")
        if isinstance(activation, keras.layers.Activation):
            activation = activation.activation
        name = activation if isinstance(activation, str) else keras.activations.serialize(activation)
        if isinstance(name, dict):  # Keras may serialize a function as a config dict
            name = name.get("config", name.get("class_name"))
        if name is None:
            name = "linear"
        if name == "relu6":
            return cls("relu", 6.0)
        return cls(str(name))

    @property
    def fusable(self) -> bool:
        """True when int8 kernels apply it inside the preceding op (clamp of the output range)."""
        return self.kind in ("linear", "relu")

    def output_quantizer(self) -> FixedRangeQuantizer | None:
        """The fixed output grid of a non-fusable activation, None for fusable ones."""
        if self.kind in _FIXED_OUTPUT_RANGES:
            return FixedRangeQuantizer(*_FIXED_OUTPUT_RANGES[self.kind])
        return None

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        if self.kind == "linear":
            return x
        if self.kind == "relu":
            return tf.nn.relu(x) if self.max_value is None else tf.clip_by_value(x, 0.0, self.max_value)
        return {"softmax": tf.nn.softmax, "sigmoid": tf.sigmoid, "tanh": tf.tanh}[self.kind](x)

    def to_config(self) -> dict[str, Any]:
        return asdict(self)


def kernel_attribute(layer: keras.layers.Layer) -> str | None:
    """Name of the attribute holding the kernel a weight quantizer replaces."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return "depthwise_kernel"
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
        return "kernel"
    return None


def channel_axes(layer: keras.layers.Layer) -> tuple[int, ...]:
    """Kernel axes of the output channels: ``(-1,)`` for Conv2D/Dense, ``(2, 3)`` for depthwise."""
    return (2, 3) if isinstance(layer, keras.layers.DepthwiseConv2D) else (-1,)


@register("layer")
class QuantizedLayer(keras.layers.Wrapper):
    """A Keras layer run with quantized weights and fake-quantized outputs.

    Args:
      layer: the float layer (its own activation must be linear; the wrapper applies ``activation``).
      weight_quantizer: quantizer of the kernel, or None for layers without one (Add, pooling).
      activation: an ``ActivationSpec`` (or its config / a Keras activation).
      activation_quantizer: rounds the output after the activation.
      pre_activation_quantizer: rounds the input of a non-fusable activation (softmax' logits).
      channel_scale: give the layer a trainable per-output-channel factor ``f`` (initial 1) that
        multiplies the quantized kernel; ``quantize_model`` sets it to a folded BatchNormalization's
        ``γ/σ``. Exported as part of the per-channel weight scales.
    The wrapper takes the wrapped layer's name unless ``name`` is given, so
    ``qmodel.get_layer("conv1")`` finds the quantized ``conv1``.
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        weight_quantizer: WeightQuantizer | dict | None = None,
        activation: ActivationSpec | dict | str | None = None,
        activation_quantizer: ActivationQuantizer | dict | None = None,
        pre_activation_quantizer: ActivationQuantizer | dict | None = None,
        channel_scale: bool = False,
        **kwargs,
    ):
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.weight_quantizer = deserialize(weight_quantizer) if isinstance(weight_quantizer, dict) else weight_quantizer
        self.activation = ActivationSpec.from_keras(activation or "linear")
        self.activation_quantizer = (
            deserialize(activation_quantizer) if isinstance(activation_quantizer, dict) else activation_quantizer
        )
        self.pre_activation_quantizer = (
            deserialize(pre_activation_quantizer)
            if isinstance(pre_activation_quantizer, dict)
            else pre_activation_quantizer
        )
        inner_activation = getattr(layer, "activation", None)
        if inner_activation is not None and ActivationSpec.from_keras(inner_activation).kind != "linear":
            raise ValueError(
                f"QuantizedLayer {layer.name!r}: the wrapped layer's activation must be linear; "
                "pass the activation to the wrapper. Received: "
                f"activation={keras.activations.serialize(inner_activation)!r}"
            )
        if self.weight_quantizer is not None and kernel_attribute(layer) is None:
            raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) has no kernel to quantize.")
        if channel_scale and self.weight_quantizer is None:
            raise ValueError(f"Layer {layer.name!r}: channel_scale needs a weight quantizer to scale.")
        self.has_channel_scale = bool(channel_scale)
        self.channel_scale: tf.Variable | None = None
        self.rounding_offset: tf.Variable | None = None
        self._weight_vars: dict[str, tf.Variable] = {}
        self._activation_vars: dict[str, tf.Variable] = {}
        self._pre_activation_vars: dict[str, tf.Variable] = {}

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        if self.weight_quantizer is not None:
            attr = kernel_attribute(self.layer)
            kernel_shape = getattr(self.layer, attr).shape
            self._weight_vars = self.weight_quantizer.build(kernel_shape, attr, self)
            if self.has_channel_scale:
                self.channel_scale = self.add_weight(
                    "channel_scale", shape=self._channel_shape(kernel_shape), initializer="ones", trainable=True
                )
            channels = int(np.prod(self._channel_shape(kernel_shape)))
            self.rounding_offset = self.add_weight(
                "rounding_offset", shape=(channels,), initializer="zeros", trainable=False
            )
        output_shape = self.layer.compute_output_shape(input_shape)
        if self.pre_activation_quantizer is not None:
            self._pre_activation_vars = self.pre_activation_quantizer.build(output_shape, "pre_activation", self)
        if self.activation_quantizer is not None:
            self._activation_vars = self.activation_quantizer.build(output_shape, "activation", self)
        self.built = True

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def call(self, inputs, training=None):
        if training is None:
            training = keras.backend.learning_phase()
        if self.weight_quantizer is None:
            outputs = self.layer.call(inputs)
        else:
            attr = kernel_attribute(self.layer)
            kernel = getattr(self.layer, attr)
            quantized = self._scaled(self.weight_quantizer(kernel, training, weights=self._weight_vars))
            # Bypass Keras attribute tracking: the swap lasts for this call only.
            object.__setattr__(self.layer, attr, quantized)
            try:
                outputs = self.layer.call(inputs)
            finally:
                object.__setattr__(self.layer, attr, kernel)
            outputs = outputs + tf.sign(outputs) * self.rounding_offset
        if self.pre_activation_quantizer is not None:
            outputs = self.pre_activation_quantizer(outputs, training, weights=self._pre_activation_vars)
        outputs = self.activation(outputs)
        if self.activation_quantizer is not None:
            outputs = self.activation_quantizer(outputs, training, weights=self._activation_vars)
        return outputs

    @property
    def weight_quantizer_variables(self) -> dict[str, tf.Variable]:
        """The variables the weight quantizer built on this layer (e.g. a k-means codebook, an INQ mask)."""
        return self._weight_vars

    @property
    def activation_quantizer_variables(self) -> dict[str, tf.Variable]:
        """The variables of the activation quantizer (e.g. EMA ``min``/``max``, PACT ``alpha``)."""
        return self._activation_vars

    def initialize_quantizers(self) -> None:
        """Let the weight quantizer derive its state from the current float kernel."""
        if self.weight_quantizer is not None:
            self.weight_quantizer.initialize(self.kernel, self._weight_vars)

    def initialize_channel_scale(self, factor: np.ndarray) -> None:
        """Start ``f`` at ``factor · c`` with ``c`` the least-squares gain of ``Q(W)`` onto ``W``.

        ``c[k] = <W_k, Q(W)_k> / <Q(W)_k, Q(W)_k>`` over output channel ``k``, so that ``Q(W)·f``
        starts as close as the grid allows to ``W·factor`` (the folded float kernel): schemes whose
        grid does not keep the kernel's scale (DoReFa's [-1, 1], per-tensor BWN across channels
        of different BN gains) then start from the float model's output scale, as batch norm
        after the convolution would restore it. ``factor``: ``[channels]`` (``γ/σ``).
        """
        if self.channel_scale is None:
            raise ValueError(f"Layer {self.name!r} was built without channel_scale.")
        kernel = self.kernel.numpy().astype(np.float64)
        quantized = np.asarray(self._inference_quantized(), np.float64)
        axes = tuple(range(kernel.ndim - len(self.channel_scale.shape)))
        energy = np.sum(quantized * quantized, axis=axes)
        gain = np.where(energy > 0, np.sum(kernel * quantized, axis=axes) / np.where(energy > 0, energy, 1.0), 1.0)
        self.channel_scale.assign((np.reshape(factor, gain.shape) * gain).astype(np.float32))

    # --- integer form, read by kerasq.quantized_weights and tflite_export -------------------
    @property
    def kernel(self) -> tf.Variable | None:
        attr = kernel_attribute(self.layer)
        return None if attr is None else getattr(self.layer, attr)

    def _channel_shape(self, kernel_shape) -> tuple[int, ...]:
        """Shape of ``channel_scale``: ``[out]``, or ``[in, multiplier]`` for a depthwise kernel."""
        kernel_shape = tuple(int(d) for d in kernel_shape)
        return kernel_shape[2:] if isinstance(self.layer, keras.layers.DepthwiseConv2D) else kernel_shape[-1:]

    def _inference_quantized(self) -> tf.Tensor:
        """``Q(kernel)`` in inference mode, before the channel scale."""
        return self.weight_quantizer(self.kernel, False, weights=self._weight_vars)

    def _scaled(self, quantized: tf.Tensor) -> tf.Tensor:
        if self.channel_scale is None:
            return quantized
        return quantized * self.channel_scale

    def quantized_kernel(self) -> np.ndarray:
        """``Q(kernel)·f`` as the inference forward pass uses it, float32, Keras kernel layout."""
        return np.asarray(self._scaled(self._inference_quantized()))

    def weight_grid(self) -> WeightGrid:
        """Codes and scale with ``codes * scale == quantized_kernel()`` (to float32 rounding with ``f``).

        With a channel scale the scale is per channel, ``|s·f|``; a channel with ``f < 0`` has its
        codes negated (zero point 0 keeps that exact), one with ``f == 0`` has all codes 0.
        """
        grid = self.weight_quantizer.integer_grid(self.kernel, self._weight_vars)
        if self.channel_scale is None:
            return grid
        factor = self.channel_scale.numpy().astype(np.float32)
        scale = (grid.scale.astype(np.float32) * factor).astype(np.float32)
        sign = np.sign(scale).astype(np.int32)
        codes = grid.codes * sign
        scale = np.where(scale == 0, np.broadcast_to(grid.scale, scale.shape), np.abs(scale)).astype(np.float32)
        return WeightGrid(codes, scale, grid.bits)

    def activation_params(self) -> ops.AffineParams:
        return self.activation_quantizer.affine_params(self._activation_vars)

    def pre_activation_params(self) -> ops.AffineParams:
        return self.pre_activation_quantizer.affine_params(self._pre_activation_vars)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "weight_quantizer": serialize(self.weight_quantizer),
                "activation": self.activation.to_config(),
                "activation_quantizer": serialize(self.activation_quantizer),
                "pre_activation_quantizer": serialize(self.pre_activation_quantizer),
                "channel_scale": self.has_channel_scale,
            }
        )
        return config


@register("layer")
class QuantizeInput(keras.layers.Layer):
    """Fake-quantizes the model input onto the int8 grid the exported model's input tensor uses."""

    def __init__(self, quantizer: ActivationQuantizer | dict | None = None, **kwargs):
        super().__init__(**kwargs)
        if quantizer is None:
            quantizer = MovingAverageQuantizer(8)
        self.quantizer: Quantizer = deserialize(quantizer) if isinstance(quantizer, dict) else quantizer
        self._vars: dict[str, tf.Variable] = {}

    def build(self, input_shape):
        self._vars = self.quantizer.build(input_shape, "input", self)
        self.built = True

    def call(self, inputs, training=None):
        if training is None:
            training = keras.backend.learning_phase()
        return self.quantizer(inputs, training, weights=self._vars)

    def activation_params(self) -> ops.AffineParams:
        return self.quantizer.affine_params(self._vars)

    def get_config(self):
        return {**super().get_config(), "quantizer": serialize(self.quantizer)}
