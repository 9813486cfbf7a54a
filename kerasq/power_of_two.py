"""Power-of-two (logarithmic) weights, as in Incremental Network Quantization (Zhou et al. 2017).

Each weight becomes ``0`` or ``±2^e`` for ``e`` in a window of ``n = 2^(bits-1) - 1`` consecutive
exponents ``[e_max - n + 1, e_max]`` fixed by the layer's largest weight (INQ eq. 4)::

    e_max = floor(log2(4·max|w| / 3))

and a weight rounds to the nearest level in the arithmetic sense (INQ eq. 5): with ``α < β``
adjacent levels of ``{0, 2^e_min, ..., 2^e_max}``, ``|w|`` becomes ``β`` when
``(α + β)/2 <= |w| < 3β/2``. Between two powers the boundary is therefore ``3/2`` of the lower
one (``0.75·2^e`` below ``2^e``), and the smallest level ``2^e_min`` takes everything from
``2^(e_min - 1)`` up; smaller weights become 0. ``e_max`` is itself this rounding applied to
``max|w|``, so the largest weight always lands on ``2^e_max``.

Window size: INQ reserves one of its ``b`` bits for zero and uses ``2^(b-2)`` exponents; kerasq
uses ``2^(bits-1) - 1`` exponents, all 15 sign-magnitude codes of a 4-bit word besides zero
(7 exponents at 4 bits, 3 at 3 bits, 1 at 2 bits).

Integer form (exact): ``Q(w) = codes · 2^e_min`` with ``codes = ±2^(e - e_min)`` — at 4 bits
``±64, ±32, ..., ±1`` and 0. Those codes need INT8 storage even though a layer holds at most 15
distinct values: ``PowerOfTwoQuantizer.integer_grid`` reports ``bits=8`` for a 4-bit grid (INT8
tensor, scale ``2^e_min``), while ``tflite_export.inspect`` counts ``<= 4`` effective bits. At 2
and 3 bits the codes (``±1``; ``±4, ±2, ±1``) fit INT4 and are stored packed.

INQ itself (partition by magnitude, freeze the larger part, retrain the rest) is driven by the
``kerasq.callbacks.INQ`` callback through the quantizer's ``mask`` variable.

The math is ``round_log2``/``power_of_two_codes`` (TF) with NumPy mirrors
``power_of_two_codes_numpy``; ``inq_partition`` is the INQ selection rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kerasq import ops
from kerasq.compat import tf
from kerasq.observers import state_variable
from kerasq.quantizers import WeightGrid, WeightQuantizer
from kerasq.registry import register
from kerasq.schemes.base import Scheme

# float32 normal exponents: 2^e is exact for e in [-126, 127].
_MIN_EXPONENT, _MAX_EXPONENT = -126, 127


def num_exponents(bits: int) -> int:
    """Exponents in the window of a ``bits``-bit power-of-two grid: ``2^(bits-1) - 1``.

    >>> [num_exponents(b) for b in (2, 3, 4)]
    [1, 3, 7]
    """
    # 5 bits would need codes up to 2^14, beyond int8.
    return 2 ** (ops.integer_in_range("bits", bits, 2, 4) - 1) - 1


def storage_bits(bits: int) -> int:
    """``WeightGrid.bits`` of a ``bits``-bit grid: 4 (INT4) when codes ``±2^(n-1)`` fit ±7, else 8."""
    return 4 if 2 ** (num_exponents(bits) - 1) <= 7 else 8


def exp2(e: tf.Tensor) -> tf.Tensor:
    """Exact float32 ``2^e`` for integer ``e`` in ``[-126, 127]`` (built from the exponent bits)."""
    e = tf.clip_by_value(tf.cast(e, tf.int32), _MIN_EXPONENT, _MAX_EXPONENT)
    return tf.bitcast(tf.bitwise.left_shift(e + 127, 23), tf.float32)


def round_log2(x: tf.Tensor) -> tf.Tensor:
    """INQ's rounded exponent of ``x >= 0``: the int32 ``k`` with ``0.75·2^k <= x < 1.5·2^k``.

    Equal to ``floor(log2(4x/3))`` but read exactly from the float32 bits: the exponent field
    gives ``floor(log2 x)`` and the first mantissa bit says whether ``x >= 1.5·2^floor``.
    ``x = 0`` gives -127 (below every window).

    >>> round_log2(tf.constant([1.0, 1.49, 1.5, 0.75, 0.74])).numpy().tolist()
    [0, 0, 1, 0, -1]
    """
    bits = tf.bitcast(tf.convert_to_tensor(x, tf.float32), tf.int32)
    floor_exponent = tf.bitwise.right_shift(bits, 23) - 127
    upper_half = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 22), 1)
    return floor_exponent + upper_half


def power_of_two_codes(w: tf.Tensor, bits: int, channel_axes: tuple[int, ...] = ()) -> tuple[tf.Tensor, tf.Tensor]:
    """Codes and scale of the power-of-two grid of ``w``: ``Q(w) = codes · scale`` exactly.

    Forward (INQ eqs. 4-5, window per tensor or per channel of ``channel_axes``)::

        e_max = round_log2(max|w|),  e_min = e_max - n + 1,  n = 2^(bits-1) - 1
        k     = clip(round_log2(|w|), e_min, e_max)
        codes = sign(w) · 2^(k - e_min)  if |w| >= 2^(e_min - 1)  else 0
        scale = 2^e_min

    A channel of zeros gets ``scale = 1`` (codes 0); ``e_max`` is kept in ``[n - 126, 127]`` so
    every power used is a normal float32. No gradient flows (the caller adds the STE).

    Returns: ``(codes, scale)`` float32, codes of ``w``'s shape, scale broadcastable onto it.

    Example, 4 bits per tensor: ``w = [0.9, 0.73, 0.39, 0.33, 0.01, 0.004, -0.42, 0]`` has
    ``e_max = 0`` (``0.75 <= 0.9 < 1.5``), levels ``2^-6 .. 2^0``, zero below ``2^-7``:
    ``codes = [64, 32, 32, 16, 1, 0, -32, 0]``, ``scale = 2^-6``, so
    ``Q(w) = [1, 0.5, 0.5, 0.25, 0.015625, 0, -0.5, 0]``.
    """
    n = num_exponents(bits)
    w = tf.stop_gradient(tf.convert_to_tensor(w, tf.float32))
    magnitude = tf.abs(w)
    peak = ops.max_abs(w, channel_axes)
    e_max = tf.clip_by_value(round_log2(peak), n + _MIN_EXPONENT, _MAX_EXPONENT)
    e_max = tf.where(peak > 0, e_max, tf.fill(tf.shape(e_max), n - 1))
    e_min = e_max - (n - 1)
    k = tf.clip_by_value(round_log2(magnitude), e_min, e_max)
    nonzero = magnitude >= exp2(e_min - 1)
    steps = tf.bitwise.left_shift(tf.ones_like(k), k - e_min)
    codes = tf.where(nonzero, tf.cast(steps, tf.float32), 0.0) * tf.sign(w)
    return codes, exp2(e_min)


def power_of_two_codes_numpy(
    w: np.ndarray, bits: int, channel_axes: tuple[int, ...] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy mirror of ``power_of_two_codes``: ``(codes int32, scale float32)``, same rule.

    Uses ``np.frexp`` (``x = m·2^e``, ``m`` in ``[0.5, 1)``) for the exponent instead of bit fields.
    """
    n = num_exponents(bits)
    w = np.asarray(w, np.float32)

    def rounded_exponent(x):
        mantissa, exponent = np.frexp(x)
        k = exponent - 1 + (mantissa >= 0.75)
        return np.where(x > 0, k, -127).astype(np.int64)

    magnitude = np.abs(w)
    axes = tuple(ops.reduce_axes(w.ndim, channel_axes))
    peak = magnitude.max(axis=axes, keepdims=True) if w.size else np.zeros([1] * w.ndim, np.float32)
    e_max = np.where(peak > 0, np.clip(rounded_exponent(peak), n + _MIN_EXPONENT, _MAX_EXPONENT), n - 1)
    e_min = e_max - (n - 1)
    k = np.clip(rounded_exponent(magnitude), e_min, e_max)
    nonzero = magnitude >= np.ldexp(np.float32(1.0), e_min - 1).astype(np.float32)
    codes = np.where(nonzero, np.left_shift(1, k - e_min), 0) * np.sign(w).astype(np.int64)
    return codes.astype(np.int32), np.ldexp(np.float32(1.0), e_min).astype(np.float32)


