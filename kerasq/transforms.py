"""Model transforms: ``quantize_model``, ``calibrate`` and friends.

``quantize_model`` never touches the caller's model. It reads the model's graph, checks every
layer against ``kerasq.layer_table`` (reporting all unsupported layers at once), folds
per-channel affine layers (inference-mode BatchNormalization, Rescaling, Normalization) into the
weight layer before it (as a per-channel scale after the weight quantizer, or into the kernel)
or makes them ops of their own, absorbs standalone activation layers into the layer
whose output they act on (as an int8 kernel fuses them), resolves each layer's scheme, groups
the inputs of each Concatenate (Maximum, Minimum) onto one shared grid, wraps every layer with weights or an own
output grid in ``QuantizedLayer`` and returns a linked ``QuantizedModel``.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from kerasq import ops
from kerasq.activations import ActivationSpec
from kerasq.compat import keras, tf
from kerasq.graph import LayerGraph, Node
from kerasq.keras3 import is_keras3_model, to_tf_keras
from kerasq.layer_table import GRID_KEEPING_ROLES, batch_norm_params, rule_for, supported_layer_names, unsupported_reason
from kerasq.layers import OnInputGrid, QuantizedLayer, QuantizeInput, Requantize, kerasq_layers
from kerasq.model import QuantizedModel, quantization_mode
from kerasq.observers import HistogramCollector, HistogramObserver, MinMaxObserver, ObserverByTensor, get_observer
from kerasq.quantizers import MovingAverageQuantizer
from kerasq.registry import all_custom_objects
from kerasq.runtimes import Target
from kerasq.schemes.base import Linear, Scheme, get_scheme

BN_FOLDING = ("channel_scale", "kernel")


def _clone(layer: keras.layers.Layer, **overrides) -> keras.layers.Layer:
    config = {**layer.get_config(), **overrides}
    return type(layer).from_config(config)


def _role(layer: keras.layers.Layer) -> str | None:
    rule = rule_for(layer.layer if isinstance(layer, OnInputGrid) else layer)
    return None if rule is None else rule.role


def _activation_of(layer: keras.layers.Layer) -> ActivationSpec:
    return ActivationSpec.from_keras(getattr(layer, "activation", None) or "linear")


def _check_layers(graph: LayerGraph, keep_float: set[str]) -> None:
    """Raise one ``ValueError`` listing every layer that cannot be quantized, with the reason."""
    problems = []
    for node in graph.nodes:
        if node.name in keep_float:
            continue
        reason = unsupported_reason(node.layer)
        if reason is None and hasattr(node.layer, "activation"):
            try:
                _activation_of(node.layer)
            except ValueError as error:
                reason = str(error)
        if reason is None and _role(node.layer) == "activation":
            try:
                ActivationSpec.from_keras(node.layer)
            except ValueError as error:
                reason = str(error)
        if reason is not None:
            problems.append(f"  {node.name!r} ({type(node.layer).__name__}): {reason}")
    if problems:
        raise ValueError(
            f"kerasq.quantize_model cannot quantize {len(problems)} layer(s) of model {graph.name!r}:\n"
            + "\n".join(problems)
            + f"\nSupported layers: {', '.join(supported_layer_names())}. To keep a layer in float (the model "
            "then cannot be exported integer-only), pass layer_schemes={name: None}."
        )


def _split_layers(graph: LayerGraph, weights: dict[str, list[np.ndarray]]) -> None:
    """Replace each ``"split"`` layer (SeparableConv2D) by the chain of layers its table entry gives.

    The last layer of the chain keeps the original name, so consumers and outputs stay wired.
    """
    for node in list(graph.nodes):
        rule = rule_for(node.layer)
        if rule is None or rule.role != "split":
            continue
        chain, inbound = [], node.inbound
        for layer, layer_weights in rule.split(node.layer):
            chain.append(Node(layer, list(inbound)))
            weights[layer.name] = layer_weights
            inbound = [layer.name]
        index = graph.nodes.index(node)
        graph.nodes[index : index + 1] = chain


def _fold_affines(graph: LayerGraph, weights: dict[str, list[np.ndarray]]) -> tuple[dict[str, np.ndarray], set[str]]:
    """Fold each per-channel affine layer (BatchNormalization, Rescaling, Normalization) away.

    ``y = a·x + c`` right after a linear Conv2D, DepthwiseConv2D or Dense that has no other
    consumer folds into it: its bias becomes ``a·b + c`` and its kernel keeps its values, with
    ``a`` returned as the layer's per-channel factor (``quantize_model`` applies it to the kernel
    or after the weight quantizer; factors of successive affine layers multiply). Any other
    affine layer (batch norm before a convolution, after a ReLU or a Concatenate; input
    preprocessing) becomes a weight op of its own under the same name: a 1x1 DepthwiseConv2D on
    images, a diagonal Dense on features, whose one weight per channel an 8-bit per-channel grid
    holds exactly. Returns ``({layer name: factor}, names of the affine layers made into ops)``.
    """
    factors: dict[str, np.ndarray] = {}
    own_ops: set[str] = set()
    for node in list(graph.nodes):
        rule = rule_for(node.layer)
        if rule is None or rule.role != "affine":
            continue
        layer = node.layer
        channels = int(layer.input_shape[-1])
        scale, offset = rule.affine(layer, channels)
        producer = graph.node(node.inbound[0]) if node.inbound[0] not in graph.inputs else None
        foldable = (
            producer is not None
            and rule_for(producer.layer) is not None
            and rule_for(producer.layer).folds_batch_norm
            and _activation_of(producer.layer).kind == "linear"
            and len(graph.consumers(producer.name)) == 1
        )
        if foldable:
            name = producer.layer.name
            kernel = weights[name][0]
            bias = weights[name][1] if producer.layer.use_bias else np.zeros(channels)
            factors[name] = (factors.get(name, 1.0) * scale).astype(np.float32)
            producer.layer = _clone(producer.layer, use_bias=True)
            weights[name] = [kernel, (bias * scale + offset).astype(np.float32)]
            graph.remove(node.name)
            continue
        rank = len(layer.input_shape)
        if rank not in (2, 4):
            raise ValueError(
                f"{type(layer).__name__} {layer.name!r} on a rank-{rank} input does not directly follow a linear "
                "Conv2D, DepthwiseConv2D or Dense layer to fold into, and runs as an op of its own on rank 2 "
                "(features) or rank 4 (images) only."
            )
        if rank == 4:
            node.layer = keras.layers.DepthwiseConv2D(1, use_bias=True, name=layer.name)
            weights[layer.name] = [scale.reshape(1, 1, channels, 1).astype(np.float32), offset.astype(np.float32)]
        else:
            node.layer = keras.layers.Dense(channels, use_bias=True, name=layer.name)
            weights[layer.name] = [np.diag(scale).astype(np.float32), offset.astype(np.float32)]
        own_ops.add(layer.name)
    return factors, own_ops


class FoldedGraph(NamedTuple):
    """A float model's graph with its affine layers folded (``fold_affine_layers``).

    ``weights``: each layer's float weights (``get_weights`` order) with the affine maps folded
    in; ``statistics``: for each op a BatchNormalization's output became, the per-channel mean
    ``β`` and standard deviation ``|γ|`` of that output as the batch norm normalizes it
    (float64 ``[channels]`` each), the prior of data-free methods (high-bias absorption,
    analytical bias correction).
    """

    graph: LayerGraph
    weights: dict
    statistics: dict


def fold_affine_layers(model: keras.Model) -> FoldedGraph:
    """The graph of a float model with SeparableConv2D split and every affine layer folded into kernels.

    Each BatchNormalization (Rescaling, Normalization) right after a linear Conv/Dense is folded
    into its kernel and bias (``W·a``, ``a·b + c``); any other becomes a 1x1 DepthwiseConv2D or
    diagonal Dense under its own name (see ``quantize_model``). The float function is unchanged.
    The model itself is not touched; layers in the graph are the model's (clone before building).
    """
    graph = LayerGraph.from_model(model)
    weights = {n.name: n.layer.get_weights() for n in graph.nodes}
    moments = {}
    for node in graph.nodes:
        if isinstance(node.layer, keras.layers.BatchNormalization):
            params = batch_norm_params(node.layer, int(node.layer.input_shape[-1]))
            moments[node.name] = (node.inbound[0], params["beta"], np.abs(params["gamma"]))
    _split_layers(graph, weights)
    factors, _ = _fold_affines(graph, weights)
    for name, factor in factors.items():
        depthwise = isinstance(graph.node(name).layer, keras.layers.DepthwiseConv2D)
        weights[name][0] = ops.scale_output_channels(weights[name][0], factor, depthwise)
    names = {n.name for n in graph.nodes}
    statistics = {}
    for bn_name, (producer, mean, std) in moments.items():
        owner = bn_name if bn_name in names else producer
        if owner in names:
            statistics[owner] = (mean, std)
    return FoldedGraph(graph, weights, statistics)


def build_float(graph: LayerGraph, weights: Mapping[str, list], name: str) -> keras.Model:
    """A new float Functional model of ``graph`` with fresh copies of its layers and ``weights``."""
    for node in graph.nodes:
        node.layer = _clone(node.layer)
    model = graph.build(name=name)
    for node in graph.nodes:
        if weights.get(node.name):
            node.layer.set_weights(weights[node.name])
    return model


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """A new float model computing what ``model`` computes with its batch norms folded (``fold_affine_layers``)."""
    folded = fold_affine_layers(model)
    return build_float(folded.graph, folded.weights, f"{model.name}_folded")


def _absorb_activations(graph: LayerGraph) -> dict[str, ActivationSpec]:
    """Move standalone activation layers into the layer whose output they act on.

    A linear activation is dropped. Another activation acts on the output of the nearest layer
    with its own grid, through single-consumer layers that keep their input's grid and commute
    with it (``_commutes``), if that layer's own activation is linear. Returns each layer's
    activation.
    """
    is_activation = lambda n: _role(n.layer) == "activation"  # noqa: E731
    activations = {n.name: _activation_of(n.layer) for n in graph.nodes if not is_activation(n)}
    for node in list(graph.nodes):
        if not is_activation(node):
            continue
        spec = ActivationSpec.from_keras(node.layer)
        if spec.kind == "linear":
            graph.remove(node.name)
            continue
        source, chain_ok, commutes = node.inbound[0], True, True
        while source not in graph.inputs and _role(graph.node(source).layer) == "same_grid":
            chain_ok = chain_ok and len(graph.consumers(source)) == 1
            commutes = commutes and _commutes(spec, graph.node(source).layer)
            source = graph.node(source).inbound[0]
        producer = None if source in graph.inputs else graph.node(source)
        absorbable = (
            producer is not None
            and chain_ok
            and commutes
            and _role(producer.layer) in ("weight", "own_grid")
            and activations[producer.name].kind == "linear"
            and len(graph.consumers(producer.name)) == 1
        )
        if not absorbable and spec == ActivationSpec("relu"):
            # An uncapped ReLU keeps its input's grid: TFLite's RELU with equal input and output
            # quantization is max(q, z), exactly what Keras computes on grid values.
            node.layer = keras.layers.ReLU(name=node.name)
            continue
        if not absorbable:
            raise ValueError(
                f"Activation layer {node.name!r} ({spec.kind}) must act on the output of a Conv2D, DepthwiseConv2D, "
                "Dense, Add or GlobalAveragePooling2D layer with a linear activation and no other consumer "
                "(directly, or through pooling/reshape layers it commutes with); only an uncapped ReLU runs as an "
                f"op of its own elsewhere. Received: input from {node.inbound[0]!r}"
            )
        activations[producer.name] = spec
        graph.remove(node.name)
    return activations


def _commutes(spec: ActivationSpec, layer: keras.layers.Layer) -> bool:
    """Does ``act(layer(x)) == layer(act(x))`` for a same-grid ``layer``?

    Every activation commutes with Dropout (identity in inference) and with reshapes that keep
    the last axis (softmax normalizes over it); elementwise ones with any reshape; monotone
    ones with max pooling; those with ``act(0) == 0`` (ReLU) with zero padding.
    """
    if isinstance(layer, keras.layers.Dropout):
        return True
    if isinstance(layer, (keras.layers.Reshape, keras.layers.Flatten)):
        return spec.kind != "softmax" or layer.input_shape[-1] == layer.output_shape[-1]
    if isinstance(layer, keras.layers.MaxPooling2D):
        return spec.kind != "softmax"
    if isinstance(layer, keras.layers.ZeroPadding2D):
        return spec.fusable
    return False


def _producers(graph: LayerGraph, name: str) -> list[str]:
    """Nodes whose output reaches ``name``'s input through same-grid layers only."""
    found, stack = [], list(graph.node(name).inbound)
    while stack:
        source = stack.pop()
        if source in graph.inputs:
            continue
        node = graph.node(source)
        if _role(node.layer) in GRID_KEEPING_ROLES:
            stack.extend(node.inbound)
        else:
            found.append(source)
    return found


