"""tfmot QAT models (``quantize_model`` / ``quantize_apply``) as kerasq models with the same grids.

A tfmot model computes in float: each ``QuantizeWrapperV2`` fake-quantizes its layer's weights
(``LastValueQuantizer``: symmetric, narrow range, on the stored ``[min, max]``) and its output
or activation (``MovingAverageQuantizer``: TensorFlow FakeQuant's nudged grid of the stored
``[min, max]``); a ``QuantizeLayer`` does the same for a model input. ``from_tfmot`` builds
the ``QuantizedModel`` that rounds at the same tensors onto the same grids, with integer
arithmetic, so ``tflite_export.convert`` writes what the tfmot model computes:

- weights: the kernel tfmot's quantizer gives, on a ``StoredScaleWeightQuantizer`` whose
  per-channel scale is ``max/q_max`` of tfmot's stored range (a per-tensor or depthwise range
  repeats over the channels it covers); batch norm after the layer becomes kerasq's channel
  scale ``γ/σ`` (tfmot keeps it unfolded in float after the quantized kernel, the same map);
- outputs: a ``FixedRangeQuantizer`` holding tfmot's stored range on the kerasq layer whose
  output is that tensor (after any batch norm and activation kerasq fuses into it); a
  pre-activation range (softmax, sigmoid, tanh) becomes the layer's pre-activation grid;
- Concatenate: tfmot rounds each input onto its own grid and the concatenation onto another;
  TFLite's CONCATENATION needs one, so each input is requantized onto the concatenation's
  grid (an int8→int8 QUANTIZE), which is that second rounding. Inputs tfmot leaves float until
  the Concatenate (its concat transform) round once onto its grid; a Concatenate read by
  another keeps its own grid and a MUL by 1 requantizes it onto the outer one's;
- average pools with a range of their own: TFLite's AVERAGE_POOL_2D keeps its input's grid, so
  the means are depthwise convolutions with weights ``1/(kh·kw)`` (one per band of windows a
  same padding cuts alike), which round them once onto that range;
- layers annotated with ``kerasq.QuantizeConfig`` keep their kerasq quantizers and state.

What TFLite cannot express exactly (a rounding inside a chain kerasq fuses into one kernel, an
own range on a layer TFLite keeps on its input's grid, a range tfmot never stored) is listed
by layer in one ``UserWarning`` (and in ``QuantizedModel.tfmot_notes``), never silently.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from kerasq.activations import ActivationSpec
from kerasq.compat import keras, tf
from kerasq.arithmetic import ScalarArithmetic
from kerasq.graph import LayerGraph, Node
from kerasq.layer_table import WeightSpec, rule_for
from kerasq.layers import QuantizedLayer, QuantizeInput, Requantize
from kerasq.model import QuantizedModel
from kerasq.quantize_config import QuantizeConfig
from kerasq.runtimes import Target
from kerasq.quantizers import FixedRangeQuantizer, MovingAverageQuantizer, StoredScaleWeightQuantizer
from kerasq.schemes.base import Scheme
from kerasq.transforms import calibrate, observer_states, quantize_model

__all__ = ["from_tfmot", "is_tfmot_model", "round_tfmot_biases", "tfmot_float_model"]

_WRAPPERS = ("QuantizeWrapper", "QuantizeWrapperV2")


def _is_wrapper(layer) -> bool:
    return type(layer).__name__ in _WRAPPERS and hasattr(layer, "quantize_config")


def _is_quantize_layer(layer) -> bool:
    return type(layer).__name__ == "QuantizeLayer" and hasattr(layer, "quantizer")


def is_tfmot_model(model: Any) -> bool:
    """Whether ``model`` holds tfmot QAT layers (``QuantizeWrapperV2``, ``QuantizeLayer``)."""
    layers = getattr(model, "layers", None) or []
    return any(_is_wrapper(layer) or _is_quantize_layer(layer) for layer in layers)


def _range(layer_name: str, quantizer, variables: dict) -> tuple[float, float, int]:
    """``(min, max, bits)`` of a tfmot activation quantizer's stored range."""
    if "min_var" not in variables or "max_var" not in variables:
        raise ValueError(
            f"Layer {layer_name!r}: its {type(quantizer).__name__} keeps no min_var/max_var range; kerasq reads "
            "tfmot's LastValue/MovingAverage/AllValues quantizers and kerasq.QuantizeConfig layers."
        )
    bits = int(quantizer.get_config().get("num_bits", 8)) if hasattr(quantizer, "get_config") else 8
    lo, hi = (float(np.asarray(variables[key]).reshape(-1)[0]) for key in ("min_var", "max_var"))
    return lo, hi, bits


