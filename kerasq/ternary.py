"""Ternary weights: Ternary Weight Networks (TWN) and Trained Ternary Quantization (TTQ).

Both zero the small weights with a threshold ``Δ = t · mean|w|`` (Li et al. 2016, ``t = 0.7``)
and keep the sign of the others:

- TWN: ``Q(w) = r_t · sign(w) · 1_{|w| > Δ}`` with ``r_t = mean(|w| : |w| > Δ)``;
- TTQ: ``Q(w) = w_p`` for ``w > Δ``, ``0`` for ``|w| <= Δ``, ``-w_n`` for ``w < -Δ`` with
  trainable scales ``w_p, w_n`` (Zhu et al. 2017).

The math lives in small functions (``ternary_threshold``, ``ternary_codes``, ``twn_scale``,
``ttq_grid``, ``twn_quantize``, ``ttq_quantize`` and NumPy mirrors); ``TernaryWeightQuantizer``
wraps them with the integer form; ``Ternary`` is the scheme (alias ``"ternary"``, presets
``"twn"`` and ``"ttq"``). Activations stay int8 (EMA range).

References:
  Li, Zhang, Liu. Ternary Weight Networks, arXiv 1605.04711, 2016.
  Zhu, Han, Mao, Dally. Trained Ternary Quantization, ICLR 2017.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kerasq import ops
from kerasq.compat import keras, tf
from kerasq.quantizers import WeightGrid, WeightQuantizer
from kerasq.registry import register
from kerasq.schemes.base import Scheme

METHODS = ("twn", "ttq")
# TTQ's two scales share one grid s = max(w_p, w_n) / TTQ_LEVELS: INT4 codes in [-7, 7].
TTQ_LEVELS = 7


# --- math ------------------------------------------------------------------------------------
def ternary_threshold(w: tf.Tensor, threshold: float, axes: tuple[int, ...]) -> tf.Tensor:
    """``Δ = t · mean|w|`` over all axes but ``axes`` (``()``: per tensor), dims kept.

    Seed lecture 4x4 ``W``: ``Δ = 0.7 · 1.04875 = 0.734``.
    """
    w = tf.convert_to_tensor(w, tf.float32)
    return threshold * tf.reduce_mean(tf.abs(w), axis=ops.reduce_axes(len(w.shape), axes), keepdims=True)


def ternary_codes(w: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """``sign(w) · 1_{|w| > Δ}`` as float32 in ``{-1, 0, 1}``."""
    w = tf.convert_to_tensor(w, tf.float32)
    return tf.where(w > delta, tf.ones_like(w), tf.where(w < -delta, -tf.ones_like(w), tf.zeros_like(w)))


def twn_scale(w: tf.Tensor, delta: tf.Tensor, axes: tuple[int, ...]) -> tf.Tensor:
    """``r_t = mean(|w| : |w| > Δ)`` per tensor/channel, dims kept; 1 where nothing exceeds ``Δ``.

    Seed lecture 4x4 ``W``: 11 weights exceed ``Δ = 0.734`` and ``r_t = 16.5 / 11 = 1.5``.
    """
    w = tf.convert_to_tensor(w, tf.float32)
    reduce = ops.reduce_axes(len(w.shape), axes)
    mask = tf.cast(tf.abs(w) > delta, tf.float32)
    count = tf.reduce_sum(mask, axis=reduce, keepdims=True)
    total = tf.reduce_sum(tf.abs(w) * mask, axis=reduce, keepdims=True)
    return tf.where(count > 0, total / tf.maximum(count, 1.0), tf.ones_like(total))


def twn_grid(w: tf.Tensor, threshold: float, axes: tuple[int, ...]) -> tuple[tf.Tensor, tf.Tensor]:
    """TWN codes in ``{-1, 0, 1}`` (float32) and the scale ``r_t``, with ``Q = codes · r_t``."""
    delta = ternary_threshold(w, threshold, axes)
    return ternary_codes(w, delta), twn_scale(w, delta, axes)


def twn_quantize(w: tf.Tensor, threshold: float = 0.7, axes: tuple[int, ...] = ()) -> tf.Tensor:
    """``Q(w) = r_t · sign(w) · 1_{|w| > Δ}``; backward straight-through, ``∂L/∂w = ∂L/∂Q``.

    ``Δ`` and ``r_t`` are statistics of ``w`` that receive no gradient (Li et al. 2016 update
    the float weights with the gradient taken at the ternary ones).
    """

    @tf.custom_gradient
    def quantize(x):
        codes, scale = twn_grid(x, threshold, axes)

        def grad(dy):
            return dy

        return codes * scale, grad

    return quantize(tf.convert_to_tensor(w, tf.float32))


def ttq_grid(
    w: tf.Tensor, w_p: tf.Tensor, w_n: tf.Tensor, threshold: float, axes: tuple[int, ...]
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """TTQ on a shared grid: ``(codes, s, positive mask, negative mask)`` with ``Q = codes · s``.

    TFLite weights have zero point 0 and one scale per channel, so ``{-w_n, 0, w_p}`` is exact
    only on a grid both scales share: ``s = max(w_p, w_n) / 7``, ``c_p = round(w_p / s)``,
    ``c_n = round(w_n / s)`` (the larger scale is code 7 exactly; INT4 codes in ``[-7, 7]``).
    ``codes = c_p`` where ``w > Δ``, ``-c_n`` where ``w < -Δ``, else 0.
    Example: ``w_p = 1.4``, ``w_n = 0.9`` → ``s = 0.2``, ``c_p = 7``, ``c_n = round(4.5) = 4``
    (half to even), so ``Q ∈ {-0.8, 0, 1.4}``.
    """
    w = tf.convert_to_tensor(w, tf.float32)
    w_p = tf.convert_to_tensor(w_p, tf.float32)
    w_n = tf.convert_to_tensor(w_n, tf.float32)
    delta = ternary_threshold(w, threshold, axes)
    peak = tf.maximum(w_p, w_n)
    s = tf.where(peak > 0, ops.exact_divide(peak, float(TTQ_LEVELS)), tf.ones_like(peak))
    c_p = tf.clip_by_value(tf.round(ops.exact_divide(w_p, s)), 0.0, float(TTQ_LEVELS))
    c_n = tf.clip_by_value(tf.round(ops.exact_divide(w_n, s)), 0.0, float(TTQ_LEVELS))
    positive = w > delta
    negative = w < -delta
    zeros = tf.zeros_like(w)
    codes = tf.where(positive, c_p + zeros, tf.where(negative, -c_n + zeros, zeros))
    return codes, s, positive, negative


def ttq_quantize(
    w: tf.Tensor, w_p: tf.Tensor, w_n: tf.Tensor, threshold: float = 0.7, axes: tuple[int, ...] = ()
) -> tf.Tensor:
    """``Q(w) = ŵ_p · 1_{w > Δ} − ŵ_n · 1_{w < −Δ}`` with ``ŵ`` the scales snapped by ``ttq_grid``.

    Backward (Zhu et al. 2017, eqs. 7-8, straight through the snapping):
      ``∂L/∂w_p = Σ_{w > Δ} ∂L/∂Q``, ``∂L/∂w_n = −Σ_{w < −Δ} ∂L/∂Q`` (per channel when the scales
      are; the chain rule of ``Q = −w_n`` gives the minus sign, which the paper's eq. 7 leaves
      implicit), and for the latent weights ``∂L/∂w = w_p · ∂L/∂Q`` where ``w > Δ``,
      ``∂L/∂Q`` where ``|w| <= Δ``, ``w_n · ∂L/∂Q`` where ``w < −Δ`` (eq. 8, with the trained,
      unsnapped scales).
    ``w_p`` and ``w_n`` broadcast onto ``w`` (a scalar, or one value per output channel).
    """
    w = tf.convert_to_tensor(w, tf.float32)
    w_p = tf.convert_to_tensor(w_p, tf.float32)
    w_n = tf.convert_to_tensor(w_n, tf.float32)
    reduce = ops.reduce_axes(len(w.shape), axes)

    @tf.custom_gradient
    def quantize(x, p, n):
        codes, s, positive, negative = ttq_grid(x, p, n, threshold, axes)
        pos = tf.cast(positive, tf.float32)
        neg = tf.cast(negative, tf.float32)

        def grad(dy):
            dx = dy * (pos * p + neg * n + (1.0 - pos - neg))
            dp = tf.reshape(tf.reduce_sum(dy * pos, axis=reduce, keepdims=True), tf.shape(p))
            dn = tf.reshape(-tf.reduce_sum(dy * neg, axis=reduce, keepdims=True), tf.shape(n))
            return dx, dp, dn

        return codes * s, grad

    return quantize(w, w_p, w_n)


def twn_np(
    w: np.ndarray, threshold: float = 0.7, axes: tuple[int, ...] = ()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy reference of TWN: ``(Q(w), Δ, r_t)`` with ``Δ``/``r_t`` keeping dims."""
    w = np.asarray(w, np.float32)
    reduce = tuple(ops.reduce_axes(w.ndim, axes))
    delta = np.float32(threshold) * np.mean(np.abs(w), axis=reduce, keepdims=True, dtype=np.float32)
    mask = np.abs(w) > delta
    count = mask.sum(axis=reduce, keepdims=True)
    total = np.sum(np.abs(w) * mask, axis=reduce, keepdims=True, dtype=np.float32)
    r_t = np.where(count > 0, total / np.maximum(count, 1), 1).astype(np.float32)
    codes = np.where(w > delta, 1, np.where(w < -delta, -1, 0)).astype(np.float32)
    return (codes * r_t).astype(np.float32), delta.astype(np.float32), r_t


