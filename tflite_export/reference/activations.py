"""Activation kernels: RELU family, LEAKY_RELU, PRELU, HARD_SWISH, SOFTMAX and the table ones.

All follow ``tflite/kernels/activations.cc`` as LiteRT's ``BUILTIN_REF`` resolver registers it:

- RELU, RELU6, RELU_N1_TO_1, RELU_0_TO_1 (``QuantizedReluX`` → ``reference_ops::ReluX``):
  ``clamp(z_out + MBQM(q - z_in, s_in/s_out))`` to the activation's code range.
- LEAKY_RELU (``reference/leaky_relu.h``) and PRELU (``reference/prelu.h``): one
  ``MultiplyByQuantizedMultiplier`` per sign of ``q - z_in``.
- LOGISTIC, TANH, ELU, GELU on 8-bit codes: a table of 256 entries built in float32 from the
  float function (``LUTPopulate`` of ``internal/common.h``), ``round(f(s_in·(q - z_in)) / s_out) + z_out``.
  BUILTIN_REF has no ELU kernel; ELU here is the table of the builtin (optimized) kernel.
- HARD_SWISH (``reference/hard_swish.h``): int16 fixed point with int16 multipliers.
- SOFTMAX (``reference/softmax.h``): gemmlowp fixed point — ``exp`` on Q5.26, a Q12.19 sum,
  a Newton-Raphson reciprocal.

The float functions of the tables are evaluated in double and rounded to float32 (what the C
library's ``expf``/``tanhf``/``erfcf`` return up to rare last-bit differences, none seen on
thousands of tested tables); the arithmetic around them is float32, in the C++ order.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from tflite_export.reference.fixed_point import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    round_half_away,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from tflite_export.reference.kernels import Op, TensorSpec, kernel

__all__ = ["exp_on_negative_values", "lookup_table", "one_over_one_plus_x_for_x_in_0_1"]

_INT8_TYPES = ("int8", "uint8")


def _check_same_type(op: Op) -> TensorSpec:
    src, dst = op.inputs[0], op.outputs[0]
    if src.type_name != dst.type_name:
        raise op.unsupported(f"input {src.type_name} and output {dst.type_name} differ")
    return src


# --- gemmlowp fixed point (fixedpoint/fixedpoint.h), int32 values in int64 arrays -----------
def _wrap32(x) -> np.ndarray:
    """Two's-complement int32 wraparound of int64 values (gemmlowp's raw ``+``/``-``)."""
    return ((np.asarray(x, np.int64) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _saturating_shift_left(x, exponent: int) -> np.ndarray:
    """``SaturatingRoundingMultiplyByPOT<exponent > 0>``: ``x·2^e``, saturating at the int32 limits."""
    threshold = (1 << (31 - exponent)) - 1
    x = np.asarray(x, np.int64)
    return np.where(x > threshold, INT32_MAX, np.where(x < -threshold, INT32_MIN, x << exponent))


def _mul(a, b) -> np.ndarray:
    """``FixedPoint * FixedPoint``: ``SaturatingRoundingDoublingHighMul`` of the raw values."""
    return saturating_rounding_doubling_high_mul(a, b)


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: np.ndarray) -> np.ndarray:
    """exp(a) for a in [-1/4, 0) (Q0.31): Taylor expansion around -1/8."""
    constant_term = 1895147668  # exp(-1/8)
    constant_1_over_3 = 715827883
    x = _wrap32(a + (1 << 28))
    x2 = _mul(x, x)
    x3 = _mul(x2, x)
    x4 = _mul(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = rounding_divide_by_pot(_wrap32(_mul(_wrap32(x4_over_4 + x3), constant_1_over_3) + x2), 1)
    return _wrap32(constant_term + _mul(constant_term, _wrap32(x + poly)))


_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535), (3, 720401), (4, 242))


def exp_on_negative_values(a, integer_bits: int) -> np.ndarray:
    """gemmlowp ``exp_on_negative_values``: exp of ``a`` (raw Q``integer_bits``, a <= 0) as raw Q0.31.

    ``a`` is split into a remainder in [-1/4, 0), evaluated by a polynomial, and the bits of
    ``-a`` above it, each multiplying by the constant ``exp(-2^k)``; exp(0) is the Q0.31 one.
    """
    a = np.asarray(a, np.int64)
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    a_mod_quarter_minus_one_quarter = _wrap32((a & (one_quarter - 1)) - one_quarter)
    rescaled = a_mod_quarter_minus_one_quarter
    if integer_bits > 0:
        rescaled = _saturating_shift_left(rescaled, integer_bits)
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(rescaled)
    remainder = _wrap32(a_mod_quarter_minus_one_quarter - a)
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            bit = (remainder & (1 << (fractional_bits + exponent))) != 0
            result = np.where(bit, _mul(result, multiplier), result)
    if integer_bits > 5:
        clamp = -(1 << (36 - integer_bits))
        result = np.where(a < clamp, 0, result)
    return np.where(a == 0, INT32_MAX, result)


def one_over_one_plus_x_for_x_in_0_1(a) -> np.ndarray:
    """gemmlowp ``one_over_one_plus_x_for_x_in_0_1``: 1/(1 + a) for raw Q0.31 ``a``, three Newton-Raphson steps."""
    a = np.asarray(a, np.int64)
    total = a + INT32_MAX
    # RoundingHalfSum: (sum ± 1) / 2 with C division (toward zero).
    nudged = total + np.where(total >= 0, 1, -1)
    half_denominator = np.where(nudged >= 0, nudged // 2, -((-nudged) // 2))
    constant_48_over_17 = 1515870810  # Q2.29
    constant_neg_32_over_17 = -1010580540
    x = _wrap32(constant_48_over_17 + _mul(half_denominator, constant_neg_32_over_17))
    one_q2 = 1 << 29
    for _ in range(3):
        half_denominator_times_x = _mul(half_denominator, x)
        one_minus = _wrap32(one_q2 - half_denominator_times_x)
        x = _wrap32(x + _saturating_shift_left(_mul(x, one_minus), 2))
    return _saturating_shift_left(x, 1)


def _reciprocal(x: np.ndarray, integer_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """``GetReciprocal`` (``internal/common.h``): the Q0.31 reciprocal of a positive raw value and its extra bits."""
    x = np.asarray(x, np.int64)
    bit_length = np.frexp(x.astype(np.float64))[1].astype(np.int64)  # exact below 2^53
    headroom_plus_one = 32 - bit_length
    num_bits_over_unit = integer_digits - headroom_plus_one
    shifted_sum_minus_one = ((x << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31)
    return one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one), num_bits_over_unit


# --- int16 helpers of reference/hard_swish.h --------------------------------------------------
def _wrap16(x) -> np.ndarray:
    return ((np.asarray(x, np.int64) + (1 << 15)) & 0xFFFF) - (1 << 15)


def _srdhm16(a, b) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int16."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    total = ab + nudge
    high = _wrap16(np.where(total >= 0, total >> 15, -((-total) >> 15)))
    return np.where((a == b) & (a == -32768), 32767, high)


def _sdhm16(a, b) -> np.ndarray:
    """``SaturatingDoublingHighMul`` (hard_swish.h): ``a·b / 2^15`` truncated toward zero, int16."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b
    high = _wrap16(np.where(ab >= 0, ab >> 15, -((-ab) >> 15)))
    return np.where((a == b) & (a == -32768), 32767, high)