def _resolve_schemes(
    graph: LayerGraph,
    scheme: Scheme,
    layer_schemes: Mapping[str, Scheme | str | None],
    first_last_int8: bool | None,
    folded: Mapping[str, keras.layers.Layer],
    affine_ops: set[str],
) -> dict[str, Scheme | None]:
    """Scheme per layer: explicit ``layer_schemes`` entry > first/last int8 policy > ``scheme``.

    An affine layer run as its own op (``_fold_affines``) gets ``Linear()``: its one weight per
    channel is exact on an 8-bit per-channel grid, and a low-bit grid would change the map.
    """
    names = [n.name for n in graph.nodes]
    # int8 layers keep how the scheme observes capped ReLUs (fixed [0, 6], or calibrated for PTQ).
    int8 = Linear(calibrated_caps=getattr(scheme, "calibrated_caps", False))
    resolved: dict[str, Scheme | None] = {n: int8 if n in affine_ops else scheme for n in names}
    if first_last_int8 is None:
        first_last_int8 = scheme.is_low_bit
    weight_layers = [n.name for n in graph.nodes if _role(n.layer) == "weight" and n.name not in affine_ops]
    if first_last_int8 and weight_layers:
        for name in {weight_layers[0], weight_layers[-1]}:
            resolved[name] = int8
        # "Last layer at 8 bits" covers its input too: a weightless layer feeding it (global
        # pooling, Add) gets an int8 output instead of a low-bit one.
        for name in _producers(graph, weight_layers[-1]):
            if _role(graph.node(name).layer) == "own_grid":
                resolved[name] = int8
    for name, value in layer_schemes.items():
        if name in folded:
            raise ValueError(
                f"layer_schemes names {name!r}, a {type(folded[name]).__name__} that quantize_model folds into "
                "the layer before it; give the scheme for that layer instead."
            )
        resolved[name] = None if value is None else get_scheme(value)
    return resolved


