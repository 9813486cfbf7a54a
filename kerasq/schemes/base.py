"""The scheme base class, the linear scheme and scheme lookup by name.

A scheme answers two questions for each layer ``quantize_model`` wraps: how its kernel is
quantized (``weight_quantizer``) and how its output is (``activation_quantizer``). Schemes are
small serializable objects, reachable by a short name for the CLI:

    >>> get_scheme("int8")
    Linear(weight_bits=8, activation_bits=8, symmetric=True, per_channel=True, narrow_range=True, stored_scale=False, learned_rounding=False, calibrated_caps=False)

Scheme classes of the low-bit methods live in modules named after them (``kerasq.pact``,
``kerasq.binary``, ...) and register themselves with ``kerasq.registry.register("scheme")``;
this module imports none of them, so they can import it in any order.
"""

from __future__ import annotations

import abc
from typing import Any

from kerasq.compat import keras
from kerasq.activations import ActivationSpec
from kerasq.layer_table import WeightSpec, rule_for
from kerasq.ops import integer_in_range
from kerasq.quantizers import (
    ActivationQuantizer,
    FixedRangeQuantizer,
    LinearWeightQuantizer,
    MovingAverageQuantizer,
    StoredScaleWeightQuantizer,
    WeightQuantizer,
)
from kerasq.registry import ConfigEquality, get, names, register

class Scheme(ConfigEquality, metaclass=abc.ABCMeta):
    """Base class: a policy mapping a layer to its weight and activation quantizers.

    Subclasses set ``weight_bits``/``activation_bits`` (the nominal precisions used by the
    first/last-layer policy and by reports) and may override either method.
    """

    weight_bits: int = 8
    activation_bits: int = 8

    @property
    def is_low_bit(self) -> bool:
        """Below 8 bits anywhere: ``quantize_model`` then keeps first and last layers at int8."""
        return self.weight_bits < 8 or self.activation_bits < 8

    @abc.abstractmethod
    def weight_quantizer(self, layer: keras.layers.Layer, weight: WeightSpec) -> WeightQuantizer | None:
        """Quantizer of one weight of ``layer`` (``weight.attribute``, e.g. ``"kernel"``; its output
        channels are ``weight.channel_axes``), None to keep it float."""

    def weight_quantizers(self, layer: keras.layers.Layer) -> dict[str, WeightQuantizer]:
        """``{attribute: quantizer}`` for every weight the layer table lists for ``layer``'s class.

        A weight the table marks ``int8_only`` (PReLU's alpha) gets ``Linear()``'s int8 quantizer.
        """
        rule = rule_for(layer)
        weights = rule.weights if rule is not None else ()
        quantizers = {
            weight.attribute: (Linear() if weight.int8_only else self).weight_quantizer(layer, weight) for weight in weights
        }
        return {attr: quantizer for attr, quantizer in quantizers.items() if quantizer is not None}

    def activation_quantizer(self, layer: keras.layers.Layer, activation: ActivationSpec) -> ActivationQuantizer:
        """Quantizer of the output of ``layer`` after a fusable ``activation``.

        Default: a capped ReLU (ReLU6, ReLU1) gets its fixed range, anything else an EMA range.
        """
        if activation.kind == "relu" and activation.max_value is not None:
            return FixedRangeQuantizer(0.0, activation.max_value, self.activation_bits)
        return MovingAverageQuantizer(self.activation_bits)

    def quantize_config(self, layer: keras.layers.Layer | None = None):
        """This scheme as a tfmot ``QuantizeConfig`` (``kerasq.QuantizeConfig(self)``) for
        ``tfmot.quantization.keras.quantize_annotate_layer``.

        With ``layer``, first checks that the config can quantize it (``ValueError`` naming the
        layer class otherwise).
        """
        from kerasq.quantize_config import QuantizeConfig, weight_specs  # imports this module

        if layer is not None:
            weight_specs(layer)
        return QuantizeConfig(self)

    def get_config(self) -> dict[str, Any]:
        return {}


