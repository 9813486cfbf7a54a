"""PACT: a trainable clipping level per layer for low-bit activations (Choi et al. 2018).

PACT replaces the unbounded ReLU by ``y = clip(x, 0, α)`` with ``α`` learned per layer, and
quantizes ``y`` uniformly on ``[0, α]``. The forward pass here is TensorFlow's FakeQuant on
``[0, α]`` (``kerasq.ops.fake_quant_affine``), so the exported int8 tensor reproduces it
exactly; the backward pass is the paper's, written out with ``tf.custom_gradient`` because
FakeQuant's own gradient differs from it at ``x == α`` (see ``pact_fake_quant``).

The math lives in ``pact_fake_quant`` (TF) with NumPy mirrors ``pact_fake_quant_numpy`` and
``pact_gradient_numpy``; ``PACTQuantizer`` is the thin serializable quantizer around it and
``PACT`` the scheme that places it after every ReLU-family activation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kerasq import ops
from kerasq.compat import keras, tf
from kerasq.activations import ActivationSpec
from kerasq.quantizers import ActivationQuantizer, LinearWeightQuantizer, MovingAverageQuantizer
from kerasq.registry import register
from kerasq.schemes.base import Scheme

# Smallest clipping level the forward pass uses; keeps the FakeQuant range non-empty.
ALPHA_MIN = 1e-3


def pact_fake_quant(x: tf.Tensor, alpha: tf.Tensor, bits: int) -> tf.Tensor:
    """``FakeQuant(x, 0, α, bits)`` forward with the PACT gradient (Choi et al. 2018, eq. 1-3).

    Forward (bit-identical to ``ops.fake_quant_affine(x, 0, α, bits)``)::

        y = S · round_half_up(clip(x, 0, α̃) / S),   S = α / (2^k - 1)

    where ``α̃ = (2^k - 1)·S`` is FakeQuant's nudged top (equal to ``α`` or one float32 ulp off)
    and ``/ S`` is a float32 division, as in TensorFlow's kernel.

    Backward (straight-through inside the clipping range)::

        ∂y/∂x = 1 if 0 <= x < α else 0
        ∂y/∂α = 1 if x >= α     else 0      (summed over all elements: α is a scalar)

    TensorFlow's FakeQuant gradient differs exactly at ``x == α``: it passes ``∂y/∂x = 1`` and
    gives ``α`` nothing there (its interval is ``[min, nudged_max]`` closed), and it switches at the
    nudged top instead of at ``α``. PACT's rule counts an input sitting on the clip level as
    clipped, which matters because ReLU6-like layers put many inputs exactly there.

    Args:
      x: activations (after the ReLU), any shape, float32.
      alpha: scalar clipping level ``> 0``.
      bits: 2..8.

    Example (2 bits on ``α = 1.5``, step 0.5, halves round up)::

        x = [-1, 0, 0.25, 0.6, 1.5, 4]  ->  y = [0, 0, 0.5, 0.5, 1.5, 1.5]
        ∂y/∂x = [0, 1, 1, 1, 0, 0],  ∂y/∂α = 2 (from 1.5 and 4)
    """

    @tf.custom_gradient
    def _pact(x, alpha):
        y = ops.fake_quant_affine(x, 0.0, alpha, bits)

        def grad(dy):
            inside = tf.logical_and(x >= 0.0, x < alpha)
            clipped = x >= alpha
            dx = tf.where(inside, dy, tf.zeros_like(dy))
            dalpha = tf.reduce_sum(tf.where(clipped, dy, tf.zeros_like(dy)))
            return dx, tf.reshape(dalpha, tf.shape(alpha))

        return y, grad

    return _pact(tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(alpha, tf.float32))


def pact_fake_quant_numpy(x: np.ndarray, alpha: float, bits: int) -> np.ndarray:
    """NumPy mirror of ``pact_fake_quant``'s forward, float32 as TensorFlow 2.21 computes it.

    ``FakeQuantWithMinMaxVars`` on ``[0, α]``: the nudged zero point is 0, so
    ``y = floor(clip(x, 0, α̃)/S + 0.5)·S`` with ``S``, ``α̃`` from ``ops.nudged_affine(0, α, bits)``.
    The kernel divides by ``S`` (it does not multiply by a reciprocal): ties such as
    ``x = 1.5·S`` land where TensorFlow puts them only with the division.
    """
    params = ops.nudged_affine(0.0, alpha, bits)
    scale = np.float32(params.scale)
    top = np.float32(np.float32(params.code_max - params.zero_point) * scale)
    clamped = np.clip(np.asarray(x, np.float32), np.float32(0.0), top)
    return (np.floor(clamped / scale + np.float32(0.5)) * scale).astype(np.float32)


def pact_gradient_numpy(x: np.ndarray, alpha: float, upstream: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """PACT's ``(∂L/∂x, ∂L/∂α)`` for upstream gradient ``∂L/∂y`` (ones by default)."""
    x = np.asarray(x, np.float32)
    alpha = np.float32(alpha)
    upstream = np.ones_like(x) if upstream is None else np.asarray(upstream, np.float32)
    dx = np.where((x >= 0) & (x < alpha), upstream, np.float32(0)).astype(np.float32)
    dalpha = float(np.sum(np.where(x >= alpha, upstream, np.float32(0)), dtype=np.float64))
    return dx, dalpha


