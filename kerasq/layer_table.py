"""The layer table: every Keras layer type kerasq quantizes, keyed by exact class.

One entry per class says everything the rest of kerasq needs to know about a layer type:

- ``weights``: the attributes holding quantized weights, each with the kernel axes of its
  output channels (a layer may have several);
- ``role``: how the layer takes part in the integer model —
  ``"weight"`` (an op with weights and its own output grid), ``"own_grid"`` (an op without
  weights that requantizes onto its own output grid: ADD, MEAN), ``"same_grid"`` (an op whose
  output is on its input's grid, values unchanged: MAX_POOL_2D, RESHAPE, PAD, ...),
  ``"shared_grid"`` (inputs and output must share one grid: CONCATENATION), ``"batch_norm"``
  (folded into the weight op before it), ``"activation"`` (fused into the op before it), or
  ``"input"``;
- ``op``: the TFLite builtin op it becomes (None: no op, e.g. Dropout);
- ``folds_batch_norm``: a following BatchNormalization folds into it;
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

from kerasq.compat import keras

__all__ = ["LAYER_TABLE", "LayerRule", "WeightSpec", "rule_for", "supported_layer_names", "unsupported_reason"]


@dataclass(frozen=True)
class WeightSpec:
    """A quantized weight of a layer: its attribute and the kernel axes of its output channels.

    ``channel_axes`` are axes of the Keras kernel (Conv2D ``[h, w, in, out]`` → ``(-1,)``;
    DepthwiseConv2D ``[h, w, in, multiplier]`` → ``(2, 3)``); a per-channel quantizer keeps one
    scale per index of these axes.
    """

    attribute: str
    channel_axes: tuple[int, ...] = (-1,)


@dataclass(frozen=True)
class LayerRule:
    """What kerasq knows about one layer class (see the module docstring)."""

    role: str
    op: str | None = None
    weights: tuple[WeightSpec, ...] = ()
    folds_batch_norm: bool = False
    check: Callable[[keras.layers.Layer], "str | None"] | None = field(default=None, compare=False)

    ROLES = ("weight", "own_grid", "same_grid", "shared_grid", "batch_norm", "activation", "input")

    def __post_init__(self):
        if self.role not in self.ROLES:
            raise ValueError(f"role must be one of {self.ROLES}. Received: role={self.role!r}")


def _conv2d_check(layer) -> str | None:
    if layer.groups != 1:
        return f"grouped convolution (groups={layer.groups}) has no integer TFLite kernel"
    if layer.data_format != "channels_last":
        return "only channels_last data is supported"
    if tuple(layer.dilation_rate) != (1, 1) and tuple(layer.strides) != (1, 1):
        return "a dilated convolution with strides is not supported by TFLite"
    return None


def _depthwise_check(layer) -> str | None:
    if layer.data_format != "channels_last":
        return "only channels_last data is supported"
    return None


def _dense_check(layer) -> str | None:
    shape = layer.input_shape
    if isinstance(shape, list) or len(shape) != 2:
        return f"Dense on a rank-{len(shape) if not isinstance(shape, list) else '?'} input is not supported yet (rank 2 only)"
    return None


def _add_check(layer) -> str | None:
    inputs = len(layer.input_shape) if isinstance(layer.input_shape, list) else 1
    if inputs != 2:
        return f"TFLite's ADD takes two inputs and this Add has {inputs}; split it into Add layers of two"
    shapes = [tuple(s[1:]) for s in layer.input_shape]
    if shapes[0] != shapes[1]:
        return f"Add with broadcasting ({shapes[0]} + {shapes[1]}) is not supported yet"
    return None


def _pool_check(layer) -> str | None:
    if layer.data_format != "channels_last":
        return "only channels_last data is supported"
    return None


def _global_pool_check(layer) -> str | None:
    if layer.data_format != "channels_last":
        return "only channels_last data is supported"
    return None


def _concat_check(layer) -> str | None:
    return None


def _zero_padding_check(layer) -> str | None:
    if layer.data_format != "channels_last":
        return "only channels_last data is supported"
    return None


def _batch_norm_check(layer) -> str | None:
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = len(layer.input_shape)
    if [a % rank for a in axis] != [rank - 1]:
        return f"BatchNormalization over axis {layer.axis} (only the last, channel axis, folds)"
    return None


LAYER_TABLE: dict[type, LayerRule] = {
    keras.layers.InputLayer: LayerRule("input"),
    keras.layers.Conv2D: LayerRule(
        "weight", "CONV_2D", (WeightSpec("kernel", (-1,)),), folds_batch_norm=True, check=_conv2d_check
    ),
    keras.layers.DepthwiseConv2D: LayerRule(
        "weight", "DEPTHWISE_CONV_2D", (WeightSpec("depthwise_kernel", (2, 3)),), folds_batch_norm=True,
        check=_depthwise_check,
    ),
    keras.layers.Dense: LayerRule(
        "weight", "FULLY_CONNECTED", (WeightSpec("kernel", (-1,)),), folds_batch_norm=True, check=_dense_check
    ),
    keras.layers.Add: LayerRule("own_grid", "ADD", check=_add_check),
    keras.layers.GlobalAveragePooling2D: LayerRule("own_grid", "MEAN", check=_global_pool_check),
    keras.layers.Concatenate: LayerRule("shared_grid", "CONCATENATION", check=_concat_check),
    keras.layers.MaxPooling2D: LayerRule("same_grid", "MAX_POOL_2D", check=_pool_check),
    keras.layers.Flatten: LayerRule("same_grid", "RESHAPE"),
    keras.layers.Reshape: LayerRule("same_grid", "RESHAPE"),
    keras.layers.Dropout: LayerRule("same_grid"),
    keras.layers.ZeroPadding2D: LayerRule("same_grid", "PAD", check=_zero_padding_check),
    keras.layers.BatchNormalization: LayerRule("batch_norm", check=_batch_norm_check),
    keras.layers.ReLU: LayerRule("activation"),
    keras.layers.Activation: LayerRule("activation"),
    keras.layers.Softmax: LayerRule("activation"),
}


def rule_for(layer: keras.layers.Layer) -> LayerRule | None:
    """The table entry of ``layer``'s exact class, or None."""
    return LAYER_TABLE.get(type(layer))


def supported_layer_names() -> list[str]:
    """Class names of every supported layer, sorted (for error messages and docs)."""
    return sorted(cls.__name__ for cls in LAYER_TABLE if cls is not keras.layers.InputLayer)


def unsupported_reason(layer: keras.layers.Layer) -> str | None:
    """Why ``layer`` cannot be quantized (its class or its configuration), or None if it can."""
    rule = rule_for(layer)
    if rule is None:
        return f"{type(layer).__name__} is not a supported layer type"
    if rule.check is not None:
        return rule.check(layer)
    return None
