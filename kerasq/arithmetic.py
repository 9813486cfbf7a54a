"""Elementwise arithmetic with a constant number, as a Keras layer: ``x + 3.0``, ``x * (1/6)``.

Keras records arithmetic on symbolic tensors (``x + 3.0`` inside a Functional model, as
MobileNetV3's hard-sigmoid writes it) as ``TFOpLambda`` layers that hold a TensorFlow function
and keep the constant in their call record. ``ScalarArithmetic`` is the same computation as a
layer of its own: ``kerasq.graph`` reads such ``TFOpLambda`` nodes as ``ScalarArithmetic``, which
the layer table knows (TFLite runs it as ADD or MUL with an int8 constant), and arithmetic of two
tensors or activation functions called on a tensor (``tf.nn.relu6(x)``) as the Keras layers they
equal.

The constant is stored in the .tflite as one int8 code on its own grid: ``c ≈ q·s`` with
``q = ±127`` and ``s = f32(|c|/127)`` (``c = 0``: ``q = 0``, ``s = 1``), exact to float32.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from kerasq import ops
from kerasq.compat import keras, tf
from kerasq.registry import register

__all__ = ["ScalarArithmetic", "from_tf_op_lambda"]

# TFOpLambda functions (their ``function`` config) read as ``x op c``; ``divide`` becomes ``x · (1/c)``.
_FUNCTIONS = {
    "__operators__.add": "add", "math.add": "add", "math.subtract": "subtract",
    "math.multiply": "multiply", "math.truediv": "divide", "math.divide": "divide",
}
_COMMUTATIVE = ("add", "multiply")
# TFOpLambda activation functions of one tensor, and the Keras activation each is.
_ACTIVATIONS = {
    "nn.relu": "relu", "nn.relu6": "relu6", "math.sigmoid": "sigmoid", "math.tanh": "tanh", "nn.silu": "swish",
    "nn.gelu": "gelu", "nn.elu": "elu", "nn.softmax": "softmax",
}


@register("layer")
class ScalarArithmetic(keras.layers.Layer):
    """``y = x + c`` (``op="add"``) or ``y = x · c`` (``op="multiply"``) for a constant number ``c``.

    Args:
      op: ``"add"`` or ``"multiply"``.
      value: the constant ``c`` (a finite number).
    """

    OPS = ("add", "multiply")

    def __init__(self, op: str, value: float, **kwargs):
        super().__init__(**kwargs)
        if op not in self.OPS:
            raise ValueError(f"ScalarArithmetic op must be one of {self.OPS}. Received: op={op!r}")
        if not isinstance(value, numbers.Real) or not np.isfinite(value):
            raise ValueError(f"ScalarArithmetic value must be a finite number. Received: value={value!r}")
        self.op = op
        self.value = float(value)

    def call(self, inputs):
        constant = tf.constant(self.value, inputs.dtype)
        return inputs + constant if self.op == "add" else inputs * constant

    def compute_output_shape(self, input_shape):
        return input_shape

    def constant_params(self) -> ops.AffineParams:
        """The int8 grid of the constant (zero point 0); its code is ``constant_code()``."""
        scale = np.float32(abs(self.value) / 127.0) if self.value != 0 else np.float32(1.0)
        return ops.AffineParams(float(scale), 0, -128, 127)

    def constant_code(self) -> int:
        return int(np.sign(self.value)) * 127

    def quantized_constant(self) -> tuple[tf.Tensor, ops.Grid]:
        """The constant as the integer model holds it (``code·scale``, float32) and its grid, as tensors."""
        params = self.constant_params()
        scale = tf.constant(np.float32(params.scale))
        return tf.constant(np.float32(self.constant_code()) * np.float32(params.scale)), ops.Grid(
            scale, tf.constant(0.0), -128, 127
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "op": self.op, "value": self.value}


def _number(value) -> float | None:
    if isinstance(value, (numbers.Real, np.number)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return float(value)
    if tf.is_tensor(value) and hasattr(value, "numpy") and value.shape.rank == 0:  # `2.0 * x` holds an eager scalar
        return float(value.numpy())
    return None


def from_tf_op_lambda(layer: keras.layers.Layer, call) -> keras.layers.Layer | None:
    """The layer a ``TFOpLambda`` call is equivalent to, or None.

    ``call``: the layer's inbound node (``call_args``/``call_kwargs`` hold the constant).
    ``x + c``, ``c + x``, ``x - c``, ``x * c``, ``c * x`` and ``x / c`` with a number ``c`` give a
    ``ScalarArithmetic``; ``x + y``, ``x - y`` and ``x * y`` of two tensors give ``Add``,
    ``Subtract`` and ``Multiply``; ``tf.nn.relu(x)``, ``relu6``, ``sigmoid``, ``tanh``, ``silu``,
    ``gelu``, ``elu`` and ``softmax`` (default arguments) give an ``Activation`` layer.
    Anything else (a tensor constant, ``c - x``, ``c / x``, other functions) gives None.
    """
    function = layer.get_config().get("function")
    kwargs = {k: v for k, v in dict(call.call_kwargs or {}).items() if k != "name"}
    if function in _ACTIVATIONS and len(call.call_args) == 1 and not kwargs:
        return _traced(keras.layers.Activation(_ACTIVATIONS[function], name=layer.name), list(call.call_args))
    kind = _FUNCTIONS.get(function)
    if kind is None:
        return None
    args = list(call.call_args) + [kwargs.pop(k) for k in ("x", "y") if k in kwargs]
    if kwargs or len(args) != 2:
        return None
    tensors = [hasattr(a, "_keras_history") for a in args]
    merges = {"add": keras.layers.Add, "subtract": keras.layers.Subtract, "multiply": keras.layers.Multiply}
    if tensors == [True, True] and kind in merges:
        return _traced(merges[kind](name=layer.name), args)
    if tensors == [True, False]:
        value = _number(args[1])
    elif tensors == [False, True] and kind in _COMMUTATIVE:
        value = _number(args[0])
    else:
        return None
    if value is None or not np.isfinite(value) or (kind == "divide" and value == 0):
        return None
    if kind == "subtract":
        kind, value = "add", -value
    elif kind == "divide":
        kind, value = "multiply", 1.0 / value
    return _traced(ScalarArithmetic(kind, value, name=layer.name), [a for a in args if hasattr(a, "_keras_history")])


def _traced(layer: keras.layers.Layer, tensors: list) -> keras.layers.Layer:
    """``layer`` called once on placeholders shaped like ``tensors``, so it knows its input and output shapes.

    The placeholders are new: the model the tensors belong to is not touched.
    """
    placeholders = [keras.Input(shape=t.shape[1:], dtype=t.dtype) for t in tensors]
    layer(placeholders[0] if len(placeholders) == 1 else placeholders)
    return layer
