"""Model transforms: fold, annotate with schemes, wrap, calibrate — ``quantize_model`` and friends.

``quantize_model`` never touches the caller's model: it reads its graph, clones each layer,
folds inference-mode BatchNormalization into the preceding Conv2D/DepthwiseConv2D/Dense (as a
per-channel scale after the weight quantizer, or into the kernel), absorbs standalone
activation layers into the layer before them (as an int8 kernel fuses them), resolves each
layer's scheme and wraps it in ``QuantizedLayer``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import numpy as np

from kerasq import ops
from kerasq.compat import keras
from kerasq.graph import LayerGraph, Node
from kerasq.layers import ActivationSpec, QuantizedLayer, QuantizeInput
from kerasq.registry import all_custom_objects
from kerasq.schemes.base import WEIGHT_LAYERS, Linear, Scheme, get_scheme

# Layers that change no values on TFLite's int8 grid: they pass through unwrapped.
PASS_THROUGH_LAYERS = (
    keras.layers.MaxPooling2D,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Dropout,
    keras.layers.InputLayer,
)
# Layers without weights whose int8 output needs its own range.
OUTPUT_QUANTIZED_LAYERS = (keras.layers.Add, keras.layers.Concatenate, keras.layers.GlobalAveragePooling2D)
ACTIVATION_LAYERS = (keras.layers.Activation, keras.layers.ReLU, keras.layers.Softmax)
SUPPORTED_LAYERS = WEIGHT_LAYERS + PASS_THROUGH_LAYERS + OUTPUT_QUANTIZED_LAYERS + ACTIVATION_LAYERS + (
    keras.layers.BatchNormalization,
)


def _clone(layer: keras.layers.Layer, **overrides) -> keras.layers.Layer:
    config = {**layer.get_config(), **overrides}
    return type(layer).from_config(config)


def _activation_of(layer: keras.layers.Layer) -> ActivationSpec:
    return ActivationSpec.from_keras(getattr(layer, "activation", None) or "linear")


BN_FOLDING = ("channel_scale", "kernel")


def _fold_batch_norms(graph: LayerGraph, weights: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Replace Conv/Dense → BatchNormalization pairs by one layer with the folded bias.

    The kernel stays as it was; returns ``{layer name: γ/σ}``, the per-channel factor that
    ``quantize_model`` applies either to the kernel or after the weight quantizer.
    """
    factors = {}
    for node in list(graph.nodes):
        if not isinstance(node.layer, keras.layers.BatchNormalization):
            continue
        bn = node.layer
        producer = graph.node(node.inbound[0]) if node.inbound[0] not in graph.inputs else None
        foldable = (
            producer is not None
            and isinstance(producer.layer, WEIGHT_LAYERS)
            and _activation_of(producer.layer).kind == "linear"
            and len(graph.consumers(producer.name)) == 1
            and bn.axis in ([-1], [len(bn.input_shape) - 1], -1)
        )
        if not foldable:
            raise ValueError(
                f"BatchNormalization {bn.name!r} does not directly follow a linear Conv2D, DepthwiseConv2D "
                "or Dense layer, so it cannot be folded for integer export. Received: input from "
                f"{node.inbound[0]!r}"
            )
        params = dict(zip([w.name.split("/")[-1].split(":")[0] for w in bn.weights], weights[bn.name]))
        layer = producer.layer
        kernel = weights[layer.name][0]
        bias = weights[layer.name][1] if layer.use_bias else None
        factors[layer.name], folded_bias = ops.batch_norm_factors(
            bias, params.get("gamma"), params.get("beta"), params["moving_mean"], params["moving_variance"], bn.epsilon
        )
        producer.layer = _clone(layer, use_bias=True)
        weights[layer.name] = [kernel, folded_bias]
        graph.remove(bn.name)
    return factors


def _absorb_activations(graph: LayerGraph) -> dict[str, ActivationSpec]:
    """Move standalone activation layers into the layer before them; returns each layer's activation."""
    activations = {
        n.name: _activation_of(n.layer) for n in graph.nodes if not isinstance(n.layer, ACTIVATION_LAYERS)
    }
    for node in list(graph.nodes):
        if not isinstance(node.layer, ACTIVATION_LAYERS):
            continue
        source = node.inbound[0]
        producer = None if source in graph.inputs else graph.node(source)
        spec = ActivationSpec.from_keras(node.layer)
        absorbable = (
            producer is not None
            and isinstance(producer.layer, WEIGHT_LAYERS + OUTPUT_QUANTIZED_LAYERS)
            and activations[producer.name].kind == "linear"
            and len(graph.consumers(producer.name)) == 1
        )
        if not absorbable:
            raise ValueError(
                f"Activation layer {node.name!r} must directly follow a Conv2D, DepthwiseConv2D, Dense, Add, "
                f"Concatenate or GlobalAveragePooling2D layer with a linear activation. Received: input from {source!r}"
            )
        activations[producer.name] = spec
        graph.remove(node.name)
    return activations


