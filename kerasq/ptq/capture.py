"""The inputs a quantized layer sees, collected over calibration data.

Layer-wise post-training steps (bias correction, AdaRound) compare a layer's float and quantized
outputs on the inputs the quantized model gives it: every layer before it already quantized, in
inference mode. The model runs as a training step computes it (float32 with fake quantization,
``quantization_mode(exact=False)``), within an output LSB of the runtime's integer arithmetic and
several times faster; each layer's inputs are recomputed after the layers before it changed.
"""

from __future__ import annotations

import numpy as np

from kerasq.compat import keras, tf
from kerasq.layers import QuantizedLayer
from kerasq.model import quantization_mode
from kerasq.transforms import NO_SAMPLES, batches


class LayerInputs:
    """The inputs of several single-input layers of a quantized model over calibration samples.

    The model is traced once with every listed layer's input as an output; ``of(layer)`` runs
    it over the kept samples and returns that layer's input as the model computes it *now*, so
    a layer-wise step sees the effect of the layers it already changed.

    Args:
      model: a calibrated quantized model. layers: its layers whose inputs are needed.
      data: float samples (array, iterable of batches, ``tf.data.Dataset``, or a callable
        returning one); the first ``max_samples`` samples are kept, batch by batch.
    """

    def __init__(self, model: keras.Model, layers: list[QuantizedLayer], data, *, batch_size: int = 64, max_samples: int | None = None):
        self.model = model
        self.names = [layer.name for layer in layers]
        self.batches: list[list[np.ndarray]] = []
        seen = 0
        for batch in batches(data, batch_size, model.inputs):
            if max_samples is not None and seen >= max_samples:
                break
            if max_samples is not None:
                batch = [array[: max_samples - seen] for array in batch]
            self.batches.append(batch)
            seen += len(batch[0])
        if not self.batches:
            raise ValueError(NO_SAMPLES)
        probe = keras.Model(model.inputs, [layer.input for layer in layers])
        self._run = tf.function(lambda inputs: probe(inputs, training=False), reduce_retracing=True)

    def of(self, layer: QuantizedLayer) -> np.ndarray:
        """``layer``'s input for every kept sample, float32 ``[N, ...]``."""
        index = self.names.index(layer.name)
        parts = []
        with quantization_mode(self.model, exact=False):
            for batch in self.batches:
                outputs = self._run(batch if len(batch) > 1 else tf.constant(batch[0]))
                outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
                parts.append(np.asarray(outputs[index]))
        return np.concatenate(parts)


def weight_layers(model: keras.Model) -> list[QuantizedLayer]:
    """The model's quantized layers whose output is a weighted sum of one input (Conv, Dense, ...), in order."""
    return [
        layer
        for layer in model.layers
        if isinstance(layer, QuantizedLayer) and layer.has_accumulator() and not isinstance(layer.input_shape, list)
    ]
