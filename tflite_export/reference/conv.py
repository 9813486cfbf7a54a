"""Weight ops: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV (LiteRT's reference kernels).

Every op computes an exact integer accumulator per output element and channel,

    acc = Σ w·(q_x - z_x) + bias

(positions outside the image contribute nothing: ``reference_integer_ops`` skips them, which is
padding the zero-centred input with zeros), then requantizes it per output channel and clamps
it to the fused activation's range:

- CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV (``internal/reference/integer_ops/conv.h``,
  ``depthwise_conv.h``, ``transpose_conv.h``): ``MultiplyByQuantizedMultiplier(acc, M0[c], shift[c])``
  with ``(M0, shift) = QuantizeMultiplier(double(s_x)·double(s_w[c]) / double(s_y))``
  (``kernel_util.cc`` ``PopulateConvolutionQuantizationParams``) — two roundings, ties up then
  away from zero — plus ``z_y``;
- FULLY_CONNECTED (``internal/reference/integer_ops/fully_connected.h``, the overloads the
  reference ``fully_connected.cc`` calls): ``round(double(acc)·(double(s_x)·double(s_w[c]) / double(s_y)))``,
  one rounding half away from zero in double, plus ``z_y``; per-tensor weights also subtract
  the weight zero point.

The accumulator is computed as im2col + matrix product: int8×int8 products and their sums
are integers far below 2^53 (below 2^24 for small layers), so a float64 (float32) BLAS product
is exact; it is then converted to int64 for the fixed-point requantization.

16-bit activations with 8-bit weights (16x8) follow the same kernels' int16 overloads: no
input or output offset, and ``MultiplyByQuantizedMultiplier`` of an int64 accumulator
(``common.cc``: a 16-bit reduced multiplier, one rounding) unless the op's
``quantized_bias_type`` is INT32. INT4 weights arrive unpacked to int8 codes.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tflite_export.reference.fixed_point import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    round_half_away,
)
from tflite_export.reference.kernels import Op, TensorSpec, activation_range, kernel

__all__ = ["compute_padding", "multiply_by_quantized_multiplier_int64"]

_ACT = schema.ActivationFunctionType
_SAME = schema.Padding.SAME
_INT32_TYPE = schema.TensorType.INT32
# float32 sums of integers stay exact while every partial sum is below 2^24.
_FLOAT32_EXACT = float(2**24)


# --- shared arithmetic -------------------------------------------------------------------------
def compute_padding(size: int, kernel_size: int, stride: int, dilation: int, padding: int) -> tuple[int, int]:
    """``padding.h``: ``(output size, padding before)``; the odd extra padding goes after.

    SAME: ``out = ceil(in/stride)``; VALID: ``out = (in + stride - eff) // stride`` with the
    dilated filter size ``eff``; padding before ``= max(0, (out-1)·stride + eff - in) // 2``.
    """
    effective = (kernel_size - 1) * dilation + 1
    if padding == _SAME:
        out = (size + stride - 1) // stride
    else:
        out = (size + stride - effective) // stride
    total = max(0, (out - 1) * stride + effective - size)
    return out, total // 2


def multiply_by_quantized_multiplier_int64(x, m0, shift) -> np.ndarray:
    """``MultiplyByQuantizedMultiplier(int64_t x, ...)`` of ``common.cc`` (double-rounding build).

    The multiplier is reduced to 16 bits, ``(m0 + 2^15) >> 16`` (``0x7FFF`` from ``0x7FFF0000``
    on), and applied with one rounding: ``(x·m + 2^(14 - shift)) >> (15 - shift)``, ties up.
    """
    x = np.asarray(x, np.int64)
    m0 = np.asarray(m0, np.int64)
    shift = np.asarray(shift, np.int64)
    reduced = np.where(m0 < 0x7FFF0000, (m0 + (1 << 15)) >> 16, 0x7FFF)
    total = 15 - shift
    return (x * reduced + (np.int64(1) << (total - 1))) >> total


def _channel_scales(op: Op, weights: TensorSpec, channels: int) -> np.ndarray:
    """The weight scale of each output channel (a per-tensor scale broadcast), float32 as stored."""
    if weights.scale.size == 1:
        return np.repeat(weights.scale, channels)
    if weights.scale.size != channels:
        raise op.unsupported(f"weights have {weights.scale.size} scales for {channels} output channels")
    return weights.scale


def _multipliers(op: Op, x: TensorSpec, weights: TensorSpec, out: TensorSpec, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``QuantizeMultiplier(double(s_x)·double(s_w[c]) / double(s_y))`` as int64 arrays."""
    s_x, s_y = float(x.single_scale), float(out.single_scale)
    pairs = [quantize_multiplier(s_x * float(s_w) / s_y) for s_w in _channel_scales(op, weights, channels)]
    m0 = np.array([p[0] for p in pairs], np.int64)
    shift = np.array([p[1] for p in pairs], np.int64)
    return m0, shift