def _rdbpot16(x, exponent: int) -> np.ndarray:
    """gemmlowp ``RoundingDivideByPOT`` on int16: the mask ``2^e - 1`` is itself an int16."""
    x = np.asarray(x, np.int64)
    mask = int(_wrap16((1 << exponent) - 1))
    remainder = x & mask
    threshold = _wrap16((mask >> 1) + (x < 0))
    return _wrap16((x >> exponent) + (remainder > threshold))


def _saturating_left_shift16(x, amount: int) -> np.ndarray:
    return np.clip(np.asarray(x, np.int64) * (1 << amount), -32768, 32767)


def _downscale_multiplier16(m32: int) -> int:
    """``DownScaleInt32ToInt16Multiplier``: round an int32 multiplier to its top 16 bits."""
    if m32 >= INT32_MAX - (1 << 15):
        return 32767
    return (m32 + (1 << 15)) >> 16


# --- RELU family ------------------------------------------------------------------------------
_RELU_BOUNDS = {"RELU": (0.0, math.inf), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0), "RELU_0_TO_1": (0.0, 1.0)}


@kernel(*_RELU_BOUNDS)
def relu(op: Op) -> None:
    """RELU, RELU6, RELU_N1_TO_1, RELU_0_TO_1 (``activations.cc`` ``QuantizedReluX``).

    ``out = clamp(z_out + MBQM(q - z_in, s_in/s_out), lo, hi)`` with the ratio in float32 and
    ``lo = max(type min, z_out + roundf(a/s_out))``, ``hi`` likewise (the type max for RELU).
    float32 clamps the values.
    """
    src = _check_same_type(op)
    dst = op.outputs[0]
    low, high = _RELU_BOUNDS[op.name]
    x = op.input(0)
    if src.type_name == "float32":
        op.set_output(0, np.clip(x, low, None if math.isinf(high) else high))
        return
    allowed = ("int8", "uint8", "int16") if op.name in ("RELU", "RELU6") else _INT8_TYPES
    if src.type_name not in allowed:
        raise op.unsupported(f"{src.type_name} is not computed")
    qmin, qmax = dst.limits
    s_out = np.float32(dst.single_scale)
    lo = max(qmin, dst.single_zero_point + int(round_half_away(np.float32(low) / s_out)))
    hi = qmax if math.isinf(high) else min(qmax, dst.single_zero_point + int(round_half_away(np.float32(high) / s_out)))
    m0, shift = quantize_multiplier(float(np.float32(np.float32(src.single_scale) / s_out)))
    out = dst.single_zero_point + multiply_by_quantized_multiplier(x.astype(np.int64) - src.single_zero_point, m0, shift)
    op.set_output(0, np.clip(out, lo, hi))