# --- quantizer -------------------------------------------------------------------------------
@register("quantizer")
class TernaryWeightQuantizer(WeightQuantizer):
    """Ternary weights in ``{-w_n, 0, w_p}`` with a threshold ``Δ = t · mean|w|``.

    Forward, TWN (Li et al. 2016): ``Q(w) = r_t · sign(w) · 1_{|w| > Δ}``,
    ``r_t = mean(|w| : |w| > Δ)``. Backward: straight-through, ``∂L/∂w = ∂L/∂Q``.
    Forward, TTQ (Zhu et al. 2017): ``Q(w) = w_p`` for ``w > Δ``, ``0`` for ``|w| <= Δ``,
    ``-w_n`` for ``w < -Δ``; ``w_p, w_n`` are trainable (non-negative) variables of the layer,
    set to TWN's ``r_t`` by ``initialize`` from the float kernel. For an exact export both are
    snapped to a shared grid ``s = max(w_p, w_n)/7`` in the forward pass (see ``ttq_grid``).
    Backward: ``∂L/∂w_p = Σ_{w>Δ} ∂L/∂Q``, ``∂L/∂w_n = −Σ_{w<−Δ} ∂L/∂Q``; latent gradient scaled
    by ``w_p`` / ``1`` / ``w_n`` in the three regions (see ``ttq_quantize``). The paper sets
    ``Δ = t · max|w̃|`` on weights normalised to ``[-1, 1]`` (``t = 0.05``); kerasq uses TWN's
    ``Δ = t · mean|w|`` for both methods, so TTQ starts exactly at the TWN solution.
    Integer form: zero point 0; TWN codes ``{-1, 0, 1}``, scale ``r_t`` (``bits = 2``, stored as
    INT4 ``{-4, 0, 4}`` with scale ``r_t/4``); TTQ codes ``{-c_n, 0, c_p}`` in ``[-7, 7]``, scale
    ``s`` (``bits = 4``, INT4; three distinct values per scale).

    Args:
      method: ``"twn"`` or ``"ttq"``.
      threshold: ``t`` in ``Δ = t · mean|w|``, positive (0.7, Li et al. 2016).
      channel_axes: kernel axes with their own ``Δ`` and scales; ``()`` (default) per tensor.

    Example (seed lecture, ``W`` 4x4, TWN per tensor): ``Δ = 0.734``, 11 non-zeros,
    ``r_t = 1.5``; first row ``[2.09, -0.98, 1.48, 0.09] → [1.5, -1.5, 1.5, 0]``.
    """

    def __init__(self, method: str = "twn", threshold: float = 0.7, channel_axes: tuple[int, ...] = ()):
        super().__init__(channel_axes)
        key = str(method).lower()
        if key not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}. Received: method={method!r}")
        if not float(threshold) > 0:
            raise ValueError(f"threshold must be positive. Received: threshold={threshold}")
        self.method = key
        self.threshold = float(threshold)
        self.bits = 2 if key == "twn" else 4

    def _scale_shape(self, tensor_shape) -> list[int]:
        if not self.channel_axes:
            return []
        keep = {a % len(tensor_shape) for a in self.channel_axes}
        return [int(d) if i in keep else 1 for i, d in enumerate(tensor_shape)]

    def build(self, tensor_shape, name, layer):
        if self.method != "ttq":
            return {}
        shape = self._scale_shape(tensor_shape)
        return {
            key: layer.add_weight(
                f"{name}_{key}",
                shape=shape,
                initializer="ones",
                trainable=True,
                constraint=keras.constraints.NonNeg(),
            )
            for key in ("w_p", "w_n")
        }

    def initialize(self, w, weights) -> None:
        """TTQ: ``w_p = w_n = r_t`` of TWN on the float kernel ``w`` (per tensor or channel)."""
        if self.method != "ttq":
            return
        w = tf.convert_to_tensor(w, tf.float32)
        _, r_t = twn_grid(w, self.threshold, self.channel_axes)
        for key in ("w_p", "w_n"):
            weights[key].assign(tf.reshape(r_t, weights[key].shape))

    def __call__(self, inputs, training, weights, **kwargs):
        w = tf.convert_to_tensor(inputs, tf.float32)
        if self.method == "twn":
            return twn_quantize(w, self.threshold, self.channel_axes)
        return ttq_quantize(w, weights["w_p"], weights["w_n"], self.threshold, self.channel_axes)

    def _codes_and_scale(self, w, weights) -> tuple[tf.Tensor, tf.Tensor]:
        w = tf.convert_to_tensor(w, tf.float32)
        if self.method == "twn":
            codes, scale = twn_grid(w, self.threshold, self.channel_axes)
        else:
            codes, scale, _, _ = ttq_grid(w, weights["w_p"], weights["w_n"], self.threshold, self.channel_axes)
        return codes, scale + tf.zeros([1] * len(w.shape))  # a scalar scale as [1, ..., 1]

    def scale(self, w, weights):
        return self._codes_and_scale(w, weights)[1]

    def integer_grid(self, w, weights) -> WeightGrid:
        codes, scale = self._codes_and_scale(w, weights)
        return WeightGrid(codes.numpy().astype(np.int32), scale.numpy().astype(np.float32), self.bits)

    def get_config(self) -> dict[str, Any]:
        return {"method": self.method, "threshold": self.threshold, "channel_axes": self.channel_axes}