def _check_types(op: Op, x: TensorSpec, weights: TensorSpec, out: TensorSpec) -> bool:
    """Validate the type combination; returns True for 16-bit activations (16x8)."""
    if not (x.quantized and weights.quantized and out.quantized):
        raise op.unsupported("the reference computes quantized (integer) weight ops only; a float tensor was given")
    if weights.type_name not in ("int8", "int4"):
        raise op.unsupported(f"weights of type {weights.type_name} are not computed (int8 and int4 are)")
    if x.type_name == "int8" and out.type_name == "int8":
        return False
    if x.type_name == "int16" and out.type_name == "int16":
        return True
    raise op.unsupported(f"activations {x.type_name} -> {out.type_name} are not computed (int8 or int16 in and out)")


def _exact_dtype(x_bound: int, w: np.ndarray, reduce_axes) -> type:
    """float32 when every partial sum of ``Σ x·w`` is provably below 2^24, else float64.

    ``x_bound`` bounds ``|x|``; the column sums of ``|w|`` over ``reduce_axes`` bound the rest.
    float64 is exact below 2^53: int16 × int8 products over 2^22 terms still fit.
    """
    peak = float(np.abs(w).sum(axis=reduce_axes).max()) if w.size else 0.0
    return np.float32 if x_bound * peak < _FLOAT32_EXACT else np.float64


