"""kerasq: quantization-aware training for tf_keras with exact, integer-only TFLite export.

    import kerasq, tflite_export
    qmodel = kerasq.quantize_model(model, scheme="int8")   # or a kerasq.schemes object
    qmodel.compile(...); qmodel.fit(...)
    tflite_bytes = tflite_export.convert(qmodel)

tfmot pipelines: ``kerasq.QuantizeConfig(scheme)`` in ``quantize_annotate_layer``, and
``tflite_export.convert(tfmot_qat_model)`` (``kerasq.from_tfmot``). Keras 3 models are converted
to tf_keras first (``kerasq.to_tf_keras``).
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
from kerasq import keras3  # Keras 3 models converted to tf_keras
from kerasq.keras3 import to_tf_keras
from kerasq.quantize_config import QuantizeConfig, custom_objects
from kerasq.from_tfmot import from_tfmot, is_tfmot_model, round_tfmot_biases
from kerasq import clipping, ptq  # noqa: E402  (post-training quantization builds on everything above)

__version__ = "0.2.0"

__all__ = [
    "ActivationSpec",
    "QuantizeConfig",
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
    "custom_objects",
    "fold_batch_norms",
    "from_tfmot",
    "get_scheme",
    "is_tfmot_model",
    "keras",
    "keras3",
    "link",
    "observers",
    "ptq",
    "quantization_mode",
    "quantize_model",
    "quantize_scope",
    "quantized_layers",
    "quantized_weights",
    "round_tfmot_biases",
    "runtimes",
    "schemes",
    "set_target",
    "tf",
    "to_tf_keras",
    "using_target",
]
