"""Pure quantization math shared by training, calibration and export.

Notation follows Jacob et al. 2018: ``r = S (q - Z)``. Functions here are stateless: TF
functions take and return tensors (usable inside ``tf.function`` and under ``GradientTape``),
NumPy functions mirror TensorFlow's float32 arithmetic bit for bit where export depends on it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kerasq.compat import tf


def integer_in_range(name: str, value, low: int, high: int) -> int:
    """``value`` as an ``int`` if it is a whole number in ``[low, high]``; else ``ValueError`` naming ``name``.

    Bit widths and cluster counts are counts: ``2.5`` must not silently become 2 and ``True``
    is not 1.

    >>> integer_in_range("bits", 4.0, 2, 8)
    4
    """
    whole = isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer())
    if isinstance(value, (bool, np.bool_)) or not whole or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number in [{low}, {high}]. Received: {name}={value!r}")
    return int(value)


def signed_range(bits: int, narrow_range: bool = False) -> tuple[int, int]:
    """Integer range of a signed ``bits``-bit code: ``[-2^(b-1), 2^(b-1)-1]``.

    ``narrow_range`` drops the most negative code, as TFLite does for int8 weights
    (``[-127, 127]``), so that the grid is symmetric around zero.

    >>> signed_range(2), signed_range(8, narrow_range=True)
    ((-2, 1), (-127, 127))
    """
    bits = integer_in_range("bits", bits, 2, 16)
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if narrow_range else -qmax - 1), qmax


def exact_divide(x: tf.Tensor, y) -> tf.Tensor:
    """``x / y`` rounded once, as IEEE division (and numpy, and TFLite's C++) computes it.

    Inside a ``tf.function``, Grappler's constant folding turns a division by a constant into a
    multiplication by its reciprocal, which rounds differently in about 6% of float32 cases; a
    scale computed that way in a traced ``fit``/``predict`` would be an ulp away from the one
    computed eagerly for export. ``DivNoNan`` (``y`` is never 0 here) is left alone.
    """
    return tf.math.divide_no_nan(tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(y, tf.float32))


def round_ste(x: tf.Tensor) -> tf.Tensor:
    """``round(x)`` (half to even) in the forward pass, identity gradient (Bengio et al. 2013)."""
    return x + tf.stop_gradient(tf.round(x) - x)


def symmetric_scale(max_abs: tf.Tensor, qmax: int) -> tf.Tensor:
    """Symmetric scale ``S = |r|_max / q_max`` (seed lecture); all-zero channels get ``S = 1``.

    Args:
      max_abs: ``|r|_max`` per tensor or per channel, float32, any shape.
      qmax: largest code, e.g. 127 for int8, 1 for 2-bit.
    Returns: scale with the shape of ``max_abs``.
    """
    max_abs = tf.convert_to_tensor(max_abs, tf.float32)
    return tf.where(max_abs > 0, exact_divide(max_abs, float(qmax)), tf.ones_like(max_abs))


def reduce_axes(rank: int, channel_axes: tuple[int, ...]) -> list[int]:
    """Axes to reduce over for per-channel statistics; ``channel_axes=()`` means per tensor."""
    keep = {a % rank for a in channel_axes}
    return [a for a in range(rank) if a not in keep]


def max_abs(w: tf.Tensor, channel_axes: tuple[int, ...]) -> tf.Tensor:
    """``max |w|`` over all axes but ``channel_axes``, keeping dims so it broadcasts onto ``w``."""
    return tf.reduce_max(tf.abs(w), axis=reduce_axes(len(w.shape), channel_axes), keepdims=True)


def linear_codes(w: tf.Tensor, scale: tf.Tensor, qmin: int, qmax: int) -> tf.Tensor:
    """Integer codes ``clamp(round(w / S), qmin, qmax)`` as float32, with straight-through rounding.

    The clamp passes no gradient outside ``[qmin, qmax]`` (the STE "with saturation").
    """
    return tf.clip_by_value(round_ste(exact_divide(w, scale)), float(qmin), float(qmax))


class AffineParams(NamedTuple):
    """Asymmetric grid of an activation tensor as TFLite stores it.

    ``scale`` (float32) and ``zero_point`` in the signed storage range; valid codes are
    ``[code_min, code_max]`` (a k-bit grid inside int8 uses ``2^k`` of the 256 codes).
    """

    scale: float
    zero_point: int
    code_min: int
    code_max: int

    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        return (np.asarray(codes, np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)


def nudged_affine(min_value: float, max_value: float, bits: int = 8, storage_bits: int = 8) -> AffineParams:
    """TensorFlow FakeQuant's nudged grid for ``[min, max]``, expressed as signed storage codes.

    Mirrors ``Nudge()`` in tensorflow/core/kernels/fake_quant_ops_functor.h in float32:
    ``S = (max - min) / (2^b - 1)``, ``zp = round(-min / S)`` clamped to ``[0, 2^b - 1]``
    (std::round, halves away from zero). The ``b``-bit unsigned code ``u`` is stored as
    ``u - 2^(storage_bits-1)``, so an int8 tensor holds a 4-bit grid in codes ``[-128, -113]``.

    >>> p = nudged_affine(0.0, 1.0)
    >>> (round(p.scale * 255, 6), p.zero_point, p.code_min, p.code_max)
    (1.0, -128, -128, 127)
    """
    min_value = np.float32(min(float(min_value), 0.0))
    max_value = np.float32(max(float(max_value), 0.0))
    if not max_value > min_value:
        raise ValueError(
            "An activation range must not be empty; it was never observed or is constant zero. "
            f"Received: min={float(min_value)}, max={float(max_value)}"
        )
    quant_max = np.float32(2**bits - 1)
    scale = np.float32((max_value - min_value) / quant_max)
    zero_point_from_min = np.float32(np.float32(0.0) - min_value / scale)
    if zero_point_from_min < 0:
        zero_point = 0
    elif zero_point_from_min > quant_max:
        zero_point = int(quant_max)
    else:
        zero_point = int(np.floor(np.abs(zero_point_from_min) + 0.5))  # std::round for x >= 0
    offset = 2 ** (storage_bits - 1)
    return AffineParams(float(scale), zero_point - offset, -offset, -offset + int(quant_max))


class Grid(NamedTuple):
    """An int8 activation grid as TensorFlow tensors, for use inside a forward pass.

    ``scale`` (float32 scalar) and ``zero_point`` (float32 scalar holding the signed storage
    code of real 0); valid codes ``[code_min, code_max]``. ``AffineParams`` is the same grid as
    Python numbers, for export.
    """

    scale: tf.Tensor
    zero_point: tf.Tensor
    code_min: int
    code_max: int

    def to_params(self) -> AffineParams:
        """The grid as Python numbers (eager tensors only)."""
        return AffineParams(float(self.scale.numpy()), int(round(float(self.zero_point.numpy()))), self.code_min, self.code_max)

    def values(self, codes: tf.Tensor) -> tf.Tensor:
        """Real values ``(codes - zero_point)·scale`` of integer-valued float32 ``codes``."""
        return (codes - self.zero_point) * self.scale


def nudged_grid(min_value: tf.Tensor, max_value: tf.Tensor, bits: int = 8, storage_bits: int = 8) -> Grid:
    """``nudged_affine`` in TensorFlow: the grid ``fake_quant_affine(x, min, max, bits)`` rounds onto.

    The same float32 operations as TensorFlow's FakeQuant kernel (``Nudge()``) and as
    ``nudged_affine``, so the scale and zero point agree bit for bit. The range must contain 0
    and be non-empty (callers widen it).
    """
    min_value = tf.convert_to_tensor(min_value, tf.float32)
    max_value = tf.convert_to_tensor(max_value, tf.float32)
    quant_max = float(2**bits - 1)
    scale = exact_divide(max_value - min_value, quant_max)
    zero_point_from_min = 0.0 - exact_divide(min_value, scale)
    zero_point = tf.where(
        zero_point_from_min < 0.0,
        0.0,
        tf.where(zero_point_from_min > quant_max, quant_max, tf.floor(tf.abs(zero_point_from_min) + 0.5)),
    )
    offset = 2 ** (storage_bits - 1)
    return Grid(scale, zero_point - float(offset), -offset, -offset + int(quant_max))


def widened(params: AffineParams) -> AffineParams:
    """The grid consumers read a k-bit activation on (k < 8): the same values, ``m`` times finer.

    A k-bit grid uses ``2^k`` consecutive int8 codes; the exporter re-expresses it exactly (an
    int8→int8 QUANTIZE whose multiplier is the integer ``m = floor(255/(2^k - 1))``, 17 for
    4 bits) at scale ``S/m`` with codes ``m`` apart, so the consumers' requantization multiplier
    and bias step are ``m`` times smaller. Grids of 8 bits, and with ``m < 2``, are returned as is.
    """
    levels = params.code_max - params.code_min
    m = 255 // levels
    if m < 2:
        return params
    return AffineParams(
        float(np.float32(params.scale) / np.float32(m)),
        -128 + (params.zero_point - params.code_min) * m,
        -128,
        -128 + levels * m,
    )


def widened_grid(grid: Grid) -> Grid:
    """``widened`` for a TensorFlow ``Grid`` (same arithmetic)."""
    levels = grid.code_max - grid.code_min
    m = 255 // levels
    if m < 2:
        return grid
    return Grid(exact_divide(grid.scale, float(m)), -128.0 + (grid.zero_point - float(grid.code_min)) * m, -128, -128 + levels * m)


def fake_quant_affine(x: tf.Tensor, min_value: tf.Tensor, max_value: tf.Tensor, bits: int = 8) -> tf.Tensor:
    """Asymmetric fake quantization on TensorFlow's nudged grid (the op the exporter mirrors).

    Forward: ``S·(clamp(round_half_up((x - m)/S), 0, 2^b-1)) + m`` with nudged ``m``, ``S``.
    Backward: identity inside ``[min, max]``; the gradient of clipped inputs flows to
    ``min``/``max`` (what PACT's ``∂y/∂α = 1 for x ≥ α`` needs).
    """
    return tf.quantization.fake_quant_with_min_max_vars(x, min_value, max_value, num_bits=bits, narrow_range=False)


def scale_output_channels(kernel: np.ndarray, factor: np.ndarray, depthwise: bool = False) -> np.ndarray:
    """``kernel`` with output channel ``c`` multiplied by ``factor[c]``, float32.

    Kernel layouts are Keras': Conv2D ``[h, w, in, out]``, Dense ``[in, out]``, DepthwiseConv2D
    ``[h, w, in, multiplier]`` whose output channel ``i·multiplier + m`` is ``factor[i·multiplier + m]``.
    """
    shape = kernel.shape[2:] if depthwise else kernel.shape[-1:]
    return (kernel * np.reshape(factor, shape)).astype(np.float32)

