"""The quantized model: its links between layers, its target runtime, its modes.

``quantize_model`` returns a ``QuantizedModel``, a Functional model that knows two things a
plain one does not:

- **links**: each quantized layer is told which layer's output grid each of its inputs is on
  (through layers that keep their input's grid, such as pooling or reshapes) and which layers
  share its output grid (the inputs of a Concatenate). ``link`` computes them from the graph,
  when the model is built and again whenever it is loaded, cloned or re-targeted, so a layer
  can quantize its bias onto ``s_in·s_w`` and round as the integer kernel does.
- **target**: the runtime the Keras model is made to match (``kerasq.runtimes.Target``), saved
  with the model; ``set_target`` changes it.

``quantization_mode`` switches observing and rounding for a block of code (calibration is
"observe, don't round, inference mode").
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from kerasq.compat import keras
from kerasq.graph import LayerGraph
from kerasq.layer_table import GRID_KEEPING_ROLES, rule_for
from kerasq.layers import DEFAULT_MODE, KERASQ_LAYERS, Links, Mode, kerasq_layers
from kerasq.observers import Observer
from kerasq.registry import register
from kerasq.runtimes import Target, get_target

__all__ = ["QuantizedModel", "link", "quantization_mode", "set_target", "using_target"]


@register("model")
class QuantizedModel(keras.Model):
    """A Functional model of kerasq layers, linked to its grids, with a target runtime.

    Build it with ``kerasq.quantize_model``; it saves and loads like any Keras model (inside
    ``kerasq.quantize_scope()`` for .h5 and SavedModel files) and links itself again on load.
    ``target`` (keyword): a ``Target``, runtime name or config; default ``Target()`` (XNNPACK).
    ``rescaled_inputs`` (keyword): names of the inputs the float model scaled with a Rescaling
    or Normalization layer (folded into the first layer), so raw pixel values are expected there.
    """

    def __init__(self, inputs, outputs, name=None, trainable=True, **kwargs):
        target = kwargs.pop("target", None)
        rescaled_inputs = tuple(kwargs.pop("rescaled_inputs", ()))
        super().__init__(inputs=inputs, outputs=outputs, name=name, trainable=trainable, **kwargs)
        object.__setattr__(self, "_target", get_target(target))
        object.__setattr__(self, "rescaled_inputs", rescaled_inputs)
        link(self)

    @property
    def target(self) -> Target:
        """The runtime whose integer arithmetic the model reproduces."""
        return self._target

    def get_config(self):
        return {**super().get_config(), "target": self._target.get_config(), "rescaled_inputs": list(self.rescaled_inputs)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        target = config.pop("target", None)
        rescaled_inputs = tuple(config.pop("rescaled_inputs", ()))
        model = super().from_config(config, custom_objects)
        set_target(model, target)
        object.__setattr__(model, "rescaled_inputs", rescaled_inputs)
        return model


def _grid_source(graph: LayerGraph, name: str, consumer: str):
    """The kerasq layer whose output grid the tensor ``name`` is on (walking back through same-grid layers)."""
    while True:
        if name in graph.inputs:
            raise ValueError(
                f"Layer {consumer!r} reads the model input {name!r} directly; a quantized model quantizes its "
                "inputs with QuantizeInput (build it with kerasq.quantize_model)."
            )
        node = graph.node(name)
        if isinstance(node.layer, KERASQ_LAYERS):
            return node.layer
        rule = rule_for(node.layer)
        if rule is None or rule.role not in GRID_KEEPING_ROLES:
            raise ValueError(
                f"Layer {consumer!r} reads {name!r} ({type(node.layer).__name__}), which is not quantized "
                "(a layer kept in float has a QuantizeInput after it when quantize_model builds the model)."
            )
        name = node.inbound[0]


def link(model: keras.Model, target: Target | str | dict | None = None) -> keras.Model:
    """Tell every kerasq layer of ``model`` the grids it reads and shares, and the target runtime.

    Called by ``QuantizedModel`` itself; call it for a Functional model assembled by hand from
    kerasq layers. ``target`` defaults to the model's own (``QuantizedModel.target``) or ``Target()``.
    Returns ``model``.
    """
    target = get_target(target if target is not None else getattr(model, "_target", None))
    graph = LayerGraph.from_model(model)
    for node in graph.nodes:
        layer = node.layer
        if not isinstance(layer, KERASQ_LAYERS):
            continue
        sources = [] if layer.reads_float else [_grid_source(graph, n, layer.name) for n in node.inbound]
        group = [model.get_layer(member) for member in layer.grid_group]
        object.__setattr__(layer, "_links", Links(sources, group, target))
    return model


def _forget_traced_functions(model: keras.Model) -> None:
    """Make Keras trace fit/evaluate/predict again: the layers' Python-level settings changed."""
    for attr in ("train_function", "test_function", "predict_function"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)


def set_target(model: keras.Model, target: Target | str | dict | None) -> keras.Model:
    """Make ``model`` reproduce ``target``'s arithmetic (e.g. ``Target("reference")`` or
    ``Target(pack_int4=False)`` before exporting with INT8 storage). Returns ``model``."""
    target = get_target(target)
    object.__setattr__(model, "_target", target)
    link(model, target)
    _forget_traced_functions(model)
    return model


@contextlib.contextmanager
def using_target(model: keras.Model, target: Target | str | dict | None) -> Iterator[keras.Model]:
    """Within the block ``model`` reproduces ``target``; its own target is restored afterwards.

        with kerasq.using_target(qmodel, kerasq.Target(pack_int4=False)):
            blob = tflite_export.convert(qmodel)       # INT8 storage, and Keras rounds for it
            parity = tflite_export.compare(qmodel, blob, x)
    """
    previous = getattr(model, "_target", None)
    set_target(model, target)
    try:
        yield model
    finally:
        set_target(model, previous)


@contextlib.contextmanager
def quantization_mode(
    model: keras.Model,
    *,
    observe: bool | None = None,
    round: bool = True,
    observer: Observer | None = None,
    exact: bool = True,
) -> Iterator[keras.Model]:
    """Within the block, the kerasq layers of ``model`` observe and round as asked.

    ``observe=None`` observes in training only (the default); ``round=False`` lets float values
    through; ``observer`` replaces the layers' own observers (their statistics variables are
    shared); ``exact=False`` computes inference in float32 with fake quantization instead of
    the runtime's integer arithmetic. Keras' traced ``fit``/``predict`` functions are dropped on
    entry and exit.
    """
    layers = kerasq_layers(model)
    mode = Mode(observe, bool(round), observer, bool(exact))
    _forget_traced_functions(model)
    try:
        for layer in layers:
            object.__setattr__(layer, "quantization_mode", mode)
        yield model
    finally:
        for layer in layers:
            object.__setattr__(layer, "quantization_mode", DEFAULT_MODE)
        _forget_traced_functions(model)
