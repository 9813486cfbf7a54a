"""``kerasq.ptq.quantize``: post-training quantization of a trained float model, no training.

The pipeline, each step optional but the calibration:

1. fold batch norms into the kernels (``kerasq.transforms.fold_affine_layers``), or fold and
   equalize (``equalize=True``, ``kerasq.ptq.equalization``);
2. quantize with the scheme (``quantize_model``); weights on a stored scale when it is clipped
   (``weight_method="mse"``, ``kerasq.clipping.mse_weight_scale``) or rounded by AdaRound;
3. calibrate every activation range with the method's observer (``kerasq.calibrate``);
4. AdaRound (``adaround=True``, ``kerasq.ptq.adaround``), layer by layer;
5. bias correction (``bias_correction="empirical"|"analytical"``, ``kerasq.ptq.bias_correction``).

The result is a ``QuantizedModel`` like any other: ``predict`` computes what the integer model
computes and ``tflite_export.convert`` writes it with exactly these ranges and weights.
"""

from __future__ import annotations

from typing import Mapping


from kerasq import clipping
from kerasq.compat import keras
from kerasq.keras3 import is_keras3_model, to_tf_keras
from kerasq.layers import kerasq_layers
from kerasq.model import QuantizedModel
from kerasq.observers import get_observer
from kerasq.ptq.adaround import adaround as adaround_layers
from kerasq.ptq.bias_correction import BIAS_CORRECTION, correct_bias
from kerasq.ptq.equalization import equalize as equalize_layers
from kerasq.quantizers import StoredScaleWeightQuantizer
from kerasq.schemes.base import Linear, Scheme, get_scheme
from kerasq.transforms import build_float, calibrate, fold_affine_layers, is_one_shot, quantize_model, quantized_layers

__all__ = ["METHODS", "WEIGHT_METHODS", "quantize"]

METHODS = ("minmax", "ema", "percentile", "mse", "kl", "aciq")
WEIGHT_METHODS = ("minmax", "mse")


def _ptq_scheme(scheme: Scheme, stored_scale: bool, learned_rounding: bool) -> Scheme:
    """The scheme as post-training quantization uses it.

    A ``Linear`` scheme calibrates capped ReLU outputs (ReLU6 quantized onto the observed range,
    not the fixed ``[0, 6]``, as TFLite's converter does) and, for MSE weight clipping and
    AdaRound, keeps its weight grid in variables (``stored_scale``).
    """
    if (stored_scale or learned_rounding) and (type(scheme) is not Linear or not scheme.symmetric):
        raise ValueError(
            "MSE weight clipping and AdaRound choose the grid of symmetric linear weights: use a "
            f"kerasq.schemes.Linear scheme with symmetric=True. Received: scheme={scheme!r}"
        )
    if type(scheme) is not Linear:
        return scheme
    return Linear(
        **{**scheme.get_config(), "stored_scale": stored_scale, "learned_rounding": learned_rounding, "calibrated_caps": True}
    )


def _clip_weights(model: keras.Model) -> None:
    """Give every stored-scale weight its MSE-optimal per-channel scale (``clipping.mse_weight_scale``)."""
    for layer in quantized_layers(model):
        quantizer = layer.weight_quantizer
        if not isinstance(quantizer, StoredScaleWeightQuantizer):
            continue
        kernel = layer.kernel.numpy()
        scale = clipping.mse_weight_scale(kernel, quantizer.bits, quantizer.channel_axes, quantizer.narrow_range)
        quantizer.set_scale(kernel, layer.weight_quantizer_variables, scale)


def _check_method(name: str, value) -> None:
    if isinstance(value, str) and value not in METHODS:
        raise ValueError(f"{name} must be one of {METHODS} or a kerasq.observers object. Received: {value!r}")
    get_observer(value)