def inq_partition(w: np.ndarray, mask: np.ndarray, fraction: float) -> np.ndarray:
    """INQ's weight partition: the new mask with ``floor(fraction·size)`` weights quantized.

    Weights already quantized (``mask == 1``) stay so; the rest are added from the largest
    ``|w|`` among the still-float weights (INQ: "quantize the group of larger magnitude, retrain
    the other"), ties broken by position (stable sort). ``fraction = 1`` quantizes everything.

    Example: the seed lecture's 5x5 layer at ``fraction = 0.5`` quantizes the 12 weights with
    ``|w| >= 0.33`` (25/2 rounded down).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1]. Received: fraction={fraction}")
    w = np.asarray(w)
    mask = np.asarray(mask).reshape(-1) > 0.5
    target = int(np.floor(round(fraction * w.size, 9)))
    missing = target - int(mask.sum())
    new_mask = mask.copy()
    if missing > 0:
        candidates = np.flatnonzero(~mask)
        order = np.argsort(-np.abs(w.reshape(-1)[candidates]), kind="stable")
        new_mask[candidates[order[:missing]]] = True
    return new_mask.reshape(w.shape).astype(np.float32)


@register("quantizer", alias="power_of_two_quantizer")
class PowerOfTwoQuantizer(WeightQuantizer):
    """Weights in ``{0, ±2^e}`` on a window of ``2^(bits-1) - 1`` exponents, with INQ's mask.

    Forward: ``P(w) = codes · 2^e_min`` from ``power_of_two_codes`` (INQ eqs. 4-5: window from
    ``e_max = floor(log2(4·max|w|/3))``, round to the nearest level with the ``3/2`` boundary,
    zero below ``2^(e_min-1)``), then per element::

        Q(w) = mask · P(w) + (1 - mask) · w

    ``mask`` is a non-trainable variable of the kernel's shape, initialised to ones (every weight
    quantized); the ``kerasq.callbacks.INQ`` callback grows it from 0 to 1 in steps.

    Backward: ``dQ/dw = 1`` where ``mask = 0`` (float weights train normally); where ``mask = 1``
    the straight-through estimator ``dQ/dw = 1`` (Bengio 2013) while the scalar non-trainable
    ``freeze`` variable is 0 (plain power-of-two QAT, the default), and ``dQ/dw = 0`` once
    ``freeze = 1`` (INQ sets it: quantized weights are final).

    Export: requires ``mask`` all ones (``integer_grid`` raises ``ValueError`` otherwise); codes
    ``±2^(e - e_min)``, zero point 0, scale ``2^e_min`` per tensor (or per channel); ``bits=8`` in
    the grid for 4-bit weights (codes up to ±64 need INT8), ``bits=4`` (INT4) for 2 and 3 bits.

    Args:
      bits: 2..4; the window has ``2^(bits-1) - 1`` exponents (1, 3, 7).
      channel_axes: kernel axes with their own window, ``()`` per tensor (INQ: per layer).
    Reference: Zhou et al., "Incremental Network Quantization", ICLR 2017.

    Example (4 bits, per tensor): ``w = [0.9, 0.73, 0.39, -0.42, 0.004]`` gives
    ``Q(w) = [1, 0.5, 0.5, -0.5, 0]`` (``0.73 < 0.75`` rounds down, ``0.39 >= 0.375`` up,
    ``0.004 < 2^-7`` to zero), codes ``[64, 32, 32, -32, 0]``, scale ``2^-6``.
    """

    def __init__(self, bits: int = 4, channel_axes: tuple[int, ...] = ()):
        super().__init__(channel_axes)
        num_exponents(bits)
        self.bits = int(bits)

    def build(self, tensor_shape, name, layer):
        return {
            "mask": state_variable(layer, f"{name}_mask", tensor_shape, "ones"),
            "freeze": state_variable(layer, f"{name}_freeze", ()),
        }

    def __call__(self, inputs, training, weights, **kwargs):
        w = tf.convert_to_tensor(inputs, tf.float32)
        codes, scale = power_of_two_codes(w, self.bits, self.channel_axes)
        quantized = codes * scale
        # Forward value exactly `quantized` (w - stop_gradient(w) is 0); gradient 1 - freeze.
        ste = tf.stop_gradient(quantized) + (1.0 - weights["freeze"]) * (w - tf.stop_gradient(w))
        return tf.where(weights["mask"] > 0.5, ste, w)

    @property
    def grid_bits(self) -> int:
        return storage_bits(self.bits)

    def scale(self, w, weights):
        return power_of_two_codes(tf.convert_to_tensor(w, tf.float32), self.bits, self.channel_axes)[1]

    def integer_grid(self, w, weights) -> WeightGrid:
        mask = np.asarray(weights["mask"].numpy())
        if not np.all(mask == 1.0):
            floating = int(np.sum(mask != 1.0))
            raise ValueError(
                f"{weights['mask'].name}: {floating} of {mask.size} weights are still float (the INQ mask is "
                "not all ones), so the layer has no integer form. Let the INQ callback finish (it quantizes "
                "every weight when fit ends) or assign ones to the mask before exporting. Received: "
                f"quantized fraction={1.0 - floating / mask.size:.4f}"
            )
        codes, scale = power_of_two_codes(tf.convert_to_tensor(w), self.bits, self.channel_axes)
        return WeightGrid(codes.numpy().astype(np.int32), scale.numpy().astype(np.float32), storage_bits(self.bits))

    def get_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "channel_axes": self.channel_axes}


@register("scheme", presets={"po2": {"bits": 4}})
class PowerOfTwo(Scheme):
    """Power-of-two weights (INQ, Zhou et al. 2017) with int8 EMA activations.

    Kernels use ``PowerOfTwoQuantizer(bits)``: values ``{0, ±2^e}``, ``2^(bits-1) - 1`` exponents
    below ``e_max = floor(log2(4·max|w|/3))``; the window is per layer (as INQ) unless
    ``per_channel``. Train it as plain QAT (straight-through gradients) or incrementally with
    ``model.fit(..., callbacks=[kerasq.callbacks.INQ()])``. Activations: 8-bit asymmetric, EMA
    range. Below 8 bits, ``quantize_model`` keeps the first and last layers at int8.

    Args:
      bits: 2..4 (default 4: 7 exponents, stored as INT8 codes ``±64..±1``, ``<= 15`` distinct).
      per_channel: one exponent window per output channel instead of per layer.

    Names: ``get_scheme("power_of_two")`` or the preset ``"po2"``.
    """

    activation_bits = 8

    def __init__(self, bits: int = 4, per_channel: bool = False):
        num_exponents(bits)
        self.weight_bits = int(bits)
        self.per_channel = bool(per_channel)

    def weight_quantizer(self, layer, weight):
        return PowerOfTwoQuantizer(self.weight_bits, weight.channel_axes if self.per_channel else ())

    def get_config(self):
        return {"bits": self.weight_bits, "per_channel": self.per_channel}
