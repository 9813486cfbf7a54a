"""The layer table: every Keras layer type kerasq quantizes, keyed by exact class.

One entry per class says everything the rest of kerasq needs to know about a layer type:

- ``weights``: the attributes holding quantized weights, each with the kernel axes of its
  output channels (a layer may have several);
- ``role``: how the layer takes part in the integer model —
  ``"weight"`` (an op with weights and its own output grid), ``"own_grid"`` (an op that
  requantizes onto its own output grid without a weighted sum: ADD, SUB, MUL, MEAN, PRELU), ``"same_grid"`` (an op whose
  output is on its input's grid, values unchanged: MAX_POOL_2D, RESHAPE, PAD, ...),
  ``"shared_grid"`` (inputs and output must share one grid: CONCATENATION, MAXIMUM, MINIMUM
  compare or copy codes), ``"affine"`` (a
  per-channel ``y = a·x + c``: BatchNormalization, Rescaling, Normalization — folded into the
  weight op before it, or else run as a weight op of its own), ``"activation"`` (fused into the
  op before it; an uncapped ReLU that cannot be fused runs as RELU on its input's grid),
  ``"split"`` (a layer TFLite runs as several ops: ``quantize_model`` replaces it by the layers
  ``split`` returns, e.g. SeparableConv2D → DepthwiseConv2D + 1x1 Conv2D, Conv2DTranspose →
  ``kerasq.transposed_conv.TransposedConv2D``), or ``"input"``;
- ``op``: the TFLite builtin op it becomes (None: no op, e.g. Dropout);
- ``folds_batch_norm``: a following affine layer (BatchNormalization, ...) folds into it;
- ``affine``: for an ``"affine"`` layer, its per-channel ``(a, c)``;
- ``split``: for a ``"split"`` layer, the layers (with their weights) that replace it, in order;
- ``rounds``: a ``"same_grid"`` op whose integer kernel rounds its result onto the input's grid
  (AVERAGE_POOL_2D, RESIZE_BILINEAR); the quantized model wraps it in ``kerasq.layers.OnInputGrid``;
- ``check``: a function returning why a particular configuration cannot be quantized, or None.

The match is by exact class (``type(layer)``), as tfmot's registry does: a subclass such as
``Conv2DTranspose`` (a ``Conv2D``) never passes for its parent. A layer whose class is not in
the table is refused by ``quantize_model`` with the list of what is supported. The exporter
(``tflite_export``) keeps one lowering per entry; adding a layer type means one entry here, its
lowering there, and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kerasq.arithmetic import ScalarArithmetic
from kerasq.compat import keras
from kerasq.transposed_conv import TransposedConv2D, from_conv2d_transpose, unsupported_transpose_reason

__all__ = ["GRID_KEEPING_ROLES", "LAYER_TABLE", "LayerRule", "WeightSpec", "rule_for", "supported_layer_names", "unsupported_reason"]


# Roles of the layers whose output is on their input's grid once quantize_model is done (an
# activation layer left in a quantized model is an uncapped ReLU that had nothing to fuse into).
GRID_KEEPING_ROLES = ("same_grid", "shared_grid", "activation")


@dataclass(frozen=True)
class WeightSpec:
    """A quantized weight of a layer: its attribute and the kernel axes of its output channels.

    ``channel_axes`` are axes of the Keras kernel (Conv2D ``[h, w, in, out]`` → ``(-1,)``;
    DepthwiseConv2D ``[h, w, in, multiplier]`` → ``(2, 3)``); a per-channel quantizer keeps one
    scale per index of these axes.
    """

    attribute: str
    channel_axes: tuple[int, ...] = (-1,)
    int8_only: bool = False  # TFLite's kernel reads it as int8 with one scale (PReLU's alpha), whatever the scheme


@dataclass(frozen=True)
class LayerRule:
    """What kerasq knows about one layer class (see the module docstring)."""

    role: str
    op: str | None = None
    weights: tuple[WeightSpec, ...] = ()
    folds_batch_norm: bool = False
    check: Callable[[keras.layers.Layer], "str | None"] | None = field(default=None, compare=False)
    affine: Callable[[keras.layers.Layer, int], "tuple[np.ndarray, np.ndarray]"] | None = field(default=None, compare=False)
    rounds: bool = False
    split: Callable[[keras.layers.Layer], "list[tuple[keras.layers.Layer, list[np.ndarray]]]"] | None = field(
        default=None, compare=False
    )

    ROLES = ("weight", "own_grid", "same_grid", "shared_grid", "affine", "activation", "split", "input")

    def __post_init__(self):
        if self.role not in self.ROLES:
            raise ValueError(f"role must be one of {self.ROLES}. Received: role={self.role!r}")


def _channels_last_check(layer) -> str | None:
    if layer.data_format != "channels_last":
        return "only channels_last data is supported"
    return None


def _two_inputs_check(layer) -> str | None:
    inputs = len(layer.input_shape) if isinstance(layer.input_shape, list) else 1
    if inputs != 2:
        op = type(layer).__name__.upper()
        return f"TFLite's {op} takes two inputs and this {type(layer).__name__} has {inputs}; chain layers of two"
    return None


def _upsampling_check(layer) -> str | None:
    if layer.data_format != "channels_last":
        return "only channels_last data is supported"
    if layer.interpolation not in ("nearest", "bilinear"):
        return f"only nearest and bilinear upsampling have int8 TFLite kernels (interpolation={layer.interpolation!r})"
    return None


def _conv2d_check(layer) -> str | None:
    if getattr(layer, "groups", 1) != 1:
        return f"grouped convolution (groups={layer.groups}) has no integer TFLite kernel"
    if layer.data_format != "channels_last":
        return "only channels_last data is supported"
    if tuple(layer.dilation_rate) != (1, 1) and tuple(layer.strides) != (1, 1):
        return "a dilated convolution with strides is not supported by TFLite"
    return None


def _conv1d_check(layer) -> str | None:
    if getattr(layer, "groups", 1) != 1:
        return f"grouped convolution (groups={layer.groups}) has no integer TFLite kernel"
    if layer.data_format != "channels_last":
        return "only channels_last data is supported"
    if tuple(layer.dilation_rate) != (1,) and tuple(layer.strides) != (1,):
        return "a dilated convolution with strides is not supported by TFLite"
    return None


def _prelu_check(layer) -> str | None:
    if len(layer.input_shape) > 4:
        return "TFLite's PRELU broadcasts over at most 4 dimensions"
    return None


def _dense_check(layer) -> str | None:
    if isinstance(layer.input_shape, list):
        return "Dense with several inputs is not supported"
    return None


def _binary_check(layer) -> str | None:
    """Two inputs of one rank whose shapes broadcast (ADD, MUL: a squeeze-excite ``[h, w, c]·[1, 1, c]``)."""
    reason = _two_inputs_check(layer)
    if reason is not None:
        return reason
    shapes = [tuple(s[1:]) for s in layer.input_shape]
    if len(shapes[0]) != len(shapes[1]) or any(a != b and 1 not in (a, b) for a, b in zip(*shapes)):
        return f"inputs of shapes {shapes[0]} and {shapes[1]} do not broadcast elementwise"
    return None


def _last_axis_check(layer) -> str | None:
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = len(layer.input_shape)
    if [a % rank for a in axis] != [rank - 1]:
        return f"{type(layer).__name__} over axis {layer.axis}: only a per-channel (last axis) affine map is supported"
    return None


def _rescaling_check(layer) -> str | None:
    for name in ("scale", "offset"):
        if np.size(getattr(layer, name)) not in (1, int(layer.input_shape[-1])):
            return f"Rescaling {name} must be a scalar or one value per channel"
    return None


def _per_channel(value, channels: int) -> np.ndarray:
    return np.broadcast_to(np.reshape(np.asarray(value, np.float64), [-1]), [channels])


def _split_separable(layer) -> list[tuple[keras.layers.Layer, list[np.ndarray]]]:
    """SeparableConv2D = DepthwiseConv2D (no bias) then a 1x1 Conv2D with the bias and activation.

    The depthwise part is named ``{name}_depthwise``; the pointwise part keeps the layer's name.
    """
    config = layer.get_config()
    depthwise = keras.layers.DepthwiseConv2D(
        config["kernel_size"], strides=config["strides"], padding=config["padding"],
        depth_multiplier=config["depth_multiplier"], dilation_rate=config["dilation_rate"], use_bias=False,
        name=f"{layer.name}_depthwise",
    )
    pointwise = keras.layers.Conv2D(
        config["filters"], 1, use_bias=config["use_bias"], activation=config["activation"], name=layer.name
    )
    weights = layer.get_weights()  # depthwise_kernel, pointwise_kernel[, bias]
    return [(depthwise, weights[:1]), (pointwise, weights[1:])]


def batch_norm_params(layer, channels: int) -> dict[str, np.ndarray]:
    """A BatchNormalization's ``gamma``, ``beta``, ``moving_mean``, ``moving_variance`` (float64
    ``[channels]``; ``gamma`` 1 and ``beta`` 0 when the layer has no scale or no center)."""
    params = {w.name.split("/")[-1].split(":")[0]: w.numpy().astype(np.float64) for w in layer.weights}
    return {"gamma": np.ones(channels), "beta": np.zeros(channels), **params}


def _batch_norm_affine(layer, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Inference-mode batch norm: ``a = γ/sqrt(var + ε)``, ``c = β - μ·a``."""
    params = batch_norm_params(layer, channels)
    gamma, beta = params["gamma"], params["beta"]
    a = gamma / np.sqrt(params["moving_variance"] + layer.epsilon)
    return a, beta - params["moving_mean"] * a


