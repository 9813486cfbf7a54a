"""Quantizers: how one tensor is quantized, as tfmot ``Quantizer`` subclasses.

Every kerasq quantizer honours tfmot's contract (``build(shape, name, layer)`` returns the
variables the layer owns; ``__call__(x, training, weights)`` returns the fake-quantized tensor;
``get_config`` returns every constructor argument), so it also plugs into tfmot's own
``QuantizeConfig``/``QuantizeWrapperV2``. On top of that each one states its integer form for
export:

- weight quantizers: ``integer_grid(w, weights) -> WeightGrid`` with ``Q(w) == codes * scale``
  exactly in float32 (the forward pass computes ``Q(w)`` as that product);
- activation quantizers: ``affine_params(weights) -> ops.AffineParams``, the int8 grid that
  holds every value the fake-quantized activation can take.

The scheme-specific quantizers (PACT, DoReFa, binary, ternary, power-of-two, k-means) live in
modules named after them; this module holds the linear ones every scheme reuses.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import numpy as np
import tensorflow_model_optimization as tfmot

from kerasq import ops
from kerasq.compat import keras, tf
from kerasq.observers import MovingAverageObserver, Observer, state_variable
from kerasq.registry import ConfigEquality, register


class WeightGrid(NamedTuple):
    """Integer form of a quantized weight: ``Q(w) = codes * scale``, zero point 0.

    ``codes`` is an int32 array of the kernel's shape (Keras layout); ``scale`` is float32 and
    broadcasts onto it (shape ``[1,...,1, channels]`` per channel, or ``[1,...,1]`` per tensor);
    ``bits`` is the nominal precision of the scheme (the codes fit ``[-2^(b-1), 2^(b-1)-1]``).
    """

    codes: np.ndarray
    scale: np.ndarray
    bits: int

    def dequantize(self) -> np.ndarray:
        return self.codes.astype(np.float32) * self.scale.astype(np.float32)


class Quantizer(ConfigEquality, tfmot.quantization.keras.quantizers.Quantizer):
    """Base of kerasq quantizers: tfmot's interface plus config-derived equality."""

    bits: int = 8

    def build(self, tensor_shape, name: str, layer) -> dict[str, tf.Variable]:
        return {}


class WeightQuantizer(Quantizer):
    """A weight quantizer with per-channel axes and an exact integer form."""

    def __init__(self, channel_axes: tuple[int, ...] = (-1,)):
        self.channel_axes = tuple(int(a) for a in channel_axes)

    def initialize(self, w: tf.Variable, weights: dict[str, tf.Variable]) -> None:
        """Set data-dependent state from the float kernel ``w`` (a k-means codebook, TTQ scales).

        ``quantize_model`` calls it once, after the float weights are loaded into the wrapped
        layer. Quantizers whose state follows ``w`` at every step have nothing to do here.
        """

    @abc.abstractmethod
    def integer_grid(self, w: tf.Tensor, weights: dict[str, tf.Variable]) -> WeightGrid:
        """The exact integer form of ``self(w, training=False, weights)``."""

    @abc.abstractmethod
    def scale(self, w: tf.Tensor, weights: dict[str, tf.Variable]) -> tf.Tensor:
        """The scale of ``integer_grid`` as a float32 tensor that broadcasts onto ``w``.

        Computed in the forward pass: the layer quantizes its bias onto ``s_in·scale``.
        """

    def quantize_with_scale(self, w: tf.Tensor, training, weights: dict[str, tf.Variable]) -> tuple[tf.Tensor, tf.Tensor]:
        """``(self(w, training, weights), self.scale(w, weights))``; quantizers that compute both at once override it."""
        return self(w, training, weights=weights), self.scale(w, weights)

    @property
    def grid_bits(self) -> int:
        """``integer_grid(...).bits``: the nominal precision that decides INT4 or INT8 storage."""
        return self.bits


def is_training(training) -> bool:
    """The ``training`` flag as a Python bool: quantizers branch in Python.

    fit/evaluate/predict pass Python booleans; a symbolic flag without a static value counts as
    inference (range observers then do not update).
    """
    if isinstance(training, (bool, int, np.bool_, np.integer)):
        return bool(training)
    if training is None:
        return False
    return bool(tf.get_static_value(training))