def _activation_name(activation) -> str:
    """The Keras name of a (tfmot-wrapped) activation function; tfmot's NoOpActivation is linear."""
    inner = getattr(activation, "activation", activation)
    if type(inner).__name__ == "NoOpActivation":
        return "linear"
    return keras.activations.serialize(inner) if callable(inner) else str(inner)


def _fresh_layer(layer: keras.layers.Layer, activation: str | None = None) -> keras.layers.Layer:
    config = layer.get_config()
    if activation is not None:
        config["activation"] = activation
    return type(layer).from_config(config)


def _short_name(variable) -> str:
    """``kernel`` for ``quant_conv/conv/kernel:0``."""
    return variable.name.split(":")[0].split("/")[-1]


def _layer_weights(wrapper) -> dict[str, np.ndarray]:
    """The wrapped layer's own weights by short name; tfmot moves a quantized kernel out of the
    layer's list into ``_weight_vars``, apart from the wrapper's quantizer state."""
    own = list(wrapper.layer.weights) + [weight for weight, _, _ in getattr(wrapper, "_weight_vars", [])]
    return {_short_name(v): v.numpy() for v in own}


class _TfmotGraph:
    """What a tfmot model rounds where: ranges by the float tensor they round (named by its layer)."""

    def __init__(self, model: keras.Model):
        graph = LayerGraph.from_model(model)
        self.output_ranges: dict[str, tuple[float, float, int]] = {}  # float tensor -> (min, max, bits)
        self.pre_activation_ranges: dict[str, tuple[float, float, int]] = {}
        self.weight_quantizers: dict[str, list] = {}  # layer -> [(attribute, tfmot quantizer, variables, weight)]
        self.kerasq_configs: dict[str, Any] = {}  # layer -> kerasq.QuantizeConfig
        self.wrappers: dict[str, keras.layers.Layer] = {}
        self.weights: dict[str, dict[str, np.ndarray]] = {}  # layer -> {short weight name: value}
        self.pool_inputs: dict[str, tuple] = {}  # same-padded average pool with a range -> its input shape
        for node in list(graph.nodes):
            layer = node.layer
            if _is_quantize_layer(layer):
                self.output_ranges[node.inbound[0]] = _range(layer.name, layer.quantizer, layer.quantizer_vars)
                graph.remove(node.name)
            elif _is_wrapper(layer):
                node.layer = self._unwrap(layer)
                for consumer in graph.consumers(layer.name):
                    consumer.inbound = [node.name if n == layer.name else n for n in consumer.inbound]
                graph.outputs = [node.name if n == layer.name else n for n in graph.outputs]
            else:
                self.weights[layer.name] = {_short_name(w): w.numpy() for w in layer.weights}
                node.layer = _fresh_layer(layer)
        for node in list(graph.nodes):
            if node.name in self.pool_inputs and node.layer.data_format == "channels_last":
                self._bordered_mean(graph, node)
            elif type(node.layer) is keras.layers.Concatenate and node.name in self.output_ranges:
                self._separate_concatenations(graph, node)
        graph.name = f"{model.name}_float"
        self.graph = graph

    def _bordered_mean(self, graph: LayerGraph, pool: Node) -> None:
        """A same-padded average pool that tfmot rounds onto its own range, as depthwise
        convolutions that each round their part of the means once onto it.

        TFLite's AVERAGE_POOL_2D keeps its input's grid, and near the borders of a same-padded
        pool the divisor (the window's cells inside the input) changes, so no one depthwise
        convolution computes it. Output rows (and columns) whose windows are cut alike form a
        band; each pair of bands is a Cropping2D of the input and a valid DepthwiseConv2D with
        weights ``1/(kh'·kw')`` (code 127 of its own scale), and Concatenates along the width,
        then the height, put the parts together on that range, without rounding again.
        """
        layer, (source,) = pool.layer, pool.inbound
        _, height, width, channels = self.pool_inputs[pool.name]
        rows = _bands(height, layer.pool_size[0], layer.strides[0])
        columns = _bands(width, layer.pool_size[1], layer.strides[1])
        nodes: list[Node] = []

        def add(new_layer, inbound: list[str]) -> str:
            nodes.append(Node(new_layer, inbound))
            self.weights.setdefault(new_layer.name, {})
            return new_layer.name

        def joined(parts: list[str], axis: int, name: str) -> str:
            return parts[0] if len(parts) == 1 else add(keras.layers.Concatenate(axis=axis, name=name), parts)

        row_parts = []
        for r, (row_crop, row_kernel) in enumerate(rows):
            parts = []
            for c, (column_crop, column_kernel) in enumerate(columns):
                last = len(rows) == len(columns) == 1
                name = pool.name if last else f"{pool.name}_part_{r}_{c}"
                cropped = source
                if any(row_crop + column_crop):
                    cropped = add(keras.layers.Cropping2D((row_crop, column_crop), name=f"{pool.name}_crop_{r}_{c}"), [source])
                self.weights[name] = {
                    "depthwise_kernel": np.full((row_kernel, column_kernel, channels, 1), 1.0 / (row_kernel * column_kernel), np.float32)
                }
                mean = keras.layers.DepthwiseConv2D((row_kernel, column_kernel), strides=layer.strides, use_bias=False, name=name)
                parts.append(add(mean, [cropped]))
            row_parts.append(joined(parts, 2, pool.name if len(rows) == 1 else f"{pool.name}_row_{r}"))
        joined(row_parts, 1, pool.name)  # the pool's name: its readers and its stored range stay
        position = graph.nodes.index(pool)
        graph.nodes[position : position + 1] = nodes

    def _unwrap(self, wrapper) -> keras.layers.Layer:
        inner = wrapper.layer
        name = inner.name
        self.wrappers[name] = wrapper
        self.weights[name] = _layer_weights(wrapper)
        if isinstance(wrapper.quantize_config, QuantizeConfig):
            self.kerasq_configs[name] = wrapper.quantize_config
        activation = None
        for quantize_activation in getattr(wrapper, "_quantize_activations", []):
            activation = _activation_name(quantize_activation.activation)
            if name not in self.kerasq_configs:  # kerasq quantizers keep their own state (copied as is)
                quantizer = quantize_activation.quantizer
                if hasattr(quantize_activation, "_pre_activation_vars"):
                    self.pre_activation_ranges[name] = _range(name, quantizer, quantize_activation._pre_activation_vars)
                if hasattr(quantize_activation, "_post_activation_vars"):
                    self.output_ranges[name] = _range(name, quantizer, quantize_activation._post_activation_vars)
        if getattr(wrapper, "_output_quantizers", None):
            self.output_ranges[name] = _range(name, wrapper._output_quantizers[0], wrapper._output_quantizer_vars)
        self.weight_quantizers[name] = [
            (_short_name(weight), quantizer, variables, weight)
            for weight, quantizer, variables in getattr(wrapper, "_weight_vars", [])
        ]
        if activation is None and "activation" in inner.get_config():
            activation = _activation_name(inner.activation)
        if name in self.output_ranges and type(inner) is keras.layers.AveragePooling2D:
            if inner.padding == "valid":
                return self._window_mean(inner, int(wrapper.input_shape[-1]))
            self.pool_inputs[name] = tuple(wrapper.input_shape)
        return _fresh_layer(inner, activation)

    def _separate_concatenations(self, graph: LayerGraph, concat: Node) -> None:
        """Round an input that is another Concatenate's output (through a max pool, say) onto this
        Concatenate's range, by a MUL by 1 on that edge.

        kerasq gives chained concatenations one grid (their inputs share it); tfmot rounds each
        onto a range of its own, so the outer one rounds the inner one's codes once more.
        """
        layers = {node.name: node for node in graph.nodes}
        for index, source in enumerate(concat.inbound):
            inner = source
            while inner in layers and type(layers[inner].layer) is not keras.layers.Concatenate and _copies_codes(layers[inner].layer):
                inner = layers[inner].inbound[0]
            if inner not in layers or inner not in self.output_ranges or type(layers[inner].layer) is not keras.layers.Concatenate:
                continue
            # A MUL by 1: an op with an output grid of its own, which requantizes its input onto it.
            rounding = ScalarArithmetic("multiply", 1.0, name=f"{concat.name}_input_{index}_rounding")
            graph.nodes.insert(graph.nodes.index(concat), Node(rounding, [source]))
            concat.inbound[index] = rounding.name
            self.weights[rounding.name] = {}

    def _window_mean(self, pool: keras.layers.AveragePooling2D, channels: int) -> keras.layers.Layer:
        """A valid-padded average pool that tfmot rounds onto its own range, as the DepthwiseConv2D
        with weights ``1/(kh·kw)`` computing the same means: TFLite's AVERAGE_POOL_2D keeps its
        input's grid, a depthwise convolution rounds the exact mean once onto any grid, and
        ``1/(kh·kw)`` is code 127 of its own scale, so nothing else is rounded."""
        if pool.data_format != "channels_last":
            return _fresh_layer(pool)
        height, width = pool.pool_size
        self.weights[pool.name] = {"depthwise_kernel": np.full((height, width, channels, 1), 1.0 / (height * width), np.float32)}
        return keras.layers.DepthwiseConv2D(
            (height, width), strides=pool.strides, padding="valid", use_bias=False, name=pool.name
        )

    def stored_range(self, key) -> tuple[float, float, int]:
        """A float tensor's stored range, or with ``("pre", layer)`` that layer's pre-activation range."""
        return self.pre_activation_ranges[key[1]] if isinstance(key, tuple) else self.output_ranges[key]

    def float_model(self) -> keras.Model:
        model = self.graph.build()
        for layer in model.layers:
            stored = self.weights.get(layer.name, {})
            missing = [_short_name(w) for w in layer.weights if _short_name(w) not in stored]
            if missing:
                raise ValueError(f"Layer {layer.name!r} of the tfmot model has no weights named {missing}.")
            layer.set_weights([stored[_short_name(w)] for w in layer.weights])
        return model


