"""AdaRound: adaptive rounding of weights (Nagel et al., "Up or Down? Adaptive Rounding for
Post-Training Quantization", ICML 2020).

Rounding each weight to its nearest grid point is optimal per weight but not for the layer:
errors of correlated weights add up in the output. AdaRound chooses, per weight, floor or ceil
to reconstruct the layer's output, layer by layer:

    W̃ = S · clamp(⌊W/S⌋ + h(V), q_min, q_max)
    h(V) = clamp(σ(V)(ζ - γ) + γ, 0, 1)                       rectified sigmoid, ζ = 1.1, γ = -0.1
    min_V  ‖act(W x + b) - act(W̃ x + b)‖²  +  λ Σ (1 - |2h(V) - 1|^β)

The regularizer (λ = 0.01) pushes every ``h`` to 0 or 1 as ``β`` is annealed from 20 to 2, after
a warm-up (the first 20% of iterations) without it. ``x`` are the layer's inputs in the quantized
model (earlier layers already rounded), ``act`` the layer's fused activation. The result, ``h``
rounded to {0, 1}, is kept in the layer's ``StoredScaleWeightQuantizer`` as its ``rounding``; it
is kept only where it reconstructs the output better than rounding to nearest on those inputs.
The reconstruction error is ``Σ_channels (·)²`` averaged over samples and positions, as in
AIMET's implementation, which the λ above is tuned for.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kerasq import ops
from kerasq.compat import keras, tf
from kerasq.layers import QuantizedLayer, accumulate
from kerasq.ptq.capture import LayerInputs, weight_layers
from kerasq.quantizers import StoredScaleWeightQuantizer

__all__ = ["AdaRoundResult", "adaround", "rectified_sigmoid"]

ZETA, GAMMA = 1.1, -0.1


class AdaRoundResult(NamedTuple):
    """Reconstruction error ``mean Σ_c (y - ŷ)²`` of one layer, rounding to nearest vs learned."""

    nearest: float
    learned: float
    kept: bool  # the learned rounding was better and is now the layer's


def rectified_sigmoid(v: tf.Tensor) -> tf.Tensor:
    """``h(V) = clamp(σ(V)(ζ - γ) + γ, 0, 1)``: reaches 0 and 1 exactly, unlike σ."""
    return tf.clip_by_value(tf.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _initial_v(fraction: np.ndarray) -> np.ndarray:
    """``V`` with ``h(V) = fraction`` (the weight's position between its floor and ceil)."""
    p = np.clip((fraction - GAMMA) / (ZETA - GAMMA), 1e-6, 1.0 - 1e-6)
    return np.log(p / (1.0 - p)).astype(np.float32)


class _Reconstruction:
    """One layer's output as a function of its kernel: ``act(acc(x, K·f) + b)`` in float32."""

    def __init__(self, layer: QuantizedLayer):
        self.layer = layer
        self.bias = layer.layer.bias if getattr(layer.layer, "use_bias", False) else None
        spec = layer.activation
        self.activate = (lambda z: layer.activation(z)) if spec.fusable else tf.identity

    def __call__(self, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        z = accumulate(self.layer.layer, self.layer.rule.op, x, self.layer._scaled(kernel))
        if self.bias is not None:
            z = z + self.bias
        return self.activate(z)


def _error(target: tf.Tensor, output: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.reduce_sum(tf.square(target - output), axis=-1))


def _round_layer(
    layer: QuantizedLayer,
    inputs: np.ndarray,
    iterations: int,
    batch_size: int,
    reg: float,
    beta: tuple[float, float],
    warmup: float,
    learning_rate: float,
    rng: np.random.Generator,
) -> AdaRoundResult:
    quantizer: StoredScaleWeightQuantizer = layer.weight_quantizer
    variables = layer.weight_quantizer_variables
    qmin, qmax = ops.signed_range(quantizer.bits, quantizer.narrow_range)
    kernel = tf.convert_to_tensor(layer.kernel)
    scale = tf.convert_to_tensor(variables["scale"])
    ratio = ops.exact_divide(kernel, scale)
    floor = tf.floor(ratio)
    nearest_rounding = tf.round(ratio) - floor
    v = tf.Variable(_initial_v((ratio - floor).numpy()))
    reconstruct = _Reconstruction(layer)

    def rounded(h):
        return tf.clip_by_value(floor + h, float(qmin), float(qmax)) * scale

    optimizer = keras.optimizers.Adam(learning_rate)
    reg_t, beta_t = tf.Variable(0.0), tf.Variable(float(beta[0]))

    @tf.function(reduce_retracing=True)
    def step(x):
        target = reconstruct(x, kernel)
        with tf.GradientTape() as tape:
            h = rectified_sigmoid(v)
            loss = _error(target, reconstruct(x, rounded(h)))
            loss += reg_t * tf.reduce_sum(1.0 - tf.pow(tf.abs(2.0 * h - 1.0), beta_t))
        optimizer.apply_gradients([(tape.gradient(loss, v), v)])

    start = int(warmup * iterations)
    for t in range(iterations):
        if t >= start:
            progress = (t - start) / max(iterations - start, 1)
            reg_t.assign(reg)
            beta_t.assign(beta[1] + (beta[0] - beta[1]) * (1.0 - progress))
        batch = inputs[rng.choice(len(inputs), size=min(batch_size, len(inputs)), replace=False)]
        step(tf.constant(batch))

    @tf.function(reduce_retracing=True)
    def errors(x, learned):
        target = reconstruct(x, kernel)
        return _error(target, reconstruct(x, rounded(nearest_rounding))), _error(target, reconstruct(x, rounded(learned)))

    learned = tf.cast(v >= 0.0, tf.float32)  # h(V) >= 1/2
    nearest_total, learned_total = 0.0, 0.0
    for begin in range(0, len(inputs), 256):
        chunk = tf.constant(inputs[begin : begin + 256])
        a, b = errors(chunk, learned)
        nearest_total += float(a) * len(chunk)
        learned_total += float(b) * len(chunk)
    nearest, learned_error = nearest_total / len(inputs), learned_total / len(inputs)
    kept = learned_error < nearest
    variables["rounding"].assign(learned if kept else nearest_rounding)
    return AdaRoundResult(nearest, learned_error, kept)


def adaround(
    model: keras.Model,
    data,
    *,
    iterations: int = 1000,
    batch_size: int = 32,
    reg: float = 0.01,
    beta: tuple[float, float] = (20.0, 2.0),
    warmup: float = 0.2,
    learning_rate: float = 1e-2,
    max_samples: int = 1024,
    layers: list[str] | None = None,
    seed: int = 0,
    verbose: int = 1,
) -> dict[str, AdaRoundResult]:
    """Learn each weight's rounding direction, layer by layer in model order, in place.

    Args:
      model: a calibrated quantized model whose weight layers use learned-rounding weights
        (``kerasq.schemes.Linear(..., stored_scale=True, learned_rounding=True)``; what
        ``kerasq.ptq.quantize(adaround=True)`` builds), at 2 to 8 weight bits.
      data: float calibration samples (array, batches, dataset, callable).
      iterations: optimizer steps per layer (the paper uses 10,000; 1,000 gets most of the gain).
      batch_size: samples per step. reg: λ. beta: ``(start, end)`` of the annealed exponent.
      warmup: fraction of iterations before the regularizer starts. learning_rate: Adam's.
      max_samples: samples of ``data`` whose layer inputs are kept per layer.
      layers: names of the layers to round (default: all with learned-rounding weights).
      verbose: 1 shows a progress bar over layers.
    Returns:
      ``{layer name: AdaRoundResult(nearest, learned, kept)}``.
    Raises:
      ValueError if no layer has learned-rounding weights, or ``layers`` names one without them.
    """
    candidates = [
        layer
        for layer in weight_layers(model)
        if isinstance(layer.weight_quantizer, StoredScaleWeightQuantizer) and layer.weight_quantizer.learned_rounding
    ]
    if layers is not None:
        names = {layer.name for layer in candidates}
        missing = sorted(set(layers) - names)
        if missing:
            raise ValueError(f"AdaRound rounds layers with learned-rounding weights; these are not: {missing}. Those that are: {sorted(names)}")
        candidates = [layer for layer in candidates if layer.name in set(layers)]
    if not candidates:
        raise ValueError(
            f"Model {model.name!r} has no layer with learned-rounding weights: quantize it with "
            "kerasq.schemes.Linear(..., stored_scale=True, learned_rounding=True), or use kerasq.ptq.quantize(adaround=True)."
        )
    if not 0.0 <= warmup < 1.0 or iterations < 1:
        raise ValueError(f"AdaRound needs iterations >= 1 and warmup in [0, 1). Received: iterations={iterations}, warmup={warmup}")
    rng = np.random.default_rng(seed)
    progress = keras.utils.Progbar(len(candidates), unit_name="layer") if verbose else None
    if progress is not None:
        print(f"AdaRound: {len(candidates)} layers x {iterations} iterations")
    results: dict[str, AdaRoundResult] = {}
    captured = LayerInputs(model, candidates, data, max_samples=max_samples)
    for index, layer in enumerate(candidates):
        inputs = captured.of(layer)
        results[layer.name] = _round_layer(layer, inputs, iterations, batch_size, reg, beta, warmup, learning_rate, rng)
        if progress is not None:
            progress.update(index + 1)
    return results