def _wrap(node: Node, scheme: Scheme, spec: ActivationSpec, channel_scale: bool) -> QuantizedLayer:
    layer = node.layer
    if hasattr(layer, "activation"):
        layer = _clone(layer, activation="linear")
    if spec.fusable:
        pre, post = None, scheme.activation_quantizer(layer, spec)
    else:
        # softmax/sigmoid/tanh end on their op's fixed grid; swish on a grid of the scheme's.
        pre = scheme.activation_quantizer(layer, ActivationSpec())
        post = spec.output_quantizer() or scheme.activation_quantizer(layer, spec)
    return QuantizedLayer(layer, scheme.weight_quantizers(layer), spec, post, pre, channel_scale=channel_scale)


def _shareable(layer) -> bool:
    """Can ``layer``'s output join a shared grid (an 8-bit range observed from data)?"""
    if isinstance(layer, QuantizedLayer):
        quantizer, pre = layer.activation_quantizer, layer.pre_activation_quantizer
    elif isinstance(layer, QuantizeInput):
        quantizer, pre = layer.quantizer, None
    else:
        return False
    return pre is None and type(quantizer) is MovingAverageQuantizer and quantizer.bits == 8


def _share_grids(nodes: list[Node]) -> None:
    """Put the inputs of every shared-grid layer on one grid.

    CONCATENATION copies codes and MAXIMUM/MINIMUM compare them, so TFLite needs one grid on
    their inputs and output. Each input's grid owner (through same-grid layers) joins the
    layer's group; a group is the union of groups that share a member. An owner whose grid
    cannot be shared (low-bit, fixed-range, binary) gets a ``Requantize`` layer before that
    layer. The members'
    ``grid_group`` lists every member; each observes its own range and rounds onto their union.
    """
    by_name = {node.name: node for node in nodes}
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    def owner(name: str) -> str:
        while name in by_name and _role(by_name[name].layer) in GRID_KEEPING_ROLES:
            name = by_name[name].inbound[0]
        return name

    for node in list(nodes):
        if _role(node.layer) != "shared_grid":
            continue
        members = []
        for index, source in enumerate(node.inbound):
            source_owner = owner(source)
            if source_owner not in by_name or not _shareable(by_name[source_owner].layer):
                requantize = Requantize(name=f"{node.name}_requantize_{index}")
                bridge = Node(requantize, [source])
                nodes.insert(nodes.index(node), bridge)
                by_name[requantize.name] = bridge
                node.inbound[index] = requantize.name
                source_owner = requantize.name
            members.append(source_owner)
        for member in members[1:]:
            parent[find(member)] = find(members[0])
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    for members in groups.values():
        ordered = [n.name for n in nodes if n.name in members]
        for name in ordered:
            by_name[name].layer.grid_group = list(ordered)


