"""Keras layers that carry quantizers: ``QuantizedLayer`` (a wrapper) and ``QuantizeInput``.

``QuantizedLayer`` runs the wrapped layer as the integer model will:

    z = layer(x; Q(W)·f, Q_b(b))          weights on their grids, bias on the int32 grid s_in·s_w
    z = R(z)                               the target runtime's requantization (kerasq.runtimes)
    y = A_q( act( P_q(z) ) )               fake quantization of the output

- ``Q`` are the scheme's weight quantizers (one per weight of the layer type, see
  ``kerasq.layer_table``); ``f`` an optional trainable per-output-channel scale, the ``γ/σ``
  of a BatchNormalization folded into the layer (kept outside ``Q`` so a per-tensor scheme
  quantizes the layer's own weights as its paper does; the .tflite multiplies it into the
  per-channel weight scales).
- ``Q_b`` rounds the bias onto ``s_in·s_w[c]``, the int32 grid TFLite adds it on, with
  ``s_in`` the grid of the layer's input. The layer knows that grid through its *links*
  (``kerasq.model.link``): the layer whose output grid it reads, found when ``quantize_model``
  builds the model and again whenever it is loaded.
- ``R`` reproduces the integer kernel's rounding where it differs from rounding the float
  result once (two-step requantization of INT4 convolutions, ADD's fixed-point multipliers,
  MEAN's arithmetic): the layer's *target* (``kerasq.runtimes.Target``) says which runtime.
  It applies in inference, where weight ops compute their integer accumulator exactly (codes
  in float64); training steps run in float32 with fake quantization and no ``R``.
- ``P_q`` (pre-activation) exists only for activations TFLite runs as separate ops (softmax,
  sigmoid, tanh, leaky ReLU, ELU, GELU; swish as LOGISTIC and MUL, ``y = z·σ̂(z)`` with the gate
  ``σ̂`` on LOGISTIC's fixed grid and the MUL rounded as the runtime does); for the fusable ones
  (linear, ReLU, capped ReLU) ``A_q`` alone rounds the output, exactly as a fused int8 kernel does.

Observing (statistics) and rounding are separate steps: during ``fit`` a layer observes then
rounds; in inference it rounds only; under ``kerasq.calibrate`` it observes and does not round
(``quantization_mode``). A range never observed leaves that output unrounded in inference,
so a fresh, uncalibrated model computes like the float model instead of at chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kerasq import ops, runtimes
from kerasq.activations import ActivationSpec
from kerasq.arithmetic import ScalarArithmetic
from kerasq.compat import keras, tf
from kerasq.layer_table import rule_for
from kerasq.observers import Observer
from kerasq.quantizers import (
    ActivationQuantizer,
    MovingAverageQuantizer,
    Quantizer,
    WeightGrid,
    WeightQuantizer,
    deserialize,
    is_training,
    serialize,
)
from kerasq.registry import register
from kerasq.transposed_conv import TransposedConv2D

# Largest symmetric code of each weight storage type (zero point 0).
STORAGE_LIMITS = {"int4": 7, "int8": 127}


@dataclass(frozen=True)
class Mode:
    """What a quantized layer does in a call: ``observe`` statistics, ``round`` values.

    ``observe=None`` observes in training only. ``observer`` replaces the quantizers' own
    observers while it is set (``kerasq.calibrate`` uses a min/max observer). ``exact=False``
    runs inference as a training step computes it (float32, fake quantization, within an LSB
    of the exact integer arithmetic and several times faster): post-training steps that only
    need a layer's inputs approximately use it.
    """

    observe: bool | None = None
    round: bool = True
    observer: Observer | None = None
    exact: bool = True


DEFAULT_MODE = Mode()


@dataclass
class Links:
    """What a quantized layer knows about the model around it (set by ``kerasq.model.link``).

    ``inputs``: for each input, the layer whose output grid it is on (a ``QuantizeInput`` or a
    ``QuantizedLayer``, found through layers that keep their input's grid); ``group``: the
    layers whose outputs share one grid with this one (a Concatenate's inputs), this one
    included, or empty; ``target``: the runtime the model matches.
    """

    inputs: list
    group: list
    target: runtimes.Target


def _deserialize(value):
    return deserialize(value) if isinstance(value, dict) else value


# The weight ops whose TFLite kernels take INT4 weights.
INT4_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def storage_of(bits: int, target: runtimes.Target, op: str = "CONV_2D") -> str:
    """``"int4"`` for grids of at most 4 bits when the target packs INT4 and ``op`` takes it, else ``"int8"``."""
    return "int4" if target.pack_int4 and bits <= 4 and op in INT4_OPS else "int8"


def storage_widening(peak: int, storage: str) -> int:
    """The power of two ``k`` the exporter multiplies codes by: the largest with ``peak·k <= limit``."""
    limit = STORAGE_LIMITS[storage]
    k = 1
    while peak and peak * k * 2 <= limit:
        k *= 2
    return k


def _storage_widening_tf(codes: tf.Tensor, storage: str) -> tf.Tensor:
    """``storage_widening`` of ``max|codes|`` as a float32 tensor."""
    limit = STORAGE_LIMITS[storage]
    peak = tf.reduce_max(tf.abs(codes))
    powers = tf.constant([2.0**j for j in range(8)], tf.float32)
    return tf.reduce_max(tf.where(peak * powers <= limit, powers, 1.0))


class _GridOutput:
    """The output grid of a kerasq layer as its consumers read it (mixin of both layers)."""

    _links: Links | None = None

    def output_quantizer(self) -> ActivationQuantizer | None:
        raise NotImplementedError

    def _output_state(self) -> dict:
        """The output quantizer's statistics; for a shared grid, merged over the group (union)."""
        own = self._output_variables()
        group = self._links.group if self._links is not None else []
        if len(group) < 2:
            return own
        states = [member._output_variables() for member in group]
        counts = tf.stack([tf.convert_to_tensor(s["count"]) for s in states])
        seen = counts > 0
        big = tf.constant(np.finfo(np.float32).max, tf.float32)
        lows = tf.stack([tf.convert_to_tensor(s["min"]) for s in states])
        highs = tf.stack([tf.convert_to_tensor(s["max"]) for s in states])
        low = tf.reduce_min(tf.where(seen, lows, big))
        high = tf.reduce_max(tf.where(seen, highs, -big))
        any_seen = tf.reduce_any(seen)
        return {
            "min": tf.where(any_seen, low, 0.0),
            "max": tf.where(any_seen, high, 0.0),
            "count": tf.reduce_max(counts),
        }

    def _output_variables(self) -> dict:
        raise NotImplementedError

    def output_grid(self) -> ops.Grid:
        """The grid the layers reading this output see (TF tensors)."""
        return self.output_quantizer().consumer_grid(self._output_state())

    def output_observed(self) -> tf.Tensor | bool:
        return self.output_quantizer().observed(self._output_state())

    def output_params(self) -> ops.AffineParams:
        """The output grid as numbers (as the .tflite stores it, before widening for consumers)."""
        return self.output_quantizer().affine_params(self._output_state())


def _round_unless_unobserved(ready, rounded, unrounded):
    """``rounded()`` if ``ready`` (a bool or bool tensor), else ``unrounded()`` (inference of a range never observed)."""
    if isinstance(ready, bool):
        return rounded() if ready else unrounded()
    return tf.cond(ready, rounded, unrounded)


@register("layer")
class QuantizedLayer(keras.layers.Wrapper, _GridOutput):
    """A Keras layer run with quantized weights and bias, the runtime's rounding and fake-quantized outputs.

    Args:
      layer: the float layer, of a class in ``kerasq.layer_table`` (its own activation must be
        linear; the wrapper applies ``activation``).
      weight_quantizers: ``{attribute: quantizer}`` for the layer's weights (Conv2D:
        ``{"kernel": ...}``), or None for layers without weights (Add, pooling).
      activation: an ``ActivationSpec`` (or its config / a Keras activation).
      activation_quantizer: rounds the output after the activation.
      pre_activation_quantizer: rounds the input of a non-fusable activation (softmax' logits).
      channel_scale: give the layer a trainable per-output-channel factor ``f`` (initial 1) that
        multiplies the quantized kernel; ``quantize_model`` sets it to a folded BatchNormalization's
        ``γ/σ``. Exported as part of the per-channel weight scales.
      grid_group: names of the layers whose outputs share one grid with this one (the inputs
        of a Concatenate), this one included; empty for an own grid.
      weight_quantizer: shorthand for ``weight_quantizers`` with the layer type's first weight.
    The wrapper takes the wrapped layer's name unless ``name`` is given, so
    ``qmodel.get_layer("conv1")`` finds the quantized ``conv1``.
    """

    VERSION = 2
    reads_float = False

    def __init__(
        self,
        layer: keras.layers.Layer,
        weight_quantizers: dict[str, WeightQuantizer | dict] | None = None,
        activation: ActivationSpec | dict | str | None = None,
        activation_quantizer: ActivationQuantizer | dict | None = None,
        pre_activation_quantizer: ActivationQuantizer | dict | None = None,
        channel_scale: bool = False,
        grid_group: list[str] | tuple[str, ...] = (),
        weight_quantizer: WeightQuantizer | dict | None = None,
        version: int = VERSION,
        **kwargs,
    ):
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        if int(version) > self.VERSION:
            raise ValueError(
                f"QuantizedLayer {self.name!r} was saved by a newer kerasq (state version {version}); "
                f"this one reads up to version {self.VERSION}."
            )
        self.rule = rule_for(layer)
        if self.rule is None or self.rule.role not in ("weight", "own_grid"):
            raise ValueError(
                f"QuantizedLayer wraps layers with weights or an own output grid (see kerasq.layer_table); "
                f"{type(layer).__name__} {layer.name!r} is not one. Received: layer={type(layer).__name__}"
            )
        quantizers = dict(weight_quantizers or {})
        if weight_quantizer is not None:
            if not self.rule.weights:
                raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) has no kernel to quantize.")
            quantizers.setdefault(self.rule.weights[0].attribute, weight_quantizer)
        known = [w.attribute for w in self.rule.weights]
        unknown = sorted(set(quantizers) - set(known))
        if unknown:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) has no quantizable weights {unknown}; "
                f"its weights are {known}. Received: weight_quantizers={sorted(quantizers)}"
            )
        self.weight_quantizers: dict[str, WeightQuantizer] = {
            attr: _deserialize(quantizers[attr]) for attr in known if quantizers.get(attr) is not None
        }
        self.activation = ActivationSpec.from_keras(activation or "linear")
        self.activation_quantizer = _deserialize(activation_quantizer)
        self.pre_activation_quantizer = _deserialize(pre_activation_quantizer)
        inner_activation = getattr(layer, "activation", None)
        if inner_activation is not None and ActivationSpec.from_keras(inner_activation).kind != "linear":
            raise ValueError(
                f"QuantizedLayer {layer.name!r}: the wrapped layer's activation must be linear; "
                "pass the activation to the wrapper. Received: "
                f"activation={keras.activations.serialize(inner_activation)!r}"
            )
        if channel_scale and not self.weight_quantizers:
            raise ValueError(f"Layer {layer.name!r}: channel_scale needs a weight quantizer to scale.")
        self.has_channel_scale = bool(channel_scale)
        self.grid_group = [str(name) for name in grid_group]
        self.channel_scale: tf.Variable | None = None
        object.__setattr__(self, "quantization_mode", DEFAULT_MODE)
        self._weight_vars: dict[str, dict[str, tf.Variable]] = {}
        self._activation_vars: dict[str, tf.Variable] = {}
        self._pre_activation_vars: dict[str, tf.Variable] = {}
        object.__setattr__(self, "_links", None)

    # --- building -----------------------------------------------------------------------------
    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        for attr, quantizer in self.weight_quantizers.items():
            self._weight_vars[attr] = quantizer.build(getattr(self.layer, attr).shape, attr, self)
        if self.has_channel_scale:
            self.channel_scale = self.add_weight(
                "channel_scale", shape=self._channel_shape(), initializer="ones", trainable=True
            )
        output_shape = self.layer.compute_output_shape(input_shape)
        if self.pre_activation_quantizer is not None:
            self._pre_activation_vars = self.pre_activation_quantizer.build(output_shape, "pre_activation", self)
        if self.activation_quantizer is not None:
            self._activation_vars = self.activation_quantizer.build(output_shape, "activation", self)
        self.built = True

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    # --- the forward pass -------------------------------------------------------------------------
    @tf.autograph.experimental.do_not_convert  # Python branches on static values only; tracing stays fast
    def call(self, inputs, training=None):
        if training is None:
            training = keras.backend.learning_phase()
        mode = self.quantization_mode
        observe = is_training(training) if mode.observe is None else mode.observe
        if self._links is None:  # symbolic construction of the model: shapes only
            return self.activation(self._float_call(inputs))
        if not mode.round:
            z = self._float_call(inputs)
            if observe:
                self._observe(z, mode.observer)
            return self.activation(z)

        if observe or is_training(training) or not mode.exact:  # float32 forward pass, fake quantization
            z = self._quantized_call(inputs, training)
            if observe:
                self._observe(z, mode.observer)
            return self._rounded_output(z)
        # Inference: the integer kernels' arithmetic, exactly (while every range was observed).
        return _round_unless_unobserved(
            self._ready(), lambda: self._exact_output(inputs), lambda: self.activation(self._float_call(inputs))
        )

    def _float_call(self, inputs):
        """The float layer (with the folded batch-norm scale ``f`` on its kernel), nothing rounded."""
        if self.channel_scale is None:
            return self.layer.call(inputs)
        kernel = self.kernel
        object.__setattr__(self.layer, self.primary_weight, self._scaled(kernel))
        try:
            return self.layer.call(inputs)
        finally:
            object.__setattr__(self.layer, self.primary_weight, kernel)

    def _quantized_call(self, inputs, training) -> tf.Tensor:
        """The wrapped layer with quantized weights and a bias on its int32 grid (float32 arithmetic).

        Layers without weights run as they are.
        """
        if not self.weight_quantizers:
            return self.layer.call(inputs)
        swapped = {}
        for attr, quantizer in self.weight_quantizers.items():
            if attr != self.primary_weight:
                swapped[attr] = quantizer(getattr(self.layer, attr), training, weights=self._weight_vars[attr])
        quantized, scale = self.weight_quantizer.quantize_with_scale(
            self.kernel, training, weights=self.weight_quantizer_variables
        )
        swapped[self.primary_weight] = self._scaled(quantized)
        weight_scales = self._channel_scales(scale)
        if getattr(self.layer, "use_bias", False):
            bias = self.layer.bias
            step = self._input_grid().scale * weight_scales
            swapped["bias"] = bias + tf.stop_gradient(quantize_bias(bias, step) - bias)
        originals = {attr: getattr(self.layer, attr) for attr in swapped}
        try:  # bypass Keras attribute tracking: the swap lasts for this call only
            for attr, value in swapped.items():
                object.__setattr__(self.layer, attr, value)
            z = self.layer.call(inputs)
        finally:
            for attr, value in originals.items():
                object.__setattr__(self.layer, attr, value)
        return z

    def _observe(self, z, observer):
        """Fold this call's float output into the statistics of the output quantizer(s)."""
        if self.pre_activation_quantizer is not None:
            self.pre_activation_quantizer.observe(z, self._pre_activation_vars, observer)
            z = self.pre_activation_quantizer.round(z, self._pre_activation_vars)
        if self.activation_quantizer is not None:
            self.activation_quantizer.observe(self.activation(z), self._activation_vars, observer)

    def _rounded_output(self, z, exact: bool = False):
        """The activation and fake quantization of the op's output ``z`` (real units).

        ``exact``: ``z`` is on its grid already and the activation's own integer ops (swish's
        MUL) round as the target runtime does.
        """
        if self.pre_activation_quantizer is not None:
            z = self.pre_activation_quantizer.round(z, self._pre_activation_vars)
        y = self._activate(z, exact)
        if self.activation_quantizer is not None:
            y = self.activation_quantizer.round(y, self._output_state())
        return y

    def _activate(self, z, exact: bool):
        """The activation of ``z``; with ``exact``, the ops TFLite runs it as round as the runtime does.

        Swish is ``z·σ̂(z)``: the sigmoid gate on LOGISTIC's fixed grid, then MUL onto the output
        grid. Leaky ReLU is LEAKY_RELU onto the output grid. Other activations are exact as
        ``act(z)`` rounded by the output quantizer.
        """
        kind = self.activation.kind
        if kind == "swish":
            gate_quantizer = self.activation.gate_quantizer()
            gate = gate_quantizer.round(tf.sigmoid(z), {})
            y = z * gate
        else:
            y = self.activation(z)
        if not exact or kind not in ("swish", "leaky_relu"):
            return y
        target = self._links.target
        grid = self.activation_quantizer.grid(self._output_state())
        z_grid = self.pre_activation_quantizer.grid(self._pre_activation_vars)
        if kind == "swish":
            level = runtimes.mul(target, z, gate, z_grid, gate_quantizer.grid({}), grid)
        else:
            level = runtimes.leaky_relu(target, z, z_grid, grid, self.activation.alpha)
        return y + tf.stop_gradient(level * grid.scale - y)

    def _exact_output(self, inputs):
        """The layer's output as the target runtime computes it (see ``kerasq.runtimes``)."""
        op_quantizer, op_state = self._op_output()
        if self.has_accumulator():
            return self._rounded_output(self._integer_call(inputs), exact=True)
        z = self._quantized_call(inputs, False)
        return self._rounded_output(self._requantize(z, inputs, op_quantizer.grid(op_state)), exact=True)

    def _op_output(self) -> tuple[ActivationQuantizer, dict]:
        """The quantizer (and state) of the op's own output: pre-activation, else the output quantizer."""
        if self.pre_activation_quantizer is not None:
            return self.pre_activation_quantizer, self._pre_activation_vars
        return self.activation_quantizer, self._output_state()

    def _ready(self):
        """Whether every grid this layer rounds with (its inputs', its own) was observed."""
        flags = [source.output_observed() for source in self._links.inputs]
        flags.append(self.activation_quantizer.observed(self._output_state()))
        if self.pre_activation_quantizer is not None:
            flags.append(self.pre_activation_quantizer.observed(self._pre_activation_vars))
        tensors = [tf.convert_to_tensor(f) for f in flags if not isinstance(f, bool)]
        if any(f is False for f in flags):
            return False
        return tf.reduce_all(tf.stack(tensors)) if tensors else True

    # --- the runtime's rounding -------------------------------------------------------------------
    def has_accumulator(self) -> bool:
        """Inference computes this weight op's integer accumulator exactly (not for binary outputs)."""
        binary = any(getattr(q, "binary", False) for q in (self.activation_quantizer, self.pre_activation_quantizer))
        return self.rule.role == "weight" and bool(self.weight_quantizers) and not binary and len(self.weight_quantizers) == 1

    def _integer_call(self, inputs) -> tf.Tensor:
        """The op output as the integer kernel computes it: exact int accumulator, the runtime's rounding.

        Codes of the input, of the weights (as stored: sign-flipped where ``f < 0``, widened by
        ``k``) and of the bias go through the wrapped layer in float64 (every integer sum below
        2^53 is exact); ``kerasq.runtimes.requantize_accumulator`` rounds the accumulator as the
        target's kernel does. Returns the level times the output scale, float32.
        """
        target = self._links.target
        grid_in = self._input_grid()
        op_quantizer, op_state = self._op_output()
        grid_out = op_quantizer.grid(op_state)
        variables = self.weight_quantizer_variables
        quantized, scale = self.weight_quantizer.quantize_with_scale(self.kernel, False, weights=variables)
        codes = tf.round(ops.exact_divide(quantized, scale))
        if self.channel_scale is not None:  # stored codes carry the sign of f (weight_grid)
            codes = codes * tf.sign(self.channel_scale)
        weight_scales = self._channel_scales(scale)
        storage = storage_of(self.weight_quantizer.grid_bits, target, self.rule.op)
        widening = _storage_widening_tf(codes, storage)
        x_codes = tf.cast(tf.round(ops.exact_divide(inputs, grid_in.scale)), tf.float64)
        acc = accumulate(self.layer, self.rule.op, x_codes, tf.cast(codes * widening, tf.float64))
        if getattr(self.layer, "use_bias", False):
            bias_codes = bias_to_codes(self.layer.bias, grid_in.scale * weight_scales)
            acc = acc + tf.cast(bias_codes * widening, tf.float64)
        level = runtimes.requantize_accumulator(
            acc, grid_in.scale, ops.exact_divide(weight_scales, widening), grid_out.scale, self.requantization_modes()
        )
        return level * grid_out.scale

    def _requantize(self, z, inputs, grid: ops.Grid):
        """``z`` of an op without a weighted sum moved onto the level its integer kernel computes.

        ADD, SUB, MUL, PRELU, ADD/MUL with a constant, MEAN (see ``kerasq.runtimes``).
        """
        target = self._links.target
        if any(getattr(q, "binary", False) for q in (self.activation_quantizer, self.pre_activation_quantizer)):
            return z  # the exporter turns a sign decision into an exact test
        if isinstance(self.layer, (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply)):
            grids = [source.output_grid() for source in self._links.inputs]
            if isinstance(self.layer, keras.layers.Multiply):
                level = runtimes.mul(target, inputs[0], inputs[1], grids[0], grids[1], grid)
            else:  # SUB is ADD of the negated second input, in both runtimes' arithmetic
                sign = 1.0 if isinstance(self.layer, keras.layers.Add) else -1.0
                level = runtimes.add(target, inputs[0], sign * inputs[1], grids[0], grids[1], grid)
            exact = level * grid.scale
        elif isinstance(self.layer, keras.layers.PReLU):
            alpha, alpha_scale = self.weight_quantizer.quantize_with_scale(self.kernel, False, weights=self.weight_quantizer_variables)
            exact = runtimes.prelu(inputs, alpha, self._input_grid(), tf.reshape(alpha_scale, []), grid) * grid.scale
        elif isinstance(self.layer, ScalarArithmetic):
            constant, constant_grid = self.layer.quantized_constant()
            binary = runtimes.add if self.layer.op == "add" else runtimes.mul
            exact = binary(target, inputs, constant, self._input_grid(), constant_grid, grid) * grid.scale
        elif isinstance(self.layer, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalAveragePooling1D)):
            keepdims = bool(getattr(self.layer, "keepdims", False))
            axes = (1, 2) if isinstance(self.layer, keras.layers.GlobalAveragePooling2D) else (1,)
            exact = runtimes.mean(target, inputs, self._input_grid(), grid, axes, keepdims) * grid.scale
        else:
            return z
        return z + tf.stop_gradient(exact - z)

    def requantization_modes(self) -> np.ndarray:
        """Per output channel, how the target runtime rounds this weight op (``kerasq.runtimes``)."""
        storage = storage_of(self.weight_quantizer.grid_bits, self._links.target, self.rule.op)
        kernel_shape = [int(d) for d in self.kernel.shape]
        channels = int(np.prod(self._channel_shape()))
        input_depth = kernel_shape[-2] if len(kernel_shape) >= 2 else 1
        return runtimes.weight_op_rounding(self._links.target, self.rule.op, storage, channels, input_depth)

    def _channel_scales(self, scale: tf.Tensor) -> tf.Tensor:
        """``|s·f|`` per output channel, float32 ``[channels]`` (``s`` where ``s·f`` is 0), as ``weight_grid``."""
        channel_shape = self._channel_shape()
        rank = len(self.kernel.shape)
        scale = tf.broadcast_to(tf.reshape(scale, tf.shape(scale)[rank - len(channel_shape) :]), channel_shape)
        if self.channel_scale is not None:
            product = scale * self.channel_scale
            scale = tf.where(product == 0.0, scale, tf.abs(product))
        return tf.stop_gradient(tf.reshape(scale, [-1]))

    def _weight_scales(self) -> tf.Tensor:
        """``_channel_scales`` of the primary kernel in inference mode."""
        return self._channel_scales(self.weight_quantizer.scale(self.kernel, self.weight_quantizer_variables))

    def _input_grid(self) -> ops.Grid:
        return self._links.inputs[0].output_grid()

    # --- state, read by kerasq.quantized_weights, calibration and tflite_export ---------------
    @property
    def primary_weight(self) -> str | None:
        """The weight attribute whose output channels the layer's output has (``"kernel"``)."""
        return self.rule.weights[0].attribute if self.rule.weights else None

    @property
    def weight_quantizer(self) -> WeightQuantizer | None:
        """The quantizer of the primary weight (None for layers without weights)."""
        return self.weight_quantizers.get(self.primary_weight) if self.primary_weight else None

    @property
    def weight_quantizer_variables(self) -> dict[str, tf.Variable]:
        """The variables the primary weight's quantizer built (e.g. a k-means codebook, an INQ mask)."""
        return self._weight_vars.get(self.primary_weight, {})

    @property
    def activation_quantizer_variables(self) -> dict[str, tf.Variable]:
        """The variables of the output quantizer (e.g. observed ``min``/``max``, PACT ``alpha``)."""
        return self._activation_vars

    @property
    def pre_activation_quantizer_variables(self) -> dict[str, tf.Variable]:
        return self._pre_activation_vars

    def output_quantizer(self) -> ActivationQuantizer | None:
        return self.activation_quantizer

    def _output_variables(self) -> dict:
        return self._activation_vars

    def initialize_quantizers(self) -> None:
        """Let each weight quantizer derive its state from the current float weight."""
        for attr, quantizer in self.weight_quantizers.items():
            quantizer.initialize(getattr(self.layer, attr), self._weight_vars[attr])

    def initialize_channel_scale(self, factor: np.ndarray) -> None:
        """Start ``f`` at ``factor · c`` with ``c`` the least-squares gain of ``Q(W)`` onto ``W``.

        ``c[k] = <W_k, Q(W)_k> / <Q(W)_k, Q(W)_k>`` over output channel ``k``, so that ``Q(W)·f``
        starts as close as the grid allows to ``W·factor`` (the folded float kernel): schemes whose
        grid does not keep the kernel's scale (DoReFa's [-1, 1], per-tensor BWN across channels
        of different BN gains) then start from the float model's output scale, as batch norm
        after the convolution would restore it. ``factor``: ``[channels]`` (``γ/σ``).
        """
        if self.channel_scale is None:
            raise ValueError(f"Layer {self.name!r} was built without channel_scale.")
        kernel = self.kernel.numpy().astype(np.float64)
        quantized = np.asarray(self._inference_quantized(), np.float64)
        axes = tuple(range(kernel.ndim - len(self.channel_scale.shape)))
        energy = np.sum(quantized * quantized, axis=axes)
        gain = np.where(energy > 0, np.sum(kernel * quantized, axis=axes) / np.where(energy > 0, energy, 1.0), 1.0)
        self.channel_scale.assign((np.reshape(factor, gain.shape) * gain).astype(np.float32))

    @property
    def kernel(self) -> tf.Variable | None:
        """The primary float weight (Conv2D/Dense ``kernel``, DepthwiseConv2D ``depthwise_kernel``)."""
        return None if self.primary_weight is None else getattr(self.layer, self.primary_weight)

    def _channel_shape(self) -> tuple[int, ...]:
        """Shape of ``channel_scale``: ``[out]``, or ``[in, multiplier]`` for a depthwise kernel."""
        shape = tuple(int(d) for d in self.kernel.shape)
        axes = sorted(a % len(shape) for a in self.rule.weights[0].channel_axes)
        return tuple(shape[a] for a in axes)

    def _inference_quantized(self) -> tf.Tensor:
        """``Q(kernel)`` in inference mode, before the channel scale."""
        return self.weight_quantizer(self.kernel, False, weights=self.weight_quantizer_variables)

    def _scaled(self, quantized: tf.Tensor) -> tf.Tensor:
        if self.channel_scale is None:
            return quantized
        return quantized * self.channel_scale

    def quantized_kernel(self) -> np.ndarray:
        """``Q(kernel)·f`` as the inference forward pass uses it, float32, Keras kernel layout."""
        return np.asarray(self._scaled(self._inference_quantized()))

    def _bias_step(self) -> tf.Tensor:
        if self._links is None:
            raise ValueError(f"Layer {self.name!r} is not linked to its model; see kerasq.model.link.")
        return self._input_grid().scale * self._weight_scales()

    def quantized_bias(self) -> np.ndarray | None:
        """The bias as the forward pass adds it (on the int32 grid ``s_in·s_w``), float32 ``[channels]``."""
        if not getattr(self.layer, "use_bias", False):
            return None
        return quantize_bias(self.layer.bias, self._bias_step()).numpy()

    def bias_codes(self) -> np.ndarray:
        """The int32 codes of ``quantized_bias`` on ``s_in·s_w[c]`` (zeros without a bias), int64 ``[channels]``."""
        if not getattr(self.layer, "use_bias", False):
            return np.zeros(channel_count(self), np.int64)
        return bias_to_codes(self.layer.bias, self._bias_step()).numpy().astype(np.int64)

    def weight_grid(self) -> WeightGrid:
        """Codes and scale with ``codes * scale == quantized_kernel()`` (to float32 rounding with ``f``).

        With a channel scale the scale is per channel, ``|s·f|``; a channel with ``f < 0`` has its
        codes negated (zero point 0 keeps that exact), one with ``f == 0`` has all codes 0.
        """
        grid = self.weight_quantizer.integer_grid(self.kernel, self.weight_quantizer_variables)
        if self.channel_scale is None:
            return grid
        factor = self.channel_scale.numpy().astype(np.float32)
        scale = (grid.scale.astype(np.float32) * factor).astype(np.float32)
        sign = np.sign(scale).astype(np.int32)
        codes = grid.codes * sign
        scale = np.where(scale == 0, np.broadcast_to(grid.scale, scale.shape), np.abs(scale)).astype(np.float32)
        return WeightGrid(codes, scale, grid.bits)

    def activation_params(self) -> ops.AffineParams:
        return self.output_params()

    def pre_activation_params(self) -> ops.AffineParams:
        return self.pre_activation_quantizer.affine_params(self._pre_activation_vars)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "weight_quantizers": {attr: serialize(q) for attr, q in self.weight_quantizers.items()},
                "activation": self.activation.to_config(),
                "activation_quantizer": serialize(self.activation_quantizer),
                "pre_activation_quantizer": serialize(self.pre_activation_quantizer),
                "channel_scale": self.has_channel_scale,
                "grid_group": list(self.grid_group),
                "version": self.VERSION,
            }
        )
        return config


