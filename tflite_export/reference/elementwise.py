"""Elementwise and resampling kernels: arithmetic, (de)quantization, comparisons, selection, resizing.

Each kernel follows the arithmetic of LiteRT's ``BUILTIN_REF`` kernel of the same builtin
(``tflite/kernels/<op>.cc`` and ``tflite/kernels/internal/reference/...``):

- ADD, SUB (``add.cc``, ``sub.cc``, ``reference/integer_ops/add.h``, ``reference/sub.h``): both
  inputs are rescaled to a common grid with 20 extra bits (15 for int16) and three
  ``MultiplyByQuantizedMultiplier`` roundings.
- MUL (``mul.cc``, ``reference/integer_ops/mul.h``): one ``MultiplyByQuantizedMultiplier`` of the
  product of the zero-centred codes.
- MINIMUM, MAXIMUM (``maximum_minimum.cc``): of the stored codes; quantization is not read.
- QUANTIZE (``quantize.cc``, ``reference/quantize.h``, ``reference/requantize.h``), DEQUANTIZE
  (``dequantize.h``, ``reference/integer_ops/dequantize.h``).
- GREATER, GREATER_EQUAL, LESS, LESS_EQUAL (``comparisons.cc``, ``reference/comparisons.h``):
  quantized 8-bit inputs are compared after rescaling to a common grid.
- SELECT_V2 (``select.cc``), RESIZE_BILINEAR (``reference/resize_bilinear.h``
  ``ResizeBilinearInteger``), RESIZE_NEAREST_NEIGHBOR (``reference/resize_nearest_neighbor.h``).

The activation functions (RELU..., LOGISTIC, TANH, SOFTMAX, ...) are in
``tflite_export.reference.activations``, imported here so that importing this module registers
every elementwise kernel.

Everything is vectorized int64 numpy holding the int32 values of the C++ code; the real
multipliers are computed in the precision the C++ computes them (``float`` where the source
divides two ``float`` scales, ``double`` where it widens first), which decides the low bits of
the quantized multiplier.
"""

from __future__ import annotations

import math

import numpy as np

from tflite_export.reference import activations  # noqa: F401  (registers the activation kernels)
from tflite_export.reference.fixed_point import (
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    round_half_away,
    rounding_divide_by_pot,
)
from tflite_export.reference.kernels import Op, TensorSpec, activation_range, kernel

__all__ = ["checked_log2"]

# schema ActivationFunctionType values.
_NONE, _RELU, _RELU_N1_TO_1, _RELU6 = 0, 1, 2, 3
_QUANTIZED_TYPES = ("int8", "uint8", "int16")


# --- shared helpers ---------------------------------------------------------------------------
def _float_activation(op: Op, activation: int, x: np.ndarray) -> np.ndarray:
    """``CalculateActivationRange`` + ``ActivationFunctionWithMinMax`` for float and int32 outputs."""
    if activation == _NONE:
        return x
    bounds = {_RELU: (0, None), _RELU6: (0, 6), _RELU_N1_TO_1: (-1, 1)}.get(activation)
    if bounds is None:
        raise op.unsupported(f"fused activation {activation} is not computed")
    return np.clip(x, bounds[0], bounds[1]).astype(x.dtype)


def checked_log2(scale: float) -> tuple[bool, int]:
    """``CheckedLog2`` (``quantization_util.h``): is ``scale`` a power of two (within 1e-3 in log2), and its log2."""
    log2 = np.float32(np.log(np.float32(scale))) * np.float32(1.0 / math.log(2.0))
    rounded = float(round_half_away(log2))
    return abs(float(log2) - rounded) < 1e-3, int(rounded)


def _float32_ratio(*scales: float) -> float:
    """``a * b * ... / z`` evaluated in float32, as C++ does with ``float`` scales, widened to double."""
    *numerators, denominator = (np.float32(s) for s in scales)
    value = numerators[0]
    for s in numerators[1:]:
        value = np.float32(value * s)
    return float(np.float32(value / denominator))


def _options_field(op: Op, field: str, default):
    return getattr(op.options, field, default) if op.options is not None else default


def _same_type(op: Op, *specs: TensorSpec) -> str:
    types = {s.type_name for s in specs}
    if len(types) != 1:
        raise op.unsupported(f"inputs and output of different types {sorted(types)} are not computed")
    return types.pop()


