"""tflite_export: write, inspect and run integer-only TFLite models of kerasq-quantized networks.

    import tflite_export
    blob = tflite_export.convert(qmodel)            # bytes, integer-only
    print(tflite_export.inspect(blob))              # ops, dtypes, scales, per-channel, bits
    tflite_export.evaluate(blob, x_test, y_test)    # top-1 accuracy with the LiteRT interpreter
    tflite_export.compare(qmodel, blob, x_test)     # parity in output LSBs
    tflite_export.benchmark(blob, num_threads=1)    # latency statistics in ms
"""

from tflite_export.convert import ExportError, convert
from tflite_export.files import save
from tflite_export.flatbuffer import InvalidModelError
from tflite_export.inspect import ModelReport, inspect
from tflite_export.runtime import LatencyStats, ParityReport, benchmark, compare, evaluate, run


__all__ = [
    "ExportError",
    "InvalidModelError",
    "LatencyStats",
    "ModelReport",
    "ParityReport",
    "benchmark",
    "compare",
    "convert",
    "evaluate",
    "inspect",
    "run",
    "save",
]