def quantize_model(
    model: keras.Model,
    scheme: Scheme | str = "int8",
    layer_schemes: Mapping[str, Scheme | str | None] | None = None,
    *,
    first_last_int8: bool | None = None,
    bn_folding: str = "channel_scale",
    target: Target | str | dict | None = None,
    calibration_data=None,
) -> QuantizedModel:
    """A quantization-aware copy of a tf_keras Sequential or Functional model.

    Args:
      model: float model with a defined input shape; left unchanged. A Keras 3 model is
        converted first (``kerasq.keras3.to_tf_keras``).
      scheme: a ``kerasq.schemes`` object or name (``"int8"``; see ``available_schemes()``).
      layer_schemes: per-layer override by layer name; ``None`` keeps that layer float (its
        output is quantized again after it, and the model then cannot be exported integer-only).
        An entry here always wins over the policy below.
      first_last_int8: keep the first and last Conv/Dense layers at ``Linear()`` int8; defaults
        to on for schemes below 8 bits (seed lecture: these layers are sensitive and cheap).
      bn_folding: where a BatchNormalization's ``γ/σ`` goes. ``"channel_scale"`` (default): a
        trainable per-output-channel factor applied after the weight quantizer, so the scheme
        quantizes the layer's own kernel (per-tensor BWN/TWN/DoReFa keep their meaning, as in
        their papers where batch norm follows the convolution); the export multiplies it into
        the per-channel weight scales. ``"kernel"``: multiplied into the kernel before
        quantization (classic folding; keeps per-tensor schemes per tensor in the .tflite).
      target: the runtime whose arithmetic the Keras model reproduces (``kerasq.runtimes.Target``
        or ``"xnnpack"`` (default) / ``"reference"`` / ``"micro"``); ``kerasq.set_target`` changes it later.
      calibration_data: optional float samples (array, or iterable of batches) to observe every
        activation range once before training (``calibrate``). Without it the ranges are first
        observed by ``fit``; until then inference leaves them unrounded (float-like outputs).
    Returns:
      A new, uncompiled ``QuantizedModel``: ``QuantizeInput`` on each input, each layer with
      weights or an own output grid wrapped in ``QuantizedLayer`` under its original name,
      BatchNormalization (and Rescaling, Normalization) folded into the weight op before it or run
      as a per-channel op of its own. Compile and ``fit`` it as usual; export with
      ``tflite_export.convert``.
    Raises:
      ValueError listing every layer that cannot be quantized (type or configuration) and why,
      before any work is done; ValueError for activations that cannot be fused or run as ops.
    """
    if is_keras3_model(model):  # a Keras 3 model: its tf_keras equivalent (kerasq.keras3)
        model = to_tf_keras(model)
    from kerasq.from_tfmot import is_tfmot_model  # builds on this module

    if is_tfmot_model(model):
        raise ValueError(
            f"Model {model.name!r} is already quantized by tfmot; export it with tflite_export.convert (or "
            "kerasq.from_tfmot), or quantize the float model it came from."
        )
    scheme = get_scheme(scheme)
    if bn_folding not in BN_FOLDING:
        raise ValueError(f"bn_folding must be one of {BN_FOLDING}. Received: {bn_folding!r}")
    if any(isinstance(layer, (QuantizedLayer, QuantizeInput)) for layer in model.layers):
        raise ValueError(
            f"Model {model.name!r} is already quantized (it has kerasq layers); quantize the float model it "
            "came from, or train and export this one as it is."
        )
    graph = LayerGraph.from_model(model)
    layer_schemes = dict(layer_schemes or {})
    names = [n.name for n in graph.nodes]
    unknown = sorted(set(layer_schemes) - set(names))
    if unknown:
        raise ValueError(f"layer_schemes names layers the model does not have: {unknown}; layers: {names}")
    keep_float = {name for name, value in layer_schemes.items() if value is None}
    _check_layers(graph, keep_float)
    affine_layers = {n.name: n.layer for n in graph.nodes if _role(n.layer) == "affine"}
    graph_inputs_of = {n.name: list(n.inbound) for n in graph.nodes}  # before folding rewires them
    weights = {n.name: n.layer.get_weights() for n in graph.nodes}
    _split_layers(graph, weights)
    bn_factors, affine_ops = _fold_affines(graph, weights)
    folded = {name: layer for name, layer in affine_layers.items() if name not in affine_ops}
    activations = _absorb_activations(graph)
    for node in graph.nodes:  # fresh layers: the caller's model keeps its own
        node.layer = _clone(node.layer)
    schemes = _resolve_schemes(graph, scheme, layer_schemes, first_last_int8, folded, affine_ops)

    channel_scales = {}
    for name, factor in bn_factors.items():
        if bn_folding == "channel_scale" and schemes[name] is not None:
            channel_scales[name] = factor
        else:
            depthwise = isinstance(graph.node(name).layer, keras.layers.DepthwiseConv2D)
            weights[name][0] = ops.scale_output_channels(weights[name][0], factor, depthwise)

    # A float tensor (a model input, a layer kept in float) is read through a QuantizeInput.
    wrapped: list[Node] = []
    renamed: dict[str, str] = {}
    for input_name in graph.inputs:
        quantize = QuantizeInput(name=f"{input_name}_quantize")
        wrapped.append(Node(quantize, [input_name]))
        renamed[input_name] = quantize.name
    for node in graph.nodes:
        inbound = [renamed.get(n, n) for n in node.inbound]
        if schemes[node.name] is None:
            wrapped.append(Node(node.layer, inbound))
            quantize = QuantizeInput(name=f"{node.name}_quantize")
            wrapped.append(Node(quantize, [node.name]))
            renamed[node.name] = quantize.name
        elif _role(node.layer) in ("weight", "own_grid"):
            layer = _wrap(node, schemes[node.name], activations[node.name], node.name in channel_scales)
            wrapped.append(Node(layer, inbound))
        elif rule_for(node.layer).rounds:
            wrapped.append(Node(OnInputGrid(node.layer), inbound))
        else:
            wrapped.append(Node(node.layer, inbound))
    _share_grids(wrapped)
    graph.nodes = wrapped
    graph.outputs = [renamed.get(n, n) for n in graph.outputs]
    rescaled = tuple(n for n in graph.inputs if any(n in graph_inputs_of[name] for name in affine_layers))
    qmodel = graph.build(name=f"{model.name}_quantized", model_class=QuantizedModel, target=target,
                         rescaled_inputs=rescaled)
    for node in wrapped:
        inner = node.layer.layer if isinstance(node.layer, QuantizedLayer) else node.layer
        if weights.get(inner.name):
            inner.set_weights(weights[inner.name])
        if isinstance(node.layer, QuantizedLayer):
            node.layer.initialize_quantizers()
            if node.layer.channel_scale is not None:
                node.layer.initialize_channel_scale(channel_scales[node.layer.name])
    if calibration_data is not None:
        calibrate(qmodel, calibration_data)
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