def _bands(size: int, kernel: int, stride: int) -> list[tuple[tuple[int, int], int]]:
    """The bands of a same-padded pooling axis: ``[((crop_before, crop_after), kernel)]``.

    Consecutive outputs whose windows lose the same cells to the padding form a band; a valid
    pool with the band's kernel over the input cropped to the band's cells computes its outputs.
    """
    outputs = -(-size // stride)
    before = max((outputs - 1) * stride + kernel - size, 0) // 2
    cuts = [(max(0, before - i * stride), max(0, i * stride - before + kernel - size)) for i in range(outputs)]
    bands, first = [], 0
    for i in range(1, outputs + 1):
        if i == outputs or cuts[i] != cuts[first]:
            top, bottom = cuts[first]
            start = first * stride - before + top
            end = (i - 1) * stride - before + kernel - bottom
            bands.append(((start, size - end), kernel - top - bottom))
            first = i
    return bands


def tfmot_float_model(model: keras.Model) -> keras.Model:
    """The float tf_keras model under a tfmot QAT model: each wrapper's layer, QuantizeLayers dropped.

    The layers are new (the tfmot model is not touched), with the wrapped layers' names,
    configurations and current weights.
    """
    return _TfmotGraph(model).float_model()


class _TfmotGrids(Scheme):
    """The grids a tfmot model stored, as a kerasq scheme for ``quantize_model``.

    Weights: ``bits``-bit stored-scale per channel (set from tfmot's range afterwards), or a
    ``kerasq.QuantizeConfig``'s scheme. Outputs: the fixed range tfmot stored for the tensor,
    else the kerasq config's quantizer, else an EMA quantizer (calibrated, or reported).
    """

    def __init__(self, post_ranges=None, pre_ranges=None, weight_bits=None, kerasq_schemes=None):
        self.post_ranges = dict(post_ranges or {})
        self.pre_ranges = dict(pre_ranges or {})
        self.layer_weight_bits = dict(weight_bits or {})
        self.kerasq_schemes = dict(kerasq_schemes or {})

    def weight_quantizer(self, layer, weight: WeightSpec):
        if layer.name in self.kerasq_schemes:
            return self.kerasq_schemes[layer.name].weight_quantizer(layer, weight)
        bits = self.layer_weight_bits.get(layer.name, 8)
        return StoredScaleWeightQuantizer(bits, narrow_range=True, channel_axes=weight.channel_axes)

    def activation_quantizer(self, layer, activation: ActivationSpec):
        ranges = self.pre_ranges if layer.name in self.pre_ranges and activation.kind == "linear" else self.post_ranges
        if layer.name in ranges:
            return FixedRangeQuantizer(*ranges[layer.name])
        if layer.name in self.kerasq_schemes:
            return self.kerasq_schemes[layer.name].activation_quantizer(layer, activation)
        return MovingAverageQuantizer(8)


def _chains(tfmot: _TfmotGraph, kept: set[str], heads: set[str]) -> dict[str, list[str]]:
    """For each layer with an output grid (``heads``), the float layers it computes in one kernel.

    A layer kerasq folds or fuses (batch norm, an activation) is not in the kerasq model
    (``kept``); it continues the chain of the layer feeding it, found back through layers that
    keep their input's grid (a Reshape between a convolution and its softmax).
    """
    graph = tfmot.graph
    chains = {name: [name] for name in heads}
    owner = {name: name for name in heads}  # float tensor -> head whose chain holds it
    for node in graph.nodes:
        if len(node.inbound) != 1:
            continue
        source = node.inbound[0]
        if node.name in kept:
            if node.name not in heads and source in owner:
                owner[node.name] = owner[source]  # a layer on its input's grid passes the chain on
            continue
        if source in owner:
            chains[owner[source]].append(node.name)
            owner[node.name] = owner[source]
    return chains


def _weight_state(layer: QuantizedLayer, entries: list, notes: list[str]) -> None:
    """Set ``layer``'s kernel and stored scale to what tfmot's weight quantizers compute."""
    for attribute, quantizer, variables, weight in entries:
        config = quantizer.get_config()
        if attribute not in layer.weight_quantizers:
            notes.append(f"{layer.name}: tfmot quantizes {attribute!r}, which kerasq does not quantize.")
            continue
        if not config.get("symmetric", False) or not config.get("narrow_range", False):
            notes.append(
                f"{layer.name}: tfmot's {attribute} quantizer is not symmetric narrow-range ({config}); "
                "the file uses a symmetric grid of the same range."
            )
        bits = int(config.get("num_bits", 8))
        quantized = quantizer(tf.convert_to_tensor(weight), False, weights=variables).numpy()
        lo = np.asarray(variables["min_var"], np.float32)
        hi = np.asarray(variables["max_var"], np.float32)
        reach = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float32)
        qmax = np.float32(2 ** (bits - 1) - 1)
        scale = np.where(reach > 0, reach / qmax, np.float32(1.0)).astype(np.float32)
        target = getattr(layer.layer, attribute)
        target.assign(quantized)
        vars_ = layer._weight_vars[attribute]
        shape = vars_["scale"].shape
        full = np.broadcast_to(scale.reshape([1] * (len(shape) - scale.ndim) + list(scale.shape)), shape)
        layer.weight_quantizers[attribute].set_scale(target, vars_, full)


