"""Keras 3 models as tf_keras models: the same layers, configurations, weights and names.

kerasq quantizes tf_keras models (tfmot needs Keras 2). A model built with Keras 3 (``import
keras``, a Functional or Sequential ``keras.Model``) is rebuilt in tf_keras layer by layer:

1. every operation of the Keras 3 graph is checked first, nested Functional and Sequential
   models included; a layer whose exact class is not a Keras 3 layer class that tf_keras also
   has and kerasq's layer table supports (``kerasq.layer_table``) — a custom or subclassed
   layer, a ``keras.ops`` call in the graph, a subclassed model, a layer quantized by Keras 3,
   an option tf_keras cannot take — is reported, all of them in one ``ValueError``;
2. each layer becomes the tf_keras class of the same name made from its ``get_config()``: the
   dtype policy becomes ``"float32"``, initializers, regularizers and constraints become tf_keras
   objects of the same class, options tf_keras does not know are dropped when they hold their
   Keras 3 default, and renamed options are renamed (LeakyReLU's ``negative_slope`` is ``alpha``);
3. the graph is called again in tf_keras, node by node in topological order (a nested model
   becomes a converted nested model, which kerasq's graph inlines), with the same layer names;
4. the weights are copied by name (``kernel``, ``gamma``, ``moving_mean``, ...), so the float
   outputs are the Keras 3 model's.

    k3_model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10)
    model = kerasq.keras3.to_tf_keras(k3_model)          # a tf_keras Functional model
    qmodel = kerasq.quantize_model(k3_model, "int8")     # the same, converted first

A mixed-precision (or float16/bfloat16) dtype policy is converted to float32 with a warning: the
weights are copied, and the converted model computes in float32, so its outputs differ from the
Keras 3 model's by the Keras 3 model's float16 rounding. What a config and weights do not hold is
not converted: the compile state (optimizer, its slots, loss, metrics) and the initializers
tf_keras lacks (the layer's default initializer is used; the weights are copied anyway).

This module imports Keras 3 only when it is given a Keras 3 object (or file).
"""

from __future__ import annotations

import inspect
import json
import sys
import warnings
import zipfile
from typing import Any

from kerasq.compat import keras, tf
from kerasq.layer_table import LAYER_TABLE

__all__ = ["is_keras3_file", "is_keras3_model", "load_keras3_model", "supported_layer_classes", "to_tf_keras"]

# Options Keras 3 names differently from tf_keras: {class name: {Keras 3 option: tf_keras option}}.
_RENAMED = {"LeakyReLU": {"negative_slope": "alpha"}}

# Options every tf_keras layer takes through ``**kwargs`` (``keras.layers.Layer.__init__``).
_BASE_OPTIONS = {"name", "trainable", "dtype", "activity_regularizer"}

# Float policies whose weights are float32 (mixed) or a float type the converted model widens.
_FLOAT_POLICIES = {"mixed_float16", "mixed_bfloat16", "float16", "bfloat16", "float64"}


def _keras3():
    """The Keras 3 package (imported only when a Keras 3 object or file is given)."""
    import keras as keras3

    if not keras3.__version__.startswith("3."):
        raise ValueError(f"Keras 3 is needed to read a Keras 3 model. Received: keras.__version__={keras3.__version__!r}")
    return keras3


def supported_layer_classes() -> list[str]:
    """Names of the Keras 3 layer classes ``to_tf_keras`` converts, sorted.

    These are the classes of kerasq's layer table that are tf_keras layer classes (so Keras 3
    has them under the same name), plus ``InputLayer``.
    """
    return sorted(cls.__name__ for cls in LAYER_TABLE if getattr(keras.layers, cls.__name__, None) is cls)


def is_keras3_model(obj: Any) -> bool:
    """Whether ``obj`` is a Keras 3 ``keras.Model`` (not a tf_keras one).

    Reads the module names of the object's classes first, so Keras 3 is not imported for a
    tf_keras model or anything else.
    """
    modules = [cls.__module__ for cls in type(obj).__mro__]
    if not any(m.startswith("keras.") for m in modules) or any(m.startswith("tf_keras") for m in modules):
        return False
    keras3 = sys.modules.get("keras")
    return keras3 is not None and keras3.__version__.startswith("3.") and isinstance(obj, keras3.Model)