# --- LEAKY_RELU, PRELU ------------------------------------------------------------------------
@kernel("LEAKY_RELU")
def leaky_relu(op: Op) -> None:
    """LEAKY_RELU (``reference/leaky_relu.h`` ``QuantizeLeakyRelu``).

    With ``d = q - z_in``: ``z_out + MBQM(d, s_in/s_out)`` for ``d >= 0``, else
    ``z_out ± MBQM(d, |m_alpha|)`` where ``m_alpha = QuantizeMultiplier(s_in·alpha/s_out)`` (a
    negative alpha multiplies by the magnitude and negates); ratios in float32. float32:
    ``x > 0 ? x : alpha·x``.
    """
    src = _check_same_type(op)
    dst = op.outputs[0]
    alpha = np.float32(getattr(op.options, "alpha", 0.0) if op.options is not None else 0.0)
    x = op.input(0)
    if src.type_name == "float32":
        op.set_output(0, np.where(x > 0, x, (x * alpha).astype(np.float32)))
        return
    if src.type_name not in ("int8", "uint8", "int16"):
        raise op.unsupported(f"{src.type_name} is not computed")
    s_in, s_out = np.float32(src.single_scale), np.float32(dst.single_scale)
    m_alpha, shift_alpha = quantize_multiplier(float(np.float32(np.float32(s_in * alpha) / s_out)))
    m_identity, shift_identity = quantize_multiplier(float(np.float32(s_in / s_out)))
    d = x.astype(np.int64) - src.single_zero_point
    negative = multiply_by_quantized_multiplier(d, abs(m_alpha), shift_alpha)
    negative = -negative if m_alpha < 0 else negative
    positive = multiply_by_quantized_multiplier(d, m_identity, shift_identity)
    lo, hi = dst.limits
    op.set_output(0, np.clip(dst.single_zero_point + np.where(d >= 0, positive, negative), lo, hi))