def _matmul_exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` of integer-valued float matrices (exact by :func:`_exact_dtype`), as int64."""
    if a.size == 0 or b.size == 0:
        return np.zeros((a.shape[0], b.shape[1]), np.int64)
    # Contiguous operands: BLAS takes a transposed (Fortran-order) operand on a slower path.
    return np.matmul(np.ascontiguousarray(a), np.ascontiguousarray(b)).astype(np.int64)


def _bias(op: Op, index: int, channels: int) -> np.ndarray | None:
    if len(op.inputs) <= index or op.inputs[index] is None:
        return None
    bias = op.input(index)
    if op.inputs[index].type_name not in ("int32", "int64"):
        raise op.unsupported(f"bias of type {op.inputs[index].type_name} is not computed (int32 or int64)")
    return np.asarray(bias, np.int64).reshape(channels)


def _requantize_convolution(
    op: Op, acc: np.ndarray, x: TensorSpec, weights: TensorSpec, out: TensorSpec, sixteen: bool, int32_bias_path: bool
) -> np.ndarray:
    """Per-channel ``MultiplyByQuantizedMultiplier`` of ``acc [..., channels]``, output offset, fused clamp."""
    channels = acc.shape[-1]
    m0, shift = _multipliers(op, x, weights, out, channels)
    if sixteen and not int32_bias_path:
        scaled = multiply_by_quantized_multiplier_int64(acc, m0, shift)
    else:
        # The int32 accumulator of the C kernel: values beyond int32 wrap there; kerasq's never reach it.
        scaled = multiply_by_quantized_multiplier(np.clip(acc, INT32_MIN, INT32_MAX), m0, shift)
    if not sixteen:
        scaled = scaled + out.single_zero_point
    lo, hi = activation_range(op, int(getattr(op.options, "fusedActivationFunction", 0) or 0), out)
    return np.clip(scaled, lo, hi)


def _centred_input(op: Op, x: TensorSpec, sixteen: bool, dtype: type) -> np.ndarray:
    """``q_x - z_x`` in the float type ``dtype`` (integers, exact; the 16x8 kernels add no input offset)."""
    values = np.asarray(op.input(0 if op.name != "TRANSPOSE_CONV" else 2)).astype(dtype)
    return values if sixteen else values - dtype(x.single_zero_point)


def _input_bound(x: TensorSpec, sixteen: bool) -> int:
    """The largest ``|q_x - z_x|`` the input's storage type allows."""
    lo, hi = x.limits
    zero_point = 0 if sixteen else x.single_zero_point
    return max(abs(lo - zero_point), abs(hi - zero_point))


def _patches(xc: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, oh: int, ow: int, ph: int, pw: int) -> np.ndarray:
    """im2col: ``[n, oh, ow, kh·kw, c]`` windows of the zero-padded centred input."""
    n, h, w, c = xc.shape
    need_h = (oh - 1) * sh + (kh - 1) * dh + 1
    need_w = (ow - 1) * sw + (kw - 1) * dw + 1
    padded = np.zeros((n, max(need_h, ph + h), max(need_w, pw + w), c), xc.dtype)
    padded[:, ph : ph + h, pw : pw + w, :] = xc
    taps = []
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dh, j * dw
            taps.append(padded[:, y0 : y0 + (oh - 1) * sh + 1 : sh, x0 : x0 + (ow - 1) * sw + 1 : sw, :])
    return np.stack(taps, axis=3)


def _spatial(op: Op, h: int, w: int, kh: int, kw: int, dilation: bool = True):
    options = op.options
    sh, sw = int(options.strideH), int(options.strideW)
    dh, dw = (int(options.dilationHFactor), int(options.dilationWFactor)) if dilation else (1, 1)
    if min(sh, sw, dh, dw) <= 0:
        raise op.unsupported(f"strides {sh, sw} and dilations {dh, dw} must be positive")
    oh, ph = compute_padding(h, kh, sh, dh, int(options.padding))
    ow, pw = compute_padding(w, kw, sw, dw, int(options.padding))
    return sh, sw, dh, dw, oh, ow, ph, pw


# --- kernels -----------------------------------------------------------------------------------
@kernel("CONV_2D")
def conv_2d(op: Op) -> None:
    """CONV_2D (``reference_integer_ops::ConvPerChannel``), grouped when the filter depth divides the input's.

    ``y[n, oy, ox, o] = clamp(MBQM(Σ_{ky,kx,c} w[o,ky,kx,c]·(x[n, oy·sh - ph + ky·dh, ox·sw - pw + kx·dw, g·C' + c] - z_x)
    + b[o], M[o]) + z_y)`` over the positions inside the image, ``g`` the group of ``o``.
    """
    x, weights, out = op.inputs[0], op.inputs[1], op.outputs[0]
    sixteen = _check_types(op, x, weights, out)
    w = np.asarray(op.input(1), np.int64)
    if np.ndim(op.input(0)) != 4 or w.ndim != 4:
        raise op.unsupported(f"input and filter must be 4-D. Received: {np.shape(op.input(0))}, {w.shape}")
    dtype = _exact_dtype(_input_bound(x, sixteen), w, (1, 2, 3))
    xc = _centred_input(op, x, sixteen, dtype)
    n, h, wd, cin = xc.shape
    cout, kh, kw, cg = w.shape
    if cg == 0 or cin % cg or cout % (cin // cg):
        raise op.unsupported(f"input depth {cin} is not a multiple of the filter depth {cg} with {cout} filters")
    groups = cin // cg
    sh, sw, dh, dw, oh, ow, ph, pw = _spatial(op, h, wd, kh, kw)
    patches = _patches(xc, kh, kw, sh, sw, dh, dw, oh, ow, ph, pw)  # [n, oh, ow, kh*kw, cin]
    per_group = cout // groups
    acc = np.empty((n * oh * ow, cout), np.int64)
    for g in range(groups):
        cols = patches[..., g * cg : (g + 1) * cg].reshape(n * oh * ow, kh * kw * cg)
        filters = w[g * per_group : (g + 1) * per_group].reshape(per_group, kh * kw * cg).T.astype(dtype)
        acc[:, g * per_group : (g + 1) * per_group] = _matmul_exact(cols, filters)
    bias = _bias(op, 2, cout)
    if bias is not None:
        acc += bias
    int32_bias = int(getattr(op.options, "quantizedBiasType", 0) or 0) == _INT32_TYPE
    y = _requantize_convolution(op, acc.reshape(n, oh, ow, cout), x, weights, out, sixteen, int32_bias)
    op.set_output(0, y)


@kernel("DEPTHWISE_CONV_2D")
def depthwise_conv_2d(op: Op) -> None:
    """DEPTHWISE_CONV_2D (``reference_integer_ops::DepthwiseConvPerChannel``).

    Output channel ``o = c·m + j`` (``m`` the depth multiplier, from the shapes as the int8
    kernel takes it) reads input channel ``c = o // m``:
    ``y[n, oy, ox, o] = clamp(MBQM(Σ_{ky,kx} w[0,ky,kx,o]·(x[n, iy, ix, o // m] - z_x) + b[o], M[o]) + z_y)``.
    The 16x8 kernel always applies the int64 ``MultiplyByQuantizedMultiplier``.
    """
    x, weights, out = op.inputs[0], op.inputs[1], op.outputs[0]
    sixteen = _check_types(op, x, weights, out)
    w = np.asarray(op.input(1), np.int64)
    if np.ndim(op.input(0)) != 4 or w.ndim != 4 or w.shape[0] != 1:
        raise op.unsupported(f"input must be 4-D and the filter [1, h, w, channels]. Received: {np.shape(op.input(0))}, {w.shape}")
    dtype = _exact_dtype(_input_bound(x, sixteen), w, (0, 1, 2))
    xc = _centred_input(op, x, sixteen, dtype)
    n, h, wd, cin = xc.shape
    _, kh, kw, cout = w.shape
    if cout % cin:
        raise op.unsupported(f"{cout} output channels are not a multiple of {cin} input channels")
    multiplier = cout // cin
    sh, sw, dh, dw, oh, ow, ph, pw = _spatial(op, h, wd, kh, kw)
    patches = _patches(xc, kh, kw, sh, sw, dh, dw, oh, ow, ph, pw)  # [n, oh, ow, kh*kw, cin]
    if multiplier > 1:
        patches = np.repeat(patches, multiplier, axis=-1)  # channel o reads input channel o // m
    taps = w.reshape(kh * kw, cout).astype(dtype)
    acc = patches[..., 0, :] * taps[0]
    for k in range(1, kh * kw):  # exact: every partial sum is an integer within the dtype's range
        acc += patches[..., k, :] * taps[k]
    acc = acc.astype(np.int64)
    bias = _bias(op, 2, cout)
    if bias is not None:
        acc = acc + bias
    y = _requantize_convolution(op, acc, x, weights, out, sixteen, int32_bias_path=False)
    op.set_output(0, y)


@kernel("TRANSPOSE_CONV")
def transpose_conv(op: Op) -> None:
    """TRANSPOSE_CONV (``reference_integer_ops::TransposeConv``): scatter-add, then requantize.

    Inputs: output shape (int32 ``[n, H, W, O]``), filter ``[O, kh, kw, C]``, input, optional bias.
    Each input position adds ``(x[n, iy, ix, c] - z_x)·w[o, ky, kx, c]`` to output
    ``(iy·sh - ph + ky, ix·sw - pw + kx)`` when inside it, where ``ph``/``pw`` is the padding of a
    convolution from the output size to the input size (``transpose_conv.cc``); the sums are
    requantized per channel with ``MultiplyByQuantizedMultiplier`` (two roundings) plus ``z_y``.
    """
    x, weights, out = op.inputs[2], op.inputs[1], op.outputs[0]
    sixteen = _check_types(op, x, weights, out)
    if weights.type_name != "int8":
        raise op.unsupported(f"weights of type {weights.type_name}: LiteRT's TRANSPOSE_CONV takes int8 weights only")
    w = np.asarray(op.input(1), np.int64)
    # Each output sums every tap's products: bound by the whole filter of the channel.
    dtype = _exact_dtype(_input_bound(x, sixteen), w, (1, 2, 3))
    xc = _centred_input(op, x, sixteen, dtype)
    shape = [int(v) for v in np.asarray(op.input(0)).reshape(-1)]
    if xc.ndim != 4 or w.ndim != 4 or len(shape) != 4:
        raise op.unsupported(f"input, filter and output shape must be 4-D. Received: {xc.shape}, {w.shape}, {shape}")
    n, h, wd, cin = xc.shape
    cout, kh, kw, cw = w.shape
    if cw != cin or shape[0] != n or shape[3] != cout:
        raise op.unsupported(f"output shape {shape} does not match input {list(xc.shape)} and filter {list(w.shape)}")
    out_h, out_w = shape[1], shape[2]
    options = op.options
    sh, sw = int(options.strideH), int(options.strideW)
    in_h, ph = compute_padding(out_h, kh, sh, 1, int(options.padding))
    in_w, pw = compute_padding(out_w, kw, sw, 1, int(options.padding))
    if (in_h, in_w) != (h, wd):
        raise op.unsupported(f"output size {out_h}x{out_w} does not give the input size {h}x{wd} back")
    # One product for every tap: [n·h·w, c] @ [c, kh·kw·o].
    taps = _matmul_exact(xc.reshape(n * h * wd, cin), w.transpose(3, 1, 2, 0).reshape(cin, kh * kw * cout).astype(dtype))
    taps = taps.reshape(n, h, wd, kh, kw, cout)
    full_h = max((h - 1) * sh + kh, ph + out_h)
    full_w = max((wd - 1) * sw + kw, pw + out_w)
    acc = np.zeros((n, full_h, full_w, cout), np.int64)
    for ky in range(kh):
        for kx in range(kw):
            acc[:, ky : ky + (h - 1) * sh + 1 : sh, kx : kx + (wd - 1) * sw + 1 : sw, :] += taps[:, :, :, ky, kx, :]
    acc = acc[:, ph : ph + out_h, pw : pw + out_w, :]
    bias = _bias(op, 3, cout)
    if bias is not None:
        acc = acc + bias
    int32_bias = int(getattr(options, "quantizedBiasType", 0) or 0) == _INT32_TYPE
    y = _requantize_convolution(op, acc, x, weights, out, sixteen, int32_bias)
    op.set_output(0, y)


@kernel("FULLY_CONNECTED")
def fully_connected(op: Op) -> None:
    """FULLY_CONNECTED (``reference_integer_ops::FullyConnected[PerChannel]``, float-scale overloads).

    ``acc[b, o] = Σ_k (w[o, k] - z_w)·(x[b, k] - z_x) + bias[o]`` over the flattened leading
    axes (``z_w`` only for per-tensor weights), then
    ``y = clamp(round(double(acc)·(double(s_x)·double(s_w[o]) / double(s_y))) + z_y)`` with C's
    ``round`` (ties away from zero). ``keep_num_dims`` keeps the input's leading axes; otherwise
    the output is ``[size / depth, units]``. The 16x8 kernel rounds the same way.
    """
    x, weights, out = op.inputs[0], op.inputs[1], op.outputs[0]
    _check_types(op, x, weights, out)
    values = np.asarray(op.input(0))
    w = np.asarray(op.input(1), np.int64)
    if w.ndim != 2:
        raise op.unsupported(f"weights must be 2-D [units, depth]. Received: {list(w.shape)}")
    units, depth = w.shape
    if values.size % depth:
        raise op.unsupported(f"input of {values.size} values is not a multiple of the depth {depth}")
    per_channel = weights.scale.size > 1
    if not per_channel:
        w = w - weights.single_zero_point
    dtype = _exact_dtype(_input_bound(x, sixteen=False), w, 1)
    rows = values.reshape(-1, depth).astype(dtype) - dtype(x.single_zero_point)
    acc = _matmul_exact(rows, w.T.astype(dtype))
    bias = _bias(op, 2, units)
    if bias is not None:
        acc = acc + bias
    # The C accumulator is int32 (int64 with an int64 bias); kerasq's sums never leave int32.
    scales = _channel_scales(op, weights, units).astype(np.float64)
    effective = float(x.single_scale) * scales / float(out.single_scale)
    scaled = round_half_away(acc.astype(np.float64) * effective)
    scaled = np.clip(scaled, INT32_MIN, INT32_MAX).astype(np.int64) + out.single_zero_point
    lo, hi = activation_range(op, int(getattr(op.options, "fusedActivationFunction", 0) or 0), out)
    y = np.clip(scaled, lo, hi)
    keep = bool(getattr(op.options, "keepNumDims", False))
    y = y.reshape(*values.shape[:-1], units) if keep else y.reshape(-1, units)
    op.set_output(0, y)
