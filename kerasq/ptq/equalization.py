"""Cross-layer equalization and high-bias absorption (Nagel et al., "Data-Free Quantization Through
Weight Equalization and Bias Correction", ICCV 2019).

Two layers ``y = W2 f(W1 x + b1) + b2`` with a positively homogeneous ``f`` between them
(``f(s·x) = s·f(x)`` for ``s > 0``: ReLU, leaky ReLU, the identity, max/average pooling) compute
the same function after output channel ``j`` of the first is divided by ``s_j`` and input channel
``j`` of the second multiplied by it. With ``r1_j`` the range ``max|W1|`` of output channel ``j``
and ``r2_j`` that of input channel ``j`` of the second,

    s_j = sqrt(r1_j · r2_j) / r2_j      so that      r1'_j = r2'_j = sqrt(r1_j · r2_j),

which evens out the channels' ranges so that one per-tensor weight scale fits them all (the seed
lecture's "weight equalization"). Chains (Conv → DepthwiseConv → Conv) are equalized pair by
pair, sweeping until the scales stop changing.

ReLU6 is not positively homogeneous (its cap would move per channel), so an equalized pair's
ReLU6 becomes ReLU, as the paper does for MobileNetV2; the float model then differs from the
original wherever an activation exceeded 6 (rarely, after batch norm). The function is exact
otherwise.

High-bias absorption: a channel whose pre-activation ``x_j`` never falls below ``c_j > 0``
satisfies ``relu(x_j - c_j) = relu(x_j) - c_j``, so ``c_j`` moves from the first layer's bias into
the second's (``b2 += W2·c``), shrinking the range the activation quantizer must cover.
``c_j = max(0, min x_j)`` over calibration data when given (then exact on that data), else the
paper's data-free ``max(0, β_j - 3γ_j)`` from the batch norm the first layer absorbed. Only where
the shift passes through exactly: a ReLU between (no zero padding), and a Dense, a 1x1 or a
``valid`` convolution after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kerasq.activations import ActivationSpec
from kerasq.compat import keras
from kerasq.graph import LayerGraph, Node
from kerasq.layer_table import rule_for
from kerasq.transforms import NO_SAMPLES, FoldedGraph, batches, build_float, fold_affine_layers

__all__ = ["equalize", "equalization_pairs"]

_LINEAR_OPS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
# Per-channel maps that commute with a positive per-channel scale (and, but for padding, with a shift).
_PASS_THROUGH = (
    keras.layers.Dropout,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.ZeroPadding2D,
)


@dataclass
class EqualizationPair:
    """Two linear layers with only positively homogeneous, per-channel maps between them."""

    first: str
    second: str
    between: list[str] = field(default_factory=list)
    relu: bool = False  # a ReLU (or ReLU6 made ReLU) acts between them
    shift_passes: bool = False  # a constant per-channel shift passes through to the second layer exactly


def _activation(layer) -> ActivationSpec:
    if rule_for(layer) is not None and rule_for(layer).role == "activation":
        return ActivationSpec.from_keras(layer)
    return ActivationSpec.from_keras(getattr(layer, "activation", None) or "linear")


def _homogeneous(spec: ActivationSpec) -> bool:
    return spec.kind in ("linear", "relu", "leaky_relu")


def _split_fused_activations(graph: LayerGraph) -> None:
    """Make each fused ReLU of a linear layer a ReLU layer of its own after it.

    Equalization and high-bias absorption read and change the pre-activation; ``quantize_model``
    fuses the activation back into the layer.
    """
    for node in list(graph.nodes):
        if type(node.layer) not in _LINEAR_OPS:
            continue
        spec = _activation(node.layer)
        if spec.kind != "relu":
            continue
        node.layer = type(node.layer).from_config({**node.layer.get_config(), "activation": "linear"})
        relu = Node(keras.layers.ReLU(max_value=spec.max_value, name=f"{node.name}_relu"), [node.name])
        for consumer in graph.consumers(node.name):
            consumer.inbound = [relu.name if n == node.name else n for n in consumer.inbound]
        graph.outputs = [relu.name if n == node.name else n for n in graph.outputs]
        graph.nodes.insert(graph.nodes.index(node) + 1, relu)


def equalization_pairs(graph: LayerGraph) -> list[EqualizationPair]:
    """Every pair (Conv2D, DepthwiseConv2D or Dense) → (same) joined through one-consumer layers
    that are positively homogeneous per channel (ReLU, ReLU6, leaky ReLU, pooling, padding, dropout)."""
    pairs = []
    for node in graph.nodes:
        if type(node.layer) not in _LINEAR_OPS or _activation(node.layer).kind != "linear":
            continue
        current, between, relu, shift_passes = node.name, [], False, True
        while current not in graph.outputs and len(graph.consumers(current)) == 1:
            following = graph.consumers(current)[0]
            layer = following.layer
            if rule_for(layer) is not None and rule_for(layer).role == "activation":
                spec = _activation(layer)
                if not _homogeneous(spec):
                    break
                relu = relu or spec.kind == "relu"
                shift_passes = shift_passes and spec.kind == "relu"
            elif type(layer) in _PASS_THROUGH:
                shift_passes = shift_passes and not isinstance(layer, keras.layers.ZeroPadding2D)
            elif type(layer) in _LINEAR_OPS and len(following.inbound) == 1:
                kernel_size = getattr(layer, "kernel_size", (1, 1))
                exact = isinstance(layer, keras.layers.Dense) or getattr(layer, "padding", "valid") == "valid" or tuple(kernel_size) == (1, 1)
                pairs.append(EqualizationPair(node.name, following.name, between, relu, shift_passes and relu and exact))
                break
            else:
                break
            between.append(following.name)
            current = following.name
    return pairs


def _depthwise(layer) -> bool:
    return isinstance(layer, keras.layers.DepthwiseConv2D)


def _output_view(layer, kernel: np.ndarray) -> np.ndarray:
    """The kernel with output channels on its last axis (a depthwise kernel's channel ``i·m + k``)."""
    return kernel.reshape(*kernel.shape[:2], -1) if _depthwise(layer) else kernel


def _output_ranges(layer, kernel: np.ndarray) -> np.ndarray:
    """``max|W|`` per output channel."""
    view = _output_view(layer, kernel)
    return np.abs(view).reshape(-1, view.shape[-1]).max(axis=0)


def _input_axis(layer) -> int:
    return 0 if isinstance(layer, keras.layers.Dense) else 2


def _input_ranges(layer, kernel: np.ndarray) -> np.ndarray:
    axis = _input_axis(layer)
    return np.abs(np.moveaxis(kernel, axis, 0)).reshape(kernel.shape[axis], -1).max(axis=1)


def _scale_inputs(layer, kernel: np.ndarray, factor: np.ndarray) -> np.ndarray:
    shape = [1] * kernel.ndim
    axis = _input_axis(layer)
    shape[axis] = kernel.shape[axis]
    return (kernel * factor.reshape(shape)).astype(np.float32)


def _scale_outputs(layer, weights: list[np.ndarray], factor: np.ndarray) -> None:
    kernel = weights[0]
    weights[0] = (_output_view(layer, kernel) * factor).reshape(kernel.shape).astype(np.float32)
    if getattr(layer, "use_bias", False):
        weights[1] = (weights[1] * factor).astype(np.float32)


def _channels(layer, weights) -> int:
    return int(_output_view(layer, weights[0]).shape[-1])


def _equalize_pairs(folded: FoldedGraph, pairs: list[EqualizationPair], sweeps: int, tolerance: float) -> dict[str, np.ndarray]:
    """Scale every pair in place until no scale moves by more than ``tolerance`` (relative); returns
    each first layer's accumulated output scale ``Π 1/s``."""
    graph, weights = folded.graph, folded.weights
    totals = {p.first: np.ones(_channels(graph.node(p.first).layer, weights[p.first])) for p in pairs}
    for _ in range(sweeps):
        largest = 0.0
        for pair in pairs:
            first, second = graph.node(pair.first).layer, graph.node(pair.second).layer
            r1 = _output_ranges(first, weights[pair.first][0]).astype(np.float64)
            r2 = _input_ranges(second, weights[pair.second][0]).astype(np.float64)
            usable = (r1 > 0) & (r2 > 0)
            s = np.where(usable, np.sqrt(np.where(usable, r1 * r2, 1.0)) / np.where(usable, r2, 1.0), 1.0)
            _scale_outputs(first, weights[pair.first], 1.0 / s)
            weights[pair.second][0] = _scale_inputs(second, weights[pair.second][0], s)
            totals[pair.first] = totals[pair.first] / s
            largest = max(largest, float(np.max(np.abs(np.log(s)))))
        if largest < tolerance:
            break
    return totals


def _ensure_bias(graph: LayerGraph, weights: dict, name: str) -> None:
    node = graph.node(name)
    if not node.layer.use_bias:
        node.layer = type(node.layer).from_config({**node.layer.get_config(), "use_bias": True})
        weights[name] = [weights[name][0], np.zeros(_channels(node.layer, weights[name]), np.float32)]


def _absorb_high_biases(folded: FoldedGraph, pairs: list[EqualizationPair], floors: dict[str, np.ndarray]) -> None:
    """Move ``c = max(0, floor)`` of each pair's first-layer bias into the second layer's bias."""
    graph, weights = folded.graph, folded.weights
    for pair in pairs:
        if not pair.shift_passes or pair.first not in floors:
            continue
        c = np.maximum(floors[pair.first], 0.0)
        if not np.any(c > 0):
            continue
        _ensure_bias(graph, weights, pair.first)
        _ensure_bias(graph, weights, pair.second)
        second = graph.node(pair.second).layer
        kernel = weights[pair.second][0].astype(np.float64)
        if isinstance(second, keras.layers.Dense):
            shift = c @ kernel
        elif _depthwise(second):  # output channel i·m + k reads input channel i only
            shift = (kernel.sum(axis=(0, 1)) * c[:, None]).reshape(-1)
        else:
            shift = np.einsum("hwio,i->o", kernel, c)
        weights[pair.first][1] = (weights[pair.first][1] - c).astype(np.float32)
        weights[pair.second][1] = (weights[pair.second][1] + shift).astype(np.float32)
        if pair.first in folded.statistics:
            mean, std = folded.statistics[pair.first]
            folded.statistics[pair.first] = (mean - c, std)


def _observed_floors(folded: FoldedGraph, names: list[str], data, batch_size: int) -> dict[str, np.ndarray]:
    """Per-channel minimum of each named layer's output over ``data`` (the float model as equalized so far)."""
    probe = build_float(_copy_graph(folded.graph), folded.weights, "equalization_probe")
    outputs = keras.Model(probe.inputs, [probe.get_layer(n).output for n in names])
    floors: dict[str, np.ndarray] = {}
    for batch in batches(data, batch_size, probe.inputs):
        values = outputs(batch if len(batch) > 1 else batch[0], training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        for name, value in zip(names, values):
            low = np.min(np.asarray(value).reshape(-1, value.shape[-1]), axis=0)
            floors[name] = low if name not in floors else np.minimum(floors[name], low)
    if not floors:
        raise ValueError(NO_SAMPLES)
    return floors


def _copy_graph(graph: LayerGraph) -> LayerGraph:
    return LayerGraph(dict(graph.inputs), dict(graph.input_dtypes), [Node(n.layer, list(n.inbound)) for n in graph.nodes], list(graph.outputs), graph.name)


def equalize(
    model: keras.Model,
    data=None,
    *,
    high_bias_absorption: bool = True,
    sweeps: int = 50,
    tolerance: float = 1e-6,
    batch_size: int = 64,
    return_statistics: bool = False,
):
    """A new float model: batch norms folded, consecutive layers equalized, high biases absorbed.

    Args:
      model: a float tf_keras model (left unchanged).
      data: optional float samples (array, dataset, batches, callable); with them high-bias
        absorption moves ``c = max(0, min x)`` (exact on the data), without them the paper's
        ``max(0, β - 3γ)`` of the folded batch norm.
      high_bias_absorption: move the always-positive part of pre-activations into the next layer.
      sweeps, tolerance: equalize all pairs up to ``sweeps`` times, until every scale ``s`` has
        ``|log s| < tolerance``.
      return_statistics: also return ``{layer name: (mean, std)}`` of the batch-norm statistics of
        each op output, after the scales and absorbed biases (``FoldedGraph.statistics``).
    Returns:
      A Functional float model with the same inputs and outputs. Layers: the model's, with each
      BatchNormalization folded into the Conv/Dense before it (or made a 1x1 per-channel op),
      SeparableConv2D split into depthwise and pointwise, fused ReLUs of equalized layers as
      ReLU layers after them, ReLU6 between equalized layers as ReLU. Its outputs equal the
      original's up to float rounding and the ReLU6 caps (see the module docstring). With
      ``return_statistics``, ``(model, statistics)``.
    """
    folded = fold_affine_layers(model)
    _split_fused_activations(folded.graph)
    pairs = equalization_pairs(folded.graph)
    for pair in pairs:
        for name in pair.between:
            node = folded.graph.node(name)
            rule = rule_for(node.layer)
            spec = _activation(node.layer) if rule is not None and rule.role == "activation" else None
            if spec is not None and spec.kind == "relu" and spec.max_value is not None:
                node.layer = keras.layers.ReLU(name=name)  # ReLU6 → ReLU: the cap is not scale-invariant
    totals = _equalize_pairs(folded, pairs, sweeps, tolerance)
    for name, total in totals.items():
        if name in folded.statistics:
            mean, std = folded.statistics[name]
            folded.statistics[name] = (mean * total, std * total)
    if high_bias_absorption:
        absorbable = [p.first for p in pairs if p.shift_passes]
        if data is not None and absorbable:
            floors = _observed_floors(folded, absorbable, data, batch_size)
        else:
            floors = {name: mean - 3.0 * std for name, (mean, std) in folded.statistics.items()}
        _absorb_high_biases(folded, pairs, floors)
    equalized = build_float(folded.graph, folded.weights, f"{model.name}_equalized")
    return (equalized, folded.statistics) if return_statistics else equalized