@kernel("PRELU")
def prelu(op: Op) -> None:
    """PRELU with a per-tensor quantized alpha (``reference/prelu.h``), alpha broadcast against the input.

    With ``d = q - z_in``, ``a = q_alpha - z_alpha``: ``z_out + MBQM(d, s_in/s_out)`` for
    ``d >= 0``, else ``z_out + MBQM(d·a, s_in·s_alpha/s_out)``; ratios in float32, clamped to the
    type. float32: ``x >= 0 ? x : x·alpha``.
    """
    src, alpha_spec, dst = op.inputs[0], op.inputs[1], op.outputs[0]
    x, alpha = op.input(0), op.input(1)
    if src.type_name == "float32":
        op.set_output(0, np.where(x >= 0, x, (x * alpha).astype(np.float32)))
        return
    if src.type_name not in ("int8", "uint8", "int16") or src.type_name != dst.type_name:
        raise op.unsupported(f"{src.type_name} input, {dst.type_name} output is not computed")
    if alpha_spec.per_channel:
        raise op.unsupported("a per-channel quantized alpha is not computed (TFLite reads one scale)")
    s_in, s_alpha, s_out = (np.float32(s.single_scale) for s in (src, alpha_spec, dst))
    m1, shift1 = quantize_multiplier(float(np.float32(s_in / s_out)))
    m2, shift2 = quantize_multiplier(float(np.float32(np.float32(s_in * s_alpha) / s_out)))
    d = x.astype(np.int64) - src.single_zero_point
    a = alpha.astype(np.int64) - alpha_spec.single_zero_point
    positive = multiply_by_quantized_multiplier(d, m1, shift1)
    negative = multiply_by_quantized_multiplier(d * a, m2, shift2)
    lo, hi = dst.limits
    out = dst.single_zero_point + np.where(d >= 0, positive, negative)
    op.set_output(0, np.clip(np.broadcast_to(out, np.broadcast_shapes(x.shape, alpha.shape)), lo, hi))


# --- table activations (LUTPopulate) ----------------------------------------------------------
def _f32(x: float) -> np.float32:
    return np.float32(x)


def _logistic(v: np.float32) -> np.float32:
    """``1.0f / (1.0f + std::exp(-value))``."""
    exp = _f32(math.exp(-float(v))) if -float(v) < 709.0 else np.float32(np.inf)  # expf overflows to inf
    return _f32(_f32(1.0) / _f32(_f32(1.0) + exp))


def _tanh(v: np.float32) -> np.float32:
    return _f32(math.tanh(float(v)))


def _elu(v: np.float32) -> np.float32:
    """``value < 0 ? std::expm1(value) : value``."""
    return _f32(math.expm1(float(v))) if v < 0 else v


_SQRT1_2 = 0.70710678118654752440  # M_SQRT1_2
_SQRT_2_OVER_PI = _f32(1.12837916709551257390 * _SQRT1_2)  # float(M_2_SQRTPI * M_SQRT1_2)


def _gelu(v: np.float32) -> np.float32:
    """``GeluTransform`` (``reference/gelu.h``): ``0.5f·x·erfc(x·(float)(-M_SQRT1_2))``."""
    t = _f32(v * _f32(-_SQRT1_2))
    return _f32(_f32(_f32(0.5) * v) * _f32(math.erfc(float(t))))


def _gelu_approximate(v: np.float32) -> np.float32:
    """``GeluTransformApproximate``: ``0.5f·x·(1 + tanh(sqrt(2/pi)·(x + 0.044715f·x·x·x)))``."""
    cube = _f32(_f32(_f32(_f32(0.044715) * v) * v) * v)
    inner = _f32(_SQRT_2_OVER_PI * _f32(v + cube))
    return _f32(_f32(_f32(0.5) * v) * _f32(_f32(1.0) + _f32(math.tanh(float(inner)))))