# --- ADD, SUB ---------------------------------------------------------------------------------
@kernel("ADD", "SUB")
def add_sub(op: Op) -> None:
    """Quantized ADD / SUB (``add.cc``/``sub.cc`` Prepare, ``reference/integer_ops/add.h`` ``AddFunc``).

    With ``d_i = q_i - z_i``, ``L = 20`` (8-bit; 15 for int16), ``S = 2·max(s_1, s_2)`` (double):
    ``y_i = MBQM(d_i·2^L, s_i/S)``, ``out = MBQM(y_1 ± y_2, S/(2^L·s_out)) + z_out``, clamped to the
    fused activation's range. int16 with power-of-two scales and ``pot_scale_int16`` takes the
    LSTM path instead: one input is rounding-shifted right onto the other's scale, then added
    (saturating) or subtracted. int32 / int64 / float32 tensors add (subtract) plainly.
    """
    sa, sb, so = op.inputs[0], op.inputs[1], op.outputs[0]
    subtract = op.name == "SUB"
    activation = _options_field(op, "fusedActivationFunction", _NONE)
    type_name = _same_type(op, sa, sb, so)
    if type_name in ("int32", "int64", "float32") or not so.quantized:
        x, y = op.input(0), op.input(1)
        out = x - y if subtract else x + y
        op.set_output(0, _float_activation(op, activation, out.astype(so.dtype)))
        return
    if type_name not in _QUANTIZED_TYPES:
        raise op.unsupported(f"{type_name} tensors are not computed")
    lo, hi = activation_range(op, activation, so)
    a, b = op.input(0).astype(np.int64), op.input(1).astype(np.int64)
    if type_name == "int16" and _options_field(op, "potScaleInt16", True):
        pots = [checked_log2(s.single_scale) for s in (sa, sb, so)]
        if all(is_pot for is_pot, _ in pots):
            op.set_output(0, _add_sub_int16_pot(op, a, b, pots, subtract, lo, hi))
            return
    left_shift = 15 if type_name == "int16" else 20
    s1, s2, s_out = np.float32(sa.single_scale), np.float32(sb.single_scale), np.float32(so.single_scale)
    twice_max = 2.0 * float(max(s1, s2))  # float doubled exactly, then widened
    real_out = twice_max / float(np.float32(np.float32(1 << left_shift) * s_out))
    if real_out >= 1.0:
        # ADD aborts in Prepare; SUB would right-shift by a negative amount.
        raise op.unsupported(f"an output multiplier >= 1 ({real_out:g}: output scale too small) is not computed")
    m1, shift1 = quantize_multiplier(float(s1) / twice_max)
    m2, shift2 = quantize_multiplier(float(s2) / twice_max)
    m_out, shift_out = quantize_multiplier(real_out)
    y1 = multiply_by_quantized_multiplier((a - sa.single_zero_point) << left_shift, m1, shift1)
    y2 = multiply_by_quantized_multiplier((b - sb.single_zero_point) << left_shift, m2, shift2)
    raw = y1 - y2 if subtract else y1 + y2
    out = multiply_by_quantized_multiplier(raw, m_out, shift_out) + so.single_zero_point
    op.set_output(0, np.clip(out, lo, hi))


def _add_sub_int16_pot(op: Op, a, b, pots, subtract: bool, lo: int, hi: int) -> np.ndarray:
    """The int16 power-of-two path (``reference/add.h`` ``Add(..., pot_scale)``, ``reference/sub.h`` ``Sub16``)."""
    if any(s.single_zero_point != 0 for s in op.inputs[:2] + op.outputs[:1]):
        raise op.unsupported("int16 with nonzero zero points is not computed")
    (_, log_a), (_, log_b), (_, log_out) = pots
    shift_a, shift_b = log_a - log_out, log_b - log_out
    if not (shift_a == 0 or shift_b == 0) or shift_a > 0 or shift_b > 0:
        raise op.unsupported("int16 power-of-two scales other than one input on the output's scale or finer")
    ya = rounding_divide_by_pot(a, -shift_a)
    yb = rounding_divide_by_pot(b, -shift_b)
    if subtract:
        raw = ya - yb
    else:
        raw = np.clip(ya + yb, -32768, 32767)  # gemmlowp SaturatingAdd on int16
    return np.clip(raw, lo, hi)


