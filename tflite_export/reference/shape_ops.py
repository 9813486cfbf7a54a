"""Ops that move, pick, pool or average codes: RESHAPE, PAD(V2), CONCATENATION, MEAN, pools, slices, CAST.

Most of these copy stored values unchanged (the output is on the input's grid, which LiteRT's
int8 kernels require); the arithmetic ones follow LiteRT's reference kernels:

- MEAN (``kernels/reduce.cc`` → ``internal/reference/reduce.h`` ``QuantizedMeanOrSum``): the
  int32 sum ``Σq`` over the axes, ``(M0, shift) = QuantizeMultiplier(double(s_x)/double(s_y))``
  (``M0 = 2^30, shift = 1`` for equal scales: no shortcut), the count ``N`` folded into the
  multiplier, ``k = min(floor(log2 N), 32, 31 + shift)``, ``M' = (M0·2^k) / N`` (truncating),
  ``y = clamp(MultiplyByQuantizedMultiplier(Σq - z_x·N, M', shift - k) + z_y)``;
- AVERAGE_POOL_2D (``internal/reference/integer_ops/pooling.h``): the sum of the raw codes of
  the window positions inside the input divided by their count ``n``, rounding half away from
  zero (``acc > 0 ? (acc + n/2)/n : (acc - n/2)/n`` in C division), then the fused clamp;
- MAX_POOL_2D: the largest code of the window positions inside the input, then the fused clamp;
- CONCATENATION (``kernels/concatenation.cc``): int8 needs every input on the output's grid
  (LiteRT's ``Prepare`` refuses otherwise); uint8 inputs on other grids are requantized as
  ``reference_ops::ConcatenationWithScaling`` does, in float32:
  ``round(q·(s_i·(1/s_y)) - z_i·(s_i·(1/s_y))) + z_y``;
- PAD / PADV2 (``kernels/pad.cc``): quantized tensors pad with the output zero point (PAD) or
  the constant's code, which must be on the output's grid (PADV2).
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tflite_export.reference.conv import compute_padding
from tflite_export.reference.fixed_point import round_half_away
from tflite_export.reference.fixed_point import multiply_by_quantized_multiplier, quantize_multiplier
from tflite_export.reference.kernels import Op, activation_range, kernel

__all__ = ["mean_multiplier"]


def _options(op: Op, name: str, default):
    value = getattr(op.options, name, default) if op.options is not None else default
    return default if value is None else value


def _int_vector(op: Op, index: int) -> list[int]:
    return [int(v) for v in np.asarray(op.input(index)).reshape(-1)]


# --- shapes ----------------------------------------------------------------------------------
@kernel("RESHAPE")
def reshape(op: Op) -> None:
    """RESHAPE (``kernels/reshape.cc``): the shape tensor (input 1, if 1-D) else ``new_shape``; one -1 inferred."""
    x = op.input(0)
    shape = None
    if len(op.inputs) > 1 and op.inputs[1] is not None:
        candidate = np.asarray(op.input(1))
        if candidate.ndim == 1:
            shape = [int(v) for v in candidate]
    if shape is None:
        new_shape = _options(op, "newShape", None)
        if new_shape is None:
            raise op.unsupported("no shape tensor and no new_shape option")
        shape = [int(v) for v in new_shape]
    if shape.count(-1) > 1:
        raise op.unsupported(f"shape {shape} has more than one -1")
    op.set_output(0, np.reshape(x, shape))


@kernel("SHAPE")
def shape(op: Op) -> None:
    """SHAPE: the input's dimensions as int32 (``out_type`` INT32) or int64."""
    out_type = int(_options(op, "outType", schema.TensorType.INT32))
    if out_type not in (schema.TensorType.INT32, schema.TensorType.INT64):
        raise op.unsupported(f"out_type {out_type} (SHAPE writes INT32 or INT64)")
    op.set_output(0, np.array(np.shape(op.input(0)), np.int64))


