"""Observers: statistics of a tensor that propose its quantization range; they never round.

An observer watches the float values a quantizer is about to round and keeps a running
``[min, max]`` in three variables it creates on the layer (``min``, ``max`` and ``count``,
the number of batches seen). The quantizer reads the range back to build its grid; whether
observing is on is decided per call (``QuantizedLayer``: during ``fit``, or while
``kerasq.calibrate`` runs the model in inference mode), independently of rounding.
This is the split of PyTorch's ``ao.quantization`` (observer vs fake-quantize): statistics
collection and rounding are separate objects, and calibration is "observers on, rounding off".

- ``MovingAverageObserver(decay)``: ``r̂ ← d·r̂ + (1-d)·r_batch`` for the batch min and max,
  the first batch initialising ``r̂`` (the seed lecture's "during training" statistics; tfmot's
  ``MovingAverageQuantizer``). The default for quantization-aware training.
- ``MinMaxObserver()``: the min and max over every batch seen (the TFLite converter's
  calibration). The default of ``kerasq.calibrate``.

Both keep the same three variables, so a model calibrated with min/max continues its
moving average from the calibrated range when it is trained.
"""

from __future__ import annotations

from typing import Any

from kerasq.compat import tf
from kerasq.registry import ConfigEquality, get, register

__all__ = ["MinMaxObserver", "MovingAverageObserver", "Observer", "get_observer"]


class Observer(ConfigEquality):
    """Base: running statistics of a tensor that propose a ``[min, max]`` range."""

    def build(self, layer, name: str) -> dict[str, tf.Variable]:
        """Create the statistics on ``layer``: ``{name}_min``, ``{name}_max`` (float32), ``{name}_count`` (int32)."""
        return {
            "min": layer.add_weight(f"{name}_min", shape=(), initializer="zeros", trainable=False),
            "max": layer.add_weight(f"{name}_max", shape=(), initializer="zeros", trainable=False),
            "count": layer.add_weight(f"{name}_count", shape=(), dtype=tf.int32, initializer="zeros", trainable=False),
        }

    def update(self, x: tf.Tensor, state: dict[str, tf.Variable]) -> None:
        """Fold the batch ``x`` (any shape, float32) into the statistics."""
        raise NotImplementedError

    @staticmethod
    def observed(state: dict[str, tf.Variable]) -> tf.Tensor:
        """True (a bool tensor) once a batch has been folded in."""
        return state["count"] > 0

    @staticmethod
    def range(state: dict[str, tf.Variable]) -> tuple[tf.Tensor, tf.Tensor]:
        """The proposed ``(min, max)`` (float32 scalars; ``(0, 0)`` before the first batch)."""
        return tf.convert_to_tensor(state["min"]), tf.convert_to_tensor(state["max"])

    @staticmethod
    def reset(state: dict[str, tf.Variable]) -> None:
        """Forget everything observed."""
        for variable in state.values():
            variable.assign(tf.zeros_like(variable))

    def get_config(self) -> dict[str, Any]:
        return {}


@register("observer", alias="ema")
class MovingAverageObserver(Observer):
    """Exponential moving average of the batch min and max: ``r̂ ← d·r̂ + (1 - d)·r``.

    The first batch sets ``r̂`` directly. Args: ``decay`` ``d`` in ``[0, 1)``.

    Example (``d = 0.5``): batches with max 2, then 4 → ``max = 2``, then ``0.5·2 + 0.5·4 = 3``.
    """

    def __init__(self, decay: float = 0.99):
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be in [0, 1). Received: decay={decay}")
        self.decay = float(decay)

    def update(self, x, state):
        x = tf.convert_to_tensor(x, tf.float32)
        batch_min, batch_max = tf.reduce_min(x), tf.reduce_max(x)
        first = tf.equal(state["count"], 0)
        d = self.decay
        state["min"].assign(tf.where(first, batch_min, d * state["min"] + (1.0 - d) * batch_min))
        state["max"].assign(tf.where(first, batch_max, d * state["max"] + (1.0 - d) * batch_max))
        state["count"].assign_add(1)

    def get_config(self):
        return {"decay": self.decay}


@register("observer", alias="minmax")
class MinMaxObserver(Observer):
    """The smallest and largest value over every batch seen (global min/max calibration).

    Example: batches with ranges ``[-1, 2]`` then ``[0, 5]`` → ``[-1, 5]``.
    """

    def update(self, x, state):
        x = tf.convert_to_tensor(x, tf.float32)
        batch_min, batch_max = tf.reduce_min(x), tf.reduce_max(x)
        first = tf.equal(state["count"], 0)
        state["min"].assign(tf.where(first, batch_min, tf.minimum(state["min"], batch_min)))
        state["max"].assign(tf.where(first, batch_max, tf.maximum(state["max"], batch_max)))
        state["count"].assign_add(1)


def get_observer(observer: "Observer | str | dict") -> Observer:
    """An observer from an instance, a name (``"ema"``, ``"minmax"``) or a Keras config."""
    return get("observer", observer, Observer)