def _folded_affines(tfmot: _TfmotGraph, chain: list[str]) -> list[keras.layers.Layer]:
    """The affine layers (batch norms) of a chain, which kerasq folds into its head."""
    layers = [tfmot.graph.node(name).layer for name in chain[1:]]
    return [layer for layer in layers if rule_for(layer) is not None and rule_for(layer).role == "affine"]


def _affine_factor(tfmot: _TfmotGraph, chain: list[str]) -> np.ndarray:
    """The per-channel factor ``a`` of the affine layers (batch norms) folded into a chain's head.

    tfmot applies batch norm in float after the quantized kernel; kerasq's channel scale is that
    same factor (not ``quantize_model``'s start, which also absorbs the weight rounding's gain).
    """
    factor = np.float32(1.0)
    for layer in _folded_affines(tfmot, chain):
        factor = (factor * rule_for(layer).affine(layer, int(layer.input_shape[-1]))[0]).astype(np.float32)
    return factor


def _copy_kerasq_state(layer: QuantizedLayer, wrapper) -> None:
    """Copy a kerasq-configured tfmot wrapper's quantizer variables into ``layer``."""
    for weight, _, variables in wrapper._weight_vars:
        attribute = _short_name(weight)
        for key, variable in variables.items():
            target = layer._weight_vars[attribute][key]
            if target.shape != variable.shape:
                raise ValueError(
                    f"Layer {layer.name!r}: its kerasq weight state {key!r} has shape {variable.shape} in the tfmot "
                    f"wrapper and {target.shape} in the integer model (a {type(layer.layer).__name__} kernel laid out "
                    "differently); export it from kerasq.quantize_model instead."
                )
            target.assign(variable)
    for quantize_activation in wrapper._quantize_activations:
        for source, target in (("_pre_activation_vars", layer._pre_activation_vars), ("_post_activation_vars", layer._activation_vars)):
            for key, variable in getattr(quantize_activation, source, {}).items():
                if key in target:
                    target[key].assign(variable)


