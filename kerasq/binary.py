"""Binary weights and activations: BinaryConnect, BNN, BWN and XNOR-Net.

Four methods share one binarizer, ``sign(x)`` with ``sign(0) = +1``:

============== ================== =============================== ==============================
method         weights Q(w)       activations                     latent weights
============== ================== =============================== ==============================
binaryconnect  ``sign(w)``        int8, EMA range                 clipped to [-1, 1]
bnn            ``sign(w)``        ``sign(x)``                     clipped to [-1, 1]
bwn            ``α·sign(w)``      int8, EMA range                 free
xnor           ``α·sign(w)``      ``β·sign(x)``                   free
============== ================== =============================== ==============================

``α = mean|W|`` per tensor or per output channel; ``β`` is an exponential moving average of
``mean|x|``. Gradients pass straight through with saturation: ``∂sign(x)/∂x := 1_{|x| ≤ 1}``
(Courbariaux et al. 2016).

The math lives in small functions (``sign``, ``ste_sign``, ``stochastic_ste_sign``,
``hard_sigmoid``, ``mean_abs`` and NumPy mirrors); ``BinaryWeightQuantizer`` and
``SignActivationQuantizer`` wrap them with their integer form for export; ``Binary`` is the
scheme (aliases ``"binary"``; presets ``"bwn"``, ``"xnor"``, ``"bnn"``, ``"binaryconnect"``).

References:
  Courbariaux, Bengio, David. BinaryConnect, NeurIPS 2015.
  Courbariaux, Hubara, Soudry, El-Yaniv, Bengio. Binarized Neural Networks, arXiv 1602.02830, 2016.
  Rastegari, Ordonez, Redmon, Farhadi. XNOR-Net, ECCV 2016.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kerasq import ops
from kerasq.compat import keras, tf
from kerasq.activations import ActivationSpec
from kerasq.observers import MovingAverageObserver, global_mean, state_variable
from kerasq.quantizers import (
    ActivationQuantizer,
    WeightGrid,
    WeightQuantizer,
    is_training,
    observed_range,
)
from kerasq.registry import ConfigEquality, register
from kerasq.schemes.base import Scheme

METHODS = ("binaryconnect", "bnn", "bwn", "xnor")
# Methods whose weights carry the scale α = mean|W| (Rastegari et al. 2016).
SCALED_METHODS = ("bwn", "xnor")
# Methods that clip the latent float weights to [-1, 1] after each update (Courbariaux et al.).
CLIPPED_METHODS = ("binaryconnect", "bnn")
# Methods that binarize activations too.
BINARY_ACTIVATION_METHODS = ("bnn", "xnor")


# --- math ------------------------------------------------------------------------------------
def sign(x: tf.Tensor) -> tf.Tensor:
    """``+1`` where ``x >= 0``, ``-1`` elsewhere, float32 (``sign(0) = +1``, unlike ``tf.sign``).

    >>> sign(tf.constant([-0.5, 0.0, 2.0])).numpy().tolist()
    [-1.0, 1.0, 1.0]
    """
    x = tf.convert_to_tensor(x, tf.float32)
    return tf.where(x >= 0.0, tf.ones_like(x), -tf.ones_like(x))


def sign_np(x: np.ndarray) -> np.ndarray:
    """NumPy mirror of ``sign``: ``+1`` for ``x >= 0``, ``-1`` elsewhere, float32."""
    return np.where(np.asarray(x) >= 0, np.float32(1), np.float32(-1)).astype(np.float32)


def saturation_mask(x: tf.Tensor, clip_value: float = 1.0) -> tf.Tensor:
    """``1_{|x| <= clip_value}`` as float32: where the straight-through gradient passes."""
    return tf.cast(tf.abs(x) <= clip_value, tf.float32)


@tf.custom_gradient
def ste_sign(x: tf.Tensor):
    """``sign(x)`` forward; straight-through with saturation backward, ``dy · 1_{|x| <= 1}``.

    The gradient is that of ``htanh(x) = clip(x, -1, 1)`` (Courbariaux et al. 2016, eq. 4): it
    passes where the input is in ``[-1, 1]`` and cancels where it saturates.
    """
    x = tf.convert_to_tensor(x, tf.float32)

    def grad(dy):
        return dy * saturation_mask(x)

    return sign(x), grad


@tf.custom_gradient
def ste_sign_positive(x: tf.Tensor):
    """``+1`` where ``x > 0``, ``-1`` where ``x <= 0``; backward ``dy · 1_{|x| <= 1}``.

    The binarizer of a ReLU output ``r = relu(z) >= 0``: ``r > 0`` exactly when ``z > 0``, so
    this is the sign of the pre-ReLU value ``z`` (with ``z = 0`` sent to ``-1``), where
    ``sign(r)`` with ``sign(0) = +1`` would be the constant ``+1``.
    """
    x = tf.convert_to_tensor(x, tf.float32)

    def grad(dy):
        return dy * saturation_mask(x)

    return tf.where(x > 0.0, tf.ones_like(x), -tf.ones_like(x)), grad


def hard_sigmoid(x: tf.Tensor) -> tf.Tensor:
    """``σ(x) = clip((x + 1) / 2, 0, 1)``, the probability of ``+1`` in stochastic binarization.

    >>> hard_sigmoid(tf.constant([-2.0, -0.5, 0.0, 0.5, 3.0])).numpy().tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    x = tf.convert_to_tensor(x, tf.float32)
    return tf.clip_by_value((x + 1.0) / 2.0, 0.0, 1.0)