@register("scheme", presets={"int8": {}, "w8a8": {}})
class Linear(Scheme):
    """Uniform linear quantization of weights and activations (Jacob et al. 2018).

    Weights: ``LinearWeightQuantizer`` (symmetric ``S = |r|_max/q_max`` or asymmetric
    ``S = (r_max - r_min)/(q_max - q_min)``, ``Z = round(q_min - r_min/S)``), per output channel
    by default. Activations: asymmetric per tensor, EMA range, ``activation_bits`` wide.
    ``Linear()`` is the ``"int8"`` scheme: int8 per-channel symmetric weights in ``[-127, 127]``,
    int8 asymmetric activations — what TFLite's integer kernels run.

    Args:
      weight_bits, activation_bits: 2..8.
      symmetric: symmetric weights (zero point 0).
      per_channel: one weight scale per output channel (depthwise: per ``in·multiplier`` channel).
      narrow_range: drop code ``-2^(b-1)``; defaults to ``symmetric``.
      stored_scale: symmetric weights on a scale kept as a variable
        (``StoredScaleWeightQuantizer``) instead of one recomputed from ``max|w|`` at every
        step; post-training quantization sets it (MSE clipping) and, with ``learned_rounding``,
        each weight's rounding direction (AdaRound).
      learned_rounding: with ``stored_scale``, store a rounding decision per weight.
      calibrated_caps: a capped ReLU's output (ReLU6) gets a range observed from data, which
        stays inside the cap, instead of the fixed ``[0, cap]``: finer steps where activations
        never reach the cap, as post-training calibration measures them. The cap is still the
        fused activation's, and the grid's end enforces it.
    """

    def __init__(
        self,
        weight_bits: int = 8,
        activation_bits: int = 8,
        symmetric: bool = True,
        per_channel: bool = True,
        narrow_range: bool | None = None,
        stored_scale: bool = False,
        learned_rounding: bool = False,
        calibrated_caps: bool = False,
    ):
        self.weight_bits = integer_in_range("weight_bits", weight_bits, 2, 8)
        self.activation_bits = integer_in_range("activation_bits", activation_bits, 2, 8)
        self.symmetric = bool(symmetric)
        self.per_channel = bool(per_channel)
        self.narrow_range = self.symmetric if narrow_range is None else bool(narrow_range)
        if stored_scale and not self.symmetric:
            raise ValueError("stored_scale quantizes weights symmetrically; it needs symmetric=True.")
        if learned_rounding and not stored_scale:
            raise ValueError("learned_rounding is a property of stored-scale weights; it needs stored_scale=True.")
        self.stored_scale = bool(stored_scale)
        self.learned_rounding = bool(learned_rounding)
        self.calibrated_caps = bool(calibrated_caps)

    def weight_quantizer(self, layer, weight):
        channel_axes = weight.channel_axes if self.per_channel else ()
        if self.stored_scale:
            return StoredScaleWeightQuantizer(self.weight_bits, self.narrow_range, channel_axes, self.learned_rounding)
        return LinearWeightQuantizer(
            self.weight_bits,
            symmetric=self.symmetric,
            narrow_range=self.narrow_range,
            channel_axes=channel_axes,
        )

    def activation_quantizer(self, layer, activation):
        if self.calibrated_caps and activation.fusable:
            return MovingAverageQuantizer(self.activation_bits)
        return super().activation_quantizer(layer, activation)

    def get_config(self):
        return {
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
            "symmetric": self.symmetric,
            "per_channel": self.per_channel,
            "narrow_range": self.narrow_range,
            "stored_scale": self.stored_scale,
            "learned_rounding": self.learned_rounding,
            "calibrated_caps": self.calibrated_caps,
        }


def get_scheme(scheme: "Scheme | str | dict") -> Scheme:
    """A scheme from an instance, a short name (``"int8"``, ``"pact"``, ...) or a Keras config.

    Raises ``ValueError`` listing the valid names for an unknown one.
    """
    return get("scheme", scheme, Scheme)


def available_schemes() -> list[str]:
    """Names accepted by ``get_scheme`` (and the CLI's ``--scheme``)."""
    return names("scheme")