def is_keras3_file(path: str) -> bool:
    """Whether ``path`` is a model file written by Keras 3: a ``.keras`` archive whose
    ``metadata.json`` says ``keras_version`` 3.x, or an HDF5 file whose ``keras_version``
    attribute is 3.x. Anything unreadable as either is not (False)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if "metadata.json" not in archive.namelist():
                    return False
                version = str(json.loads(archive.read("metadata.json")).get("keras_version", ""))
            return version.startswith("3")
        import h5py

        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as handle:
            version = handle.attrs.get("keras_version", "")
        return (version.decode() if isinstance(version, bytes) else str(version)).startswith("3")
    except (OSError, ValueError, KeyError):
        return False


def load_keras3_model(path: str) -> keras.Model:
    """Load a model file written by Keras 3 (``model.save``) and convert it (``to_tf_keras``).

    The file is read with Keras 3's ``keras.saving.load_model(path, compile=False)``; the result
    is a tf_keras model without compile state.
    """
    return to_tf_keras(_keras3().saving.load_model(path, compile=False))


# --- checking ---------------------------------------------------------------------------------


def _class_path(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _kind(model) -> str | None:
    """"functional", "sequential", or None for a model kerasq cannot read as a graph."""
    keras3 = _keras3()
    from keras.src.models.functional import Functional

    if type(model) is keras3.Sequential:
        return "sequential"
    if type(model) is Functional:
        return "functional"
    return None


def _graph_operations(model) -> list:
    """The operations of a Functional or Sequential Keras 3 model, without its InputLayers."""
    keras3 = _keras3()
    if type(model) is keras3.Sequential:
        return list(model.layers)
    return [op for op in model.operations if not isinstance(op, keras3.layers.InputLayer)]


def _policy_name(value) -> str:
    if isinstance(value, dict):
        return str(value.get("config", {}).get("name", value.get("class_name")))
    return str(getattr(value, "name", value))


def _translate_object(value, namespace, kind: str):
    """A Keras 3 serialized initializer/regularizer/constraint as the tf_keras object of the same class.

    Raises ValueError for a custom object, a class tf_keras lacks or an option it cannot take.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return namespace.get(value)
    if not isinstance(value, dict) or "class_name" not in value:
        raise ValueError(f"{kind} {value!r} is not a Keras serialized object")
    name = value["class_name"]
    module = str(value.get("module") or "")
    cls = getattr(namespace, name, None)
    if value.get("registered_name") not in (None, name) or not module.startswith("keras") or not inspect.isclass(cls):
        raise ValueError(f"{kind} {value.get('registered_name') or name!r} (module {module!r}) has no tf_keras equivalent")
    config = dict(value.get("config") or {})
    keras3_cls = getattr(getattr(_keras3(), kind + "s"), name, None)
    accepted = set(inspect.signature(cls.__init__).parameters)
    kept = {k: v for k, v in config.items() if k in accepted}
    for key in set(config) - accepted:
        if not _is_default(keras3_cls, key, config[key]):
            raise ValueError(f"{kind} {name} option {key}={config[key]!r} has no tf_keras equivalent")
    return cls(**kept)


def _is_default(cls, key: str, value) -> bool:
    """Whether ``value`` is ``cls.__init__``'s default for ``key`` (None counts as unset)."""
    if value is None:
        return True
    if cls is None:
        return False
    parameter = inspect.signature(cls.__init__).parameters.get(key)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return False
    default = parameter.default
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) == list(default)
    return value == default


def _tf_keras_config(layer, precision: list[str]) -> dict:
    """``layer``'s Keras 3 config as the config of the tf_keras class of the same name.

    Appends the layer's name to ``precision`` when its float policy is not float32. Raises
    ValueError naming what cannot be translated.
    """
    name = type(layer).__name__
    cls = getattr(keras.layers, name)
    config = dict(layer.get_config())
    for old, new in _RENAMED.get(name, {}).items():
        if old in config:
            config[new] = config.pop(old)
    if "dtype" in config:
        policy = _policy_name(config["dtype"])
        if getattr(layer.dtype_policy, "quantization_mode", None):
            raise ValueError(f"quantized by Keras 3 (dtype policy {policy!r}); convert the float model before Keras 3 quantizes it")
        if policy != "float32":
            if policy not in _FLOAT_POLICIES:
                raise ValueError(f"dtype policy {policy!r} has no float32 equivalent")
            precision.append(layer.name)
        config["dtype"] = "float32"
    accepted = set(inspect.signature(cls.__init__).parameters) | _BASE_OPTIONS
    renamed = set(_RENAMED.get(name, {}).values())
    for key in list(config):
        if key not in accepted and key not in renamed:
            if not _is_default(type(layer), key, config[key]):
                raise ValueError(f"option {key}={config[key]!r} has no tf_keras equivalent")
            del config[key]
    for key, value in list(config.items()):
        if key.endswith("_initializer"):
            try:
                config[key] = _translate_object(value, keras.initializers, "initializer")
            except (ValueError, TypeError):
                del config[key]  # tf_keras' default initializer; the weights are copied anyway
        elif key.endswith("_regularizer"):
            config[key] = _translate_object(value, keras.regularizers, "regularizer")
        elif key.endswith("_constraint"):
            config[key] = _translate_object(value, keras.constraints, "constraint")
        elif key == "activation":
            if not isinstance(value, str):
                raise ValueError(f"activation {value!r} is not a built-in activation")
            try:
                keras.activations.get(value)
            except ValueError:
                raise ValueError(f"activation {value!r} has no tf_keras equivalent") from None
    return config