def hard_sigmoid_np(x: np.ndarray) -> np.ndarray:
    """NumPy mirror of ``hard_sigmoid``."""
    return np.clip((np.asarray(x, np.float32) + np.float32(1)) / np.float32(2), 0, 1).astype(np.float32)


@tf.custom_gradient
def stochastic_ste_sign(x: tf.Tensor):
    """``+1`` with probability ``hard_sigmoid(x)``, else ``-1`` (BinaryConnect, Courbariaux 2015, eq. 2).

    One uniform draw ``u ~ U[0, 1)`` per element: ``+1`` where ``u < σ(x)``. Backward as
    ``ste_sign``: ``dy · 1_{|x| <= 1}``. Seed with ``keras.utils.set_random_seed`` for
    reproducible draws.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    u = tf.random.uniform(tf.shape(x), 0.0, 1.0, dtype=tf.float32)

    def grad(dy):
        return dy * saturation_mask(x)

    return tf.where(u < hard_sigmoid(x), tf.ones_like(x), -tf.ones_like(x)), grad


def mean_abs(w: tf.Tensor, axes: tuple[int, ...]) -> tf.Tensor:
    """``α = mean|w|`` over all axes but ``axes`` (``()``: the whole tensor), dims kept.

    Seed lecture 4x4 ``W``: ``α = 16.78 / 16 = 1.04875`` per tensor.
    """
    w = tf.convert_to_tensor(w, tf.float32)
    return tf.reduce_mean(tf.abs(w), axis=ops.reduce_axes(len(w.shape), axes), keepdims=True)


def binary_weights_np(w: np.ndarray, method: str, axes: tuple[int, ...] = ()) -> np.ndarray:
    """NumPy reference of the deterministic binary weights: ``sign(w)`` or ``α·sign(w)``."""
    w = np.asarray(w, np.float32)
    q = sign_np(w)
    if method in SCALED_METHODS:
        reduce = tuple(ops.reduce_axes(w.ndim, axes))
        q = q * np.mean(np.abs(w), axis=reduce, keepdims=True, dtype=np.float32)
    return q.astype(np.float32)


def _check_method(method: str, allowed: tuple[str, ...]) -> str:
    key = str(method).lower().replace("-", "").replace("_", "")
    if key not in allowed:
        raise ValueError(f"method must be one of {', '.join(allowed)}. Received: method={method!r}")
    return key


# --- latent weight clipping ------------------------------------------------------------------
@register("constraint")
class WeightClip(ConfigEquality, keras.constraints.Constraint):
    """Clip latent float weights to ``[-clip_value, clip_value]`` after each optimizer update.

    A Keras constraint: the optimizer applies ``variable.assign(constraint(variable))`` after
    every step (BinaryConnect/BNN keep ``w`` in ``[-1, 1]`` so that ``sign`` can still flip and
    the saturated STE keeps passing gradients). ``Binary(method="binaryconnect" | "bnn")`` puts it
    on the kernel of each layer it quantizes; it is saved with the layer config.

    >>> WeightClip(1.0)(tf.constant([-3.0, 0.5, 2.0])).numpy().tolist()
    [-1.0, 0.5, 1.0]
    """

    def __init__(self, clip_value: float = 1.0):
        if not float(clip_value) > 0:
            raise ValueError(f"clip_value must be positive. Received: clip_value={clip_value}")
        self.clip_value = float(clip_value)

    def __call__(self, w):
        return tf.clip_by_value(w, -self.clip_value, self.clip_value)

    def get_config(self) -> dict[str, Any]:
        return {"clip_value": self.clip_value}


def _constraint_attribute(layer: keras.layers.Layer) -> str:
    return "depthwise_constraint" if isinstance(layer, keras.layers.DepthwiseConv2D) else "kernel_constraint"


def set_weight_clip(layer: keras.layers.Layer, clip_value: float = 1.0) -> None:
    """Give ``layer``'s kernel the ``WeightClip(clip_value)`` constraint; call it before ``build``.

    Raises ``ValueError`` if the layer already has a different kernel constraint (it is not
    silently replaced), or is built without the clip (the variable would not carry it).
    """
    attr = _constraint_attribute(layer)
    clip = WeightClip(clip_value)
    current = getattr(layer, attr, None)
    if current is not None and current != clip:
        raise ValueError(
            f"Layer {layer.name!r} already has {attr}={current!r}; BinaryConnect/BNN training clips "
            f"the latent weights with {clip!r} instead. Remove the constraint from the float model. "
            f"Received: {attr}={current!r}"
        )
    if layer.built:
        kernel = getattr(layer, "depthwise_kernel" if attr == "depthwise_constraint" else "kernel")
        if kernel.constraint != clip:
            raise ValueError(
                f"Layer {layer.name!r} is already built, so a kernel constraint cannot be added any more; "
                "binary schemes must see the layer before it is built (quantize_model does this). "
                f"Received: built layer {layer.name!r}"
            )
        return
    setattr(layer, attr, clip)


# --- quantizers ------------------------------------------------------------------------------
@register("quantizer")
class BinaryWeightQuantizer(WeightQuantizer):
    """Binary weights ``Q(w) = sign(w)`` (BinaryConnect, BNN) or ``α·sign(w)`` (BWN, XNOR-Net).

    Forward: ``b = sign(w)`` with ``sign(0) = +1``; ``α = mean|w|`` over the whole tensor
    (``channel_axes=()``) or per output channel, for ``method`` in ``("bwn", "xnor")``; ``α = 1``
    for ``("binaryconnect", "bnn")``. With ``stochastic=True`` training draws ``b = +1`` with
    probability ``hard_sigmoid(w) = clip((w + 1)/2, 0, 1)``; inference stays deterministic.
    Backward: straight-through with saturation, ``∂L/∂w = α · ∂L/∂Q · 1_{|w| <= 1}`` with ``α``
    held constant (``stop_gradient``, as larq's ``MagnitudeAwareSign``; XNOR-Net's eq. also
    differentiates ``α``, a ``1/n`` term).
    Latent weights: BinaryConnect/BNN clip ``w`` to ``[-1, 1]`` after each update; the
    ``Binary`` scheme sets that up (``WeightClip`` kernel constraint); used alone, give the layer
    ``kernel_constraint=WeightClip(1.0)``.
    Integer form: codes ``b ∈ {-1, +1}`` (1 bit), zero point 0, scale ``α`` per tensor/channel
    (1 without scale). The exporter stores them as INT4 ``±4`` with scale ``α/4`` (exact).

    Args:
      method: ``"binaryconnect"``, ``"bnn"``, ``"bwn"`` or ``"xnor"``.
      stochastic: stochastic binarization in training.
      channel_axes: kernel axes with one ``α`` each (``(-1,)`` Conv2D/Dense, ``(2, 3)``
        depthwise); ``()`` for one ``α`` per tensor. Only the scaled methods have an ``α``.

    Example (seed lecture, ``W`` 4x4, per tensor): ``α = 1.04875``,
    ``‖W − α·sign(W)‖²_F = 9.245`` vs ``‖W − sign(W)‖²_F = 9.283`` for BinaryConnect.
    """

    bits = 1

    def __init__(self, method: str = "bwn", stochastic: bool = False, channel_axes: tuple[int, ...] = ()):
        super().__init__(channel_axes)
        self.method = _check_method(method, METHODS)
        self.stochastic = bool(stochastic)
        if self.channel_axes and self.method not in SCALED_METHODS:
            raise ValueError(
                f"channel_axes apply to the scaled methods {SCALED_METHODS} only; method={self.method!r} "
                f"has no scale. Received: channel_axes={self.channel_axes}"
            )

    @property
    def scaled(self) -> bool:
        return self.method in SCALED_METHODS

    def _scale(self, w: tf.Tensor) -> tf.Tensor:
        if self.scaled:
            return tf.stop_gradient(mean_abs(w, self.channel_axes))
        return tf.ones([1] * len(w.shape), tf.float32)

    def __call__(self, inputs, training, weights, **kwargs):
        w = tf.convert_to_tensor(inputs, tf.float32)
        if self.stochastic and is_training(training):
            codes = stochastic_ste_sign(w)
        else:
            codes = ste_sign(w)
        return codes * self._scale(w) if self.scaled else codes

    def scale(self, w, weights):
        return self._scale(tf.convert_to_tensor(w, tf.float32))

    def integer_grid(self, w, weights) -> WeightGrid:
        w = tf.convert_to_tensor(w, tf.float32)
        return WeightGrid(sign(w).numpy().astype(np.int32), self._scale(w).numpy().astype(np.float32), self.bits)

    def get_config(self) -> dict[str, Any]:
        return {"method": self.method, "stochastic": self.stochastic, "channel_axes": self.channel_axes}


@register("quantizer")
class SignActivationQuantizer(ActivationQuantizer):
    """Binary activations ``β·sign(x̂)`` (BNN: ``β = 1``; XNOR-Net: ``β`` = EMA of ``mean|x̂|``).

    Forward: ``x̂`` is the int8 pre-activation, TensorFlow FakeQuant on an EMA range exactly as
    ``MovingAverageQuantizer(8, decay)`` (what the exported int8 tensor holds); then
    ``y = β · sign(x̂)`` with ``sign(0) = +1``. After a ReLU (``after_relu=True``) the input is
    ``>= 0`` and ``sign`` would be constant, so ``y = +β`` where ``x̂ > 0`` and ``-β`` where
    ``x̂ = 0``: the sign of the pre-ReLU value (zero sent to ``-1``).
    ``β``: in training ``β̂ ← d·β̂ + (1-d)·mean|x̂|`` (the first batch initialises it; under a
    ``tf.distribute`` strategy the mean is over the global batch, ``observers.global_mean``); at
    inference ``β̂`` is a constant. XNOR-Net computes ``β`` per position from the input at run
    time (``K = A * k``); a run-time scale per position cannot be carried by an int8 tensor of
    ±1 codes with one static scale, so the deployable integer-only form uses the static ``β̂``.
    Backward: straight-through with saturation, ``∂y/∂x = β · 1_{|x̂| <= 1}`` inside the EMA
    range (FakeQuant passes nothing outside it); ``β`` gets no gradient.
    Export (integer ops only): ``CAST`` (int8 codes to int32) → ``GREATER_EQUAL(codes, t)`` →
    bool → ``SELECT_V2`` of the codes ``+1``/``-1`` into an int8 tensor with scale ``β`` and
    zero point 0; ``affine_params`` is that output grid (codes -1..1). For Add/mean layers the
    compared tensor is ``x̂`` itself and ``t`` its zero point (``t = zp + 1`` after a ReLU). For
    Conv2D/DepthwiseConv2D/Dense the exporter folds the decision ``x̂ >= 0`` into the op: it is
    ``Σ >= A`` on the integer accumulator ``Σ``, so the int32 bias becomes ``-A`` and ``t = 0``.
    That keeps the sign exact where the float bias, rounded to the int32 grid ``s_in·s_w``, would
    move a pre-activation across the threshold.

    Args:
      method: ``"xnor"`` (scaled) or ``"bnn"`` (``β = 1``).
      decay: EMA decay ``d`` of the range and of ``β``, in ``[0, 1)``.
      after_relu: the input is a ReLU output (see forward).

    Example: ``β = 0.5``, ``x̂ = [-0.3, 0.0, 0.7, 1.5]`` → ``y = [-0.5, 0.5, 0.5, 0.5]``; the
    gradient mask is ``[1, 1, 1, 0]`` (``|1.5| > 1`` saturates) times ``β``.
    """

    bits = 1
    binary = True

    def __init__(self, method: str = "xnor", decay: float = 0.99, after_relu: bool = False):
        self.method = _check_method(method, BINARY_ACTIVATION_METHODS)
        self.observer = MovingAverageObserver(decay)  # the range of x̂; validates decay
        self.decay = self.observer.decay
        self.after_relu = bool(after_relu)

    @property
    def scaled(self) -> bool:
        return self.method in SCALED_METHODS

    def build(self, tensor_shape, name, layer):
        variables = self.observer.build(layer, name)
        if self.scaled:
            variables["beta"] = state_variable(layer, f"{name}_beta", ())
        return variables

    def range(self, weights):
        """The range of ``x̂``, the int8 pre-activation the sign reads."""
        return observed_range(weights)

    def _x_hat(self, x, weights):
        lo, hi = self.range(weights)
        return ops.fake_quant_affine(x, lo, hi, 8)

    def observe(self, x, weights, observer=None):
        (observer or self.observer).update(x, weights)
        if self.scaled:
            batch = global_mean(tf.abs(self._x_hat(x, weights)))  # over every replica's slice
            first = tf.equal(weights["count"], 1)  # the range observer counted this batch already
            weights["beta"].assign(tf.where(first, batch, self.decay * weights["beta"] + (1 - self.decay) * batch))

    def _beta(self, weights) -> tf.Tensor:
        if not self.scaled:
            return tf.constant(1.0, tf.float32)
        return tf.stop_gradient(tf.convert_to_tensor(weights["beta"]))

    def round(self, x, weights):
        x_hat = self._x_hat(x, weights)
        b = ste_sign_positive(x_hat) if self.after_relu else ste_sign(x_hat)
        return self._beta(weights) * b

    def grid(self, weights) -> ops.Grid:
        """The output grid: codes ``±1`` at scale ``β``, zero point 0."""
        return ops.Grid(self._beta(weights), tf.constant(0.0, tf.float32), -1, 1)

    def consumer_grid(self, weights) -> ops.Grid:
        return self.grid(weights)

    def input_params(self, weights) -> ops.AffineParams:
        """The int8 grid of ``x̂``, the pre-activation the sign reads."""
        return ops.nudged_grid(*self.range(weights), 8).to_params()

    def threshold_code(self, weights) -> int:
        """Smallest int8 code of ``x̂`` that maps to ``+1``: the zero point, or one above after a ReLU."""
        return self.input_params(weights).zero_point + (1 if self.after_relu else 0)

    def beta(self, weights) -> float:
        """The static output scale ``β`` (1 for BNN)."""
        return float(weights["beta"].numpy()) if self.scaled else 1.0

    def affine_params(self, weights) -> ops.AffineParams:
        if not bool(self.observed(weights)):
            raise ValueError(
                f"Activation range {weights['min'].name!r} was never observed: train the model "
                "(fit) or run kerasq.calibrate(model, x) before exporting."
            )
        beta = self.beta(weights)
        if not beta > 0:
            raise ValueError(
                f"The binary activation scale {weights['beta'].name!r} is {beta}: its input was all zero "
                "while training, so the output has no valid int8 scale."
            )
        return ops.AffineParams(beta, 0, -1, 1)

    def get_config(self) -> dict[str, Any]:
        return {"method": self.method, "decay": self.decay, "after_relu": self.after_relu}


# --- scheme ----------------------------------------------------------------------------------
@register("scheme", alias="binary", presets={method: {"method": method} for method in METHODS})
class Binary(Scheme):
    """Binary weights (and, for BNN/XNOR-Net, binary activations) in every quantized layer.

    Weights: ``BinaryWeightQuantizer(method, stochastic, channel_axes)``; ``per_channel`` gives
    one ``α`` per output channel (scaled methods only). BinaryConnect/BNN also put the
    ``WeightClip(1.0)`` constraint on the kernel, so ``fit`` keeps latent weights in ``[-1, 1]``.
    Activations: BWN/BinaryConnect keep int8 EMA activations (``MovingAverageQuantizer``);
    BNN/XNOR-Net binarize the output of every layer this scheme quantizes (hidden Conv/Dense
    layers and the Add/Concatenate/GlobalAveragePooling2D between them) with
    ``SignActivationQuantizer``; a hidden layer with a ReLU binarizes ``x̂ > 0`` (see there).
    With the default first/last int8 policy the first and last weight layers get ``Linear()``
    whole: the first layer's output stays int8 (so the first binary layer reads int8
    activations) and the classifier's logits stay int8, while the classifier reads the sign of
    the hidden output before it (on the demo CNN: the binarized global average pool). To feed
    the classifier int8 averages instead, override that layer, e.g.
    ``layer_schemes={"gap": Binary("bwn")}`` (demo CNN on digits: about 0.65 top-1 instead of 0.49).

    Args:
      method: ``"bwn"`` (default), ``"xnor"``, ``"bnn"`` or ``"binaryconnect"``.
      stochastic: stochastic weight binarization in training (BinaryConnect's variant).
      per_channel: one ``α`` per output channel for ``"bwn"``/``"xnor"``.

    Names: ``get_scheme("binary")`` is ``Binary()``; the presets ``"bwn"``, ``"xnor"``, ``"bnn"``,
    ``"binaryconnect"`` select the method.
    """

    weight_bits = 1

    def __init__(self, method: str = "bwn", stochastic: bool = False, per_channel: bool = False):
        self.method = _check_method(method, METHODS)
        self.stochastic = bool(stochastic)
        self.per_channel = bool(per_channel)
        if self.per_channel and self.method not in SCALED_METHODS:
            raise ValueError(
                f"per_channel applies to the scaled methods {SCALED_METHODS}; method={self.method!r} has no "
                f"scale. Received: per_channel={per_channel}"
            )
        self.activation_bits = 1 if self.method in BINARY_ACTIVATION_METHODS else 8

    def weight_quantizer(self, layer, weight):
        if self.method in CLIPPED_METHODS:
            set_weight_clip(layer, 1.0)
        return BinaryWeightQuantizer(self.method, self.stochastic, weight.channel_axes if self.per_channel else ())

    def activation_quantizer(self, layer, activation: ActivationSpec):
        if self.method in BINARY_ACTIVATION_METHODS:
            return SignActivationQuantizer(self.method, after_relu=activation.kind == "relu")
        return super().activation_quantizer(layer, activation)

    def get_config(self) -> dict[str, Any]:
        return {"method": self.method, "stochastic": self.stochastic, "per_channel": self.per_channel}
