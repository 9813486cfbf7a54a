"""tflite_export: write, inspect and run integer-only TFLite models of kerasq-quantized networks.

    import tflite_export
    blob = tflite_export.convert(qmodel)            # bytes, integer-only
    print(tflite_export.inspect(blob))              # ops, dtypes, scales, per-channel, bits
    tflite_export.evaluate(blob, x_test, y_test)    # top-1 accuracy with the LiteRT interpreter
    tflite_export.compare(qmodel, blob, x_test)     # parity in output LSBs
    tflite_export.benchmark(blob, num_threads=1)    # latency statistics in ms
    tflite_export.save(blob, "model.tflite")        # atomic write
    tflite_export.verify(blob, x_test)              # XNNPACK, reference kernels, TFLite Micro, numpy: LSBs apart, MCU arena
    tflite_export.debug(qmodel, blob, x_test)       # per-layer SQNR, and the layer where a difference enters

``tflite_export.reference.Interpreter`` runs a file in numpy integer arithmetic, bit-exact with
LiteRT's reference kernels.

``tflite_export.convert`` and ``tflite_export.inspect`` are the modules of those names, and
calling them calls their function (``tflite_export.convert.convert``). The pipeline is
``lower`` (Keras → integer IR, ``tflite_export.ir``) then ``writer`` (IR → bytes).
"""

import tflite_export.convert  # noqa: F401  (a callable module: tflite_export.convert(model))
import tflite_export.inspect  # noqa: F401  (a callable module: tflite_export.inspect(blob))
import tflite_export.verify  # noqa: F401  (a callable module: tflite_export.verify(blob, x))
from tflite_export import ir, lower, writer  # noqa: F401
from tflite_export.debug import DebugReport, debug
from tflite_export.files import save
from tflite_export.flatbuffer import InvalidModelError
from tflite_export.inspect import ModelReport
from tflite_export.lower import ExportError
from tflite_export.runtime import LatencyStats, LiteRTError, ParityReport, benchmark, compare, evaluate, run

__all__ = [
    "ExportError",
    "InvalidModelError",
    "DebugReport",
    "LatencyStats",
    "LiteRTError",
    "ModelReport",
    "ParityReport",
    "benchmark",
    "compare",
    "convert",
    "debug",
    "evaluate",
    "inspect",
    "ir",
    "lower",
    "run",
    "save",
    "verify",
    "writer",
]
