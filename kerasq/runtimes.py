"""What the deployment runtimes compute, as TensorFlow functions: the Keras model rounds as they do.

A quantized Keras model agrees with its .tflite file only if every op rounds where the
runtime's integer kernel rounds. Where a runtime's arithmetic differs from "round the float
result once" the quantized layers call the functions here, which reproduce the integer kernels
bit for bit on the codes the Keras model holds:

- ``target.runtime == "xnnpack"``: LiteRT's default interpreter (``OpResolverType.AUTO``) —
  XNNPACK for INT8 convolutions, fully connected layers (also INT4 with an even input depth),
  ADD, MEAN and QUANTIZE; LiteRT's built-in optimized kernels (ruy, and NEON code compiled for
  x86 through NEON_2_SSE) for INT4 convolutions and what XNNPACK refuses.
- ``target.runtime == "reference"``: LiteRT's reference kernels (``OpResolverType.BUILTIN_REF``):
  gemmlowp fixed point with two roundings, except FULLY_CONNECTED (one rounding of
  ``double(acc)·M``).
- ``target.runtime == "micro"``: TFLite Micro, the reference arithmetic with FULLY_CONNECTED
  requantized in fixed point too (``MultiplyByQuantizedMultiplier``, two roundings).

The rules were read in LiteRT 2.3's, XNNPACK's, ruy's and gemmlowp's sources and checked code by
code against ai-edge-litert 2.3.0 on one-op models (every input code, exact ties included):

==================  ===============================  =========================================
op                  xnnpack target                   reference target
==================  ===============================  =========================================
weight op, INT8     one rounding of float32 acc·s    two roundings: ties up, then away from 0
CONV_2D INT4        two roundings, both ties up      (same as above)
DEPTHWISE INT4      ties up; last C mod 8 channels   (same as above)
                    round the second time away
FULLY_CONNECTED     (as the weight op rows above)    one rounding of double(acc)·M (REF FC
                                                     is not fixed point; micro: two roundings)
FC INT4, odd depth  two roundings, both ties up      (same as the row above)
TRANSPOSE_CONV      two roundings, ties away (XNNPACK (same)
                    does not take a batch-sized
                    output shape)
ADD (SUB: ADD of    21-bit multipliers, one          three gemmlowp roundings
the negated input)  rounding, ties up
MEAN (axes 1, 2)    float32 sum·scale, ties to even  integer multiplier, two roundings
MUL                 float32 product·scale, ties to   MultiplyByQuantizedMultiplier of the
                    even (reference if the scale is  product (two roundings)
                    outside [2^-16, 2^8))
LEAKY_RELU          8-bit multipliers per sign,      MultiplyByQuantizedMultiplier per sign
                    ties up (reference if a ratio
                    is outside [2^-8, 2^7])
LOGISTIC, TANH,     the float function of the input  (same: gemmlowp's fixed point agrees;
ELU, GELU           value rounded to the output      BUILTIN_REF has no ELU kernel)
                    grid (a table of 256 codes)
RESIZE_BILINEAR     11-bit weights, ties up          10-bit weights, ties away from zero
PRELU               (reference: XNNPACK does not     MultiplyByQuantizedMultiplier per sign
                    take int8 PRELU)
==================  ===============================  =========================================

The micro target is the reference target with FULLY_CONNECTED rounded twice in fixed point.

In inference the quantized layers compute a weight op's integer accumulator exactly (a float64
convolution of the codes) and round it with ``requantize_accumulator``; ADD, MUL, MEAN and QUANTIZE
read the codes the Keras model holds. All are reproduced bit for bit. Training steps use float32
and plain fake quantization, which differs from these only at rounding ties.

Every function takes codes or values and grid parameters as tensors (scales float32, zero
points as float32 integers) and returns float32 tensors of integer values (codes or levels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kerasq.compat import tf
from kerasq.ops import exact_divide

RUNTIMES = ("xnnpack", "reference", "micro")

# Per-channel requantization of a weight op's accumulator: XNNPACK's one float32 rounding (ties to
# even), two fixed-point roundings (ties up: ruy / NEON; second ties away: gemmlowp), one rounding
# of double(acc)·M (ties away: the reference FULLY_CONNECTED).
SINGLE, DOUBLE_HALF_UP, DOUBLE_HALF_AWAY, SINGLE_DOUBLE = 0, 1, 2, 3


@dataclass(frozen=True)
class Target:
    """The runtime a quantized model is made to match, and how low-bit weights are stored.

    Args:
      runtime: ``"xnnpack"`` (LiteRT's default interpreter, the default), ``"reference"``
        (LiteRT's reference kernels) or ``"micro"`` (TFLite Micro: the reference arithmetic,
        but FULLY_CONNECTED requantized with two fixed-point roundings).
      pack_int4: store weight grids of at most 4 bits as packed INT4 (as ``convert`` does by
        default); ``False`` stores them as widened INT8 codes. It decides which kernel runs a
        layer, hence its rounding.
    """

    runtime: str = "xnnpack"
    pack_int4: bool = True

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}. Received: runtime={self.runtime!r}")
        if not isinstance(self.pack_int4, (bool, np.bool_)):
            raise ValueError(f"pack_int4 must be a bool. Received: pack_int4={self.pack_int4!r}")

    @property
    def fixed_point(self) -> bool:
        """True for the runtimes built on TFLite's reference arithmetic (reference kernels, TFLite Micro)."""
        return self.runtime in ("reference", "micro")

    def get_config(self) -> dict[str, Any]:
        return asdict(self)


def get_target(target: "Target | str | dict | None") -> Target:
    """A ``Target`` from an instance, a runtime name, a config dict or None (the default)."""
    if target is None:
        return Target()
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        return Target(runtime=target)
    if isinstance(target, dict):
        return Target(**target)
    raise TypeError(f"target must be a kerasq Target, a runtime name or a config dict. Received: {target!r}")


# --- which rounding a weight op gets ---------------------------------------------------------
def weight_op_rounding(target: Target, op: str, storage: str, channels: int, input_depth: int) -> np.ndarray:
    """Per-output-channel requantization mode (``SINGLE``/``DOUBLE_HALF_UP``/``DOUBLE_HALF_AWAY``).

    Args:
      op: ``"CONV_2D"``, ``"DEPTHWISE_CONV_2D"``, ``"FULLY_CONNECTED"`` or ``"TRANSPOSE_CONV"``.
      storage: ``"int8"`` or ``"int4"`` (the weight tensor type written).
      channels: output channels; input_depth: input channels (FULLY_CONNECTED's INT4 rule).
    Returns: int array ``[channels]``.
    """
    modes = np.full(channels, SINGLE, np.int32)
    if op == "TRANSPOSE_CONV":
        # Its output shape follows the batch (SHAPE → STRIDED_SLICE → CONCATENATION), which XNNPACK
        # does not take: every runtime runs TFLite's kernel, MultiplyByQuantizedMultiplier per channel.
        modes[:] = DOUBLE_HALF_AWAY
        return modes
    if target.fixed_point:
        # reference_integer_ops: MultiplyByQuantizedMultiplier; LiteRT's reference FULLY_CONNECTED
        # rounds double(acc)·M once, TFLite Micro's uses MultiplyByQuantizedMultiplier as well.
        single = op == "FULLY_CONNECTED" and target.runtime == "reference"
        modes[:] = SINGLE_DOUBLE if single else DOUBLE_HALF_AWAY
        return modes
    if storage == "int8" or (op == "FULLY_CONNECTED" and input_depth % 2 == 0):
        return modes  # XNNPACK: float32 acc·scale, one rounding
    modes[:] = DOUBLE_HALF_UP  # ruy / NEON: SaturatingRoundingDoublingHighMul, rounding right shift
    if op == "DEPTHWISE_CONV_2D":
        # The optimized depthwise requantizes channel blocks of 8 with NEON code (ties up) and
        # the remaining C mod 8 channels with the scalar gemmlowp code (ties away from zero).
        modes[(channels // 8) * 8 :] = DOUBLE_HALF_AWAY
    return modes


# --- fixed-point primitives (int64 tensors) ---------------------------------------------------
def _exp2(exponent: tf.Tensor, dtype=tf.float64) -> tf.Tensor:
    """``2^e`` exactly, from the IEEE bit pattern (``pow`` need not be exact); ``e`` in the normal range."""
    exponent = tf.cast(exponent, tf.int64)
    if dtype == tf.float64:
        return tf.bitcast(tf.bitwise.left_shift(exponent + 1023, tf.constant(52, tf.int64)), tf.float64)
    return tf.bitcast(tf.cast(tf.bitwise.left_shift(exponent + 127, tf.constant(23, tf.int64)), tf.int32), tf.float32)


def quantize_multiplier(real: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """TFLite's ``QuantizeMultiplier``: ``real = M0·2^(shift-31)`` with ``M0`` in ``[2^30, 2^31)``.

    ``real``: float64 tensor > 0. Returns ``(M0, shift)`` as int64 tensors of its shape
    (``frexp``, ``M0 = round_half_away(q·2^31)``, renormalized when it reaches ``2^31``).
    Golden values (quantization_util_test.cc): 0.75 → (1610612736, 0); 1.25 → (1342177280, 1).
    """
    real = tf.convert_to_tensor(real, tf.float64)
    exponent = tf.cast(tf.floor(tf.math.log(real) / np.log(2.0)), tf.int64) + 1
    q = real / _exp2(exponent)
    # log() is not exact at powers of two: bring q into [0.5, 1).
    exponent = tf.where(q >= 1.0, exponent + 1, tf.where(q < 0.5, exponent - 1, exponent))
    q = real / _exp2(exponent)
    m0 = tf.floor(q * 2.0**31 + 0.5)
    exponent = tf.where(m0 >= 2.0**31, exponent + 1, exponent)
    m0 = tf.where(m0 >= 2.0**31, m0 / 2.0, m0)
    return tf.cast(m0, tf.int64), exponent


def _srdhm(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """gemmlowp ``SaturatingRoundingDoublingHighMul``: ``a·b/2^31``, ties toward +∞ (int64)."""
    ab = a * b
    nudge = tf.where(ab >= 0, tf.constant(1 << 30, tf.int64), tf.constant(1 - (1 << 30), tf.int64))
    return tf.truncatediv(ab + nudge, tf.constant(1 << 31, tf.int64))


def _rdpot(x: tf.Tensor, exponent: tf.Tensor) -> tf.Tensor:
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2^e``, ties away from zero (int64)."""
    one = tf.constant(1, tf.int64)
    mask = tf.bitwise.left_shift(one, exponent) - one
    remainder = tf.bitwise.bitwise_and(x, mask)
    threshold = tf.bitwise.right_shift(mask, one) + tf.cast(x < 0, tf.int64)
    return tf.bitwise.right_shift(x, exponent) + tf.cast(remainder > threshold, tf.int64)


def _mbqm(x: tf.Tensor, m0: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """TFLite's ``MultiplyByQuantizedMultiplier`` (double rounding build), int64 in and out."""
    zero = tf.constant(0, tf.int64)
    left = tf.maximum(shift, zero)
    right = tf.maximum(-shift, zero)
    return _rdpot(_srdhm(tf.bitwise.left_shift(x, left), m0), right)


def _codes(values: tf.Tensor, scale: tf.Tensor, zero_point: tf.Tensor) -> tf.Tensor:
    """The int64 codes of values that lie on the grid ``(scale, zero_point)``."""
    return tf.cast(tf.round(exact_divide(values, scale)), tf.int64) + tf.cast(zero_point, tf.int64)


# --- weight ops -------------------------------------------------------------------------------
def requantize_accumulator(
    acc: tf.Tensor, input_scale: tf.Tensor, weight_scales: tf.Tensor, output_scale: tf.Tensor, modes: np.ndarray
) -> tf.Tensor:
    """The output level (``code - z_out``, before clamping) the runtime computes from an exact accumulator.

    Args:
      acc: float64 tensor ``[..., channels]`` of integers: ``Σ (q_x - z_x)·w + bias`` as stored.
      input_scale, output_scale: float32 scalars; weight_scales: float32 ``[channels]`` as stored.
      modes: ``weight_op_rounding`` per channel.
    Returns: float32 tensor of integer levels, the shape of ``acc``:
      ``SINGLE``: ``rne(f32(f32(acc)·f32(f32(s_in·s_w)/s_out)))`` (XNNPACK);
      ``SINGLE_DOUBLE``: ``round_half_away(acc·M)`` with ``M`` in double (reference FULLY_CONNECTED);
      ``DOUBLE_HALF_UP`` / ``DOUBLE_HALF_AWAY``: ``MultiplyByQuantizedMultiplier`` with ruy's or
      gemmlowp's final rounding, in int64.
    """
    levels = []
    scale32 = exact_divide(input_scale * weight_scales, output_scale)
    if np.any(modes == SINGLE):
        levels.append((SINGLE, tf.round(tf.cast(acc, tf.float32) * scale32)))
    multiplier = (
        tf.cast(input_scale, tf.float64) * tf.cast(weight_scales, tf.float64) / tf.cast(output_scale, tf.float64)
    )
    if np.any(modes == SINGLE_DOUBLE):
        product = acc * multiplier
        levels.append((SINGLE_DOUBLE, tf.cast(tf.sign(product) * tf.floor(tf.abs(product) + 0.5), tf.float32)))
    if np.any((modes == DOUBLE_HALF_UP) | (modes == DOUBLE_HALF_AWAY)):
        m0, shift = quantize_multiplier(multiplier)
        zero = tf.constant(0, tf.int64)
        y = _srdhm(tf.bitwise.left_shift(tf.cast(acc, tf.int64), tf.maximum(shift, zero)), m0)
        right = tf.maximum(-shift, zero)
        half = tf.bitwise.right_shift(tf.bitwise.left_shift(tf.constant(1, tf.int64), right), 1)
        up = tf.bitwise.right_shift(y + half, right)
        away = _rdpot(y, right)
        levels.append((DOUBLE_HALF_UP, tf.cast(up, tf.float32)))
        levels.append((DOUBLE_HALF_AWAY, tf.cast(away, tf.float32)))
    result = levels[0][1]
    for mode, level in levels[1:]:
        result = tf.where(tf.constant(modes == mode), level, result)
    return result


# --- ADD --------------------------------------------------------------------------------------
def _add_xnnpack(a, b, scale_a, scale_b, scale_out, zero_out):
    """XNNPACK qs8 vadd (src/microparams-init.c, qs8-vadd/*): one rounding, ties up.

    ``m_i = lrintf(f32(s_i/s_o)·2^shift)``, ``shift = 20 - floor(log2 max_i m_i)``;
    ``out = (2^(shift-1) + m_a·a + m_b·b) >> shift + z_o`` on zero-centred codes ``a, b``.
    """
    ratio_a = exact_divide(scale_a, scale_out)
    ratio_b = exact_divide(scale_b, scale_out)
    largest = tf.maximum(ratio_a, ratio_b)
    exponent = tf.cast(tf.bitwise.right_shift(tf.bitcast(largest, tf.int32), 23), tf.int64) - 127
    shift = 20 - exponent
    power = _exp2(shift, tf.float32)
    m_a = tf.cast(tf.round(ratio_a * power), tf.int64)  # lrintf: ties to even
    m_b = tf.cast(tf.round(ratio_b * power), tf.int64)
    one = tf.constant(1, tf.int64)
    acc = tf.bitwise.left_shift(one, shift - 1) + m_a * a + m_b * b
    return tf.bitwise.right_shift(acc, shift) + tf.cast(zero_out, tf.int64)


def _add_reference(a, b, scale_a, scale_b, scale_out, zero_out):
    """TFLite reference ADD (reference/integer_ops/add.h): three gemmlowp roundings."""
    twice_max = 2.0 * tf.cast(tf.maximum(scale_a, scale_b), tf.float64)
    m_a, s_a = quantize_multiplier(tf.cast(scale_a, tf.float64) / twice_max)
    m_b, s_b = quantize_multiplier(tf.cast(scale_b, tf.float64) / twice_max)
    out_scale32 = tf.cast(tf.constant(2.0**20, tf.float32) * scale_out, tf.float64)
    m_o, s_o = quantize_multiplier(twice_max / out_scale32)
    left = tf.constant(20, tf.int64)
    y_a = _mbqm(tf.bitwise.left_shift(a, left), m_a, s_a)
    y_b = _mbqm(tf.bitwise.left_shift(b, left), m_b, s_b)
    return _mbqm(y_a + y_b, m_o, s_o) + tf.cast(zero_out, tf.int64)


def add(target: Target, x_a, x_b, grid_a, grid_b, grid_out) -> tf.Tensor:
    """``x_a + x_b`` as the runtime's int8 ADD computes it, as a level of ``grid_out`` (real units / scale).

    ``x_a``, ``x_b``: values on ``grid_a``/``grid_b`` (``ops.Grid``); returns float32 ``out_code - z_o``
    before clamping, so the caller's activation and output quantizer clamp as the kernel's fused
    activation does. XNNPACK takes the op only when both ``s_i/s_o`` lie in ``[1/1024, 256)``;
    otherwise LiteRT's optimized ADD runs, which rounds like the reference.
    """
    a = _codes(x_a, grid_a.scale, 0.0)
    b = _codes(x_b, grid_b.scale, 0.0)
    reference = _add_reference(a, b, grid_a.scale, grid_b.scale, grid_out.scale, 0.0)
    if target.fixed_point:
        return tf.cast(reference, tf.float32)
    xnnpack = _add_xnnpack(a, b, grid_a.scale, grid_b.scale, grid_out.scale, 0.0)
    ratios = tf.stack([exact_divide(grid_a.scale, grid_out.scale), exact_divide(grid_b.scale, grid_out.scale)])
    delegated = tf.reduce_all((ratios >= 1.0 / 1024.0) & (ratios < 256.0))
    return tf.cast(tf.where(delegated, xnnpack, reference), tf.float32)


# --- MUL --------------------------------------------------------------------------------------
def mul(target: Target, x_a, x_b, grid_a, grid_b, grid_out) -> tf.Tensor:
    """``x_a · x_b`` (broadcasting) as the runtime's int8 MUL computes it, as ``out_code - z_o`` before clamping.

    Both runtimes multiply the zero-centred codes exactly, ``p = (q_a - z_a)·(q_b - z_b)``, then:
    XNNPACK (qs8-vmul, fp32 requantization) ``rne(f32(p)·f32(f32(s_a·s_b)/s_o))``, taken when that
    scale lies in ``[2^-16, 2^8)``; the reference kernel (reference_integer_ops ``Mul``)
    ``MultiplyByQuantizedMultiplier(p, s_a·s_b/s_o in double)``. Checked on every pair of codes
    against ai-edge-litert 2.3.0 for 30 random grids. ``x_a``, ``x_b``: values on their grids.
    Returns float32 of the broadcast shape.
    """
    a = _codes(x_a, grid_a.scale, 0.0)
    b = _codes(x_b, grid_b.scale, 0.0)
    product = a * b
    m0, shift = quantize_multiplier(
        tf.cast(grid_a.scale, tf.float64) * tf.cast(grid_b.scale, tf.float64) / tf.cast(grid_out.scale, tf.float64)
    )
    reference = _mbqm(product, m0, shift)
    if target.fixed_point:
        return tf.cast(reference, tf.float32)
    scale = exact_divide(grid_a.scale * grid_b.scale, grid_out.scale)
    xnnpack = tf.round(tf.cast(product, tf.float32) * scale)
    delegated = (scale >= 2.0**-16) & (scale < 2.0**8)
    return tf.where(delegated, xnnpack, tf.cast(reference, tf.float32))


def leaky_relu(target: Target, x: tf.Tensor, grid_in, grid_out, alpha: float) -> tf.Tensor:
    """The runtime's int8 LEAKY_RELU of ``x`` (on ``grid_in``) onto ``grid_out``, as ``out_code - z_o`` before clamping.

    With ``d = q - z_i`` and the ratio ``r = s_i/s_o`` (times ``alpha`` where ``d < 0``): XNNPACK
    (qs8-vlrelu) ``(d·lrintf(256·f32 r) + 128) >> 8`` (ties up), taken when both ratios lie in
    ``[2^-8, 2^7]``; the reference ``MultiplyByQuantizedMultiplier(d, r in double)``. Checked on
    every code against ai-edge-litert 2.3.0 for 30 random grids and slopes.
    """
    d = _codes(x, grid_in.scale, 0.0)
    ratio64 = tf.cast(grid_in.scale, tf.float64) / tf.cast(grid_out.scale, tf.float64)
    slope = tf.constant(float(np.float32(alpha)), tf.float64)
    m_pos, s_pos = quantize_multiplier(ratio64)
    m_neg, s_neg = quantize_multiplier(ratio64 * slope)
    reference = tf.where(d >= 0, _mbqm(d, m_pos, s_pos), _mbqm(d, m_neg, s_neg))
    if target.fixed_point:
        return tf.cast(reference, tf.float32)
    ratio = exact_divide(grid_in.scale, grid_out.scale)
    negative_ratio = ratio * tf.constant(np.float32(alpha))
    multiplier = tf.cast(tf.round(256.0 * tf.where(d >= 0, ratio, negative_ratio)), tf.int64)
    xnnpack = tf.bitwise.right_shift(d * multiplier + 128, tf.constant(8, tf.int64))
    in_range = lambda r: (r >= 2.0**-8) & (r <= 2.0**7)  # noqa: E731
    delegated = in_range(ratio) & in_range(negative_ratio)
    return tf.cast(tf.where(delegated, xnnpack, reference), tf.float32)


def prelu(x: tf.Tensor, alpha: tf.Tensor, grid_in, alpha_scale: tf.Tensor, grid_out) -> tf.Tensor:
    """TFLite's int8 PRELU of ``x`` (on ``grid_in``) with slopes ``alpha`` (values on ``alpha_scale``, zero point 0).

    With ``d = q - z_i`` and ``a`` the slope's code: ``MBQM(d, s_i/s_o)`` where ``d >= 0``, else
    ``MBQM(d·a, s_i·s_a/s_o)``; as ``out_code - z_o`` before clamping. XNNPACK does not take int8
    PRELU, so every runtime computes this (checked on every code, 30 grids, ai-edge-litert 2.3.0).
    ``alpha`` broadcasts against ``x``. Returns float32.
    """
    d = _codes(x, grid_in.scale, 0.0)
    a = _codes(alpha, alpha_scale, 0.0)
    s_in, s_out = tf.cast(grid_in.scale, tf.float64), tf.cast(grid_out.scale, tf.float64)
    m_pos, shift_pos = quantize_multiplier(s_in / s_out)
    m_neg, shift_neg = quantize_multiplier(s_in * tf.cast(alpha_scale, tf.float64) / s_out)
    return tf.cast(tf.where(d >= 0, _mbqm(d, m_pos, shift_pos), _mbqm(d * a, m_neg, shift_neg)), tf.float32)


def mul_delegated(scale_a: float, scale_b: float, scale_out: float) -> bool:
    """Whether LiteRT's default interpreter runs an int8 MUL with these scales in XNNPACK."""
    scale = np.float32(np.float32(np.float32(scale_a) * np.float32(scale_b)) / np.float32(scale_out))
    return bool(2.0**-16 <= scale < 2.0**8)


# --- MEAN over the spatial axes ---------------------------------------------------------------
def mean(target: Target, x: tf.Tensor, grid_in, grid_out, axes: tuple[int, ...] = (1, 2), keepdims: bool = False) -> tf.Tensor:
    """The runtime's int8 MEAN of ``x`` (values on ``grid_in``) over ``axes``, as ``out_code - z_o``.

    XNNPACK (src/operators/reduce-nd.c): ``sc = f32(f32(s_i/s_o)·f32(1/N))``,
    ``out = nearbyint(f32(f32(Σq)·sc) + f32(z_o - f32(f32(N·z_i)·sc)))`` (ties to even).
    Reference (reference/reduce.h ``QuantizedMeanOrSum``): ``M' = (M0·2^k) // N`` with
    ``k = min(floor(log2 N), 32, 31 + shift)``, ``out = MBQM(Σq - z_i·N, M', shift - k) + z_o``.
    Keep-dims does not change the arithmetic. Returns float32 of the reduced shape.
    """
    q = _codes(x, grid_in.scale, grid_in.zero_point)
    count = int(np.prod([int(x.shape[a]) for a in axes]))
    total = tf.reduce_sum(q, axis=list(axes), keepdims=keepdims)
    if target.runtime == "xnnpack":
        scale = exact_divide(grid_in.scale, grid_out.scale) * tf.constant(np.float32(1.0) / np.float32(count), tf.float32)
        zero_in = tf.cast(tf.cast(count, tf.float32) * grid_in.zero_point, tf.float32)
        bias = grid_out.zero_point - zero_in * scale
        code = tf.round(tf.cast(total, tf.float32) * scale + bias)
        return code - grid_out.zero_point
    m0, shift = quantize_multiplier(tf.cast(grid_in.scale, tf.float64) / tf.cast(grid_out.scale, tf.float64))
    k = tf.minimum(tf.constant(count.bit_length() - 1, tf.int64), tf.minimum(tf.constant(32, tf.int64), 31 + shift))
    m_count = tf.math.floordiv(tf.bitwise.left_shift(m0, k), tf.constant(count, tf.int64))
    centred = total - tf.cast(grid_in.zero_point, tf.int64) * count
    return tf.cast(_mbqm(centred, m_count, shift - k), tf.float32)


# --- AVERAGE_POOL_2D --------------------------------------------------------------------------
def average_pool(x: tf.Tensor, grid, pool_size, strides, padding: str) -> tf.Tensor:
    """The int8 AVERAGE_POOL_2D of ``x`` (values on ``grid``; the output is on the same grid), as ``out_code - z``.

    LiteRT's integer kernels (optimized_integer_ops and reference_integer_ops ``AveragePool``) sum
    the codes ``q`` of the window's positions inside the input (zero point included, no
    rescaling) and divide by their number ``n`` (SAME padding counts only those positions),
    rounding half away from zero: ``acc > 0 ? (acc + n/2)/n : (acc - n/2)/n`` in C integer
    division. XNNPACK does not take int8 average pooling, so every runtime computes this.
    ``x``: float32 ``[batch, h, w, c]``. Returns float32.
    """
    q = tf.cast(_codes(x, grid.scale, grid.zero_point), tf.float64)
    channels = int(x.shape[-1])
    ph, pw = (int(v) for v in pool_size)
    window = tf.ones([ph, pw, channels, 1], tf.float64)
    stride = [1, int(strides[0]), int(strides[1]), 1]
    total = tf.nn.depthwise_conv2d(q, window, stride, padding.upper())  # exact integer sums
    count = tf.nn.depthwise_conv2d(tf.ones_like(q[:1, :, :, :1]), window[:, :, :1], stride, padding.upper())
    half = tf.math.floor(count / 2.0)
    level = tf.sign(total) * tf.math.floordiv(tf.abs(total) + half, count)
    return tf.cast(level - tf.cast(grid.zero_point, tf.float64), tf.float32)


# --- RESIZE_BILINEAR (half-pixel centres, as Keras' UpSampling2D and tf.image.resize) --------
def _xnnpack_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """XNNPACK's resize indirection: the two input rows (columns) of each output one, 11-bit weight of the second."""
    scale = np.float32(in_size) / np.float32(out_size)
    position = ((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    alpha = np.round((position - first.astype(np.float32)).astype(np.float32) * np.float32(2048.0)).astype(np.int64)
    return np.clip(first, 0, in_size - 1), np.clip(first + 1, 0, in_size - 1), alpha


def _reference_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TFLite's ``ComputeInterpolationValuesInteger``: rows (columns) and 10-bit weight of the second, may be < 0."""
    scale = ((1 << 10) * in_size + out_size // 2) // out_size
    position = np.arange(out_size, dtype=np.int64) * scale + scale // 2 - (1 << 9)  # > -512: C and floor division agree
    first = np.maximum(position // (1 << 10), 0)
    second = np.minimum((position + (1 << 10) - 1) // (1 << 10), in_size - 1)
    return first, second, position - (1 << 10) * first


def resize_bilinear(target: Target, x: tf.Tensor, grid, size: tuple[int, int]) -> tf.Tensor:
    """The runtime's int8 RESIZE_BILINEAR (half-pixel centres) of ``x`` (on ``grid``, kept), as ``out_code - z``.

    Both interpolate the raw codes ``q`` in fixed point. XNNPACK (qs8-ibilinear): 11-bit weights
    ``a = lrintf(2048·frac)`` from float32 source positions ``(o + 0.5)·(n/m) - 0.5``, rows then
    columns, ``(acc + 2^21) >> 22`` (ties up). Reference (``ResizeBilinearInteger``): 10-bit
    positions from an integer scale, four products summed, divided by ``2^20`` with ties away
    from zero. Checked on every output of five resizes against ai-edge-litert 2.3.0.
    ``x``: float32 ``[batch, h, w, c]``; ``size``: output ``(height, width)``. Returns float32.
    """
    q = _codes(x, grid.scale, grid.zero_point)
    (height, width), (out_h, out_w) = (int(x.shape[1]), int(x.shape[2])), size
    if target.runtime == "xnnpack":
        top, bottom, alpha_v = _xnnpack_taps(out_h, height)
        left, right, alpha_h = _xnnpack_taps(out_w, width)
        rows = [tf.gather(q, index, axis=1) for index in (top, bottom)]
        v_top, v_bottom = (
            tf.bitwise.left_shift(tf.gather(r, left, axis=2), 11)
            + (tf.gather(r, right, axis=2) - tf.gather(r, left, axis=2)) * alpha_h[None, None, :, None]
            for r in rows
        )
        acc = tf.bitwise.left_shift(v_top, 11) + (v_bottom - v_top) * alpha_v[None, :, None, None]
        code = tf.bitwise.right_shift(acc + (1 << 21), 22)
    else:
        top, bottom, wy = _reference_taps(out_h, height)
        left, right, wx = _reference_taps(out_w, width)
        wy, wx = wy[None, :, None, None], wx[None, None, :, None]
        corner = lambda rows, cols: tf.gather(tf.gather(q, rows, axis=1), cols, axis=2)  # noqa: E731
        total = (
            corner(top, left) * (1024 - wy) * (1024 - wx) + corner(bottom, left) * wy * (1024 - wx)
            + corner(top, right) * (1024 - wy) * wx + corner(bottom, right) * wy * wx
        )
        half = tf.where(total > 0, tf.constant(1 << 19, tf.int64), tf.constant(-(1 << 19), tf.int64))
        code = tf.truncatediv(total + half, tf.constant(1 << 20, tf.int64))
    return tf.cast(code - tf.cast(grid.zero_point, tf.int64), tf.float32)


# --- QUANTIZE (int8 → int8) -------------------------------------------------------------------
def requantize(target: Target, x: tf.Tensor, grid_in, grid_out) -> tf.Tensor:
    """The runtime's int8→int8 QUANTIZE of ``x`` (on ``grid_in``) onto ``grid_out``, as ``out_code - z_o``.

    XNNPACK (qs8-vcvt) when ``1/256 <= s_i/s_o <= 128``: ``m = lrintf(256·f32(s_i/s_o))``,
    ``((q - z_i)·m + 128) >> 8`` (8 fractional bits, ties up); reference:
    ``MBQM(q - z_i, QuantizeMultiplier(s_i/s_o))``.
    """
    q = _codes(x, grid_in.scale, 0.0)
    ratio = exact_divide(grid_in.scale, grid_out.scale)
    m0, shift = quantize_multiplier(tf.cast(grid_in.scale, tf.float64) / tf.cast(grid_out.scale, tf.float64))
    reference = _mbqm(q, m0, shift)
    if target.fixed_point:
        return tf.cast(reference, tf.float32)
    m = tf.cast(tf.round(256.0 * ratio), tf.int64)
    xnnpack = tf.bitwise.right_shift(q * m + 128, tf.constant(8, tf.int64))
    delegated = (ratio >= 1.0 / 256.0) & (ratio <= 128.0)
    return tf.cast(tf.where(delegated, xnnpack, reference), tf.float32)