def _set_range(layer, lo: float, hi: float, bits: int, notes: list[str], state: dict | None = None) -> None:
    """Give an 8-bit observed grid tfmot's stored range: a QuantizeInput/Requantize's, or ``state``."""
    if bits != 8:
        notes.append(f"{layer.name}: tfmot rounds this tensor onto {bits} bits; the integer model onto 8.")
    if state is None:
        (state,) = observer_states(layer)
    state["min"].assign(lo)
    state["max"].assign(hi)
    state["count"].assign(tf.ones_like(state["count"]))


def _range_sources(draft: QuantizedModel, tfmot: _TfmotGraph, chains: dict, notes: list[str]) -> tuple[dict, dict]:
    """Which stored tfmot range each kerasq layer's output (``post``) and pre-activation (``pre``)
    grid is: ``{layer: float tensor name}``, or ``("pre", layer)`` for a tfmot pre-activation range."""
    post, pre = {}, {}
    for layer in draft.layers:
        if not isinstance(layer, QuantizedLayer):
            continue
        chain = chains.get(layer.name, [layer.name])
        config = tfmot.kerasq_configs.get(layer.name)
        if config is not None and config.quantize_activations:
            # The kerasq quantizer rounds the layer's own output in tfmot's model.
            if len(chain) > 1:
                notes.append(
                    f"{layer.name}: tfmot rounds its output with the scheme's quantizer before {', '.join(chain[1:])}; "
                    f"the integer model folds or fuses them and rounds once, after {chain[-1]}."
                )
            continue
        if layer.activation.fusable:
            if chain[-1] in tfmot.output_ranges:
                post[layer.name] = chain[-1]
            continue
        # Before a softmax/sigmoid/tanh/swish: tfmot's pre-activation range, or the range of the
        # tensor an activation layer reads; after it, TFLite's fixed grid (swish: tfmot's range).
        before = [name for name in chain[:-1] if name in tfmot.output_ranges]
        if layer.name in tfmot.pre_activation_ranges:
            pre[layer.name] = ("pre", layer.name)
        elif before:
            pre[layer.name] = before[-1]
        if layer.activation.output_quantizer() is None and chain[-1] in tfmot.output_ranges:
            post[layer.name] = chain[-1]
    return post, pre


