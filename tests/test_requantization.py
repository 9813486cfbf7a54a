"""TFLite's two-step requantization and the rounding offset that lets Keras follow it."""

from __future__ import annotations

import numpy as np
import pytest

from tflite_export.convert import double_rounding_offset, requantization_shift


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: Q31 significand and exponent with real = M0·2^(exponent-31)."""
    significand, exponent = np.frexp(real)
    m0 = int(round(significand * (1 << 31)))
    if m0 == 1 << 31:
        m0, exponent = m0 // 2, exponent + 1
    return m0, int(exponent)


def tflite_requantize(acc: np.ndarray, real: float) -> np.ndarray:
    """MultiplyByQuantizedMultiplier as TFLite's built-in kernels run it (int64 arithmetic)."""
    m0, exponent = quantize_multiplier(real)
    left, right = max(exponent, 0), max(-exponent, 0)
    product = (acc.astype(np.int64) << left) * m0
    nudge = np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = np.trunc((product + nudge) / float(1 << 31)).astype(np.int64)  # exact: |.| < 2^53
    mask = (1 << right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (high < 0)
    return (high >> right) + (remainder > threshold)


@pytest.mark.parametrize("real", [0.7, 0.3, 0.04123, 0.0071, 2.0**-5])
def test_two_roundings_equal_one_rounding_of_the_offset_value(real):
    acc = np.arange(-20000, 20000)
    got = tflite_requantize(acc, real)
    shift = requantization_shift(real)
    m0, exponent = quantize_multiplier(real)
    v = acc * (m0 / 2.0**31) * 2.0**exponent  # acc·M with TFLite's Q31 multiplier, exact in float64
    offset = 0.0 if shift == 0 else 2.0 ** -(shift + 1)
    single = np.floor(v + 0.5)
    shifted = np.where(v >= 0, np.floor(v + 0.5 + offset), -np.floor(-v + 0.5 + offset))
    np.testing.assert_array_equal(got[v >= 0], shifted[v >= 0])
    # Negative values mirror it, except exact ties of the first rounding (TFLite rounds those
    # toward zero); ties need acc·M0 to be an odd multiple of 2^30, i.e. a short significand.
    if m0 % (1 << 16):
        assert np.mean(got[v < 0] == shifted[v < 0]) >= 0.999
    if shift > 0:  # without the offset a share of about 2^-shift of the values round the other way
        assert 0 < np.mean(got != single) <= 2.0 ** -(shift - 1)
    else:
        assert np.mean(got[v >= 0] == single[v >= 0]) == 1.0


def test_requantization_shift_and_offset_known_values():
    assert requantization_shift(0.7) == 0  # M >= 0.5: left shift, one rounding
    assert requantization_shift(0.3) == 1  # 0.6 · 2^-1
    assert requantization_shift(0.04) == 4  # 0.64 · 2^-4
    assert requantization_shift(0.5) == 0
    assert requantization_shift(0.4999999999) == 0  # the Q31 significand rounds up to 1.0
    # input 0.02, weights 0.5 / 0.05, output 0.1: M = 0.1 (k = 3) and 0.01 (k = 6)
    offsets = double_rounding_offset(0.02, np.array([0.5, 0.05, 3.0]), 0.1)
    np.testing.assert_allclose(offsets, [0.1 / 16, 0.1 / 128, 0.0], rtol=1e-6)
    assert offsets.dtype == np.float32