def _layer_problem(op) -> str | None:
    """Why the Keras 3 operation ``op`` (not a model) cannot be converted, or None."""
    keras3 = _keras3()
    name = type(op).__name__
    if not isinstance(op, keras3.layers.Layer):
        return (
            f"a keras.ops call ({name}) in the graph; tf_keras has no such layer: write it with a "
            "layer (keras.layers.Add, Multiply, Rescaling, ...)"
        )
    if getattr(keras3.layers, name, None) is not type(op):
        return "a custom layer class (not a Keras 3 built-in layer)"
    if name not in supported_layer_classes():
        return "a layer class kerasq does not support"
    try:
        _tf_keras_config(op, [])
    except (ValueError, TypeError) as error:
        return str(error)
    return None


def _problems(model, prefix: str = "") -> list[str]:
    """Every operation of ``model`` (nested models included) that cannot be converted, one line each."""
    keras3 = _keras3()
    kind = _kind(model)
    if kind is None:
        return [
            f"{prefix}{model.name!r} ({_class_path(model)}): a subclassed Model has no graph to read; build it with "
            "keras.Model(inputs, outputs) or keras.Sequential"
        ]
    try:
        model.inputs  # noqa: B018  (a Sequential without an input shape has none)
    except (AttributeError, ValueError):
        return [f"{prefix}{model.name!r} ({_class_path(model)}): the model is not built; give it a keras.Input"]
    problems = []
    for op in _graph_operations(model):
        if isinstance(op, keras3.Model):
            problems.extend(_problems(op, f"{prefix}{model.name}/"))
            continue
        reason = _layer_problem(op)
        if reason is not None:
            problems.append(f"{prefix}{op.name!r} ({_class_path(op)}): {reason}")
    return problems


# --- building ---------------------------------------------------------------------------------


class _Converter:
    """Builds the tf_keras copies of one Keras 3 model's layers, each once (shared layers stay shared)."""

    def __init__(self):
        self.layers: dict[int, tuple[Any, keras.layers.Layer]] = {}
        self.precision: list[str] = []

    def layer(self, op) -> keras.layers.Layer:
        if id(op) not in self.layers:
            if isinstance(op, _keras3().Model):
                copy = self.model(op)
            else:
                copy = getattr(keras.layers, type(op).__name__).from_config(_tf_keras_config(op, self.precision))
            self.layers[id(op)] = (op, copy)
        return self.layers[id(op)][1]

    def model(self, model) -> keras.Model:
        built = self.sequential(model) if _kind(model) == "sequential" else self.functional(model)
        built.trainable = model.trainable
        return built

    def sequential(self, model) -> keras.Model:
        (tensor,) = model.inputs
        copy = keras.Sequential(name=model.name)
        copy.add(_input(tensor))
        for op in model.layers:
            copy.add(self.layer(op))
        return copy

    def functional(self, model) -> keras.Model:
        keras3 = _keras3()
        values: dict[int, Any] = {id(t): _input(t) for t in model.inputs}
        for node in _nodes_in_order(model.outputs):
            if isinstance(node.operation, keras3.layers.InputLayer):
                continue

            def value(x):
                return values[id(x)] if isinstance(x, keras3.KerasTensor) else x

            args, kwargs = node.arguments.convert(value)
            outputs = self.layer(node.operation)(*args, **kwargs)
            for k3_tensor, tensor in zip(node.outputs, tf.nest.flatten(outputs)):
                values[id(k3_tensor)] = tensor
        inputs = keras3.tree.map_structure(lambda t: values[id(t)], model._inputs_struct)
        outputs = keras3.tree.map_structure(lambda t: values[id(t)], model._outputs_struct)
        return keras.Model(inputs, outputs, name=model.name)

    def copy_weights(self) -> None:
        for op, copy in self.layers.values():
            if not isinstance(op, _keras3().Model):
                _copy_weights(op, copy)