def _producers(graph: LayerGraph, name: str) -> list[str]:
    """Nodes whose output reaches ``name``'s input through pass-through layers only."""
    found, stack = [], list(graph.node(name).inbound)
    while stack:
        source = stack.pop()
        if source in graph.inputs:
            continue
        node = graph.node(source)
        if isinstance(node.layer, PASS_THROUGH_LAYERS):
            stack.extend(node.inbound)
        else:
            found.append(source)
    return found


def _resolve_schemes(
    graph: LayerGraph,
    scheme: Scheme,
    layer_schemes: Mapping[str, Scheme | str | None] | None,
    first_last_int8: bool | None,
) -> dict[str, Scheme | None]:
    """Scheme per layer: explicit ``layer_schemes`` entry > first/last int8 policy > ``scheme``."""
    names = [n.name for n in graph.nodes]
    layer_schemes = dict(layer_schemes or {})
    unknown = sorted(set(layer_schemes) - set(names))
    if unknown:
        raise ValueError(f"layer_schemes names layers the model does not have: {unknown}; layers: {names}")
    resolved: dict[str, Scheme | None] = {n: scheme for n in names}
    if first_last_int8 is None:
        first_last_int8 = scheme.is_low_bit
    weight_layers = [n.name for n in graph.nodes if isinstance(n.layer, WEIGHT_LAYERS)]
    if first_last_int8 and weight_layers:
        for name in {weight_layers[0], weight_layers[-1]}:
            resolved[name] = Linear()
        # "Last layer at 8 bits" covers its input too: a weightless layer feeding it (global
        # pooling, Add, Concatenate) gets an int8 output instead of a low-bit one.
        for name in _producers(graph, weight_layers[-1]):
            if isinstance(graph.node(name).layer, OUTPUT_QUANTIZED_LAYERS):
                resolved[name] = Linear()
    for name, value in layer_schemes.items():
        resolved[name] = None if value is None else get_scheme(value)
    return resolved


def quantize_model(
    model: keras.Model,
    scheme: Scheme | str = "int8",
    layer_schemes: Mapping[str, Scheme | str | None] | None = None,
    *,
    first_last_int8: bool | None = None,
    bn_folding: str = "channel_scale",
) -> keras.Model:
    """A quantization-aware copy of a tf_keras Sequential or Functional model.

    Args:
      model: float model with a defined input shape; left unchanged.
      scheme: a ``kerasq.schemes`` object or name (``"int8"``; see ``available_schemes()``).
      layer_schemes: per-layer override by layer name; ``None`` keeps that layer float (it then
        blocks integer-only export). An entry here always wins over the policy below.
      first_last_int8: keep the first and last Conv/Dense layers at ``Linear()`` int8; defaults
        to on for schemes below 8 bits (seed lecture: these layers are sensitive and cheap).
      bn_folding: where a BatchNormalization's ``γ/σ`` goes. ``"channel_scale"`` (default): a
        trainable per-output-channel factor applied after the weight quantizer, so the scheme
        quantizes the layer's own kernel (per-tensor BWN/TWN/DoReFa keep their meaning, as in
        their papers where batch norm follows the convolution); the export multiplies it into
        the per-channel weight scales. ``"kernel"``: multiplied into the kernel before
        quantization (classic folding; keeps per-tensor schemes per tensor in the .tflite).
    Returns:
      A new, uncompiled Functional model: ``QuantizeInput`` on the input, each supported layer
      wrapped in ``QuantizedLayer`` under its original name, BatchNormalization folded. Compile
      and ``fit`` it as usual; export with ``tflite_export.convert``.
    Raises:
      ValueError naming the first unsupported layer (e.g. Conv3D, Lambda) unless ``layer_schemes``
      maps it to ``None``; for BatchNormalization or activations that cannot be folded.
    """
    scheme = get_scheme(scheme)
    if bn_folding not in BN_FOLDING:
        raise ValueError(f"bn_folding must be one of {BN_FOLDING}. Received: {bn_folding!r}")
    graph = LayerGraph.from_model(model)
    keep_float = {name for name, value in (layer_schemes or {}).items() if value is None}
    for node in graph.nodes:
        if not isinstance(node.layer, SUPPORTED_LAYERS) and node.name not in keep_float:
            raise ValueError(
                f"Layer {node.name!r} ({type(node.layer).__name__}) is not supported by kerasq.quantize_model. "
                f"Supported: {', '.join(sorted({c.__name__ for c in SUPPORTED_LAYERS}))}. To keep it in float "
                f"(the model then cannot be exported integer-only), pass layer_schemes={{{node.name!r}: None}}."
            )
    weights = {n.name: n.layer.get_weights() for n in graph.nodes}
    bn_factors = _fold_batch_norms(graph, weights)
    activations = _absorb_activations(graph)
    for node in graph.nodes:  # fresh layers: the caller's model keeps its own
        node.layer = _clone(node.layer)
    schemes = _resolve_schemes(graph, scheme, layer_schemes, first_last_int8)

    channel_scales = {}
    for name, factor in bn_factors.items():
        if bn_folding == "channel_scale" and schemes[name] is not None:
            channel_scales[name] = factor
        else:
            depthwise = isinstance(graph.node(name).layer, keras.layers.DepthwiseConv2D)
            weights[name][0] = ops.scale_output_channels(weights[name][0], factor, depthwise)

    wrapped = []
    for node in graph.nodes:
        layer, node_scheme = node.layer, schemes[node.name]
        if node_scheme is None or isinstance(layer, PASS_THROUGH_LAYERS):
            wrapped.append(Node(layer, node.inbound))
            continue
        spec = activations[node.name]
        if hasattr(layer, "activation"):
            layer = _clone(layer, activation="linear")
        if spec.fusable:
            pre, post = None, node_scheme.activation_quantizer(layer, spec)
        else:
            pre, post = node_scheme.activation_quantizer(layer, ActivationSpec()), spec.output_quantizer()
        weight_quantizer = node_scheme.weight_quantizer(layer) if isinstance(layer, WEIGHT_LAYERS) else None
        wrapped.append(
            Node(
                QuantizedLayer(layer, weight_quantizer, spec, post, pre, channel_scale=node.name in channel_scales),
                node.inbound,
            )
        )

    # One QuantizeInput per model input, named after it.
    input_map = {}
    for input_name in graph.inputs:
        quantize = QuantizeInput(name=f"{input_name}_quantize")
        input_map[input_name] = quantize.name
        wrapped.insert(0, Node(quantize, [input_name]))
    for node in wrapped:
        if not isinstance(node.layer, QuantizeInput):
            node.inbound = [input_map.get(n, n) for n in node.inbound]
    graph.nodes = wrapped
    qmodel = graph.build(name=f"{model.name}_quantized")
    for node in wrapped:
        inner = node.layer.layer if isinstance(node.layer, QuantizedLayer) else node.layer
        if weights.get(inner.name):
            inner.set_weights(weights[inner.name])
        if isinstance(node.layer, QuantizedLayer):
            node.layer.initialize_quantizers()
            if node.layer.channel_scale is not None:
                node.layer.initialize_channel_scale(channel_scales[node.layer.name])
    return qmodel


