"""kerasq: quantization-aware training for tf_keras with exact, integer-only TFLite export.

    import kerasq, tflite_export
    qmodel = kerasq.quantize_model(model, scheme="int8")   # or a kerasq.schemes object
    qmodel.compile(...); qmodel.fit(...)
    tflite_bytes = tflite_export.convert(qmodel)
"""

from kerasq import schemes
# Every method module, once: each registers its scheme names (see kerasq.schemes).
from kerasq import binary, dorefa, kmeans, pact, power_of_two, ternary  # noqa: F401
from kerasq import callbacks
from kerasq.compat import keras, tf
from kerasq.layers import ActivationSpec, QuantizedLayer, QuantizeInput
from kerasq.schemes import Scheme, available_schemes, get_scheme
from kerasq.transforms import calibrate, quantize_model, quantize_scope, quantized_layers, quantized_weights

__version__ = "0.1.0"

__all__ = [
    "ActivationSpec",
    "QuantizeInput",
    "QuantizedLayer",
    "Scheme",
    "available_schemes",
    "callbacks",
    "calibrate",
    "get_scheme",
    "keras",
    "quantize_model",
    "quantize_scope",
    "quantized_layers",
    "quantized_weights",
    "schemes",
    "tf",
]