def _set_states(qmodel, tfmot: _TfmotGraph, chains: dict, used: set, notes: list[str]) -> list[str]:
    """Write tfmot's input ranges, weights, channel scales and kerasq quantizer state into
    ``qmodel``; returns the layers with a range still unknown."""
    unknown = []
    by_name = {layer.name: layer for layer in qmodel.layers}
    for layer in qmodel.layers:
        if isinstance(layer, QuantizeInput):
            # A Requantize before a Concatenate input rounds onto the Concatenate's range; a
            # QuantizeInput onto its model input's.
            if isinstance(layer, Requantize):
                source = next(n for n in by_name if layer.name.startswith(f"{n}_requantize_"))
            else:
                source = layer.name[: -len("_quantize")]
            if source in tfmot.output_ranges:
                _set_range(layer, *tfmot.output_ranges[source], notes)
                used.add(source)
            else:
                unknown.append(layer.name)
        elif isinstance(layer, QuantizedLayer):
            if layer.name in tfmot.kerasq_configs:
                _copy_kerasq_state(layer, tfmot.wrappers[layer.name])
            else:
                _weight_state(layer, tfmot.weight_quantizers.get(layer.name, []), notes)
            if layer.channel_scale is not None:
                factor = _affine_factor(tfmot, chains.get(layer.name, []))
                layer.channel_scale.assign(np.reshape(factor, layer.channel_scale.shape))
            if "count" in layer._activation_vars and int(np.max(layer._activation_vars["count"].numpy())) == 0:
                concat = _concatenation_reading(tfmot, chains.get(layer.name, [layer.name])[-1])
                if concat is not None:
                    # tfmot rounds this output only after the Concatenate (its ConcatTransform):
                    # on that range, each input's rounding is the concatenation's.
                    _set_range(layer, *tfmot.output_ranges[concat], notes, state=layer._activation_vars)
                    used.add(concat)
            if any(int(np.max(state["count"].numpy())) == 0 for state in observer_states(layer)):
                unknown.append(layer.name)
    return unknown