# --- scheme ----------------------------------------------------------------------------------
@register("scheme", alias="ternary", presets={"twn": {}, "ttq": {"method": "ttq"}})
class Ternary(Scheme):
    """Ternary weights (TWN or TTQ) in every quantized layer; int8 activations (EMA range).

    Args:
      method: ``"twn"`` (default) or ``"ttq"``.
      threshold: ``t`` in ``Δ = t · mean|w|`` (0.7, Li et al. 2016).
      per_channel: ``Δ`` and scales per output channel instead of per tensor.

    Names: ``get_scheme("ternary")`` and the preset ``"twn"`` are ``Ternary()``; ``"ttq"`` is
    ``Ternary(method="ttq")``. Exported weights are INT4 with at most three values per scale.
    """

    weight_bits = 2
    activation_bits = 8

    def __init__(self, method: str = "twn", threshold: float = 0.7, per_channel: bool = False):
        self.method = str(method).lower()
        self.threshold = float(threshold)
        self.per_channel = bool(per_channel)
        TernaryWeightQuantizer(self.method, self.threshold)  # validates method and threshold

    def weight_quantizer(self, layer, weight):
        return TernaryWeightQuantizer(self.method, self.threshold, weight.channel_axes if self.per_channel else ())

    def get_config(self) -> dict[str, Any]:
        return {"method": self.method, "threshold": self.threshold, "per_channel": self.per_channel}
