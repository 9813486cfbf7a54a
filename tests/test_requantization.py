"""kerasq.runtimes: the TensorFlow emulation of LiteRT's integer kernels against int64 models of them.

The int64 models below are written from TFLite's and XNNPACK's kernel arithmetic
(quantization_util.cc QuantizeMultiplier, gemmlowp SaturatingRoundingDoublingHighMul and
RoundingDivideByPOT, ruy's rounding right shift, XNNPACK's qs8 vadd / reduce / vcvt), one
integer operation at a time; the emulation works on float values as the Keras model holds them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kerasq import ops, runtimes
from kerasq.compat import tf
from kerasq.runtimes import DOUBLE_HALF_AWAY, DOUBLE_HALF_UP, SINGLE, SINGLE_DOUBLE, Target


def quantize_multiplier(real: float) -> tuple[int, int]:
    q, shift = math.frexp(real)
    m0 = int(math.floor(q * 2**31 + 0.5))
    if m0 == 2**31:
        m0, shift = m0 // 2, shift + 1
    return m0, shift


def srdhm(a: np.ndarray, m0: int) -> np.ndarray:
    ab = a.astype(object) * m0
    nudge = np.where(a >= 0, 1 << 30, 1 - (1 << 30))
    total = ab + nudge
    return np.array([int(t / (1 << 31)) if t >= 0 else -int(-t / (1 << 31)) for t in total.ravel()], np.int64).reshape(a.shape)


def rdpot(x: np.ndarray, exponent: int) -> np.ndarray:
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def ruy_requantize(acc, real):
    m0, shift = quantize_multiplier(real)
    y = srdhm(np.asarray(acc, np.int64) << max(shift, 0), m0)
    right = max(-shift, 0)
    return (y + (1 << right >> 1)) >> right if right else y


def gemmlowp_requantize(acc, real):
    m0, shift = quantize_multiplier(real)
    return rdpot(srdhm(np.asarray(acc, np.int64) << max(shift, 0), m0), max(-shift, 0))


def grid(scale: float, zero_point: int) -> ops.Grid:
    return ops.Grid(tf.constant(np.float32(scale)), tf.constant(np.float32(zero_point)), -128, 127)


@pytest.mark.parametrize(
    "real,expected",
    # TFLite quantization_util_test.cc golden values.
    [(0.75, (1610612736, 0)), (1.25, (1342177280, 1)), (2.0**-32, (1073741824, -31)), (0.5, (1073741824, 0)),
     (1.0, (1073741824, 1)), (0.1, (1717986918, -3))],
)
def test_quantize_multiplier_golden(real, expected):
    m0, shift = runtimes.quantize_multiplier(tf.constant([real], tf.float64))
    assert (int(m0[0]), int(shift[0])) == expected == quantize_multiplier(real)


def test_exact_ties_below_zero_round_up_in_ruy_and_away_in_gemmlowp():
    # s_in = 1, s_w = 1/16, s_out = 1: M = 2^-4 -> M0 = 2^30, right shift 3; acc·M = acc/16 exactly.
    acc = tf.constant(np.array([-40, -24, -8, 8, 24, 40], np.float64)[:, None])  # -2.5 ... 2.5
    expected = {
        DOUBLE_HALF_UP: [-2, -1, 0, 1, 2, 3],  # ruy: ties up for every sign
        DOUBLE_HALF_AWAY: [-3, -2, -1, 1, 2, 3],  # gemmlowp RoundingDivideByPOT: ties away from zero
        SINGLE: [-2, -2, 0, 0, 2, 2],  # XNNPACK: float32 product, ties to even
        SINGLE_DOUBLE: [-3, -2, -1, 1, 2, 3],  # reference FULLY_CONNECTED: std::round
    }
    for mode, levels in expected.items():
        level = runtimes.requantize_accumulator(acc, tf.constant(1.0), tf.constant([0.0625]), tf.constant(1.0), np.array([mode]))
        assert level.numpy().ravel().tolist() == levels, mode


def test_weight_op_rounding_per_runtime_and_storage():
    xnn, ref = Target("xnnpack"), Target("reference")
    assert (runtimes.weight_op_rounding(xnn, "CONV_2D", "int8", 4, 3) == SINGLE).all()
    assert (runtimes.weight_op_rounding(xnn, "CONV_2D", "int4", 4, 3) == DOUBLE_HALF_UP).all()
    assert (runtimes.weight_op_rounding(xnn, "FULLY_CONNECTED", "int4", 4, 6) == SINGLE).all()  # even depth: XNNPACK
    assert (runtimes.weight_op_rounding(xnn, "FULLY_CONNECTED", "int4", 4, 7) == DOUBLE_HALF_UP).all()
    depthwise = runtimes.weight_op_rounding(xnn, "DEPTHWISE_CONV_2D", "int4", 19, 19)
    assert depthwise.tolist() == [DOUBLE_HALF_UP] * 16 + [DOUBLE_HALF_AWAY] * 3  # NEON blocks of 8, scalar tail
    assert (runtimes.weight_op_rounding(ref, "CONV_2D", "int8", 4, 3) == DOUBLE_HALF_AWAY).all()
    assert (runtimes.weight_op_rounding(ref, "FULLY_CONNECTED", "int8", 4, 3) == SINGLE_DOUBLE).all()


@pytest.mark.parametrize("real", [0.3, 0.0457, 0.00617, 0.6, 1.7])
def test_exact_accumulators_give_every_runtime_code_exactly(real):
    """Inference computes the integer accumulator exactly: every mode, every accumulator, ties included."""
    rng = np.random.default_rng(int(real * 1e4))
    reach = int(160 / real)
    acc = np.concatenate([np.arange(-min(reach, 4000), min(reach, 4000) + 1), rng.integers(-reach, reach, 20000)])
    s_in, s_out = np.float32(0.02), np.float32(0.031)
    s_w = np.float32(real * s_out / s_in)
    exact = float(s_in) * float(s_w) / float(s_out)
    expected = {
        SINGLE: np.rint((acc.astype(np.float32) * ((s_in * s_w) / s_out)).astype(np.float32)),  # XNNPACK
        SINGLE_DOUBLE: np.sign(acc * exact) * np.floor(np.abs(acc * exact) + 0.5),  # reference FC
        DOUBLE_HALF_UP: ruy_requantize(acc, exact),
        DOUBLE_HALF_AWAY: gemmlowp_requantize(acc, exact),
    }
    for mode, reference in expected.items():
        level = runtimes.requantize_accumulator(
            tf.constant(acc.astype(np.float64)[:, None]), tf.constant(s_in), tf.constant([s_w]), tf.constant(s_out),
            np.array([mode]),
        )
        np.testing.assert_array_equal(level.numpy().ravel(), reference, err_msg=str(mode))


def _xnnpack_add(a, b, sa, za, sb, zb, so, zo):
    ra, rb = np.float32(sa) / np.float32(so), np.float32(sb) / np.float32(so)
    shift = 20 - math.floor(math.log2(max(ra, rb)))
    ma, mb = int(np.rint(float(ra) * 2.0**shift)), int(np.rint(float(rb) * 2.0**shift))
    acc = (1 << (shift - 1)) - ma * za - mb * zb + ma * a.astype(np.int64) + mb * b.astype(np.int64)
    return np.clip((acc >> shift) + zo, -128, 127)


def _reference_add(a, b, sa, za, sb, zb, so, zo):
    twice = 2.0 * max(float(np.float32(sa)), float(np.float32(sb)))
    (ma, ea), (mb, eb) = quantize_multiplier(float(np.float32(sa)) / twice), quantize_multiplier(float(np.float32(sb)) / twice)
    mo, eo = quantize_multiplier(twice / float(np.float32(2.0**20) * np.float32(so)))
    ya = rdpot(srdhm((a.astype(np.int64) - za) << 20, ma), -ea)
    yb = rdpot(srdhm((b.astype(np.int64) - zb) << 20, mb), -eb)
    return np.clip(rdpot(srdhm(ya + yb, mo), -eo) + zo, -128, 127)


@pytest.mark.parametrize("scales", [(0.5, 0, 0.5, 0, 1.0, 0), (0.02, -3, 0.031, 5, 0.045, -7), (0.1, 10, 0.003, -128, 0.05, 20)])
def test_add_matches_xnnpack_and_reference_on_every_code_pair(scales):
    sa, za, sb, zb, so, zo = scales
    codes = np.arange(-128, 128)
    a, b = np.meshgrid(codes, codes)
    xa = tf.constant(((a - za) * np.float32(sa)).astype(np.float32))
    xb = tf.constant(((b - zb) * np.float32(sb)).astype(np.float32))
    for target, reference in ((Target("xnnpack"), _xnnpack_add), (Target("reference"), _reference_add)):
        level = runtimes.add(target, xa, xb, grid(sa, za), grid(sb, zb), grid(so, zo)).numpy()
        np.testing.assert_array_equal(np.clip(level + zo, -128, 127), reference(a, b, sa, za, sb, zb, so, zo))


def test_mean_matches_xnnpack_arithmetic_including_ties():
    rng = np.random.default_rng(3)
    codes = rng.integers(-128, 128, (64, 4, 4, 12))
    si, zi, so, zo = np.float32(0.05), -10, np.float32(0.05), -10  # equal grids: sums/16 tie often
    x = tf.constant(((codes - zi) * si).astype(np.float32))
    level = runtimes.mean(Target("xnnpack"), x, grid(si, zi), grid(so, zo)).numpy()
    scale = np.float32(np.float32(si / so) * np.float32(np.float32(1.0) / np.float32(16)))
    bias = np.float32(np.float32(zo) - np.float32(np.float32(16 * zi) * scale))
    expected = np.clip(np.rint((codes.sum(axis=(1, 2)).astype(np.float32) * scale).astype(np.float32) + bias), -128, 127)
    np.testing.assert_array_equal(np.clip(level + zo, -128, 127), expected)
    ties = np.mean((codes.sum(axis=(1, 2)) - 16 * zi) % 16 == 8)
    assert ties > 0.03  # the case where rounding half up (FakeQuant) would differ


def test_requantize_int8_to_int8_keeps_eight_fractional_bits_on_xnnpack():
    codes = np.arange(-128, 128)
    si, zi, so, zo = np.float32(0.05), -3, np.float32(0.047), 7
    x = tf.constant(((codes - zi) * si).astype(np.float32))
    level = runtimes.requantize(Target("xnnpack"), x, grid(si, zi), grid(so, zo)).numpy()
    m = int(np.rint(np.float32(256.0) * (si / so)))
    np.testing.assert_array_equal(np.clip(level + zo, -128, 127), np.clip((((codes - zi) * m + 128) >> 8) + zo, -128, 127))
    reference = runtimes.requantize(Target("reference"), x, grid(si, zi), grid(so, zo)).numpy()
    np.testing.assert_array_equal(np.clip(reference + zo, -128, 127), np.clip(gemmlowp_requantize(codes - zi, float(si) / float(so)) + zo, -128, 127))