def _concatenation_reading(tfmot: _TfmotGraph, tensor: str) -> str | None:
    """The Concatenate with a stored range that every reader of a float ``tensor`` leads to, or None.

    tfmot's default 8-bit transforms switch off the output quantizers of a Concatenate's inputs
    (up to six) and round once after it, so those tensors have no range of their own. Readers
    that copy their input's codes (a max pool, a reshape, a Concatenate that feeds another, which
    tfmot leaves unrounded) are followed to the Concatenate.
    """
    found = set()
    pending = [tensor]
    while pending:
        for consumer in tfmot.graph.consumers(pending.pop()):
            layer = consumer.layer
            if type(layer) is keras.layers.Concatenate and consumer.name in tfmot.output_ranges:
                found.add(consumer.name)
            elif _copies_codes(layer) and consumer.name not in tfmot.output_ranges:
                pending.append(consumer.name)
            else:
                return None
    ranges = {tfmot.output_ranges[name] for name in found}
    return min(found) if len(ranges) == 1 else None


def _copies_codes(layer: keras.layers.Layer) -> bool:
    """Whether ``layer``'s integer kernel moves or picks its input's codes without rounding."""
    rule = rule_for(layer)
    return rule is not None and rule.role in ("same_grid", "shared_grid") and not rule.rounds


def _calibrate_only(qmodel: QuantizedModel, names: set[str], data) -> None:
    """Calibrate the ranges of the layers in ``names`` on ``data``; every other range stays tfmot's."""
    kept = {
        layer.name: [{key: value.numpy() for key, value in state.items()} for state in observer_states(layer)]
        for layer in qmodel.layers
        if isinstance(layer, (QuantizedLayer, QuantizeInput)) and layer.name not in names
    }
    calibrate(qmodel, data)
    for layer in qmodel.layers:
        for state, values in zip(observer_states(layer), kept.get(layer.name, [])):
            for key, variable in state.items():
                variable.assign(values[key])


def from_tfmot(model: keras.Model, representative_data=None, *, target=None) -> QuantizedModel:
    """The kerasq ``QuantizedModel`` that computes what a tfmot QAT model computes, in integers.

    Args:
      model: a tf_keras model from tfmot's ``quantize_model`` or ``quantize_apply`` (its default
        8-bit configs, ``default_n_bit`` weights, and ``kerasq.QuantizeConfig`` layers), after
        ``fit`` (its ranges are the ones tfmot stored).
      representative_data: optional float inputs; calibrates, with a note, any tensor kerasq
        must round where tfmot stored no range.
      target: the runtime arithmetic and weight storage of the result (``kerasq.Target``).
        Default: XNNPACK with low-bit weights stored as widened INT8 (``pack_int4=False``):
        the finer weight scale puts the int32 bias, which lives on the accumulator's grid
        ``s_in·s_w``, closer to tfmot's float bias (8-bit weights are stored alike either way).
    Returns:
      A ``QuantizedModel`` with fixed ranges (for export and comparison; train the tfmot model,
      not this one). ``tfmot_notes`` lists, by layer, what differs from the tfmot model.
    Raises:
      ValueError naming the layers whose grid is unknown when no ``representative_data`` is
      given, and anything ``kerasq.quantize_model`` refuses.
    """
    return _integer_model(model, representative_data, target)[0]