def _as_inputs(batch, count: int) -> list[np.ndarray]:
    """One float32 array per model input from a batch (an array, a list of arrays, or an ``(x, y)`` tuple)."""
    if count == 1:
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        return [np.asarray(batch, np.float32)]
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], (list, tuple)):
        batch = batch[0]  # (inputs, labels) as a dataset yields them
    if not isinstance(batch, (list, tuple)) or len(batch) != count:
        raise ValueError(
            f"The model has {count} inputs: each batch must be a list of {count} arrays. "
            f"Received: {type(batch).__name__}"
        )
    return [np.asarray(b, np.float32) for b in batch]


NO_SAMPLES = "Calibration data is empty: the data yielded no samples."


def _batched_dataset(data, batch_size: int, sample_shapes: list[tf.TensorShape]):
    """``data.batch(batch_size)`` if ``data`` is a ``tf.data.Dataset`` of single samples, else ``data``.

    A dataset made with ``from_tensor_slices(x)`` yields samples, not batches: its inputs (first
    element of an ``(x, y)`` pair) have the model inputs' sample shapes.
    """
    if not isinstance(data, tf.data.Dataset):
        return data
    sample_ranks = [shape.rank for shape in sample_shapes]
    spec = data.element_spec
    paired = isinstance(spec, tuple) and len(spec) in (2, 3) and (
        isinstance(spec[0], (tuple, list)) or len(sample_ranks) == 1 or len(spec) != len(sample_ranks)
    )
    if paired:
        spec = spec[0]  # (inputs, labels[, weights])
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    shapes = [s.shape for s in specs if isinstance(s, tf.TensorSpec)]
    if len(shapes) == len(sample_shapes) and all(
        shape.rank == expected.rank and shape.is_compatible_with(expected) for shape, expected in zip(shapes, sample_shapes)
    ):
        return data.batch(batch_size)
    return data


