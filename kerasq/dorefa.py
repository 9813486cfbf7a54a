"""DoReFa-Net: k-bit weights through tanh, k-bit activations on [0, 1], k-bit gradients.

Zhou et al. 2016 quantize everything with one function,
``quantize_k(r) = round((2^k - 1) r) / (2^k - 1)`` for ``r`` in ``[0, 1]``:

- weights ``Q(w) = 2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1`` (``DoReFaWeightQuantizer``);
- activations ``quantize_k(clip(x, 0, 1))`` (``DoReFaActivationQuantizer``);
- optionally the gradient reaching each activation,
  ``Q(g) = 2 max|G| [quantize_k(g / (2 max|G|) + 1/2 + N(k)) - 1/2]``, ``N(k) = σ/(2^k - 1)``,
  ``σ ~ U(-0.5, 0.5)`` (``quantize_gradient``).

The math is in the functions below (TF, with NumPy mirrors for tests and reports); the quantizer
classes and the ``DoReFa`` scheme are thin serializable wrappers around them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kerasq import ops
from kerasq.compat import tf
from kerasq.activations import ActivationSpec
from kerasq.quantizers import ActivationQuantizer, MovingAverageQuantizer, WeightGrid, WeightQuantizer
from kerasq.registry import register
from kerasq.schemes.base import Scheme


def _levels(bits: int) -> int:
    """``2^k - 1``: the number of steps of a k-bit grid on ``[0, 1]``."""
    return 2 ** int(bits) - 1


def quantize_k(r: tf.Tensor, bits: int) -> tf.Tensor:
    """``round((2^k - 1) r) / (2^k - 1)`` with a straight-through gradient (``∂/∂r = 1``).

    ``round`` is TensorFlow's (half to even). For ``r`` in ``[0, 1]`` the result is one of the
    ``2^k`` levels ``{0, 1/(2^k-1), ..., 1}``.

    >>> [round(float(v), 4) for v in quantize_k(tf.constant([0.0, 0.2, 0.5, 0.9]), 2)]
    [0.0, 0.3333, 0.6667, 1.0]
    """
    n = float(_levels(bits))
    return ops.round_ste(r * n) / n


def quantize_k_numpy(r: np.ndarray, bits: int) -> np.ndarray:
    """NumPy mirror of ``quantize_k`` (``np.round`` is half to even too)."""
    n = np.float32(_levels(bits))
    return (np.round(np.asarray(r, np.float32) * n) / n).astype(np.float32)


def dorefa_weight_codes(w: tf.Tensor, bits: int, axes: tuple[int, ...] = ()) -> tuple[tf.Tensor, tf.Tensor]:
    """Odd integer codes and the scale of DoReFa weights: ``Q(w) = codes · scale``.

    ``M = max|tanh(w)|`` over all axes but ``axes`` (``()``: the whole tensor, as in the paper),
    ``u = round((2^k - 1)·(tanh(w)/(2M) + 1/2))`` in ``[0, 2^k - 1]``,
    ``codes = 2u - (2^k - 1)`` (odd integers in ``[-(2^k - 1), 2^k - 1]``), ``scale = 1/(2^k - 1)``.
    ``M`` is a constant for the gradient (``tf.stop_gradient``, as larq does): otherwise the
    largest weight's own normalisation ``tanh(w)/max|tanh(w)|`` would contribute a spurious
    term. Rounding is straight-through, so ``∂Q/∂w = tanh'(w)/M = (1 - tanh(w)^2)/M``.
    A tensor whose ``M`` is 0 (all zeros) normalises by 1 instead: ``u = round((2^k - 1)/2)``.

    Returns: ``(codes, scale)``, float32, ``codes`` shaped like ``w`` and ``scale`` a scalar.
    """
    n = _levels(bits)
    t = tf.tanh(tf.convert_to_tensor(w, tf.float32))
    m = tf.stop_gradient(ops.max_abs(t, axes))
    m = tf.where(m > 0, m, tf.ones_like(m))
    u = tf.clip_by_value(ops.round_ste((t / (2.0 * m) + 0.5) * float(n)), 0.0, float(n))
    codes = 2.0 * u - float(n)
    return codes, tf.constant(1.0 / n, tf.float32)


def dorefa_weights_numpy(w: np.ndarray, bits: int, axes: tuple[int, ...] = ()) -> np.ndarray:
    """NumPy reference of DoReFa weights, ``2 quantize_k(tanh(w)/(2M) + 1/2) - 1`` (float64 math).

    Matches ``codes·scale`` of ``dorefa_weight_codes`` up to float32 rounding (and may differ
    where ``tanh`` lands within an ulp of a rounding tie).
    """
    w = np.asarray(w, np.float64)
    t = np.tanh(w)
    reduce = tuple(a for a in range(w.ndim) if a not in {x % w.ndim for x in axes})
    m = np.max(np.abs(t), axis=reduce, keepdims=True)
    m = np.where(m > 0, m, 1.0)
    n = _levels(bits)
    return 2.0 * np.round((t / (2.0 * m) + 0.5) * n) / n - 1.0


def quantize_gradient(g: tf.Tensor, bits: int, seed: int | None = None) -> tf.Tensor:
    """DoReFa's stochastic k-bit gradient quantizer (Zhou et al. 2016, eq. 12).

    ``Q(g) = 2M [quantize_k(g/(2M) + 1/2 + N(k)) - 1/2]`` with ``N(k) = σ/(2^k - 1)``,
    ``σ ~ U(-0.5, 0.5)`` drawn per element, and ``M = max|g|`` over all axes but the batch axis
    (one scale per sample, as in the paper). Equivalently ``Q(g) = M (2u - (2^k - 1))/(2^k - 1)``
    with ``u`` in ``[0, 2^k - 1]``: ``2^k`` levels from ``-M`` to ``M``. The noise makes the
    rounding stochastic with ``E[Q(g)] = g`` (dithering with one quantization step of uniform
    noise is unbiased); ``u`` is clipped to ``[0, 2^k - 1]`` against float round-off at ``±M``.
    Samples whose gradient is all zero stay zero.

    Args:
      g: gradient tensor with a leading batch axis.
      bits: ``k``, 1..16.
      seed: operation seed of ``tf.random.uniform`` (combined with the global seed
        ``tf.random.set_seed``/``keras.utils.set_random_seed`` for a reproducible sequence).
    """
    n = float(_levels(bits))
    g = tf.convert_to_tensor(g)
    rank = len(g.shape)
    m = tf.reduce_max(tf.abs(g), axis=list(range(1, rank)), keepdims=True) if rank > 1 else tf.abs(g)
    safe_m = tf.where(m > 0, m, tf.ones_like(m))
    noise = tf.random.uniform(tf.shape(g), -0.5, 0.5, dtype=g.dtype, seed=seed) / n
    u = tf.clip_by_value(tf.round((g / (2.0 * safe_m) + 0.5 + noise) * n), 0.0, n)
    return 2.0 * m * (u / n - 0.5)


def dorefa_activation(x: tf.Tensor, bits: int, gradient_bits: int | None = None, seed: int | None = None) -> tf.Tensor:
    """``quantize_k(clip(x, 0, 1))``, computed as TensorFlow FakeQuant on ``[0, 1]`` with k bits.

    Forward: ``S·floor(clip(x, 0, 1)/S + 0.5)``, ``S = 1/(2^k - 1)`` (float32), i.e. ``quantize_k``
    with halves rounded up, bit-identical to ``ops.fake_quant_affine(x, 0, 1, k)``.
    Backward: ``∂y/∂x = 1`` on ``[0, 1]``, 0 outside (FakeQuant's own gradient). With
    ``gradient_bits`` the incoming gradient is first replaced by
    ``quantize_gradient(dy, gradient_bits, seed)`` (``tf.custom_gradient``); this only affects
    training, the forward value and the exported model are unchanged.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    if gradient_bits is None:
        return ops.fake_quant_affine(x, 0.0, 1.0, bits)

    @tf.custom_gradient
    def _forward(x):
        def grad(dy):
            dq = quantize_gradient(dy, gradient_bits, seed)
            return tf.raw_ops.FakeQuantWithMinMaxVarsGradient(
                gradients=dq, inputs=x, min=0.0, max=1.0, num_bits=bits, narrow_range=False
            )[0]

        return ops.fake_quant_affine(x, 0.0, 1.0, bits), grad

    return _forward(x)


@register("quantizer", alias="dorefa_weight")
class DoReFaWeightQuantizer(WeightQuantizer):
    """DoReFa-Net k-bit weights: ``Q(w) = 2 quantize_k(tanh(w)/(2 max|tanh(w)|) + 1/2) - 1``.

    Forward: ``tanh`` squashes the weights, dividing by ``2 max|tanh(w)|`` and adding ``1/2`` maps
    them onto ``[0, 1]``, ``quantize_k`` rounds to ``2^k`` levels, ``2·(·) - 1`` maps back to
    ``[-1, 1]``. The result is the symmetric grid ``{±1/(2^k-1), ±3/(2^k-1), ..., ±1}``: it has
    no zero level.
    Gradient: straight-through rounding, ``tanh``'s derivative kept, the max held constant:
    ``∂Q/∂w = (1 - tanh(w)^2) / max|tanh(w)|``.
    Integer/export form: ``Q(w) = codes·scale`` with odd codes ``2u - (2^k - 1)`` and
    ``scale = 1/(2^k - 1)``, zero point 0. Because the grid has no zero, a k-bit DoReFa grid needs
    ``k + 1`` signed bits: ``integer_grid`` reports ``bits = k + 1``. So k = 2 (codes ±1, ±3) and
    k = 3 (codes ±1..±7) are stored INT4, and k = 4 (codes ±1..±15) INT8, still with only ``2^k``
    distinct codes (``inspect`` reports 4 effective bits). k is at most 7 (codes ±127).

    Args:
      bits: ``k``, 2..7.
      channel_axes: axes that keep their own ``max|tanh(w)|`` (the paper normalises per layer:
        ``()``, the default; ``(-1,)`` per output channel; the scale stays ``1/(2^k-1)``).
    Reference: Zhou et al., "DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks with
    Low Bitwidth Gradients", arXiv:1606.06160, 2016.

    Example (k = 2, seed lecture): levels ``{-1, -1/3, 1/3, 1}``; ``w = [0, 0.2, -3, 3]``:
    ``tanh(w)/(2·0.995) + 1/2 = [0.5, 0.599, 0, 1]``, ``3·(·) = [1.5, 1.79, 0, 3]``, rounded
    ``u = [2, 2, 0, 3]`` (1.5 rounds to even), codes ``[1, 1, -3, 3]``, ``Q = [1/3, 1/3, -1, 1]``.
    """

    def __init__(self, bits: int = 4, channel_axes: tuple[int, ...] = ()):
        # The odd codes ±(2^k-1) must fit int8.
        bits = ops.integer_in_range("bits", bits, 2, 7)
        super().__init__(channel_axes)
        self.bits = bits

    def __call__(self, inputs, training, weights, **kwargs):
        codes, scale = dorefa_weight_codes(inputs, self.bits, self.channel_axes)
        return codes * scale

    @property
    def grid_bits(self) -> int:
        return self.bits + 1

    def scale(self, w, weights):
        w = tf.convert_to_tensor(w, tf.float32)
        _, scale = dorefa_weight_codes(w, self.bits, self.channel_axes)
        return tf.reshape(scale, [1] * len(w.shape))

    def integer_grid(self, w, weights) -> WeightGrid:
        codes, scale = dorefa_weight_codes(tf.convert_to_tensor(w), self.bits, self.channel_axes)
        scale = np.full([1] * len(codes.shape), scale.numpy(), np.float32)
        return WeightGrid(codes.numpy().astype(np.int32), scale, self.bits + 1)

    def get_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "channel_axes": self.channel_axes}


