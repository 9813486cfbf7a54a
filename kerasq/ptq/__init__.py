"""Post-training quantization: a trained float model to an exportable quantized one, no training.

    import kerasq.ptq
    qmodel = kerasq.ptq.quantize(model, x_calibration, scheme="int8", method="kl", equalize=True,
                                 bias_correction="empirical")
    tflite_bytes = tflite_export.convert(qmodel)

- ``quantize``: the pipeline (``kerasq/ptq/quantize.py``);
- ``equalize``: cross-layer equalization and high-bias absorption (``equalization.py``);
- ``correct_bias``: empirical and analytical bias correction (``bias_correction.py``);
- ``adaround``: adaptive rounding of weights (``adaround.py``).

Activation range methods are observers (``kerasq.observers``: min/max, EMA, percentile, MSE,
KL, ACIQ) whose clipping math is in ``kerasq.clipping``.
"""

from kerasq.ptq.adaround import AdaRoundResult, adaround
from kerasq.ptq.bias_correction import correct_bias
from kerasq.ptq.equalization import equalize
from kerasq.ptq.quantize import METHODS, WEIGHT_METHODS, quantize

__all__ = ["METHODS", "WEIGHT_METHODS", "AdaRoundResult", "adaround", "correct_bias", "equalize", "quantize"]
