"""TFLite's fixed-point arithmetic in vectorized numpy (int64 arrays holding int32 values).

These are the integer primitives every quantized TFLite kernel is built from, transcribed from
``tensorflow/lite/kernels/internal/quantization_util.cc`` (``QuantizeMultiplier``) and
``common.h`` / gemmlowp ``fixedpoint.h`` (``SaturatingRoundingDoublingHighMul``,
``RoundingDivideByPOT``, ``MultiplyByQuantizedMultiplier``). A real multiplier ``M`` becomes an
int32 ``m0`` in [2^30, 2^31) and a shift with ``M ≈ m0·2^(shift-31)``; applying it to an int32
accumulator ``x`` is ``RDBPOT(SRDHM(x·2^max(shift,0), m0), max(-shift,0))`` — two roundings,
the second half away from zero.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "INT32_MAX",
    "INT32_MIN",
    "multiply_by_quantized_multiplier",
    "quantize_multiplier",
    "round_half_away",
    "rounding_divide_by_pot",
    "saturating_rounding_doubling_high_mul",
]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def round_half_away(x) -> np.ndarray:
    """C ``round`` / ``TfLiteRound``: nearest integer, ties away from zero, on float64 values.

    ``x - trunc(x)`` is exact in binary floating point, so the tie test is exact for every
    value (adding 0.5 first would round 0.49999997 up, in float32).
    """
    x = np.asarray(x, np.float64)
    whole = np.trunc(x)
    return whole + np.where(np.abs(x - whole) >= 0.5, np.sign(x), 0.0)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """``QuantizeMultiplier``: ``real ≈ m0 · 2^(shift - 31)`` with ``m0`` an int32 in [2^30, 2^31).

    ``frexp`` splits ``real`` into ``q·2^shift`` with ``q`` in [0.5, 1); ``m0 = round(q·2^31)``
    (C ``round``: half away from zero); ``q`` rounding up to 1 carries into the shift. A shift
    below -31 flushes the multiplier to 0, as TFLite does. Zero gives ``(0, 0)``.

    Args:
        real: the real multiplier (finite, >= 0 in every kernel kerasq writes; negative allowed).

    Returns:
        ``(m0, shift)`` as Python ints.
    """
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(float(real))
    q_fixed = int(math.copysign(math.floor(abs(q) * (1 << 31) + 0.5), q))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    # (Only TFLite's single-rounding build caps the shift at 30; the shipped double-rounding
    # build does not, and neither does this.)
    return q_fixed, shift


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul``: ``round(a·b / 2^31)`` in int32.

    ``a·b`` in int64, plus a nudge of ``2^30`` (``1 - 2^30`` when the product is negative),
    divided by ``2^31`` truncating toward zero; the one overflow case ``a = b = INT32_MIN``
    saturates to ``INT32_MAX``. Vectorized over broadcastable int arrays.
    """
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    total = ab + nudge
    # C++ integer division truncates toward zero; numpy's // floors.
    high = np.where(total >= 0, total >> 31, -((-total) >> 31))
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, np.int64(INT32_MAX), high)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded half away from zero.

    ``exponent`` in [0, 31] (an int or a broadcastable array, e.g. per channel).
    """
    x = np.asarray(x, np.int64)
    exponent = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).astype(np.int64)
    return (x >> exponent) + (remainder > threshold).astype(np.int64)


def multiply_by_quantized_multiplier(x, m0, shift) -> np.ndarray:
    """``MultiplyByQuantizedMultiplier(x, m0, shift)`` of ``common.h`` (the 32-bit form).

    ``x`` an int32-valued accumulator; ``m0``/``shift`` from :func:`quantize_multiplier`,
    scalars or arrays broadcastable against ``x`` (per-channel requantization). Returns
    ``RDBPOT(SRDHM(x·2^left, m0), right)`` with ``left = max(shift, 0)``,
    ``right = max(-shift, 0)``, as int64 arrays of int32 values.
    """
    x = np.asarray(x, np.int64)
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    shifted = np.clip(x * (np.int64(1) << left), INT32_MIN, INT32_MAX)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, m0), right)