@register("quantizer", alias="dorefa_activation")
class DoReFaActivationQuantizer(ActivationQuantizer):
    """DoReFa-Net k-bit activations ``quantize_k(clip(x, 0, 1))``, optionally k-bit gradients.

    Forward: ``y = S·round_half_up(clip(x, 0, 1)/S)``, ``S = 1/(2^k - 1)``: TensorFlow FakeQuant
    on ``[0, 1]`` (``ops.fake_quant_affine``), ``2^k`` levels ``0, 1/(2^k-1), ..., 1``.
    Gradient: straight-through on ``[0, 1]``, zero outside. With ``gradient_bits = g`` the
    gradient arriving at this activation is quantized first with Zhou et al.'s stochastic rule
    ``Q(dy) = 2M [quantize_g(dy/(2M) + 1/2 + N(g)) - 1/2]``, ``N(g) = σ/(2^g - 1)``,
    ``σ ~ U(-0.5, 0.5)``, ``M = max|dy|`` per sample (see ``quantize_gradient``). That is a
    training-time effect only: inference and the exported model never see it.
    Integer/export form: int8 with ``scale = 1/(2^k - 1)``, zero point -128, codes
    ``[-128, -128 + 2^k - 1]`` (the exporter clamps the top with a MINIMUM op).

    Args:
      bits: ``k``, 2..8.
      gradient_bits: bits of the backward pass, 1..16, or None for float gradients.
      seed: operation seed of the gradient noise (``tf.random.uniform``), or None.
    Reference: Zhou et al. 2016 (arXiv:1606.06160), eq. 9 and 12.

    Example (k = 2): levels ``{0, 1/3, 2/3, 1}``; ``x = [-0.5, 0.1, 0.5, 0.8, 3]`` ->
    ``[0, 0, 2/3, 2/3, 1]`` (``0.5·3 = 1.5`` rounds up); int8 scale 1/3, codes -128..-125.
    """

    def __init__(self, bits: int = 4, gradient_bits: int | None = None, seed: int | None = None):
        self.bits = ops.integer_in_range("bits", bits, 2, 8)
        self.gradient_bits = None if gradient_bits is None else ops.integer_in_range("gradient_bits", gradient_bits, 1, 16)
        self.seed = None if seed is None else int(seed)

    def range(self, weights):
        return tf.constant(0.0, tf.float32), tf.constant(1.0, tf.float32)

    def round(self, x, weights):
        return dorefa_activation(x, self.bits, self.gradient_bits, self.seed)

    def get_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "gradient_bits": self.gradient_bits, "seed": self.seed}