# --- MUL --------------------------------------------------------------------------------------
@kernel("MUL")
def mul(op: Op) -> None:
    """Quantized MUL (``mul.cc``, ``reference/integer_ops/mul.h`` ``MulElementwise``).

    ``out = z_out + MBQM((q_1 - z_1)·(q_2 - z_2), s_1·s_2/s_out)``, clamped to the fused
    activation's range; the real multiplier is computed in float32 (``float`` scales), then
    ``QuantizeMultiplier``. Broadcasting follows numpy (``BroadcastMul6DSlow``). int32 / float32
    tensors multiply plainly.
    """
    sa, sb, so = op.inputs[0], op.inputs[1], op.outputs[0]
    activation = _options_field(op, "fusedActivationFunction", _NONE)
    type_name = _same_type(op, sa, sb, so)
    if type_name in ("int32", "int64", "float32") or not so.quantized:
        out = (op.input(0) * op.input(1)).astype(so.dtype)
        op.set_output(0, _float_activation(op, activation, out))
        return
    if type_name not in _QUANTIZED_TYPES:
        raise op.unsupported(f"{type_name} tensors are not computed")
    if type_name == "int16" and any(s.single_zero_point != 0 for s in (sa, sb, so)):
        raise op.unsupported("int16 MUL needs zero points of 0")
    lo, hi = activation_range(op, activation, so)
    m0, shift = quantize_multiplier(_float32_ratio(sa.single_scale, sb.single_scale, so.single_scale))
    product = (op.input(0).astype(np.int64) - sa.single_zero_point) * (op.input(1).astype(np.int64) - sb.single_zero_point)
    out = multiply_by_quantized_multiplier(product, m0, shift) + so.single_zero_point
    op.set_output(0, np.clip(out, lo, hi))


# --- MINIMUM, MAXIMUM -------------------------------------------------------------------------
@kernel("MINIMUM", "MAXIMUM")
def minimum_maximum(op: Op) -> None:
    """MINIMUM / MAXIMUM of the stored values, broadcasting (``maximum_minimum.cc``).

    TFLite compares the codes without reading the quantization (the converter gives inputs and
    output one grid), and so does this.
    """
    _same_type(op, op.inputs[0], op.inputs[1], op.outputs[0])
    function = np.minimum if op.name == "MINIMUM" else np.maximum
    op.set_output(0, function(op.input(0), op.input(1)))