def batches(data, batch_size: int, inputs: Sequence) -> Iterator[list[np.ndarray]]:
    """Float32 batches (one array per model input; ``inputs`` is ``model.inputs``) from arrays or
    tensors ``[N, ...]``, an iterable of batches (a ``tf.data.Dataset``, batched or of single
    samples; ``(x, y)`` tuples give ``x``) or a callable returning one.

    Batches without samples are skipped; a consumer that sees none raises ``NO_SAMPLES``."""
    count = len(inputs)
    arrays = None
    if count == 1 and isinstance(data, (np.ndarray, tf.Tensor)):
        arrays = [np.asarray(data, np.float32)]
    elif count > 1 and isinstance(data, (list, tuple)) and len(data) == count and all(
        isinstance(d, (np.ndarray, tf.Tensor)) and np.ndim(d) > 0 for d in data
    ) and len({len(d) for d in data}) == 1 and not isinstance(data[0], tuple):
        arrays = [np.asarray(d, np.float32) for d in data]
    if arrays is not None:
        if arrays[0].ndim == 0:
            raise ValueError(f"Calibration data must hold samples. Received: x.shape={arrays[0].shape}")
        for start in range(0, len(arrays[0]), batch_size):
            yield [a[start : start + batch_size] for a in arrays]
        return
    if callable(data):
        data = data()
    for batch in _batched_dataset(data, batch_size, [tf.TensorShape(t.shape[1:]) for t in inputs]):
        batch = _as_inputs(batch, count)
        if batch[0].ndim > 0 and len(batch[0]) > 0:
            yield batch


def is_one_shot(data) -> bool:
    """An iterator (a generator, ``iter(...)``) yields its batches once."""
    return not isinstance(data, (np.ndarray, tf.Tensor, list, tuple)) and not callable(data) and iter(data) is data


