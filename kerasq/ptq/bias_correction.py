"""Bias correction (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019).

Rounding the weights of a layer ``y = W x + b`` gives ``ŷ = Q(W) x + b``; with the weight error
``ε = Q(W) - W`` the output's mean shifts by

    E[ŷ - y] = ε E[x],

and that shift is biased, not noise: it moves every later layer's input. Subtracting it from the
bias, ``b ← b - ε E[x]``, removes it (the seed lecture's "quantization bias correction").

- ``"empirical"``: ``E[ε x]`` per output channel measured over calibration data, on the inputs
  the quantized model gives the layer (earlier layers corrected first, padding included).
- ``"analytical"`` (data-free): ``E[x]`` from the batch norm before the input, the input
  channel ``c`` being ``act(N(β_c, γ_c²))``: ``E[relu(X)] = μΦ(μ/σ) + σφ(μ/σ)``, ReLU6 as
  ``E[relu(X)] - E[relu(X - 6)]``; a layer whose input has no batch norm statistics (or does not
  come straight from the layer that absorbed one) is left as it is and reported.
"""

from __future__ import annotations

import math

import numpy as np

from kerasq.compat import keras, tf
from kerasq.layers import QuantizedLayer, accumulate
from kerasq.ptq.capture import LayerInputs, weight_layers

__all__ = ["correct_bias", "expected_activation"]

BIAS_CORRECTION = ("empirical", "analytical")


def _normal_relu_mean(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``E[max(X, 0)]`` for ``X ~ N(mean, std²)`` (``max(mean, 0)`` where ``std`` is 0)."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    safe = np.where(std > 0, std, 1.0)
    z = mean / safe
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return np.where(std > 0, mean * cdf + safe * pdf, np.maximum(mean, 0.0))


def expected_activation(mean: np.ndarray, std: np.ndarray, kind: str, cap: float | None = None) -> np.ndarray:
    """``E[act(X)]`` per channel for ``X ~ N(mean, std²)``: ``act`` linear, ReLU, or ReLU capped at ``cap``."""
    if kind == "linear":
        return np.asarray(mean, np.float64)
    if kind != "relu":
        raise ValueError(f"Analytical bias correction knows E[act(X)] for linear and ReLU(-N) activations only. Received: {kind!r}")
    result = _normal_relu_mean(mean, std)
    if cap is not None:
        result = result - _normal_relu_mean(np.asarray(mean) - cap, std)
    return result


def _weight_error(layer: QuantizedLayer) -> np.ndarray:
    """``Q(W)·f - W·f``: the kernel error as the layer's inference forward pass uses it."""
    return layer.quantized_kernel().astype(np.float64) - np.asarray(layer._scaled(layer.kernel), np.float64)


def _empirical_shift(layer: QuantizedLayer, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    error = tf.constant(_weight_error(layer), tf.float64)
    total, count = 0.0, 0
    for start in range(0, len(inputs), batch_size):
        x = tf.constant(inputs[start : start + batch_size], tf.float64)
        shift = accumulate(layer.layer, layer.rule.op, x, error).numpy()
        total = total + shift.reshape(-1, shift.shape[-1]).sum(axis=0)
        count += int(np.prod(shift.shape[:-1]))
    return total / count


def _analytical_shift(layer: QuantizedLayer, statistics: dict) -> np.ndarray | None:
    inbound = layer.inbound_nodes[0].inbound_layers
    producer = inbound[0] if isinstance(inbound, list) else inbound
    if not isinstance(producer, QuantizedLayer) or producer.name not in statistics:
        return None
    mean, std = statistics[producer.name]
    spec = producer.activation
    expected = expected_activation(mean, std, spec.kind, spec.max_value)
    error = _weight_error(layer)
    if layer.rule.op == "FULLY_CONNECTED":
        return expected @ error
    if layer.rule.op == "DEPTHWISE_CONV_2D":  # output channel i·m + k reads input channel i
        return (error.sum(axis=(0, 1)) * expected[:, None]).reshape(-1)
    if layer.rule.op == "CONV_2D" and error.ndim == 4:
        return np.einsum("hwio,i->o", error, expected)
    return None


def correct_bias(
    model: keras.Model,
    data=None,
    *,
    method: str = "empirical",
    statistics: dict | None = None,
    batch_size: int = 64,
    max_samples: int | None = 1024,
    verbose: int = 0,
) -> dict[str, np.ndarray]:
    """Subtract each weight layer's expected output shift ``ε E[x]`` from its bias, in place.

    Args:
      model: a calibrated quantized model (``kerasq.ptq.quantize`` or ``quantize_model`` + ``calibrate``).
      data: float samples (array, batches, dataset, callable); needed for ``"empirical"``.
      method: ``"empirical"`` or ``"analytical"``.
      statistics: for ``"analytical"``: ``{layer name: (mean, std)}`` of the pre-activation output
        a batch norm gave that layer (``kerasq.transforms.fold_affine_layers(...).statistics``).
      max_samples: samples of ``data`` used per layer.
    Returns:
      ``{layer name: shift}`` (float64 ``[channels]``, the amount taken off each bias) for every
      corrected layer. Layers without a bias are not changed (no bias to correct), nor, for
      ``"analytical"``, layers without statistics for their input.
    """
    if method not in BIAS_CORRECTION:
        raise ValueError(f"bias correction method must be one of {BIAS_CORRECTION}. Received: {method!r}")
    if method == "empirical" and data is None:
        raise ValueError("Empirical bias correction measures E[εx] on data: pass calibration data.")
    if method == "analytical" and statistics is None:
        raise ValueError("Analytical bias correction needs batch norm statistics {layer: (mean, std)}.")
    layers = [layer for layer in weight_layers(model) if getattr(layer.layer, "use_bias", False)]
    progress = keras.utils.Progbar(len(layers), unit_name="layer") if verbose and layers else None
    if progress is not None:
        print(f"Bias correction ({method})")
    shifts: dict[str, np.ndarray] = {}
    captured = LayerInputs(model, layers, data, batch_size=batch_size, max_samples=max_samples) if method == "empirical" else None
    for index, layer in enumerate(layers):
        if method == "empirical":
            shift = _empirical_shift(layer, captured.of(layer), batch_size)
        else:
            shift = _analytical_shift(layer, statistics)
        if shift is not None:
            bias = layer.layer.bias
            bias.assign((bias.numpy().astype(np.float64) - shift).astype(np.float32))
            shifts[layer.name] = shift
        if progress is not None:
            progress.update(index + 1)
    return shifts