@register("quantizer")
class LinearWeightQuantizer(WeightQuantizer):
    """Uniform n-bit weights, symmetric or asymmetric, per channel or per tensor.

    Forward (symmetric):  ``S = |w|_max / q_max``, ``q = clamp(round(w/S), q_min, q_max)``,
    ``Q(w) = S q`` (narrow range drops ``-2^(b-1)`` so int8 weights live in ``[-127, 127]``).
    Forward (asymmetric): ``S = (r_max - r_min)/(q_max - q_min)``, ``Z = round(q_min - r_min/S)``,
    ``q = clamp(round(w/S) + Z, q_min, q_max)``, ``Q(w) = S (q - Z)``; the range is widened to
    contain 0.
    Backward: straight-through (Bengio 2013), no gradient where the clamp is active.
    Export: zero point 0, codes ``q - Z`` (== ``q`` when symmetric), scale ``S`` per channel.

    Args:
      bits: 2..8. symmetric: see above. narrow_range: drop the most negative code.
      channel_axes: kernel axes that carry one scale each; ``()`` for per tensor.
    References: Jacob et al. 2018; Krishnamoorthi 2018 (per-channel).

    Seed lecture 4x4 example, 2-bit asymmetric per tensor: ``S = 1.07``, ``Z = -1``.
    """

    def __init__(
        self,
        bits: int = 8,
        symmetric: bool = True,
        narrow_range: bool = True,
        channel_axes: tuple[int, ...] = (-1,),
    ):
        super().__init__(channel_axes)
        ops.signed_range(bits)
        self.bits = int(bits)
        self.symmetric = bool(symmetric)
        self.narrow_range = bool(narrow_range)

    def _codes_and_scale(self, w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        qmin, qmax = ops.signed_range(self.bits, self.narrow_range)
        axes = ops.reduce_axes(len(w.shape), self.channel_axes)
        if self.symmetric:
            # The scale follows the weights but is a constant for the gradient (plain STE).
            scale = tf.stop_gradient(ops.symmetric_scale(ops.max_abs(w, self.channel_axes), qmax))
            return ops.linear_codes(w, scale, qmin, qmax), scale
        r_min = tf.minimum(tf.reduce_min(w, axis=axes, keepdims=True), 0.0)
        r_max = tf.maximum(tf.reduce_max(w, axis=axes, keepdims=True), 0.0)
        span = r_max - r_min
        scale = tf.stop_gradient(tf.where(span > 0, ops.exact_divide(span, float(qmax - qmin)), tf.ones_like(span)))
        zero_point = tf.stop_gradient(tf.round(qmin - ops.exact_divide(r_min, scale)))
        q = tf.clip_by_value(ops.round_ste(ops.exact_divide(w, scale)) + zero_point, float(qmin), float(qmax))
        return q - zero_point, scale

    def __call__(self, inputs, training, weights, **kwargs):
        codes, scale = self._codes_and_scale(inputs)
        return codes * scale

    def quantize_with_scale(self, w, training, weights):
        codes, scale = self._codes_and_scale(w)
        return codes * scale, scale

    def scale(self, w, weights):
        return self._codes_and_scale(tf.convert_to_tensor(w))[1]

    def integer_grid(self, w, weights) -> WeightGrid:
        codes, scale = self._codes_and_scale(tf.convert_to_tensor(w))
        return WeightGrid(codes.numpy().astype(np.int32), scale.numpy().astype(np.float32), self.bits)

    def get_config(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "symmetric": self.symmetric,
            "narrow_range": self.narrow_range,
            "channel_axes": self.channel_axes,
        }


@register("quantizer")
class StoredScaleWeightQuantizer(WeightQuantizer):
    """Symmetric uniform n-bit weights on a stored per-channel scale, optionally with stored rounding.

    Forward: ``q = clamp(round(w/S), q_min, q_max)``, or with ``learned_rounding``
    ``q = clamp(floor(w/S) + r, q_min, q_max)`` with ``r ∈ {0, 1}`` stored per weight (AdaRound,
    Nagel et al. 2020: round up or down, whichever reconstructs the layer's output better);
    ``Q(w) = S q``. ``S`` is a variable, not recomputed from ``max|w|`` at each step, so
    post-training quantization can clip it (MSE-optimal weight ranges) and keep the choice.
    Backward: straight-through (Bengio 2013), no gradient where the clamp is active.
    Export: zero point 0, codes ``q``, scale ``S``.

    ``initialize`` (called by ``quantize_model``) starts from ``LinearWeightQuantizer``'s grid:
    ``S = max|w|/q_max`` per channel (1 for an all-zero channel) and ``r`` = round to nearest,
    so before any post-training step the two quantizers compute the same ``Q(w)``.

    Args:
      bits: 2..8. narrow_range: drop ``-2^(b-1)`` (int8 weights in ``[-127, 127]``).
      channel_axes: kernel axes that carry one scale each; ``()`` for per tensor.
      learned_rounding: keep a rounding decision per weight (variable ``rounding``).
    """

    def __init__(
        self,
        bits: int = 8,
        narrow_range: bool = True,
        channel_axes: tuple[int, ...] = (-1,),
        learned_rounding: bool = False,
    ):
        super().__init__(channel_axes)
        ops.signed_range(bits)
        self.bits = int(bits)
        self.narrow_range = bool(narrow_range)
        self.learned_rounding = bool(learned_rounding)

    def scale_shape(self, kernel_shape) -> list[int]:
        """Shape of the stored scale: the kernel's, with 1 on every axis but the channel axes."""
        rank = len(kernel_shape)
        keep = {a % rank for a in self.channel_axes}
        return [int(d) if a in keep else 1 for a, d in enumerate(kernel_shape)]

    def build(self, tensor_shape, name, layer):
        variables = {"scale": state_variable(layer, f"{name}_scale", self.scale_shape(tensor_shape), "ones")}
        if self.learned_rounding:
            variables["rounding"] = state_variable(layer, f"{name}_rounding", tuple(tensor_shape))
        return variables

    def initialize(self, w, weights):
        qmax = ops.signed_range(self.bits, self.narrow_range)[1]
        self.set_scale(w, weights, ops.symmetric_scale(ops.max_abs(tf.convert_to_tensor(w), self.channel_axes), qmax))

    def set_scale(self, w, weights, scale) -> None:
        """Store ``scale`` (broadcastable onto ``w``) and round every weight to nearest on it."""
        scale = tf.reshape(tf.convert_to_tensor(scale, tf.float32), weights["scale"].shape)
        weights["scale"].assign(scale)
        if self.learned_rounding:
            ratio = ops.exact_divide(w, scale)
            weights["rounding"].assign(tf.round(ratio) - tf.floor(ratio))

    def _codes(self, w: tf.Tensor, weights) -> tf.Tensor:
        qmin, qmax = ops.signed_range(self.bits, self.narrow_range)
        scale = tf.convert_to_tensor(weights["scale"])
        ratio = ops.exact_divide(w, scale)
        if self.learned_rounding:
            q = ratio + tf.stop_gradient(tf.floor(ratio) + weights["rounding"] - ratio)
        else:
            q = ops.round_ste(ratio)
        return tf.clip_by_value(q, float(qmin), float(qmax))

    def __call__(self, inputs, training, weights, **kwargs):
        return self._codes(inputs, weights) * tf.convert_to_tensor(weights["scale"])

    def quantize_with_scale(self, w, training, weights):
        scale = tf.convert_to_tensor(weights["scale"])
        return self._codes(w, weights) * scale, scale

    def scale(self, w, weights):
        return tf.convert_to_tensor(weights["scale"])

    def integer_grid(self, w, weights) -> WeightGrid:
        codes = self._codes(tf.convert_to_tensor(w), weights)
        return WeightGrid(codes.numpy().astype(np.int32), weights["scale"].numpy().astype(np.float32), self.bits)

    def get_config(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "narrow_range": self.narrow_range,
            "channel_axes": self.channel_axes,
            "learned_rounding": self.learned_rounding,
        }


class ActivationQuantizer(Quantizer):
    """An activation quantizer: rounds onto an int8-embeddable affine grid.

    The rounding (``round``) is apart from the statistics (``observe``, through an
    ``Observer`` when the range comes from data), so a layer can observe without rounding
    (calibration), round without observing (inference) or do both (``fit``). ``grid`` gives the
    grid as tensors for the forward pass, ``affine_params`` as numbers for export.
    """

    observer: Observer | None = None
    # True for quantizers whose output is a sign (±β): the exporter writes a comparison, not a rounding.
    binary = False

    def build(self, tensor_shape, name, layer):
        return {} if self.observer is None else self.observer.build(layer, name)

    def observe(self, x: tf.Tensor, weights, observer: Observer | None = None) -> None:
        """Fold ``x`` into the statistics (with ``observer`` instead of the own one, e.g. min/max
        for calibration); nothing for quantizers whose range does not come from data."""
        if self.observer is not None:
            (observer or self.observer).update(x, weights)

    def observed(self, weights) -> tf.Tensor | bool:
        """Whether the grid is defined: True, or a bool tensor once data was observed."""
        return True if self.observer is None else self.observer.observed(weights)

    @abc.abstractmethod
    def range(self, weights) -> tuple[tf.Tensor, tf.Tensor]:
        """The ``(min, max)`` that ``round`` quantizes onto (contains 0, non-empty)."""

    def grid(self, weights) -> ops.Grid:
        """The grid of ``round``'s output as tensors (TensorFlow FakeQuant's nudging)."""
        lo, hi = self.range(weights)
        return ops.nudged_grid(lo, hi, self.bits)

    def consumer_grid(self, weights) -> ops.Grid:
        """The grid the layers reading this output see: ``grid``, widened for a k-bit grid (``ops.widened``)."""
        return ops.widened_grid(self.grid(weights))

    def round(self, x: tf.Tensor, weights) -> tf.Tensor:
        """Fake-quantize ``x`` onto the grid; straight-through gradient inside the range."""
        lo, hi = self.range(weights)
        return ops.fake_quant_affine(x, lo, hi, self.bits)

    def __call__(self, inputs, training, weights, **kwargs):
        if is_training(training):
            self.observe(inputs, weights)
        return self.round(inputs, weights)

    def affine_params(self, weights) -> ops.AffineParams:
        """The int8 grid holding every value of ``self(x, training=False, weights)``."""
        if self.observer is not None and not bool(self.observer.observed(weights)):
            raise ValueError(
                f"Activation range {weights['min'].name!r} was never observed: train the model "
                "(fit) or run kerasq.calibrate(model, x) before exporting."
            )
        return self.grid(weights).to_params()


def observed_range(weights) -> tuple[tf.Tensor, tf.Tensor]:
    """An observed ``[min, max]`` widened to contain 0 and to be non-empty (``1e-6``), as FakeQuant needs."""
    lo = tf.minimum(tf.convert_to_tensor(weights["min"]), 0.0)
    hi = tf.maximum(tf.convert_to_tensor(weights["max"]), 0.0)
    return lo, tf.maximum(hi, lo + 1e-6)


@register("quantizer")
class MovingAverageQuantizer(ActivationQuantizer):
    """Asymmetric per-tensor activations on a range observed as a moving average.

    Statistics: ``MovingAverageObserver(decay)`` (``r̂ ← d·r̂ + (1-d)·r`` for the batch min and
    max, the first batch initialises ``r̂``; seed lecture, "Type 1: during training").
    Forward: TensorFlow FakeQuant on the nudged grid of ``[min(r̂_min, 0), max(r̂_max, 0)]``
    (``ops.fake_quant_affine``). Backward: straight-through inside the range, zero outside.
    Export: int8 ``scale = (max-min)/(2^b-1)``, zero point nudged; a ``b < 8`` grid uses ``2^b``
    consecutive int8 codes (see ``ops.nudged_affine``).

    Args: bits (2..8), decay ``d`` in [0, 1).
    """

    def __init__(self, bits: int = 8, decay: float = 0.99):
        self.bits = ops.integer_in_range("bits", bits, 2, 8)
        self.observer = MovingAverageObserver(decay)
        self.decay = self.observer.decay

    def range(self, weights):
        return observed_range(weights)

    def get_config(self):
        return {"bits": self.bits, "decay": self.decay}


@register("quantizer")
class FixedRangeQuantizer(ActivationQuantizer):
    """Asymmetric activations on a fixed range, for bounded functions (ReLU6, ReLU1, softmax).

    Forward: FakeQuant on the nudged grid of ``[min_value, max_value]``; backward: STE inside.
    Export: the same grid in int8. Softmax/sigmoid outputs use ``[0, 255/256]`` (TFLite's
    fixed int8 output scale 1/256, zero point -128), tanh ``[-1, 127/128]`` (scale 1/128, zp 0).
    """

    def __init__(self, min_value: float, max_value: float, bits: int = 8):
        if not min_value <= 0.0 < max_value:
            raise ValueError(
                f"A fixed range must contain 0 and be non-empty. Received: min_value={min_value}, max_value={max_value}"
            )
        self.min_value = float(min_value)
        self.max_value = float(max_value)
        self.bits = int(bits)

    def range(self, weights):
        return tf.constant(self.min_value, tf.float32), tf.constant(self.max_value, tf.float32)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value, "bits": self.bits}


def serialize(quantizer: Quantizer | None) -> dict | None:
    return None if quantizer is None else keras.utils.serialize_keras_object(quantizer)


def deserialize(config: dict | None) -> Quantizer | None:
    return None if config is None else keras.utils.deserialize_keras_object(config)