def quantized_layers(model: keras.Model) -> list[QuantizedLayer]:
    """The ``QuantizedLayer`` wrappers of a model returned by ``quantize_model``, in order."""
    return [layer for layer in model.layers if isinstance(layer, QuantizedLayer)]


def quantized_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """Each quantized layer's kernel exactly as the inference forward pass uses it.

    Returns ``{layer_name: Q(kernel)}``: float32 values on the layer's grid (dequantized), with
    the float kernel's shape and Keras layout (Conv2D ``[h, w, in, out]``, Dense ``[in, out]``,
    DepthwiseConv2D ``[h, w, in, multiplier]``), BatchNormalization folded in where it was
    (for ``bn_folding="channel_scale"`` the kernel is ``Q(W)·γ/σ``, its grid is then per channel).
    """
    result = {layer.name: layer.quantized_kernel() for layer in quantized_layers(model) if layer.weight_quantizer}
    if not result and not any(isinstance(layer, QuantizeInput) for layer in model.layers):
        raise ValueError(f"Model {model.name!r} has no kerasq quantized layers; call kerasq.quantize_model first.")
    return result


def calibrate(model: keras.Model, x: np.ndarray, *, batch_size: int = 64, steps: int | None = None) -> keras.Model:
    """Observe activation ranges of a quantized model on ``x`` without changing its weights.

    Runs the model in training mode (range observers update, no optimizer step) over up to
    ``steps`` batches of ``batch_size`` samples. This is post-training calibration for a model
    that was not fit, and a warm start for QAT. Raises ``ValueError`` on empty or NaN data.
    """
    x = np.asarray(x, np.float32)
    if x.size == 0 or len(x) == 0:
        raise ValueError(f"Calibration data is empty. Received: x.shape={x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("Calibration data contains NaN or infinite values.")
    expected = tuple(model.input_shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise ValueError(f"Calibration data has sample shape {tuple(x.shape[1:])}, the model expects {expected}.")
    batches = range(0, len(x), batch_size)
    for i, start in enumerate(batches):
        if steps is not None and i >= steps:
            break
        model(x[start : start + batch_size], training=True)
    return model


@contextlib.contextmanager
def quantize_scope() -> Iterator[None]:
    """Context in which ``tf_keras.models.load_model`` restores kerasq models (.keras, .h5, SavedModel).

    kerasq classes are also registered globally as ``kerasq>Name``; the scope makes the bare
    names resolvable too (e.g. in configs written by hand).
    """
    with keras.utils.custom_object_scope(all_custom_objects()):
        yield