def _check_batch(batch: list[np.ndarray], expected: list[tuple]) -> None:
    for array, shape in zip(batch, expected):
        if not np.all(np.isfinite(array)):
            raise ValueError("Calibration data contains NaN or infinite values.")
        if len(array.shape[1:]) != len(shape) or any(e is not None and e != r for e, r in zip(shape, array.shape[1:])):
            raise ValueError(f"Calibration data has sample shape {tuple(array.shape[1:])}, the model expects {shape}.")


# No preprocessing a network is trained with gives inputs this large; 1e30 gives an input scale of 4e27.
MAX_PLAUSIBLE_INPUT = 1e6


class _InputRanges:
    """Range of each model input over the calibration data, to catch data not preprocessed as in training."""

    def __init__(self, model: keras.Model):
        self.model = model
        self.names = [t.name.split(":")[0] for t in model.inputs]
        self.low = [np.inf] * len(self.names)
        self.high = [-np.inf] * len(self.names)
        self.whole = [True] * len(self.names)

    def update(self, batch: list[np.ndarray]) -> None:
        for i, array in enumerate(batch):
            peak = float(np.max(np.abs(array)))
            if peak > MAX_PLAUSIBLE_INPUT:
                raise ValueError(
                    f"Calibration data for input {self.names[i]!r} reaches |x| = {peak:.3g}, far beyond any network "
                    f"input (> {MAX_PLAUSIBLE_INPUT:g}); preprocess it as in training (e.g. x / 255 for 8-bit images)."
                )
            self.low[i] = min(self.low[i], float(np.min(array)))
            self.high[i] = max(self.high[i], float(np.max(array)))
            self.whole[i] = self.whole[i] and bool(np.all(array == np.round(array)))

    def warn_if_raw_pixels(self) -> None:
        """Warn when an input looks like raw 8-bit pixels that the model does not rescale itself."""
        rescaled = set(getattr(self.model, "rescaled_inputs", ()))
        for name, low, high, whole in zip(self.names, self.low, self.high, self.whole):
            if whole and low >= 0 and 2 <= high <= 255 and name not in rescaled:
                warnings.warn(
                    f"Calibration data for input {name!r} looks like raw 8-bit pixels (whole numbers in "
                    f"[{low:.0f}, {high:.0f}]) and the model has no Rescaling or Normalization layer at that input. "
                    "If it was trained on scaled pixels (x / 255, or [-1, 1]), calibrate and evaluate with the same "
                    "scaling: the input grid is fixed from this data, and quantized accuracy would be near chance. "
                    "Ignore this if the model was trained on values 0..255.",
                    UserWarning,
                    stacklevel=3,
                )


