"""Keras callbacks that drive training procedures of kerasq schemes.

``INQ`` runs Incremental Network Quantization (Zhou et al., ICLR 2017) on the layers a
``kerasq.schemes.PowerOfTwo`` scheme quantized:

    qmodel = kerasq.quantize_model(model, "po2")
    qmodel.compile(...)
    qmodel.fit(x, y, epochs=4, callbacks=[kerasq.callbacks.INQ((0.5, 0.75, 0.875, 1.0))])
    tflite_export.convert(qmodel)   # every power-of-two weight is quantized after fit
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kerasq import ops
from kerasq.compat import keras, tf
from kerasq.power_of_two import PowerOfTwoQuantizer, inq_partition
from kerasq.transforms import quantized_layers


class _INQLayer:
    """The state INQ keeps for one power-of-two layer."""

    def __init__(self, layer):
        self.layer = layer
        self.kernel = layer.kernel
        self.mask = layer.weight_quantizer_variables["mask"]
        self.freeze = layer.weight_quantizer_variables["freeze"]
        quantizer = layer.weight_quantizer
        w = self.kernel.numpy()
        axes = tuple(ops.reduce_axes(w.ndim, quantizer.channel_axes))
        # INQ fixes each layer's exponent window from the pre-trained weights: keep max|w| there.
        self.bound = tf.constant(np.abs(w).max(axis=axes, keepdims=True))
        self.frozen_values = tf.constant(w)

    def start(self) -> None:
        self.mask.assign(np.zeros(self.mask.shape, np.float32))
        self.freeze.assign(1.0)
        self.frozen_values = tf.constant(self.kernel.numpy())

    def quantize_fraction(self, fraction: float) -> None:
        self.restore()
        w = self.kernel.numpy()
        self.mask.assign(inq_partition(w, self.mask.numpy(), fraction))
        self.frozen_values = tf.constant(w)

    def restore(self) -> None:
        """Put quantized weights back to their frozen values and keep float ones inside the window."""
        clipped = tf.clip_by_value(self.kernel, -self.bound, self.bound)
        self.kernel.assign(tf.where(self.mask > 0.5, self.frozen_values, clipped))

    def quantized_fraction(self) -> float:
        return float(np.mean(self.mask.numpy() > 0.5))


class INQ(keras.callbacks.Callback):
    """Incremental Network Quantization of power-of-two layers during ``fit``.

    Procedure (Zhou et al. 2017; seed lecture "Incremental Network Quantization"): at the start
    of ``fit`` every ``PowerOfTwoQuantizer`` mask is set to 0 (all weights float) and its
    ``freeze`` flag to 1. Step ``i`` begins at epoch ``i·epochs_per_step`` of this ``fit`` call:
    among the weights still float, the largest by ``|w|`` are quantized until
    ``floor(schedule[i]·size)`` weights of the layer are (``inq_partition``), and the rest are
    retrained with the quantized ones fixed. When ``fit`` ends the mask is set to all ones, so the
    model exports.

    Quantized weights do not change: their gradient is zero (``freeze = 1``) and, because
    optimizers with momentum still move a variable with zero gradient, the callback writes their
    frozen float values back after every batch. Float weights are clipped to each layer's initial
    ``max|w|`` (per channel for per-channel quantizers), which keeps the exponent window INQ
    chose from the pre-trained layer.

    Schedule vs. epochs: with fewer epochs than ``len(schedule)·epochs_per_step`` the remaining
    steps do not run and the weights still float when ``fit`` ends are quantized without
    retraining; with more, training continues after the last step with its mask (for a schedule
    ending at 1.0: only biases, activation ranges and non-power-of-two layers still learn). Each
    ``fit`` call restarts INQ from the current float weights. After INQ the ``freeze`` flag stays
    1: further training leaves the power-of-two weights unchanged.

    Args:
      schedule: strictly increasing fractions in ``(0, 1]`` of each layer's weights quantized at
        each step; default ``(0.5, 0.75, 0.875, 1.0)`` as in the paper.
      epochs_per_step: epochs of retraining per step, ``>= 1``.

    Raises (at the start of ``fit``): ``ValueError`` when the model has no power-of-two layer.
    """

    def __init__(self, schedule: Sequence[float] = (0.5, 0.75, 0.875, 1.0), epochs_per_step: int = 1):
        super().__init__()
        schedule = tuple(float(f) for f in schedule)
        if not schedule or any(not 0.0 < f <= 1.0 for f in schedule):
            raise ValueError(f"schedule must be non-empty fractions in (0, 1]. Received: schedule={schedule}")
        if any(b <= a for a, b in zip(schedule, schedule[1:])):
            raise ValueError(f"schedule must be strictly increasing. Received: schedule={schedule}")
        if int(epochs_per_step) != epochs_per_step or epochs_per_step < 1:
            raise ValueError(f"epochs_per_step must be an integer >= 1. Received: epochs_per_step={epochs_per_step}")
        self.schedule = schedule
        self.epochs_per_step = int(epochs_per_step)
        self._layers: list[_INQLayer] = []
        self._epoch = 0

    def get_config(self):
        return {"schedule": self.schedule, "epochs_per_step": self.epochs_per_step}

    @property
    def quantized_fractions(self) -> dict[str, float]:
        """Fraction of quantized weights per power-of-two layer, by layer name."""
        return {state.layer.name: state.quantized_fraction() for state in self._layers}

    def on_train_begin(self, logs=None):
        self._layers = [
            _INQLayer(layer)
            for layer in quantized_layers(self.model)
            if isinstance(layer.weight_quantizer, PowerOfTwoQuantizer)
        ]
        if not self._layers:
            raise ValueError(
                "INQ found no layer quantized with PowerOfTwoQuantizer; quantize the model with "
                f"kerasq.schemes.PowerOfTwo first. Received: model={self.model.name!r}"
            )
        for state in self._layers:
            state.start()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        step, offset = divmod(self._epoch, self.epochs_per_step)
        if offset == 0 and step < len(self.schedule):
            for state in self._layers:
                state.quantize_fraction(self.schedule[step])

    def on_epoch_end(self, epoch, logs=None):
        self._epoch += 1

    def on_train_batch_end(self, batch, logs=None):
        for state in self._layers:
            state.restore()

    def on_train_end(self, logs=None):
        for state in self._layers:
            state.restore()
            state.mask.assign(np.ones(state.mask.shape, np.float32))