def lookup_table(src: TensorSpec, dst: TensorSpec, function: Callable[[np.float32], np.float32]) -> np.ndarray:
    """``LUTPopulateInt8``: the output code of every input code, ``table[q - type min]``.

    ``x = s_in·(q - z_in)`` (float32), ``y = f(x)``, ``out = (int)(TfLiteRound(y·(1/s_out)) + z_out)``
    in float32, clamped to the type.
    """
    lo, hi = src.limits
    s_in = _f32(src.single_scale)
    inverse_scale = _f32(_f32(1.0) / _f32(dst.single_scale))
    table = np.empty(hi - lo + 1, np.int64)
    with np.errstate(over="ignore"):  # exp() beyond float32 is inf in C++ too
        for code in range(lo, hi + 1):
            x = _f32(s_in * _f32(code - src.single_zero_point))
            rescaled = round_half_away(_f32(function(x) * inverse_scale))
            table[code - lo] = int(_f32(rescaled + dst.single_zero_point))
    out_lo, out_hi = dst.limits
    return np.clip(table, out_lo, out_hi)


def _apply_table(op: Op, function: Callable[[np.float32], np.float32]) -> None:
    src = _check_same_type(op)
    if src.type_name not in _INT8_TYPES:
        raise op.unsupported(f"{src.type_name} is not computed (8-bit table kernels only)")
    table = lookup_table(src, op.outputs[0], function)
    op.set_output(0, table[op.input(0).astype(np.int64) - src.limits[0]])


@kernel("LOGISTIC")
def logistic(op: Op) -> None:
    """LOGISTIC on 8-bit codes: the float32 table of ``1/(1 + exp(-x))`` (``SigmoidPrepare``, kReference)."""
    _apply_table(op, _logistic)


@kernel("TANH")
def tanh(op: Op) -> None:
    """TANH on 8-bit codes: the float32 table of ``tanh`` (``TanhPrepare``, kReference)."""
    _apply_table(op, _tanh)


@kernel("ELU")
def elu(op: Op) -> None:
    """ELU on int8 codes: the float32 table of ``x < 0 ? expm1(x) : x`` (``EluPrepare``).

    BUILTIN_REF registers no ELU kernel; this is the table of the builtin kernel LiteRT's
    default resolver runs.
    """
    if op.inputs[0].type_name != "int8":
        raise op.unsupported(f"{op.inputs[0].type_name} is not computed (int8 only)")
    _apply_table(op, _elu)


@kernel("GELU")
def gelu(op: Op) -> None:
    """GELU on 8-bit codes: the float32 table of ``GeluTransform`` (or the tanh approximation) (``GeluPrepare``)."""
    approximate = bool(getattr(op.options, "approximate", False)) if op.options is not None else False
    _apply_table(op, _gelu_approximate if approximate else _gelu)


# --- HARD_SWISH -------------------------------------------------------------------------------
@kernel("HARD_SWISH")
def hard_swish(op: Op) -> None:
    """HARD_SWISH on 8-bit codes (``HardSwishPrepare``, ``reference/hard_swish.h``).

    ``v = (q - z_in)·2^7`` on int16; the output multiplier ``s_in/(128·s_out)`` and the
    "reluish" multiplier ``(s_in/128)/(3/32768)`` rounded to int16 fixed point; the reluish
    value ``v`` rescaled so that 3.0 ↦ 32768 (saturating), mapped to [0, 1], multiplied
    (truncating) with ``v`` on the output scale, then rounding-shifted onto it: ``x·relu6(x+3)/6``.
    """
    src = _check_same_type(op)
    dst = op.outputs[0]
    if src.type_name not in _INT8_TYPES:
        raise op.unsupported(f"{src.type_name} is not computed")
    hires_input_scale = _f32(_f32(1.0 / 128.0) * _f32(src.single_scale))
    reluish_scale = _f32(3.0 / 32768.0)
    m_out, out_exponent = quantize_multiplier(float(_f32(hires_input_scale / _f32(dst.single_scale))))
    m_out16 = _downscale_multiplier16(m_out)
    if out_exponent > 0:
        raise op.unsupported("an output multiplier above 1 (s_in > 128·s_out) is rejected by TFLite")
    m_relu, relu_exponent = quantize_multiplier(float(_f32(hires_input_scale / reluish_scale)))
    m_relu16 = _downscale_multiplier16(m_relu)

    value = op.input(0).astype(np.int64) - src.single_zero_point
    hires = value * (1 << 7)
    preshift_output = _srdhm16(hires, m_out16)
    reluish = hires
    if relu_exponent > 0:
        reluish = _saturating_left_shift16(reluish, relu_exponent - 1)
    reluish = _srdhm16(reluish, m_relu16)
    if relu_exponent > 0:
        reluish = _saturating_left_shift16(reluish, 1)
    if relu_exponent < 0:
        reluish = _rdbpot16(reluish, -relu_exponent)
    reluish = (reluish + (1 << 15)) >> 1
    preshift = _sdhm16(reluish, preshift_output)
    out = _wrap16(_rdbpot16(preshift, -out_exponent) + dst.single_zero_point)
    lo, hi = dst.limits
    op.set_output(0, np.clip(out, lo, hi))