def _rescaling_affine(layer, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """``y = x·scale + offset``."""
    return _per_channel(layer.scale, channels), _per_channel(layer.offset, channels)


def _normalization_affine(layer, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """``y = (x - mean)/max(sqrt(var), ε)``, or with ``invert=True`` ``y = x·sqrt(var) + mean``."""
    mean, variance = _per_channel(layer.mean, channels), _per_channel(layer.variance, channels)
    if getattr(layer, "invert", False):
        return np.sqrt(variance), mean
    a = 1.0 / np.maximum(np.sqrt(variance), keras.backend.epsilon())
    return a, -mean * a


LAYER_TABLE: dict[type, LayerRule] = {
    keras.layers.InputLayer: LayerRule("input"),
    keras.layers.Conv2D: LayerRule(
        "weight", "CONV_2D", (WeightSpec("kernel", (-1,)),), folds_batch_norm=True, check=_conv2d_check
    ),
    keras.layers.Conv1D: LayerRule(  # CONV_2D on [batch, 1, steps, channels] between two RESHAPEs
        "weight", "CONV_2D", (WeightSpec("kernel", (-1,)),), folds_batch_norm=True, check=_conv1d_check
    ),
    keras.layers.DepthwiseConv2D: LayerRule(
        "weight", "DEPTHWISE_CONV_2D", (WeightSpec("depthwise_kernel", (2, 3)),), folds_batch_norm=True,
        check=_channels_last_check,
    ),
    keras.layers.Dense: LayerRule(
        "weight", "FULLY_CONNECTED", (WeightSpec("kernel", (-1,)),), folds_batch_norm=True, check=_dense_check
    ),
    keras.layers.Add: LayerRule("own_grid", "ADD", check=_binary_check),
    keras.layers.Subtract: LayerRule("own_grid", "SUB", check=_binary_check),
    keras.layers.Multiply: LayerRule("own_grid", "MUL", check=_binary_check),
    ScalarArithmetic: LayerRule("own_grid"),  # ADD or MUL with an int8 constant, by its ``op``
    keras.layers.GlobalAveragePooling2D: LayerRule("own_grid", "MEAN", check=_channels_last_check),
    keras.layers.GlobalAveragePooling1D: LayerRule("own_grid", "MEAN", check=_channels_last_check),
    keras.layers.PReLU: LayerRule("own_grid", "PRELU", (WeightSpec("alpha", (), int8_only=True),), check=_prelu_check),
    keras.layers.Concatenate: LayerRule("shared_grid", "CONCATENATION"),
    keras.layers.Maximum: LayerRule("shared_grid", "MAXIMUM", check=_two_inputs_check),
    keras.layers.Minimum: LayerRule("shared_grid", "MINIMUM", check=_two_inputs_check),
    keras.layers.MaxPooling2D: LayerRule("same_grid", "MAX_POOL_2D", check=_channels_last_check),
    keras.layers.AveragePooling2D: LayerRule("same_grid", "AVERAGE_POOL_2D", check=_channels_last_check, rounds=True),
    keras.layers.Flatten: LayerRule("same_grid", "RESHAPE"),
    keras.layers.Reshape: LayerRule("same_grid", "RESHAPE"),
    keras.layers.Permute: LayerRule("same_grid", "TRANSPOSE"),
    keras.layers.Dropout: LayerRule("same_grid"),
    keras.layers.ZeroPadding2D: LayerRule("same_grid", "PAD", check=_channels_last_check),
    keras.layers.Cropping2D: LayerRule("same_grid", "SLICE", check=_channels_last_check),
    keras.layers.UpSampling2D: LayerRule(  # RESIZE_BILINEAR when interpolation="bilinear"
        "same_grid", "RESIZE_NEAREST_NEIGHBOR", check=_upsampling_check, rounds=True
    ),
    keras.layers.SeparableConv2D: LayerRule(
        "split", weights=(WeightSpec("depthwise_kernel", (2, 3)), WeightSpec("pointwise_kernel", (-1,))),
        check=_conv2d_check, split=_split_separable,
    ),
    keras.layers.Conv2DTranspose: LayerRule("split", check=unsupported_transpose_reason, split=from_conv2d_transpose),
    TransposedConv2D: LayerRule("weight", "TRANSPOSE_CONV", (WeightSpec("kernel", (-1,)),), folds_batch_norm=True),
    keras.layers.BatchNormalization: LayerRule("affine", check=_last_axis_check, affine=_batch_norm_affine),
    keras.layers.Rescaling: LayerRule("affine", check=_rescaling_check, affine=_rescaling_affine),
    keras.layers.Normalization: LayerRule("affine", check=_last_axis_check, affine=_normalization_affine),
    keras.layers.ReLU: LayerRule("activation"),
    keras.layers.LeakyReLU: LayerRule("activation"),
    keras.layers.ELU: LayerRule("activation"),
    keras.layers.Activation: LayerRule("activation"),
    keras.layers.Softmax: LayerRule("activation"),
}


def rule_for(layer: keras.layers.Layer) -> LayerRule | None:
    """The table entry of ``layer``'s exact class, or None."""
    return LAYER_TABLE.get(type(layer))


def supported_layer_names() -> list[str]:
    """Class names of every supported layer, sorted (for error messages and docs)."""
    return sorted(cls.__name__ for cls in LAYER_TABLE if cls is not keras.layers.InputLayer)


# Layer types that TFLite has no integer-only kernel for: why, in the error kerasq gives.
NO_INTEGER_KERNEL: dict[type, str] = {
    keras.layers.LSTM: "TFLite runs LSTM with float or 16-bit cell state, not as an int8-only op",
    keras.layers.GRU: "TFLite has no int8 GRU kernel",
    keras.layers.SimpleRNN: "TFLite has no int8-only recurrent kernel",
    keras.layers.LayerNormalization: "TFLite has no int8 layer-normalization kernel (it needs float statistics per sample)",
    keras.layers.Embedding: "an Embedding lookup (GATHER of a float table) is not a quantized op kerasq exports",
    keras.layers.MultiHeadAttention: "attention needs BATCH_MATMUL and softmax over dynamic products, not exported integer-only",
    keras.layers.Attention: "attention needs BATCH_MATMUL and softmax over dynamic products, not exported integer-only",
}


def unsupported_reason(layer: keras.layers.Layer) -> str | None:
    """Why ``layer`` cannot be quantized (its class or its configuration), or None if it can."""
    rule = rule_for(layer)
    if rule is None and type(layer).__name__ == "TFOpLambda":
        return (
            f"TFOpLambda {layer.get_config().get('function')!r}: kerasq reads arithmetic written on tensors only as "
            "x + c, x - c, x * c, x / c with a number c, or x + y, x - y, x * y of two tensors"
        )
    if rule is None and type(layer) in NO_INTEGER_KERNEL:
        return f"{type(layer).__name__} is not supported: {NO_INTEGER_KERNEL[type(layer)]}"
    if rule is None:
        return f"{type(layer).__name__} is not a supported layer type"
    if rule.check is not None:
        return rule.check(layer)
    return None