@kernel("TRANSPOSE")
def transpose(op: Op) -> None:
    """TRANSPOSE: ``y = x.transpose(perm)`` (negative entries count from the end)."""
    x = op.input(0)
    perm = [p + x.ndim if p < 0 else p for p in _int_vector(op, 1)]
    if sorted(perm) != list(range(x.ndim)):
        raise op.unsupported(f"perm {perm} is not a permutation of {x.ndim} axes")
    op.set_output(0, np.transpose(x, perm))


@kernel("CAST")
def cast(op: Op) -> None:
    """CAST (``kernels/cast.cc``): C ``static_cast`` of each value (quantization ignored; to bool: ``!= 0``)."""
    x = np.asarray(op.input(0))
    out = op.outputs[0]
    if out.type_name in ("int4", "uint4"):
        raise op.unsupported("CAST to a 4-bit type is not computed")
    if out.dtype == np.bool_:
        op.set_output(0, x != 0)
        return
    if np.issubdtype(x.dtype, np.floating) and not np.issubdtype(out.dtype, np.floating):
        x = np.trunc(x)  # static_cast truncates toward zero
    op.set_output(0, x.astype(out.dtype))


# --- padding ----------------------------------------------------------------------------------
@kernel("PAD", "PADV2")
def pad(op: Op) -> None:
    """PAD / PADV2: ``paddings [rank, 2]`` (before, after) per axis, filled with the pad code.

    Quantized: PAD fills with ``z_y``; PADV2 with its constant's code, which LiteRT requires on
    the output's grid. Non-quantized: 0 or the constant.
    """
    x = op.input(0)
    paddings = np.asarray(op.input(1), np.int64).reshape(-1, 2)
    if paddings.shape[0] != x.ndim or np.any(paddings < 0):
        raise op.unsupported(f"paddings {paddings.tolist()} for a rank-{x.ndim} input (non-negative, one row per axis)")
    out = op.outputs[0]
    constant = op.inputs[2] if len(op.inputs) > 2 else None
    if constant is not None:
        if out.quantized and (constant.single_scale != out.single_scale or constant.single_zero_point != out.single_zero_point):
            raise op.unsupported("the pad constant is not on the output's grid (LiteRT refuses that)")
        value = np.asarray(op.input(2)).reshape(-1)[0]
    else:
        value = out.single_zero_point if out.quantized else 0
    op.set_output(0, np.pad(x, [tuple(p) for p in paddings.tolist()], mode="constant", constant_values=value))


# --- concatenation ----------------------------------------------------------------------------
@kernel("CONCATENATION")
def concatenation(op: Op) -> None:
    """CONCATENATION along ``axis`` (negative counts from the end); no fused activation (LiteRT refuses one)."""
    values = [np.asarray(op.input(i)) for i in range(len(op.inputs))]
    rank = values[0].ndim
    axis = int(_options(op, "axis", 0))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < max(rank, 1):
        raise op.unsupported(f"axis {axis} for rank-{rank} inputs")
    if int(_options(op, "fusedActivationFunction", 0)) != schema.ActivationFunctionType.NONE:
        raise op.unsupported("a fused activation on CONCATENATION (LiteRT refuses it)")
    out = op.outputs[0]
    if out.quantized and out.type_name == "uint8":
        values = [_requantize_uint8(op, i, v) for i, v in enumerate(values)]
    elif out.quantized:
        for spec in op.inputs:
            if spec.single_scale != out.single_scale or spec.single_zero_point != out.single_zero_point:
                raise op.unsupported(
                    f"input {spec.name!r} is on another grid than the output; LiteRT's {out.type_name} kernel "
                    "needs one grid (it refuses to prepare the op)"
                )
    if rank == 0:
        op.set_output(0, np.stack(values))
        return
    op.set_output(0, np.concatenate(values, axis=axis))


def _requantize_uint8(op: Op, index: int, codes: np.ndarray) -> np.ndarray:
    """``ConcatenationWithScaling`` (``reference/concatenation.h``) for one uint8 input, in float32."""
    spec, out = op.inputs[index], op.outputs[0]
    if spec.single_scale == out.single_scale and spec.single_zero_point == out.single_zero_point:
        return codes
    scale = np.float32(spec.single_scale) * (np.float32(1.0) / np.float32(out.single_scale))
    bias = np.float32(-spec.single_zero_point) * scale
    real = (codes.astype(np.float32) * scale + bias).astype(np.float32)
    return np.clip(round_half_away(real.astype(np.float64)) + out.single_zero_point, 0, 255)