@register("scheme", alias="dorefa")
class DoReFa(Scheme):
    """DoReFa-Net (Zhou et al. 2016): tanh-normalised k-bit weights, [0, 1] k-bit activations.

    Weights: ``DoReFaWeightQuantizer(weight_bits)``: ``Q(w)`` in ``{±1, ±3, ..., ±(2^k-1)}/(2^k-1)``,
    one ``max|tanh(w)|`` per layer (or per output channel with ``per_channel=True``). The weights
    are normalised to ``[-1, 1]``: a layer's output scale is carried by its (folded) bias and by
    the layers after it, as in the paper's networks, so the model needs fine-tuning.
    Activations: after a ReLU or capped ReLU, ``DoReFaActivationQuantizer(activation_bits,
    gradient_bits)``, i.e. the ReLU becomes ``clip(x, 0, 1)`` quantized to ``2^k`` levels, as in the
    paper (a ReLU6 is clipped at 1 too). Linear outputs (and logits before softmax) are signed and
    get ``MovingAverageQuantizer(activation_bits)``; their gradients are not quantized.
    ``gradient_bits`` quantizes the gradient reaching each DoReFa activation during training.

    With the default first/last-layer policy of ``quantize_model`` the first and last weight
    layers stay int8 (``Linear()``).

    Args:
      weight_bits: 2..7. activation_bits: 2..8. gradient_bits: 1..16 or None.
      per_channel: one ``max|tanh(w)|`` per output channel instead of per layer.
    """

    def __init__(
        self,
        weight_bits: int = 4,
        activation_bits: int = 4,
        gradient_bits: int | None = None,
        per_channel: bool = False,
    ):
        DoReFaWeightQuantizer(weight_bits)
        DoReFaActivationQuantizer(activation_bits, gradient_bits)
        self.weight_bits = int(weight_bits)
        self.activation_bits = int(activation_bits)
        self.gradient_bits = None if gradient_bits is None else int(gradient_bits)
        self.per_channel = bool(per_channel)

    def weight_quantizer(self, layer, weight):
        return DoReFaWeightQuantizer(self.weight_bits, weight.channel_axes if self.per_channel else ())

    def activation_quantizer(self, layer, activation: ActivationSpec):
        if activation.kind == "relu":
            return DoReFaActivationQuantizer(self.activation_bits, self.gradient_bits)
        return MovingAverageQuantizer(self.activation_bits)

    def get_config(self) -> dict[str, Any]:
        return {
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
            "gradient_bits": self.gradient_bits,
            "per_channel": self.per_channel,
        }
