"""Activations kerasq quantizes, and where their int8 outputs live.

``ActivationSpec`` names an activation (from a Keras activation function, its name, or an
activation layer) in the form the quantized layers and the exporter share: fusable ones
(``linear``, ``relu`` with an optional cap) are a clamp of the int8 output that TFLite's kernels
apply inside the op before them; softmax, sigmoid and tanh are separate TFLite ops with a fixed
int8 output grid; swish (``x·sigmoid(x)``, also called silu) is LOGISTIC then MUL, leaky ReLU
is LEAKY_RELU, ELU and GELU are ELU and GELU, all onto an observed output grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kerasq.compat import keras, tf
from kerasq.quantizers import FixedRangeQuantizer

# Fixed int8 output grids TFLite uses for its non-fusable activation kernels.
_FIXED_OUTPUT_RANGES = {"softmax": (0.0, 255.0 / 256.0), "sigmoid": (0.0, 255.0 / 256.0), "tanh": (-1.0, 127.0 / 128.0)}


@dataclass(frozen=True)
class ActivationSpec:
    """An activation kerasq can quantize: ``linear``, ``relu`` (optionally capped), softmax, sigmoid, tanh,
    swish, ``leaky_relu``, ``elu`` (``alpha = 1``: TFLite's ELU has no slope), ``gelu`` (exact erf form).

    ``relu`` with ``max_value=6`` is ReLU6, with ``max_value=1`` ReLU1 (``min(max(x, 0), 1)``);
    ``leaky_relu`` is ``x`` for ``x >= 0`` and ``alpha·x`` below.
    """

    kind: str = "linear"
    max_value: float | None = None
    alpha: float | None = None

    KINDS = ("linear", "relu", "softmax", "sigmoid", "tanh", "swish", "leaky_relu", "elu", "gelu")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(
                f"activation {self.kind!r} is not supported; kerasq quantizes {', '.join(self.KINDS)}. "
                f"Received: activation={self.kind!r}"
            )
        if self.max_value is not None and (self.kind != "relu" or self.max_value <= 0):
            raise ValueError(f"max_value applies to a positive ReLU cap only. Received: {self}")
        if (self.alpha is not None) != (self.kind == "leaky_relu") or (self.alpha is not None and not 0 < self.alpha < 1):
            raise ValueError(f"alpha is the slope in (0, 1) of a leaky_relu, and a leaky_relu needs one. Received: {self}")

    @classmethod
    def from_keras(cls, activation: Any) -> "ActivationSpec":
        """From a Keras activation (function, name, ``ReLU``/``Activation``/``Softmax`` layer)."""
        if isinstance(activation, ActivationSpec):
            return activation
        if isinstance(activation, dict):
            return cls(**activation)
        if isinstance(activation, keras.layers.ELU):
            if float(activation.get_config()["alpha"]) != 1.0:
                raise ValueError(f"ELU layer {activation.name!r}: TFLite's ELU has alpha 1 only.")
            return cls("elu")
        if isinstance(activation, keras.layers.LeakyReLU):
            return cls("leaky_relu", alpha=float(activation.get_config()["alpha"]))
        if isinstance(activation, keras.layers.ReLU):
            cfg = activation.get_config()
            if cfg.get("negative_slope") and not cfg.get("threshold") and cfg.get("max_value") is None:
                return cls("leaky_relu", alpha=float(cfg["negative_slope"]))
            if cfg.get("negative_slope") or cfg.get("threshold"):
                raise ValueError(f"ReLU layer {activation.name!r} with a threshold, or a negative slope and a cap, is not supported.")
            cap = cfg.get("max_value")
            return cls("relu", None if cap is None else float(cap))
        if isinstance(activation, keras.layers.Softmax):
            if activation.get_config().get("axis", -1) not in (-1,):
                raise ValueError(f"Softmax layer {activation.name!r} must act on the last axis.")
            return cls("softmax")
        if isinstance(activation, keras.layers.Activation):
            activation = activation.activation
        name = activation if isinstance(activation, str) else keras.activations.serialize(activation)
        if isinstance(name, dict):  # Keras may serialize a function as a config dict
            name = name.get("config", name.get("class_name"))
        if name is None:
            name = "linear"
        if name == "relu6":
            return cls("relu", 6.0)
        if name == "silu":
            return cls("swish")
        return cls(str(name))

    @property
    def fusable(self) -> bool:
        """True when int8 kernels apply it inside the preceding op (clamp of the output range)."""
        return self.kind in ("linear", "relu")

    def output_quantizer(self) -> FixedRangeQuantizer | None:
        """The fixed output grid of softmax, sigmoid and tanh; None for the others (the scheme's grid)."""
        if self.kind in _FIXED_OUTPUT_RANGES:
            return FixedRangeQuantizer(*_FIXED_OUTPUT_RANGES[self.kind])
        return None

    def gate_quantizer(self) -> FixedRangeQuantizer | None:
        """For swish, the fixed grid of its sigmoid gate (LOGISTIC's int8 output); None otherwise."""
        return FixedRangeQuantizer(*_FIXED_OUTPUT_RANGES["sigmoid"]) if self.kind == "swish" else None

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        if self.kind == "linear":
            return x
        if self.kind == "relu":
            return tf.nn.relu(x) if self.max_value is None else tf.clip_by_value(x, 0.0, self.max_value)
        if self.kind == "swish":
            return x * tf.sigmoid(x)
        if self.kind == "leaky_relu":
            return tf.nn.leaky_relu(x, self.alpha)
        if self.kind == "elu":
            return tf.nn.elu(x)
        if self.kind == "gelu":
            return tf.nn.gelu(x, approximate=False)
        return {"softmax": tf.nn.softmax, "sigmoid": tf.sigmoid, "tanh": tf.tanh}[self.kind](x)

    def to_config(self) -> dict[str, Any]:
        return asdict(self)