# --- slicing ----------------------------------------------------------------------------------
@kernel("SLICE")
def slice_(op: Op) -> None:
    """SLICE: ``x[begin : begin + size]`` per axis, ``size = -1`` meaning to the end."""
    x = op.input(0)
    begin, size = _int_vector(op, 1), _int_vector(op, 2)
    if len(begin) != x.ndim or len(size) != x.ndim:
        raise op.unsupported(f"begin {begin} and size {size} for a rank-{x.ndim} input")
    index = []
    for b, s, dim in zip(begin, size, x.shape):
        end = dim if s == -1 else b + s
        if b < 0 or end > dim or end < b:
            raise op.unsupported(f"slice [{b}, {end}) outside an axis of size {dim}")
        index.append(slice(b, end))
    op.set_output(0, x[tuple(index)])


@kernel("STRIDED_SLICE")
def strided_slice(op: Op) -> None:
    """STRIDED_SLICE with TensorFlow's semantics (``kernels/strided_slice.cc``).

    Per entry ``i`` of begin/end/strides: ``begin_mask``/``end_mask`` bit ``i`` drops the bound,
    ``ellipsis_mask`` expands to the axes not named, ``new_axis_mask`` inserts an axis of 1,
    ``shrink_axis_mask`` keeps the single index ``begin[i]`` and drops the axis; ``offset``
    makes ``end`` relative to ``begin``. Bounds clamp as Python slices do (TensorFlow's rule).
    """
    x = op.input(0)
    begin, end, strides = _int_vector(op, 1), _int_vector(op, 2), _int_vector(op, 3)
    if not len(begin) == len(end) == len(strides):
        raise op.unsupported(f"begin {begin}, end {end} and strides {strides} differ in length")
    masks = {name: int(_options(op, name, 0)) for name in ("beginMask", "endMask", "ellipsisMask", "newAxisMask", "shrinkAxisMask")}
    offset = bool(_options(op, "offset", False))
    if bin(masks["ellipsisMask"]).count("1") > 1:
        raise op.unsupported("more than one ellipsis")
    index: list = []
    for i, (b, e, s) in enumerate(zip(begin, end, strides)):
        bit = 1 << i
        if masks["ellipsisMask"] & bit:
            index.append(Ellipsis)
        elif masks["newAxisMask"] & bit:
            index.append(None)
        elif masks["shrinkAxisMask"] & bit:
            index.append(b)
        else:
            if s == 0:
                raise op.unsupported("a stride of 0")
            stop = None if masks["endMask"] & bit else (b + e if offset else e)
            start = None if masks["beginMask"] & bit else b
            index.append(slice(start, stop, s))
    try:
        result = x[tuple(index)]
    except IndexError as error:
        raise op.unsupported(f"index out of range: {error}") from error
    op.set_output(0, np.asarray(result))


# --- MEAN ------------------------------------------------------------------------------------
def mean_multiplier(input_scale: float, output_scale: float, count: int) -> tuple[int, int]:
    """The ``(M', shift')`` ``QuantizedMeanOrSum`` applies to ``Σq - z_x·N`` for ``N = count`` elements.

    ``(M0, shift) = QuantizeMultiplier(double(s_x)/double(s_y))``;
    ``k = min(floor(log2 N), 32, 31 + shift)``; ``M' = (M0·2^k) // N``; ``shift' = shift - k``.
    """
    m0, shift = quantize_multiplier(float(input_scale) / float(output_scale))
    k = min(count.bit_length() - 1, 32, 31 + shift)
    return (m0 << k) // count, shift - k


