"""``tflite_export.reference``: a numpy integer-only TFLite interpreter (the arithmetic, readable).

    from tflite_export.reference import Interpreter
    outputs = Interpreter(model_bytes).run([x_codes])

``fixed_point`` holds TFLite's integer primitives (QuantizeMultiplier,
SaturatingRoundingDoublingHighMul, RoundingDivideByPOT); ``kernels`` the registry and what a
kernel sees of its op; the op modules one kernel per builtin, each bit-exact with LiteRT's
``BUILTIN_REF`` kernels: ``conv`` (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV;
INT8 and INT4 weights), ``shape_ops`` (RESHAPE, PAD, CONCATENATION, MEAN, pooling, slicing,
CAST), ``elementwise`` (ADD/SUB/MUL, MINIMUM/MAXIMUM, QUANTIZE/DEQUANTIZE, comparisons,
SELECT_V2, RESIZE_*) and ``activations`` (ReLUs, LEAKY_RELU, PRELU, and the lookup-table and
fixed-point LOGISTIC, TANH, SOFTMAX, HARD_SWISH, ELU, GELU).
"""

from tflite_export.reference import conv, elementwise, shape_ops  # noqa: F401  (register kernels)
from tflite_export.reference.interpreter import Interpreter
from tflite_export.reference.kernels import KERNELS, UnsupportedOperatorError

__all__ = ["Interpreter", "KERNELS", "UnsupportedOperatorError"]