class _AlphaRange(keras.constraints.Constraint):
    """Keeps ``α`` in ``[ALPHA_MIN, alpha_max]`` after every optimizer step."""

    def __init__(self, alpha_max: float | None = None):
        self.alpha_max = alpha_max

    def __call__(self, w):
        if self.alpha_max is None:
            return tf.maximum(w, ALPHA_MIN)
        return tf.clip_by_value(w, ALPHA_MIN, self.alpha_max)

    def get_config(self) -> dict[str, Any]:
        return {"alpha_max": self.alpha_max}


@register("quantizer", alias="pact")
class PACTQuantizer(ActivationQuantizer):
    """PACT activations: ``y = FakeQuant(clip(x, 0, α), 0, α, k)`` with a trainable ``α`` per layer.

    Forward: ``y = S·round_half_up(clip(x, 0, α)/S)``, ``S = α/(2^k - 1)``: ``2^k`` levels on
    ``[0, α]``, exactly TensorFlow's FakeQuant on ``[0, α]`` (``ops.fake_quant_affine``).
    Gradient (Choi et al. 2018): ``∂y/∂x = 1`` on ``[0, α)``, 0 elsewhere; ``∂y/∂α = 1`` where
    ``x >= α``, 0 elsewhere. ``α`` therefore learns only from inputs it clips; the L2 penalty
    ``alpha_l2·α²`` (a Keras regularizer on the variable, so it is part of ``model.losses``)
    pulls it down where nothing is clipped.
    Integer/export form: int8 activation with ``scale = α/(2^k - 1)``, zero point ``-128`` (the
    nudged zero of ``[0, α]``), codes ``[-128, -128 + 2^k - 1]``; the exporter clamps the top with
    a MINIMUM op. A 4-bit PACT grid thus uses 16 of the 256 int8 codes.

    The variable ``α`` is created in ``build`` (``layer.add_weight``, owned by the layer),
    initialised to ``alpha_init`` and kept in ``[1e-3, alpha_max]`` by a constraint the optimizer
    applies after each step; the forward pass clips ``α`` to the same interval, so an ``α``
    assigned by hand outside it acts as its clipped value.

    Args:
      bits: activation bits, 2..8.
      alpha_init: initial clipping level, ``> 0`` (the paper starts at 10; 6 matches ReLU6).
      alpha_l2: L2 coefficient on ``α`` (``>= 0``; 0 disables the penalty).
      alpha_max: upper bound of ``α`` (the cap ``c`` of a capped ReLU), or None.
    Reference: Choi et al., "PACT: Parameterized Clipping Activation for Quantized Neural
    Networks", arXiv:1805.06085, 2018.

    Example: ``bits=2``, ``α = 1.5``: levels ``{0, 0.5, 1.0, 1.5}``; ``x = 0.25 -> 0.5`` (half up),
    ``x = 0.7 -> 0.5``, ``x = 3 -> 1.5``; int8 scale 0.5, zero point -128, codes -128..-125.
    """

    def __init__(self, bits: int = 4, alpha_init: float = 6.0, alpha_l2: float = 1e-4, alpha_max: float | None = None):
        bits = ops.integer_in_range("bits", bits, 2, 8)
        if not float(alpha_init) >= ALPHA_MIN:
            raise ValueError(f"alpha_init must be at least {ALPHA_MIN}. Received: alpha_init={alpha_init}")
        if not float(alpha_l2) >= 0.0:
            raise ValueError(f"alpha_l2 must be >= 0. Received: alpha_l2={alpha_l2}")
        if alpha_max is not None and not float(alpha_init) <= float(alpha_max):
            raise ValueError(
                f"alpha_max must be at least alpha_init. Received: alpha_init={alpha_init}, alpha_max={alpha_max}"
            )
        self.bits = int(bits)
        self.alpha_init = float(alpha_init)
        self.alpha_l2 = float(alpha_l2)
        self.alpha_max = None if alpha_max is None else float(alpha_max)

    def build(self, tensor_shape, name, layer):
        alpha = layer.add_weight(
            f"{name}_alpha",
            shape=(),
            initializer=keras.initializers.Constant(self.alpha_init),
            regularizer=keras.regularizers.l2(self.alpha_l2) if self.alpha_l2 > 0 else None,
            constraint=_AlphaRange(self.alpha_max),
            trainable=True,
        )
        return {"alpha": alpha}

    def clipping_level(self, weights) -> tf.Tensor:
        """``α`` as the forward pass uses it: the variable clipped to ``[1e-3, alpha_max]``."""
        alpha = tf.convert_to_tensor(weights["alpha"])
        if self.alpha_max is None:
            return tf.maximum(alpha, ALPHA_MIN)
        return tf.clip_by_value(alpha, ALPHA_MIN, self.alpha_max)

    def range(self, weights):
        return tf.constant(0.0, tf.float32), self.clipping_level(weights)

    def round(self, x, weights):
        return pact_fake_quant(x, self.clipping_level(weights), self.bits)

    def get_config(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "alpha_init": self.alpha_init,
            "alpha_l2": self.alpha_l2,
            "alpha_max": self.alpha_max,
        }