def _integer_model(model: keras.Model, representative_data, target) -> tuple[QuantizedModel, _TfmotGraph, dict]:
    """``from_tfmot``'s model, with the tfmot graph it read and each kerasq layer's chain."""
    tfmot = _TfmotGraph(model)
    float_model = tfmot.float_model()
    target = Target(pack_int4=False) if target is None else target
    kerasq_schemes = {name: config.scheme for name, config in tfmot.kerasq_configs.items()}
    options = dict(first_last_int8=False, target=target)
    # A first build says which layers kerasq keeps and fuses; the second gets tfmot's grids.
    draft = quantize_model(float_model, _TfmotGrids(kerasq_schemes=kerasq_schemes), **options)
    heads = {layer.name for layer in draft.layers if isinstance(layer, (QuantizedLayer, QuantizeInput))}
    chains = _chains(tfmot, {layer.name for layer in draft.layers}, heads)
    notes: list[str] = []
    post, pre = _range_sources(draft, tfmot, chains, notes)
    used = set(post.values()) | set(pre.values())
    weight_bits = {
        name: int(quantizer.get_config().get("num_bits", 8)) for name, entries in tfmot.weight_quantizers.items()
        for _, quantizer, _, _ in entries
    }
    grids = _TfmotGrids(
        {name: tfmot.stored_range(key) for name, key in post.items()},
        {name: tfmot.stored_range(key) for name, key in pre.items()},
        weight_bits,
        kerasq_schemes,
    )
    qmodel = quantize_model(float_model, grids, **options)
    unknown = _set_states(qmodel, tfmot, chains, used, notes)
    for name, (lo, hi, _) in tfmot.output_ranges.items():
        if name not in used:
            notes.append(
                f"{name}: tfmot rounds its output onto its own range [{lo:.6g}, {hi:.6g}]; the integer model does not "
                "round there (TFLite fuses it into the op before, or keeps the op on its input's grid)."
            )
    for name in tfmot.pre_activation_ranges:
        if ("pre", name) not in used:
            notes.append(f"{name}: tfmot rounds before its activation; the integer model does not round there.")
    if unknown:
        if representative_data is None:
            raise ValueError(
                f"The tfmot model stores no range for the output of {sorted(set(unknown))}, which the integer "
                "model must round; pass representative_data to calibrate them."
            )
        _calibrate_only(qmodel, set(unknown), representative_data)
        notes.extend(f"{name}: no tfmot range; calibrated on representative_data." for name in sorted(set(unknown)))
    qmodel.tfmot_notes = notes
    if notes:
        warnings.warn(
            "The integer model differs from the tfmot model where TFLite cannot express tfmot's choice:\n  "
            + "\n  ".join(notes),
            stacklevel=3,
        )
    return qmodel, tfmot, chains


def round_tfmot_biases(model: keras.Model, representative_data=None) -> dict[str, float]:
    """Move each bias of a tfmot QAT model onto the int32 grid its integer export adds it on.

    TFLite adds a bias as an int32 on the accumulator's grid ``s_in·s_w·γ/σ``; tfmot's Keras model
    adds a float, so a value within that rounding (a fraction of an output LSB) of a rounding
    boundary lands one code away in the file. After this call the tfmot model adds exactly the
    bias the file holds: the folded bias ``a·(b - μ) + β`` of each layer (its own bias, or the last
    batch norm folded into it, through ``β``) becomes its int32 code times that grid. The model
    then predicts what ``tflite_export.convert(model)`` computes, up to its own float32 rounding.
    Call it after training (a further ``fit`` moves the biases off the grid again); it changes
    ``model`` in place and nothing else.

    Args:
      model: a tfmot QAT model (``quantize_model``/``quantize_apply``), as ``from_tfmot`` takes.
      representative_data: as for ``from_tfmot`` (only for tensors tfmot stored no range for).
    Returns:
      ``{variable name: largest shift}`` of every bias or β moved, in the variable's units.
    """
    integer_model, tfmot, chains = _integer_model(model, representative_data, None)
    wrapped = {wrapper.layer.name: wrapper.layer for wrapper in model.layers if _is_wrapper(wrapper)}
    shifts = {}
    for layer in integer_model.layers:
        if not isinstance(layer, QuantizedLayer) or layer.quantized_bias() is None:
            continue
        chain = chains.get(layer.name, [layer.name])
        config = tfmot.kerasq_configs.get(layer.name)
        if config is not None and config.quantize_activations and len(chain) > 1:
            continue  # tfmot rounds before the batch norm: no single bias is the file's
        folded = _folded_affines(tfmot, chain)
        owner_name = folded[-1].name if folded else layer.name
        owner = wrapped.get(owner_name) or model.get_layer(owner_name)
        variable = getattr(owner, "beta", None) if folded else getattr(owner, "bias", None)
        if variable is None:  # no β (center=False) or no bias: the folded bias is not the model's to move
            continue
        shift = np.asarray(layer.quantized_bias(), np.float64).reshape(-1) - layer.layer.bias.numpy().reshape(-1)
        variable.assign((variable.numpy().astype(np.float64) + shift.reshape(variable.shape)).astype(np.float32))
        shifts[variable.name] = float(np.max(np.abs(shift)))
    return shifts