@kernel("MEAN")
def mean(op: Op) -> None:
    """MEAN of int8/int16 codes over the axes tensor (``reduce.h`` ``QuantizedMeanOrSum``; see the module doc)."""
    x, out = op.inputs[0], op.outputs[0]
    if not (x.quantized and out.quantized) or x.type_name not in ("int8", "int16", "uint8"):
        raise op.unsupported(f"MEAN of {x.type_name} is computed for quantized int8/int16/uint8 tensors only")
    values = np.asarray(op.input(0), np.int64)
    axes = sorted({a + values.ndim if a < 0 else a for a in _int_vector(op, 1)})
    if any(not 0 <= a < values.ndim for a in axes):
        raise op.unsupported(f"axes {axes} for a rank-{values.ndim} input")
    keep = bool(_options(op, "keepDims", False))
    count = int(np.prod([values.shape[a] for a in axes])) if axes else 1
    total = values.sum(axis=tuple(axes), keepdims=keep)
    if count == 0:
        op.set_output(0, np.zeros(total.shape, np.int64))
        return
    multiplier, shift = mean_multiplier(x.single_scale, out.single_scale, count)
    y = multiply_by_quantized_multiplier(total - x.single_zero_point * count, multiplier, shift) + out.single_zero_point
    lo, hi = out.limits
    op.set_output(0, np.clip(y, lo, hi))


# --- pooling ----------------------------------------------------------------------------------
def _pool_windows(op: Op, x: np.ndarray, fill):
    """The ``kh·kw`` strided views of ``x`` padded with ``fill``, and the output size, per ``padding.h``."""
    if x.ndim != 4:
        raise op.unsupported(f"pooling takes a 4-D input. Received: {list(x.shape)}")
    sh, sw = int(_options(op, "strideH", 1)), int(_options(op, "strideW", 1))
    kh, kw = int(_options(op, "filterHeight", 1)), int(_options(op, "filterWidth", 1))
    if min(sh, sw, kh, kw) <= 0:
        raise op.unsupported(f"strides {sh, sw} and filter {kh, kw} must be positive")
    padding = int(_options(op, "padding", schema.Padding.SAME))
    n, h, w, c = x.shape
    oh, ph = compute_padding(h, kh, sh, 1, padding)
    ow, pw = compute_padding(w, kw, sw, 1, padding)
    need_h, need_w = (oh - 1) * sh + kh, (ow - 1) * sw + kw
    padded = np.full((n, max(need_h, ph + h), max(need_w, pw + w), c), fill, x.dtype)
    padded[:, ph : ph + h, pw : pw + w, :] = x
    views = [
        padded[:, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw, :] for i in range(kh) for j in range(kw)
    ]
    return views


def _pool_types(op: Op) -> None:
    x, out = op.inputs[0], op.outputs[0]
    if not (x.quantized and out.quantized) or x.type_name not in ("int8", "int16", "uint8") or out.type_name != x.type_name:
        raise op.unsupported(f"pooling {x.type_name} -> {out.type_name}: quantized int8/int16/uint8 only")


@kernel("AVERAGE_POOL_2D")
def average_pool_2d(op: Op) -> None:
    """AVERAGE_POOL_2D (``reference_integer_ops::AveragePool``; see the module doc)."""
    _pool_types(op)
    x = np.asarray(op.input(0), np.int64)
    total = sum(_pool_windows(op, x, 0))
    inside = np.ones((1, *x.shape[1:3], 1), np.int64)
    count = sum(_pool_windows(op, inside, 0))
    if np.any(count == 0):
        raise op.unsupported("a pooling window lies entirely in the padding (LiteRT fails on it)")
    level = np.sign(total) * ((np.abs(total) + count // 2) // count)
    lo, hi = activation_range(op, int(_options(op, "fusedActivationFunction", 0)), op.outputs[0])
    op.set_output(0, np.clip(level, lo, hi))


@kernel("MAX_POOL_2D")
def max_pool_2d(op: Op) -> None:
    """MAX_POOL_2D (``reference_integer_ops::MaxPool``): window maximum over the positions inside, then the fused clamp."""
    _pool_types(op)
    x = np.asarray(op.input(0))
    lowest = np.iinfo(x.dtype).min
    views = _pool_windows(op, x, lowest)
    result = views[0]
    for view in views[1:]:
        result = np.maximum(result, view)
    lo, hi = activation_range(op, int(_options(op, "fusedActivationFunction", 0)), op.outputs[0])
    op.set_output(0, np.clip(result.astype(np.int64), lo, hi))