# --- SOFTMAX ----------------------------------------------------------------------------------
_SCALED_DIFF_INTEGER_BITS = 5
_ACCUMULATION_INTEGER_BITS = 12


@kernel("SOFTMAX")
def softmax(op: Op) -> None:
    """SOFTMAX over the last axis, 8-bit input (``SoftmaxPrepare`` kReference, ``reference/softmax.h``).

    ``d = q - max_row(q)``; entries with ``d`` below ``diff_min`` give the output minimum. The
    others: ``e = exp(SRDHM(d·2^k, m))`` in gemmlowp fixed point (``m·2^k ≈ beta·s_in·2^26``,
    input Q5.26, result Q0.31), ``sum = Σ RDBPOT(e, 12)`` (Q12.19),
    ``out = RDBPOT(SRDHM(1/sum, e), bits_over_unit + 31 - output bits) + output min``, clamped.
    The output grid is the fixed one TFLite requires (1/256, -128 for int8).
    """
    src, dst = op.inputs[0], op.outputs[0]
    if src.type_name not in _INT8_TYPES or dst.type_name not in ("int8", "uint8", "int16"):
        raise op.unsupported(f"{src.type_name} → {dst.type_name} is not computed")
    beta = float(np.float32(getattr(op.options, "beta", 1.0) if op.options is not None else 1.0))
    real = min(beta * float(np.float32(src.single_scale)) * float(1 << (31 - _SCALED_DIFF_INTEGER_BITS)), float((1 << 31) - 1))
    if not real > 1.0:
        raise op.unsupported(f"beta·input_scale·2^26 = {real:g} <= 1 is rejected by TFLite")
    multiplier, left_shift = quantize_multiplier(real)
    radius = math.floor(((1 << _SCALED_DIFF_INTEGER_BITS) - 1) * float(1 << (31 - _SCALED_DIFF_INTEGER_BITS)) / float(1 << left_shift))
    diff_min = -radius

    x = op.input(0).astype(np.int64)
    diff = x - x.max(axis=-1, keepdims=True)
    used = diff >= diff_min
    # MultiplyByQuantizedMultiplierGreaterThanOne; unused entries may exceed int32 and are masked out.
    rescaled = saturating_rounding_doubling_high_mul(np.where(used, diff, 0) << left_shift, multiplier)
    exp = exp_on_negative_values(rescaled, _SCALED_DIFF_INTEGER_BITS)
    terms = rounding_divide_by_pot(exp, _ACCUMULATION_INTEGER_BITS)  # Rescale<12>: Q0.31 → Q12.19
    sum_of_exps = _wrap32(np.where(used, terms, 0).sum(axis=-1, keepdims=True))
    shifted_scale, bits_over_unit = _reciprocal(sum_of_exps, _ACCUMULATION_INTEGER_BITS)
    out_lo, out_hi = dst.limits
    exponent = bits_over_unit + 31 - 8 * dst.dtype.itemsize
    if np.any((exponent < 0) | (exponent > 31)):
        raise op.unsupported("a softmax row whose sum falls outside TFLite's checked range")
    unsaturated = rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted_scale, exp), exponent)
    out = np.clip(unsaturated + out_lo, out_lo, out_hi)
    op.set_output(0, np.where(used, out, out_lo))