def _input(tensor) -> Any:
    """A tf_keras input like the Keras 3 input tensor ``tensor`` (shape, dtype, its InputLayer's name)."""
    source = tensor._keras_history.operation
    return keras.Input(batch_shape=tuple(tensor.shape), dtype=tensor.dtype, name=getattr(source, "name", None))


def _node_of(tensor):
    history = getattr(tensor, "_keras_history", None)
    if history is None or history.operation is None:
        return None
    return history.operation._inbound_nodes[history.node_index]


def _nodes_in_order(outputs) -> list:
    """The nodes the ``outputs`` depend on, each after the nodes it reads (iterative depth-first)."""
    order, visited = [], set()
    stack = [(_node_of(t), False) for t in reversed(list(outputs))]
    while stack:
        node, expanded = stack.pop()
        if node is None:
            continue
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for tensor in reversed(node.arguments.keras_tensors):
            parent = _node_of(tensor)
            if parent is not None and id(parent) not in visited:
                stack.append((parent, False))
    return order


def _short_name(variable) -> str:
    return variable.name.split("/")[-1].split(":")[0]


def _copy_weights(source, target: keras.layers.Layer) -> None:
    """Copy the Keras 3 layer's weights into its tf_keras copy, matched by name (else in order, by shape)."""
    values = {_short_name(v): v.numpy() for v in source.weights}
    targets = target.weights
    if len(values) == len(source.weights) == len(targets) and all(
        _short_name(w) in values and tuple(values[_short_name(w)].shape) == tuple(w.shape) for w in targets
    ):
        target.set_weights([values[_short_name(w)] for w in targets])
        return
    arrays = [v.numpy() for v in source.weights]
    if [a.shape for a in arrays] != [tuple(w.shape) for w in targets]:
        raise ValueError(
            f"Layer {source.name!r} ({type(source).__name__}): its Keras 3 weights "
            f"{[(_short_name(v), tuple(v.shape)) for v in source.weights]} do not match the tf_keras layer's "
            f"{[(_short_name(w), tuple(w.shape)) for w in targets]}"
        )
    target.set_weights(arrays)


def to_tf_keras(model: Any) -> keras.Model:
    """The tf_keras equivalent of a Keras 3 Functional or Sequential model.

    Args:
      model: a Keras 3 ``keras.Model`` built with ``keras.Model(inputs, outputs)`` or
        ``keras.Sequential`` (with a known input shape); nested Functional and Sequential models
        (a backbone) are converted too. A tf_keras model is returned as it is.
    Returns:
      A new tf_keras model (Functional, or Sequential for a Sequential) with the same layer
      names, configurations and weights: its float outputs are the Keras 3 model's. Not compiled.
    Raises:
      ValueError listing every layer that cannot be converted (a custom layer, a ``keras.ops``
      call in the graph, a subclassed model, a layer class kerasq does not support, a layer
      quantized by Keras 3, an option tf_keras cannot take) with its class, all at once.
      TypeError if ``model`` is neither a Keras 3 nor a tf_keras model.
    Warns:
      UserWarning naming the layers whose mixed-precision (float16/bfloat16) policy became float32.
    """
    if isinstance(model, keras.Model):
        return model
    if not is_keras3_model(model):
        raise TypeError(f"Expected a Keras 3 or tf_keras model. Received: model of type {_class_path(model)}")
    problems = _problems(model)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ValueError(
            f"Keras 3 model {model.name!r} cannot be converted to tf_keras; {len(problems)} layer(s) cannot:\n{listed}\n"
            f"Supported layer classes: {', '.join(supported_layer_classes())}."
        )
    converter = _Converter()
    converted = converter.model(model)
    converter.copy_weights()
    if converter.precision:
        warnings.warn(
            f"Keras 3 model {model.name!r}: layers {converter.precision} use a mixed-precision or non-float32 dtype "
            "policy; the tf_keras model computes them in float32 with the same weights, so its outputs differ from "
            "the Keras 3 model's by that model's reduced-precision rounding.",
            stacklevel=2,
        )
    return converted