def _observe_pass(model, x, observer, batch_size: int, steps: int | None, verbose: int, title: str) -> _InputRanges:
    """Run ``model`` over ``x`` in inference mode with ``observer`` on and rounding off; returns the input ranges seen."""
    expected = [tuple(int(d) if d is not None else None for d in t.shape[1:]) for t in model.inputs]
    total = None
    if isinstance(x, (np.ndarray, tf.Tensor)) and np.ndim(x) > 0:
        total = -(-len(x) // batch_size)
        total = total if steps is None else min(total, steps)
    progress = keras.utils.Progbar(total, unit_name="batch") if verbose else None
    if progress is not None:
        print(title)
    seen = 0
    ranges = _InputRanges(model)
    with quantization_mode(model, observe=True, round=False, observer=observer):
        step = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
        for i, batch in enumerate(batches(x, batch_size, model.inputs)):
            if steps is not None and i >= steps:
                break
            _check_batch(batch, expected)
            ranges.update(batch)
            step([tf.constant(a) for a in batch] if len(batch) > 1 else tf.constant(batch[0]))
            seen += len(batch[0])
            if progress is not None:
                progress.update(i + 1)
    if seen == 0:
        raise ValueError(NO_SAMPLES)
    return ranges


def calibrate(
    model: keras.Model,
    x,
    *,
    batch_size: int = 64,
    steps: int | None = None,
    observer="minmax",
    layer_observers: Mapping[str, object] | None = None,
    verbose: int = 0,
) -> keras.Model:
    """Observe every activation range of a quantized model on ``x``; weights and rounding untouched.

    Runs the model in inference mode (Dropout off, no weight or optimizer update) with rounding
    switched off, so each range describes the float activations, as post-training calibration
    does; the previous statistics are replaced. ``observer`` collects them into the quantizers'
    own variables, so a moving-average quantizer continues from these ranges during ``fit``:

    - ``"minmax"`` (default): the global min/max over all batches; ``"ema"``: a moving average
      of the batch min/max (one pass);
    - ``"percentile"``, ``"mse"``, ``"kl"``, ``"aciq"`` (``kerasq.observers.HistogramObserver``):
      a min/max pass, then a pass collecting a 2048-bin histogram of each tensor, then the
      clipped range the method chooses from it (``kerasq.clipping``). These read ``x`` twice.

    Args:
      model: a model from ``quantize_model``.
      x: float samples ``[N, ...]``, or an iterable of batches (a ``tf.data.Dataset``, a list;
        tuples give their first element), or a callable returning one. Histogram methods need
        data they can read twice: an iterator (a generator object) is refused; pass a callable
        that returns a fresh one.
      batch_size: samples per step for an array. steps: at most this many batches per pass.
      observer: name, ``kerasq.observers`` object or config, for every range.
      layer_observers: ``{layer name: observer}`` overriding ``observer`` for the ranges of that
        layer (its output, and a softmax/sigmoid input); model inputs are ``"{input}_quantize"``.
      verbose: 1 shows a progress bar per pass.
    Raises ``ValueError`` on empty, NaN/inf or wrongly shaped data, a layer name the model does
    not have, one-shot data for a histogram method, or a model without kerasq layers.
    """
    layers = kerasq_layers(model)
    if not layers:
        raise ValueError(f"Model {model.name!r} has no kerasq layers to calibrate; call kerasq.quantize_model first.")
    default = get_observer(observer)
    chosen = {name: get_observer(o) for name, o in dict(layer_observers or {}).items()}
    unknown = sorted(set(chosen) - {layer.name for layer in layers})
    if unknown:
        raise ValueError(
            f"layer_observers names layers without observed ranges: {unknown}; layers with ranges: "
            f"{[layer.name for layer in layers if observed_tensors(layer)]}"
        )
    tensors = [(chosen.get(layer.name, default), quantizer, state) for layer in layers for quantizer, state in observed_tensors(layer)]
    clipped = [(obs, quantizer, state) for obs, quantizer, state in tensors if isinstance(obs, HistogramObserver)]
    if clipped and is_one_shot(x):
        raise ValueError(
            f"Calibration with {type(clipped[0][0]).__name__} reads the data twice (a min/max pass, then a histogram "
            "pass), and an iterator yields its batches once: pass an array, a tf.data.Dataset, a list of batches "
            "or a callable that returns a fresh iterator."
        )
    states = [state for _, _, state in tensors]
    saved = [{k: v.numpy() for k, v in state.items()} for state in states]
    for state in states:
        for variable in state.values():
            variable.assign(tf.zeros_like(variable))
    streaming = ObserverByTensor(
        MinMaxObserver(), [(state, obs) for obs, _, state in tensors if not isinstance(obs, HistogramObserver)]
    )
    try:
        passes = 2 if clipped else 1
        _observe_pass(model, x, streaming, batch_size, steps, verbose, f"Calibration pass 1/{passes}: ranges").warn_if_raw_pixels()
        if clipped:
            collector = HistogramCollector()
            for obs, _, state in clipped:
                collector.track(state, obs.bins)
            _observe_pass(model, x, collector, batch_size, steps, verbose, "Calibration pass 2/2: histograms")
            for obs, quantizer, state in clipped:
                lo, hi = float(state["min"].numpy()), float(state["max"].numpy())
                if hi > lo:
                    lo, hi = obs.choose_range(collector.histogram(state), lo, hi, quantizer.bits)
                    state["min"].assign(lo)
                    state["max"].assign(hi)
    except BaseException:
        for state, values in zip(states, saved):
            for key, variable in state.items():
                variable.assign(values[key])
        raise
    return model


def observed_tensors(layer) -> list[tuple]:
    """``(quantizer, statistics)`` of each range a kerasq layer observes (``min``/``max``/``count`` dicts)."""
    if isinstance(layer, QuantizeInput):
        candidates = [(layer.quantizer, layer._vars)]
    elif isinstance(layer, QuantizedLayer):
        candidates = [
            (layer.pre_activation_quantizer, layer._pre_activation_vars),
            (layer.activation_quantizer, layer._activation_vars),
        ]
    else:
        candidates = []
    return [(quantizer, state) for quantizer, state in candidates if "count" in state]


def observer_states(layer) -> list[dict]:
    """The observer statistics (``min``/``max``/``count`` dicts) of a kerasq layer's quantizers."""
    return [state for _, state in observed_tensors(layer)]


@contextlib.contextmanager
def quantize_scope() -> Iterator[None]:
    """Context in which ``tf_keras.models.load_model`` restores kerasq models (.keras, .h5, SavedModel).

    kerasq classes are also registered globally as ``kerasq>Name``; the scope makes the bare
    names resolvable too (e.g. in .h5 files and configs written by hand).
    """
    with keras.utils.custom_object_scope(all_custom_objects()):
        yield