@register("scheme", alias="pact")
class PACT(Scheme):
    """PACT (Choi et al. 2018): learned activation clipping plus uniform symmetric weights.

    Weights: ``LinearWeightQuantizer(weight_bits)``, symmetric, narrow range, one scale per output
    channel (``S = |w|_max/(2^(b-1) - 1)``, codes ``[-(2^(b-1) - 1), 2^(b-1) - 1]``; 4 bits -> ±7,
    stored INT4).
    Activations: after a ReLU, ``PACTQuantizer(activation_bits)`` with its own trainable ``α``;
    after a capped ReLU with cap ``c`` (ReLU6, ReLU1) ``α`` starts at ``min(alpha_init, c)`` and is
    bounded by ``c`` (``alpha_max=c``: a constraint after each step and a clip in the forward
    pass), since values above ``c`` never occur and grid levels there would be wasted. Linear
    outputs (and the logits of softmax/sigmoid/tanh) get ``MovingAverageQuantizer(activation_bits)``:
    they are signed, and PACT's ``[0, α]`` would cut their negative half.

    With the default first/last-layer policy of ``quantize_model`` the first and last weight
    layers stay int8 (``Linear()``).

    Args:
      weight_bits: 2..8. activation_bits: 2..8.
      alpha_init: initial ``α`` (``> 0``). alpha_l2: L2 coefficient on each ``α`` (``>= 0``).

    >>> PACT().activation_quantizer(None, ActivationSpec("relu", 6.0))
    PACTQuantizer(bits=4, alpha_init=6.0, alpha_l2=0.0001, alpha_max=6.0)
    """

    def __init__(self, weight_bits: int = 4, activation_bits: int = 4, alpha_init: float = 6.0, alpha_l2: float = 1e-4):
        self.weight_bits = ops.integer_in_range("weight_bits", weight_bits, 2, 8)
        self.activation_bits = ops.integer_in_range("activation_bits", activation_bits, 2, 8)
        PACTQuantizer(activation_bits, alpha_init, alpha_l2)  # validates alpha_init, alpha_l2
        self.alpha_init = float(alpha_init)
        self.alpha_l2 = float(alpha_l2)

    def weight_quantizer(self, layer, weight):
        return LinearWeightQuantizer(self.weight_bits, symmetric=True, narrow_range=True, channel_axes=weight.channel_axes)

    def activation_quantizer(self, layer, activation: ActivationSpec):
        if activation.kind != "relu":
            return MovingAverageQuantizer(self.activation_bits)
        cap = activation.max_value
        alpha_init = self.alpha_init if cap is None else min(self.alpha_init, cap)
        return PACTQuantizer(self.activation_bits, alpha_init, self.alpha_l2, alpha_max=cap)

    def get_config(self) -> dict[str, Any]:
        return {
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
            "alpha_init": self.alpha_init,
            "alpha_l2": self.alpha_l2,
        }
