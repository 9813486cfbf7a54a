"""``convert``: an integer-only TFLite flatbuffer from a kerasq-quantized (or float) Keras model.

    blob = tflite_export.convert(qmodel)                     # the module is callable
    blob = tflite_export.convert(float_model, representative_data=x)   # post-training quantization

The conversion is ``lower`` (Keras → integer IR, ``tflite_export.lower``) then ``write``
(IR → bytes, ``tflite_export.writer``), with an integer-only check of the IR. It does not run
TensorFlow's converter and it never changes the model: the same model and options always give
the same bytes, and the model predicts the same before and after.

``import tflite_export.convert`` gives this module; calling the module calls ``convert``.
"""

from __future__ import annotations

import sys
import types
import warnings

from kerasq.compat import keras
from kerasq.from_tfmot import from_tfmot, is_tfmot_model
from kerasq.keras3 import is_keras3_model, to_tf_keras
from kerasq.layers import kerasq_layers
from kerasq.model import QuantizedModel
from kerasq.transforms import observer_states, calibrate, quantize_model, quantize_scope
from tflite_export.lower import ExportError, lower
from tflite_export.writer import write

__all__ = ["ExportError", "convert"]

_IO_TYPES = ("int8", "float32")


def _is_quantized(model: keras.Model) -> bool:
    return bool(kerasq_layers(model))


def _copy(model: QuantizedModel) -> QuantizedModel:
    """A separate quantized model with the same configuration, weights and statistics."""
    with quantize_scope():
        clone = QuantizedModel.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return clone


def _unobserved(model: keras.Model) -> bool:
    return any(int(state["count"].numpy()) == 0 for layer in kerasq_layers(model) for state in observer_states(layer))


def _calibrated_copy(model: QuantizedModel, data) -> QuantizedModel:
    """A copy of ``model`` whose never-observed ranges are calibrated on ``data``; observed ones are kept."""
    copy = _copy(model)
    states = [state for layer in kerasq_layers(copy) for state in observer_states(layer)]
    kept = [{k: v.numpy() for k, v in state.items()} for state in states]
    calibrate(copy, data)
    for state, values in zip(states, kept):
        if values["count"] > 0:
            for key, variable in state.items():
                variable.assign(values[key])
    return copy


def convert(
    model: keras.Model,
    representative_data=None,
    *,
    input_type: str = "int8",
    output_type: str = "int8",
    pack_int4: bool | None = None,
) -> bytes:
    """An integer-only TFLite flatbuffer of a kerasq-quantized model, or of a float model via PTQ.

    Args:
      model: a model from ``kerasq.quantize_model`` (after ``fit`` or ``calibrate``); a model
        from tfmot's ``quantize_model``/``quantize_apply`` (its grids, through
        ``kerasq.from_tfmot``: what TFLite cannot express exactly is named by layer in a warning);
        or a plain float tf_keras model, which is then quantized with the ``"int8"`` scheme and
        calibrated on ``representative_data`` (post-training quantization, min/max ranges,
        inference mode).
      representative_data: float samples shaped like the model input: an array ``[N, ...]``, an
        iterable of batches (or of one-element lists, as TFLite's ``representative_dataset``
        yields), or a callable returning either. Required for a float model. For a quantized
        model it calibrates, on a copy, only the ranges the model never observed; observed
        (trained) ranges are kept, so a trained model exports the same bytes with or without it.
        For a tfmot model it calibrates only tensors tfmot stored no range for.
      input_type, output_type: ``"int8"`` (fully integer I/O) or ``"float32"`` (adds a QUANTIZE
        op at the input / DEQUANTIZE at the output; everything between stays integer).
      pack_int4: store weight grids of at most 4 bits as packed INT4 (half the bytes); ``False``
        stores INT8 codes widened by up to 64x. Defaults to the model's target
        (``model.target.pack_int4``), the storage the Keras model reproduces; another choice
        is written as asked, with a warning that the rounding of those layers may then differ.
    Returns: the flatbuffer bytes. Conv2D, DepthwiseConv2D and FullyConnected weights carry one
      scale per output channel when the scheme is per-channel (or has a batch-norm channel scale).
    Raises:
      ExportError (a ValueError) naming the layer that cannot be exported, or the ops that touch
      float tensors if the result is not integer-only; ValueError for empty or NaN data.
    """
    model = to_tf_keras(model) if is_keras3_model(model) else model  # a Keras 3 model: its tf_keras equivalent
    for arg, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in _IO_TYPES:
            raise ValueError(f"{arg} must be one of {list(_IO_TYPES)}. Received: {arg}={value!r}")
    if is_tfmot_model(model):
        model = from_tfmot(model, representative_data)
    if not _is_quantized(model):
        if representative_data is None:
            raise ValueError(
                f"Model {model.name!r} is a float model: pass representative_data for post-training "
                "quantization, or quantize it with kerasq.quantize_model and fit it first."
            )
        model = quantize_model(model, "int8", calibration_data=representative_data)
    elif representative_data is not None and _unobserved(model):
        model = _calibrated_copy(model, representative_data)
    target = getattr(model, "target", None)
    if pack_int4 is None:
        pack_int4 = True if target is None else target.pack_int4
    elif target is not None and bool(pack_int4) != target.pack_int4:
        warnings.warn(
            f"convert(pack_int4={pack_int4}) writes a storage the Keras model {model.name!r} does not reproduce "
            f"(its target has pack_int4={target.pack_int4}); low-bit layers may round differently from Keras. "
            f"Call kerasq.set_target(model, kerasq.Target(pack_int4={bool(pack_int4)})) first for exact parity.",
            stacklevel=2,
        )
    graph = lower(model, input_type=input_type, output_type=output_type, pack_int4=bool(pack_int4))
    boundary = ({"QUANTIZE"} if input_type == "float32" else set()) | ({"DEQUANTIZE"} if output_type == "float32" else set())
    float_ops = graph.float_operators(boundary)
    if float_ops:
        raise ExportError(f"The exported model is not integer-only; ops touching float tensors: {float_ops}")
    return write(graph)


class _CallableModule(types.ModuleType):
    """``tflite_export.convert(...)`` calls ``convert``; ``import tflite_export.convert`` gives the module."""

    def __call__(self, *args, **kwargs):
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
