"""kerasq: quantization-aware training for tf_keras with exact, integer-only TFLite export.

    import kerasq, tflite_export
    qmodel = kerasq.quantize_model(model, scheme="int8")   # or a kerasq.schemes object
    qmodel.compile(...); qmodel.fit(...)
    tflite_bytes = tflite_export.convert(qmodel)
"""

from kerasq import schemes
# Every method module, once: each registers its scheme names (see kerasq.schemes).
from kerasq import binary, dorefa, kmeans, pact, power_of_two, ternary  # noqa: F401
from kerasq import callbacks, observers, runtimes
from kerasq.activations import ActivationSpec
from kerasq.compat import keras, tf
from kerasq.layers import QuantizedLayer, QuantizeInput, Requantize
from kerasq.model import QuantizedModel, link, quantization_mode, set_target, using_target
from kerasq.runtimes import Target
from kerasq.schemes import Scheme, available_schemes, get_scheme
from kerasq.transforms import calibrate, fold_batch_norms, quantize_model, quantize_scope, quantized_layers, quantized_weights
from kerasq import clipping, ptq  # noqa: E402  (post-training quantization builds on everything above)

__version__ = "0.2.0"

__all__ = [
    "ActivationSpec",
    "QuantizeInput",
    "QuantizedLayer",
    "QuantizedModel",
    "Requantize",
    "Scheme",
    "Target",
    "available_schemes",
    "calibrate",
    "callbacks",
    "clipping",
    "fold_batch_norms",
    "get_scheme",
    "keras",
    "link",
    "observers",
    "ptq",
    "quantization_mode",
    "quantize_model",
    "quantize_scope",
    "quantized_layers",
    "quantized_weights",
    "runtimes",
    "schemes",
    "set_target",
    "tf",
    "using_target",
]