def accumulate(layer: keras.layers.Layer, op: str, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """The op's integer accumulator (no bias) on codes, in the dtype of ``x`` and ``kernel`` (float64)."""
    if op == "FULLY_CONNECTED":  # over the last axis of any rank, as FULLY_CONNECTED with keep_num_dims
        return tf.tensordot(x, kernel, [[x.shape.rank - 1], [0]])
    if isinstance(layer, TransposedConv2D):
        return layer.transposed(x, kernel)
    if isinstance(layer, keras.layers.Conv1D):
        padding = layer.padding.upper()
        if padding == "CAUSAL":  # zeros (code 0 of the zero-centred codes) before the first step
            x = tf.pad(x, [[0, 0], [layer.dilation_rate[0] * (layer.kernel_size[0] - 1), 0], [0, 0]])
            padding = "VALID"
        return tf.nn.conv1d(x, kernel, layer.strides[0], padding, dilations=layer.dilation_rate[0])
    padding = layer.padding.upper()
    dilations = list(layer.dilation_rate)
    if op == "DEPTHWISE_CONV_2D":
        return tf.nn.depthwise_conv2d(x, kernel, [1, *layer.strides, 1], padding, dilations=dilations)
    return tf.nn.conv2d(x, kernel, list(layer.strides), padding, dilations=dilations)


def bias_to_codes(bias: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """``round(bias / step)`` (half to even), clamped to int32, as float32 (``step``: ``s_in·s_w[c]``)."""
    return tf.clip_by_value(tf.round(ops.exact_divide(bias, step)), -(2.0**31), 2.0**31 - 1)


def quantize_bias(bias: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """``bias`` rounded onto the grid ``step`` per channel, float32: what TFLite adds as int32 codes."""
    return bias_to_codes(bias, step) * step


@register("layer")
class QuantizeInput(keras.layers.Layer, _GridOutput):
    """Fake-quantizes a float tensor (a model input, or a layer kept in float) onto an observed int8 grid.

    Observes the range (``MovingAverageQuantizer`` by default) in training and under
    ``kerasq.calibrate``; while the range was never observed, inference passes values through.
    The exported model's input tensor has this grid.

    Args:
      quantizer: the activation quantizer (an 8-bit ``MovingAverageQuantizer`` by default).
      grid_group: names of the layers whose outputs share one grid with this one (Concatenate
        inputs), this one included; empty for an own grid.
    """

    reads_float = True

    def __init__(self, quantizer: ActivationQuantizer | dict | None = None, grid_group=(), **kwargs):
        super().__init__(**kwargs)
        if quantizer is None:
            quantizer = MovingAverageQuantizer(8)
        self.quantizer: Quantizer = _deserialize(quantizer)
        self.grid_group = [str(name) for name in grid_group]
        object.__setattr__(self, "quantization_mode", DEFAULT_MODE)
        self._vars: dict[str, tf.Variable] = {}
        object.__setattr__(self, "_links", None)

    def build(self, input_shape):
        self._vars = self.quantizer.build(input_shape, "input", self)
        self.built = True

    @tf.autograph.experimental.do_not_convert  # Python branches on static values only; tracing stays fast
    def call(self, inputs, training=None):
        if training is None:
            training = keras.backend.learning_phase()
        mode = self.quantization_mode
        observe = is_training(training) if mode.observe is None else mode.observe
        if observe:
            self.quantizer.observe(inputs, self._vars, mode.observer)
        if not mode.round or self._links is None:
            return inputs
        if observe:
            return self._round(inputs)
        return _round_unless_unobserved(self._ready(), lambda: self._round(inputs), lambda: tf.identity(inputs))

    def _ready(self):
        return self.quantizer.observed(self._output_state())

    def _round(self, inputs):
        return self.quantizer.round(inputs, self._output_state())

    def output_quantizer(self) -> ActivationQuantizer:
        return self.quantizer

    def _output_variables(self) -> dict:
        return self._vars

    def activation_params(self) -> ops.AffineParams:
        return self.output_params()

    def get_config(self):
        return {**super().get_config(), "quantizer": serialize(self.quantizer), "grid_group": list(self.grid_group)}


@register("layer")
class Requantize(QuantizeInput):
    """Moves an int8 tensor onto another observed grid: TFLite's int8→int8 QUANTIZE.

    ``quantize_model`` puts one before a Concatenate input whose grid cannot be shared (a
    low-bit or fixed-range output): it observes the values it receives and rounds them as the
    target runtime's QUANTIZE kernel does (``kerasq.runtimes.requantize``, exact on the codes).
    """

    reads_float = False

    def _ready(self):
        flags = [self._links.inputs[0].output_observed(), self.quantizer.observed(self._output_state())]
        tensors = [tf.convert_to_tensor(f) for f in flags if not isinstance(f, bool)]
        return tf.reduce_all(tf.stack(tensors)) if tensors else True

    def _round(self, inputs):
        grid = self.quantizer.grid(self._output_state())
        exact = runtimes.requantize(self._links.target, inputs, self._links.inputs[0].output_grid(), grid) * grid.scale
        return self.quantizer.round(inputs + tf.stop_gradient(exact - inputs), self._output_state())


@register("layer")
class OnInputGrid(keras.layers.Wrapper):
    """A layer whose output stays on its input's grid although its integer kernel rounds.

    The mean of a window of codes is rarely a code; TFLite's AVERAGE_POOL_2D rounds it onto the
    input's grid (``kerasq.runtimes.average_pool``), and so does this wrapper, in training
    (straight-through gradient) and inference alike; likewise bilinear UpSampling2D
    (RESIZE_BILINEAR, ``kerasq.runtimes.resize_bilinear``; nearest-neighbour upsampling copies
    codes). Consumers read the input's grid through it.
    """

    reads_float = False
    grid_group: tuple = ()

    def __init__(self, layer: keras.layers.Layer, **kwargs):
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        object.__setattr__(self, "quantization_mode", DEFAULT_MODE)
        object.__setattr__(self, "_links", None)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    @tf.autograph.experimental.do_not_convert  # Python branches on static values only
    def call(self, inputs, training=None):
        y = self.layer.call(inputs)
        if self._links is None or not self.quantization_mode.round:
            return y
        layer = self.layer

        if isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation == "nearest":
            return y  # copies codes

        def rounded():
            grid = self.output_grid()
            if isinstance(layer, keras.layers.UpSampling2D):
                size = (int(y.shape[1]), int(y.shape[2]))
                level = runtimes.resize_bilinear(self._links.target, inputs, grid, size)
            else:
                level = runtimes.average_pool(inputs, grid, layer.pool_size, layer.strides, layer.padding)
            return y + tf.stop_gradient(level * grid.scale - y)

        return _round_unless_unobserved(self.output_observed(), rounded, lambda: y)

    def _source(self):
        return self._links.inputs[0]

    def output_grid(self) -> ops.Grid:
        return self._source().output_grid()

    def output_observed(self):
        return self._source().output_observed()

    def output_params(self) -> ops.AffineParams:
        return self._source().output_params()


KERASQ_LAYERS = (QuantizedLayer, QuantizeInput, OnInputGrid)  # Requantize is a QuantizeInput


def kerasq_layers(model: keras.Model) -> list:
    """The kerasq layers of ``model`` (``QuantizedLayer``, ``QuantizeInput``, ``OnInputGrid``), in order."""
    return [layer for layer in model.layers if isinstance(layer, KERASQ_LAYERS)]


def channel_count(layer: QuantizedLayer) -> int:
    """Output channels of a weight layer."""
    return int(np.prod(layer._channel_shape()))


__all__ = [
    "KERASQ_LAYERS", "Links", "Mode", "OnInputGrid", "QuantizeInput", "QuantizedLayer", "Requantize", "kerasq_layers",
    "quantize_bias",
]