# --- QUANTIZE, DEQUANTIZE ---------------------------------------------------------------------
def _channel_shape(spec: TensorSpec, ndim: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[spec.axis] = spec.scale.size
    return tuple(shape)


@kernel("QUANTIZE")
def quantize(op: Op) -> None:
    """QUANTIZE: float32 → integer codes, or integer → integer requantization (``quantize.cc``).

    float32 (``reference/quantize.h`` ``AffineQuantize``, ``PerChannelQuantize``):
    ``clamp(TfLiteRound(x / s) + z)``, the division in float32, ties away from zero.
    Integer (``reference/requantize.h``): ``clamp(MBQM(q - z_in, s_in/s_out) + z_out)``, the
    ratio in double.
    """
    src, dst = op.inputs[0], op.outputs[0]
    x = op.input(0)
    lo, hi = dst.limits
    if not dst.quantized:
        raise op.unsupported("an output without quantization is not computed")
    if src.type_name == "float32":
        x = x.astype(np.float32)
        if dst.per_channel:
            shape = _channel_shape(dst, x.ndim)
            scale = dst.scale.astype(np.float32).reshape(shape)
            zero = dst.zero_point.reshape(shape)
        else:
            scale, zero = np.float32(dst.single_scale), dst.single_zero_point
        ratio = (x / scale).astype(np.float32)
        # The C++ casts the rounded float to int32 (undefined beyond its range): clip first.
        levels = np.clip(round_half_away(ratio), -(2.0**31), 2.0**31 - 1).astype(np.int64)
        op.set_output(0, np.clip(levels + zero, lo, hi))
        return
    if src.type_name not in ("int8", "uint8", "int16", "int32") or not src.quantized:
        raise op.unsupported(f"input type {src.type_name} is not computed")
    if dst.type_name not in ("int8", "uint8", "int16", "int32"):
        raise op.unsupported(f"requantization to {dst.type_name} is not computed")
    m0, shift = quantize_multiplier(float(np.float32(src.single_scale)) / float(np.float32(dst.single_scale)))
    out = multiply_by_quantized_multiplier(x.astype(np.int64) - src.single_zero_point, m0, shift) + dst.single_zero_point
    op.set_output(0, np.clip(out, lo, hi))


@kernel("DEQUANTIZE")
def dequantize(op: Op) -> None:
    """DEQUANTIZE → float32 (``dequantize.h``, ``reference/integer_ops/dequantize.h``).

    Per tensor: ``(float)((double)s · (q - z))``; per channel: ``s_c · (float)(q - z_c)`` in
    float32; float16 widens exactly.
    """
    src = op.inputs[0]
    x = op.input(0)
    if src.type_name == "float16":
        op.set_output(0, x.astype(np.float32))
        return
    if not src.quantized:
        raise op.unsupported(f"a {src.type_name} input without quantization is not computed")
    levels = x.astype(np.int64)
    if src.per_channel:
        shape = _channel_shape(src, x.ndim)
        centred = (levels - src.zero_point.reshape(shape)).astype(np.float32)
        op.set_output(0, (src.scale.astype(np.float32).reshape(shape) * centred).astype(np.float32))
        return
    op.set_output(0, (float(np.float32(src.single_scale)) * (levels - src.single_zero_point)).astype(np.float32))


# --- comparisons, SELECT_V2 -------------------------------------------------------------------
_COMPARISONS = {
    "GREATER": np.greater,
    "GREATER_EQUAL": np.greater_equal,
    "LESS": np.less,
    "LESS_EQUAL": np.less_equal,
}


def _comparison_levels(op: Op, q: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """``ComparisonWithScaling``'s value of one input: ``MBQM((q - z)·2^8, QuantizeMultiplier(s))``."""
    scale = float(np.float32(spec.single_scale))
    if scale >= 1.0:
        # Prepare aborts at 1 and right-shifts by a negative amount above it.
        raise op.unsupported(f"a quantized comparison input with scale >= 1 ({scale:g}) is not computed")
    m0, shift = quantize_multiplier(scale)
    return multiply_by_quantized_multiplier((q.astype(np.int64) - spec.single_zero_point) << 8, m0, shift)


@kernel(*_COMPARISONS)
def compare(op: Op) -> None:
    """GREATER, GREATER_EQUAL, LESS, LESS_EQUAL → bool, broadcasting (``comparisons.cc``).

    int8 / uint8 inputs are compared on a common grid: each ``(q - z)·2^8`` multiplied by its
    own scale (``QuantizeMultiplier(s)``, one fixed-point rounding); other types (int16 too)
    compare the stored values.
    """
    sa, sb = op.inputs[0], op.inputs[1]
    _same_type(op, sa, sb)
    a, b = op.input(0), op.input(1)
    if sa.type_name in ("int8", "uint8") and sa.quantized:
        a, b = _comparison_levels(op, a, sa), _comparison_levels(op, b, sb)
    op.set_output(0, _COMPARISONS[op.name](a, b))


@kernel("SELECT_V2")
def select_v2(op: Op) -> None:
    """SELECT_V2: ``condition ? x : y`` with numpy broadcasting of all three (``select.cc``); codes are copied."""
    condition = op.input(0).astype(bool)
    op.set_output(0, np.where(condition, op.input(1), op.input(2)))


# --- RESIZE_BILINEAR, RESIZE_NEAREST_NEIGHBOR -------------------------------------------------
def _resize_options(op: Op) -> tuple[bool, bool]:
    return bool(_options_field(op, "alignCorners", False)), bool(_options_field(op, "halfPixelCenters", False))


def _output_size(op: Op) -> tuple[int, int]:
    size = np.asarray(op.input(1)).reshape(-1)
    if size.size != 2:
        raise op.unsupported(f"the size input must hold 2 values. Received: {size.size}")
    return int(size[0]), int(size[1])


def _bilinear_taps(out_size: int, in_size: int, align: bool, half: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ComputeInterpolationValuesInteger``: lower, upper source index and the 10-bit position of each output.

    ``scale = (2^10·n + m/2) / m`` (align corners: ``n - 1``, ``m - 1``), position
    ``o·scale`` (half pixel: ``+ scale/2 - 2^9``); C integer division throughout. The position
    may be below zero (half pixel, first rows), where both taps are row 0.
    """
    n, m = (in_size - 1, out_size - 1) if align and out_size > 1 else (in_size, out_size)
    scale = ((1 << 10) * n + m // 2) // m
    position = np.arange(out_size, dtype=np.int64) * scale
    if half:
        position = position + scale // 2 - (1 << 9)
    # C division truncates toward zero; positions are > -2^10, so the lower tap is 0 there.
    lower = np.maximum(np.trunc(position / (1 << 10)).astype(np.int64), 0)
    upper = np.minimum((position + (1 << 10) - 1) // (1 << 10), in_size - 1)
    return np.minimum(lower, in_size - 1), upper, position


@kernel("RESIZE_BILINEAR")
def resize_bilinear(op: Op) -> None:
    """RESIZE_BILINEAR of int8 / int16 codes (``reference/resize_bilinear.h`` ``ResizeBilinearInteger``).

    With 10-bit positions ``p_y``, ``p_x`` and taps ``y0, y1, x0, x1``: the sum of the four
    corner codes times ``(2^10 - (p - 2^10·t0))`` or ``(p - 2^10·t0)`` per axis, divided by
    ``2^20`` rounding half away from zero. The codes are interpolated as stored: the output
    has the input's grid.
    """
    spec = op.inputs[0]
    if spec.type_name not in ("int8", "int16"):
        raise op.unsupported(f"{spec.type_name} input (float reference path) is not computed")
    x = op.input(0).astype(np.int64)
    if x.ndim != 4:
        raise op.unsupported(f"a {x.ndim}-D input is not computed")
    align, half = _resize_options(op)
    if align and half:
        raise op.unsupported("align_corners with half_pixel_centers is rejected by TFLite")
    out_h, out_w = _output_size(op)
    y0, y1, py = _bilinear_taps(out_h, x.shape[1], align, half)
    x0, x1, px = _bilinear_taps(out_w, x.shape[2], align, half)
    wy = (py - (1 << 10) * y0)[None, :, None, None]
    wx = (px - (1 << 10) * x0)[None, None, :, None]

    def corner(rows, cols):
        return x[:, rows][:, :, cols]

    total = (
        corner(y0, x0) * ((1 << 10) - wy) * ((1 << 10) - wx)
        + corner(y1, x0) * wy * ((1 << 10) - wx)
        + corner(y0, x1) * ((1 << 10) - wy) * wx
        + corner(y1, x1) * wy * wx
    )
    half_unit = np.where(total > 0, 1 << 19, -(1 << 19))
    shifted = total + half_unit
    out = np.where(shifted >= 0, shifted >> 20, -((-shifted) >> 20))  # C division truncates toward zero
    op.set_output(0, out)


def _nearest_indices(out_size: int, in_size: int, align: bool, half: bool) -> np.ndarray:
    """``GetNearestNeighbor`` in float32: ``floor((o + offset)·scale)`` (align corners: rounded), clamped."""
    if align and out_size > 1:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1)
    else:
        scale = np.float32(in_size) / np.float32(out_size)
    offset = np.float32(0.5 if half else 0.0)
    position = ((np.arange(out_size, dtype=np.float32) + offset) * np.float32(scale)).astype(np.float32)
    index = round_half_away(position) if align else np.floor(position)
    index = np.minimum(index.astype(np.int64), in_size - 1)
    return np.maximum(index, 0) if half else index


@kernel("RESIZE_NEAREST_NEIGHBOR")
def resize_nearest_neighbor(op: Op) -> None:
    """RESIZE_NEAREST_NEIGHBOR: copies the nearest source pixel (``reference/resize_nearest_neighbor.h``)."""
    x = op.input(0)
    if x.ndim != 4:
        raise op.unsupported(f"a {x.ndim}-D input is not computed")
    align, half = _resize_options(op)
    out_h, out_w = _output_size(op)
    rows = _nearest_indices(out_h, x.shape[1], align, half)
    cols = _nearest_indices(out_w, x.shape[2], align, half)
    op.set_output(0, x[:, rows][:, :, cols])