def quantize(
    model: keras.Model,
    calibration_data,
    *,
    scheme: Scheme | str = "int8",
    method="minmax",
    equalize: bool = False,
    bias_correction: str | None = None,
    adaround: bool = False,
    layer_methods: Mapping[str, object] | None = None,
    weight_method: str = "minmax",
    layer_schemes: Mapping[str, Scheme | str | None] | None = None,
    first_last_int8: bool | None = None,
    target=None,
    batch_size: int = 64,
    adaround_iterations: int = 1000,
    max_samples: int = 1024,
    verbose: int = 1,
) -> QuantizedModel:
    """A quantized copy of a trained float model, ranges from calibration data, no training.

    Args:
      model: a trained float tf_keras model (left unchanged), or a Keras 3 one (converted first,
        ``kerasq.keras3.to_tf_keras``).
      calibration_data: float samples shaped like the model input: an array ``[N, ...]``, a
        ``tf.data.Dataset`` or list of batches (``(x, y)`` tuples give ``x``), or a callable
        returning an iterable of batches. Read in batches, never copied whole. Methods other
        than ``minmax``/``ema`` read it twice, so it must be re-iterable (not a generator object).
      scheme: ``kerasq.schemes`` object or name, e.g. ``"int8"``,
        ``Linear(weight_bits=4, per_channel=False)`` (w4a8 per tensor).
      method: activation range observer: ``"minmax"``, ``"ema"``, ``"percentile"`` (99.99),
        ``"mse"``, ``"kl"``, ``"aciq"`` or a ``kerasq.observers`` object (``PercentileObserver(99.9)``).
      equalize: cross-layer equalization with high-bias absorption first (``kerasq.ptq.equalize``).
      bias_correction: ``None``, ``"empirical"`` or ``"analytical"`` (from batch norm statistics).
      adaround: learn each weight's rounding (``kerasq.ptq.adaround``; needs a symmetric Linear scheme).
      layer_methods: ``{layer name: method}`` overriding ``method`` for that layer's ranges
        (the model input's range is ``"{input name}_quantize"``).
      weight_method: ``"minmax"`` (scale ``max|w|/q_max``) or ``"mse"`` (per-channel clipped
        scale minimizing ``‖W - Q(W)‖²``; the gain is largest at 4 bits and below).
      layer_schemes, first_last_int8, target: as in ``kerasq.quantize_model``.
      batch_size: samples per calibration step. adaround_iterations: AdaRound steps per layer.
      max_samples: samples whose layer inputs AdaRound and empirical bias correction use.
      verbose: 1 shows progress bars (calibration passes, AdaRound, bias correction).
    Returns:
      A calibrated ``QuantizedModel``; ``tflite_export.convert`` exports it exactly.
    Raises:
      ValueError for a quantized model, an unknown method, empty/NaN/inf or wrongly shaped data,
      data that yields nothing, or options the scheme cannot take.
    """
    if is_keras3_model(model):  # a Keras 3 model: its tf_keras equivalent (kerasq.keras3)
        model = to_tf_keras(model)
    if kerasq_layers(model):
        raise ValueError(f"Model {model.name!r} is already quantized; post-training quantization takes the float model.")
    _check_method("method", method)
    for name, value in dict(layer_methods or {}).items():
        _check_method(f"layer_methods[{name!r}]", value)
    if bias_correction is not None and bias_correction not in BIAS_CORRECTION:
        raise ValueError(f"bias_correction must be None or one of {BIAS_CORRECTION}. Received: {bias_correction!r}")
    if weight_method not in WEIGHT_METHODS:
        raise ValueError(f"weight_method must be one of {WEIGHT_METHODS}. Received: {weight_method!r}")
    scheme = _ptq_scheme(get_scheme(scheme), stored_scale=weight_method == "mse" or adaround, learned_rounding=adaround)
    rereads = equalize or adaround or bias_correction == "empirical"
    if rereads and is_one_shot(calibration_data):
        raise ValueError(
            "Equalization, AdaRound and empirical bias correction read the calibration data again after "
            "calibration, and an iterator yields its batches once: pass an array, a tf.data.Dataset, a list of "
            "batches or a callable that returns a fresh iterator."
        )

    if equalize:
        float_model, statistics = equalize_layers(model, calibration_data, batch_size=batch_size, return_statistics=True)
    else:
        folded = fold_affine_layers(model)
        float_model, statistics = build_float(folded.graph, folded.weights, model.name), folded.statistics
    qmodel = quantize_model(
        float_model, scheme, layer_schemes, first_last_int8=first_last_int8, bn_folding="kernel", target=target
    )
    if weight_method == "mse":
        _clip_weights(qmodel)
    calibrate(qmodel, calibration_data, batch_size=batch_size, observer=method, layer_observers=layer_methods, verbose=verbose)
    if adaround:
        adaround_layers(qmodel, calibration_data, iterations=adaround_iterations, max_samples=max_samples, verbose=verbose)
    if bias_correction is not None:
        correct_bias(
            qmodel,
            calibration_data,
            method=bias_correction,
            statistics=statistics,
            batch_size=batch_size,
            max_samples=max_samples,
            verbose=verbose,
        )
    return qmodel
