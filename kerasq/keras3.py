"""Keras 3 models as tf_keras models: the same layers, configurations, weights and names.

kerasq quantizes tf_keras models (tfmot needs Keras 2). A model built with Keras 3 (``import
keras``, a Functional or Sequential ``keras.Model``) is rebuilt in tf_keras layer by layer:

1. every operation of the Keras 3 graph is checked first, nested Functional and Sequential
   models included; a layer whose exact class is not a Keras 3 layer class that tf_keras also
   has and kerasq's layer table supports (``kerasq.layer_table``) — a custom or subclassed
   layer, a subclassed model, a layer quantized by Keras 3, an option tf_keras cannot take —
   and a ``keras.ops`` call kerasq cannot read (below) are reported, all of them in one ``ValueError``;
2. each layer becomes the tf_keras class of the same name made from its ``get_config()``: the
   dtype policy becomes ``"float32"``, initializers, regularizers and constraints become tf_keras
   objects of the same class, options tf_keras does not know are dropped when they hold their
   Keras 3 default, and renamed options are renamed (LeakyReLU's ``negative_slope`` is ``alpha``);
3. the graph is called again in tf_keras, node by node in topological order (a nested model
   becomes a converted nested model, which kerasq's graph inlines), with the same layer names;
4. the weights are copied by name (``kernel``, ``gamma``, ``moving_mean``, ...), so the float
   outputs are the Keras 3 model's.

``keras.ops`` calls in a Functional graph (Keras 3's MobileNetV3 writes hard-sigmoid as
``ReLU(6)(x + 3) * (1/6)``) become the TF computation Keras 3's TensorFlow backend runs, applied
to the tf_keras tensors; tf_keras records it as ``TFOpLambda`` nodes, which ``kerasq.graph``
reads as ScalarArithmetic, Add/Subtract/Multiply or Activation layers (``kerasq.arithmetic``):
``+ - * /`` of a float tensor and a number (``c - x`` as ``(-x) + c``, ``-x`` as ``x · -1``),
``+ - *`` of two float tensors, and relu, relu6, sigmoid, tanh, silu, gelu (erf form), elu
(alpha 1), softmax (last axis), hard_sigmoid and hard_silu of one. Other calls (``matmul``, a
tensor constant, ``c / x``, ``gelu`` with its tanh approximation) are refused. The activations
tf_keras lacks or defines differently — Keras 3's ``hard_sigmoid`` is ``relu6(x + 3) / 6``,
tf_keras' is ``clip(0.2·x + 0.5, 0, 1)``; ``hard_silu``/``hard_swish`` is ``x · hard_sigmoid(x)``
— are written out the same way, whether an ``Activation`` layer (which then has no layer of its
own) or a layer's ``activation=`` (the copy is linear, the arithmetic follows it). A Sequential
stays a Sequential, where a layer cannot become several nodes: such an activation is refused there.

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
import numbers
import operator
import sys
import warnings
import zipfile
from typing import Any, Callable

import numpy as np

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
            if value in _EXPANSIONS:
                config[key] = "linear"  # the converter writes Keras 3's function after the layer
                continue
            try:
                keras.activations.get(value)
            except ValueError:
                raise ValueError(f"activation {value!r} has no tf_keras equivalent") from None
    return config


def _layer_problem(op, in_sequential: bool = False) -> str | None:
    """Why the Keras 3 operation ``op`` (not a model) cannot be converted, or None.

    ``in_sequential``: ``op`` is a layer of a Sequential model, where it must stay one layer.
    """
    keras3 = _keras3()
    name = type(op).__name__
    if not isinstance(op, keras3.layers.Layer):
        for node in op._inbound_nodes:
            computation = _operation(node)
            if isinstance(computation, str):
                return computation
        return None
    expanded = _expanded_activation(op)
    if in_sequential and expanded is not None:
        return (
            f"activation {expanded!r} becomes several tf_keras nodes ({_EXPANSION_TEXT[expanded]}), which a "
            "Sequential model cannot hold as one layer; build the model with keras.Model(inputs, outputs)"
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
        reason = _layer_problem(op, in_sequential=kind == "sequential")
        if reason is not None:
            problems.append(f"{prefix}{op.name!r} ({_class_path(op)}): {reason}")
    return problems


# --- keras.ops calls, and activations tf_keras lacks or defines differently ------------------
#
# tf_keras records TF arithmetic on its symbolic tensors (``x + 3.0``, ``tf.nn.relu6(x)``) as
# ``TFOpLambda`` nodes, which kerasq's graph reads as ScalarArithmetic, Add/Subtract/Multiply or
# Activation layers (``kerasq.arithmetic``), the way tf_keras' own MobileNetV3 is read. So a
# Keras 3 ``keras.ops`` node becomes the TF computation Keras 3's TensorFlow backend runs for it,
# applied to the converted tensors: the same nodes a tf_keras model written with TF ops has.


def _hard_sigmoid(x):
    """Keras 3's ``hard_sigmoid`` as its TensorFlow backend computes it: ``relu6(x + 3) / 6``.

    tf_keras' ``hard_sigmoid`` is another function (``clip(0.2·x + 0.5, 0, 1)``), so the name
    is never handed to tf_keras.
    """
    return tf.nn.relu6(x + 3.0) / 6.0


def _hard_silu(x):
    """Keras 3's ``hard_silu`` (alias ``hard_swish``): ``x · hard_sigmoid(x)``."""
    return x * _hard_sigmoid(x)


# Keras 3 activations tf_keras lacks or defines differently, written out as TF arithmetic; as an
# ``activation=`` option the layer's copy is linear and this follows it.
_EXPANSIONS: dict[str, Callable] = {"hard_sigmoid": _hard_sigmoid, "hard_silu": _hard_silu, "hard_swish": _hard_silu}
_EXPANSION_TEXT = {"hard_sigmoid": "relu6(x + 3) / 6", "hard_silu": "x * relu6(x + 3) / 6", "hard_swish": "x * relu6(x + 3) / 6"}

# keras.ops of two operands (``x + 3.0`` is ``keras.ops.add``) by Keras 3 class, as the Python
# operator that makes tf_keras record the TFOpLambda kerasq reads.
_BINARY_OPS = {
    "keras.src.ops.numpy.Add": operator.add,
    "keras.src.ops.numpy.Subtract": operator.sub,
    "keras.src.ops.numpy.Multiply": operator.mul,
    "keras.src.ops.numpy.Divide": operator.truediv,
    "keras.src.ops.numpy.TrueDivide": operator.truediv,
}
# keras.ops of one tensor by Keras 3 class, as the TF function Keras 3's TensorFlow backend calls.
_UNARY_OPS: dict[str, Callable] = {
    "keras.src.ops.nn.Relu": tf.nn.relu,
    "keras.src.ops.nn.Relu6": tf.nn.relu6,
    "keras.src.ops.nn.Sigmoid": tf.math.sigmoid,
    "keras.src.ops.numpy.Tanh": tf.math.tanh,
    "keras.src.ops.nn.Silu": tf.nn.silu,
    "keras.src.ops.nn.Gelu": tf.nn.gelu,
    "keras.src.ops.nn.Elu": tf.nn.elu,
    "keras.src.ops.nn.Softmax": tf.nn.softmax,
    "keras.src.ops.nn.HardSigmoid": _hard_sigmoid,
    "keras.src.ops.nn.HardSilu": _hard_silu,
    "keras.src.ops.numpy.Negative": lambda x: x * -1.0,  # exact, and read as a ScalarArithmetic
}
# Options those ops must hold for the TF function above, called with its defaults, to be theirs
# (``keras.ops.gelu`` defaults to the tanh approximation; kerasq reads the exact erf form).
_UNARY_OPTIONS = {
    "keras.src.ops.nn.Gelu": {"approximate": False},
    "keras.src.ops.nn.Elu": {"alpha": 1.0},
    "keras.src.ops.nn.Softmax": {"axis": -1},
}
_READABLE = (
    "kerasq reads +, -, * and / of a float tensor and a number, +, - and * of two float tensors of one rank, "
    "and relu, relu6, sigmoid, tanh, silu, gelu (approximate=False), elu (alpha=1), softmax (last axis), "
    "hard_sigmoid and hard_silu of a float tensor; write anything else with layers"
)


def _expanded_activation(layer) -> str | None:
    """``layer``'s activation when the converter writes it out (``_EXPANSIONS``), else None."""
    activation = layer.get_config().get("activation")
    return activation if isinstance(activation, str) and activation in _EXPANSIONS else None


def _number(value) -> float | None:
    """``value`` as a float when it is a finite real number (Python, NumPy, 0-d array), else None."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_)):
        return float(value) if np.isfinite(float(value)) else None
    return None


def _operation(node) -> Callable[..., Any] | str:
    """The tf_keras computation of the Keras 3 ``keras.ops`` call ``node``, or why there is none.

    The computation is a function of the node's converted positional arguments (tf_keras
    tensors, and the numbers as they are) returning the converted output. The reason is a
    sentence for the conversion error.
    """
    keras3 = _keras3()
    op, path, name = node.operation, _class_path(node.operation), type(node.operation).__name__
    args = list(node.arguments.args)
    tensors = [isinstance(a, keras3.KerasTensor) for a in args]
    if node.arguments.kwargs or (path not in _UNARY_OPS and path not in _BINARY_OPS) or not any(tensors):
        return f"a keras.ops call ({name}) in the graph; {_READABLE}"
    dtypes = {str(t.dtype) for t in list(node.arguments.keras_tensors) + list(node.outputs)}
    if len(dtypes) != 1 or not dtypes <= {"float16", "bfloat16", "float32", "float64"}:
        return f"a keras.ops call ({name}) on or into {sorted(dtypes)} tensors; {_READABLE} (of one float dtype)"
    if path in _UNARY_OPS:
        options = {k: getattr(op, k, None) for k, v in _UNARY_OPTIONS.get(path, {}).items() if getattr(op, k, None) != v}
        if len(args) != 1 or options:
            return f"a keras.ops call ({name}) with {options or f'{len(args)} arguments'}; {_READABLE}"
        return _UNARY_OPS[path]
    function = _BINARY_OPS[path]
    if len(args) != 2:
        return f"a keras.ops call ({name}) with {len(args)} arguments; {_READABLE}"
    if all(tensors):
        if function is operator.truediv:
            return f"a keras.ops call ({name}) of two tensors; {_READABLE}"
        if len(args[0].shape) != len(args[1].shape):  # tf_keras' merge layers broadcast one rank only
            return f"a keras.ops call ({name}) of tensors of ranks {len(args[0].shape)} and {len(args[1].shape)}; {_READABLE}"
        return function
    constant = args[0] if tensors[1] else args[1]
    number = _number(constant)
    if number is None:
        shape = getattr(constant, "shape", None)
        return f"a keras.ops call ({name}) with a constant {type(constant).__name__}{'' if shape is None else f' of shape {tuple(shape)}'}; {_READABLE}"
    if tensors[0]:
        if function is operator.truediv and number == 0:
            return f"a keras.ops call ({name}) dividing by zero; {_READABLE}"
        return lambda x, _: function(x, number)
    if function in (operator.add, operator.mul):
        return lambda _, x: function(x, number)
    if function is operator.sub:
        return lambda _, x: x * -1.0 + number  # c - x is (-x) + c exactly, in two nodes kerasq reads
    return f"a keras.ops call ({name}) of a number by a tensor; {_READABLE}"


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
            if isinstance(node.operation, keras3.layers.Layer):
                outputs = self.call(node.operation, args, kwargs)
            else:  # a keras.ops call, checked readable
                outputs = _operation(node)(*args)
            for k3_tensor, tensor in zip(node.outputs, tf.nest.flatten(outputs)):
                values[id(k3_tensor)] = tensor
        inputs = keras3.tree.map_structure(lambda t: values[id(t)], model._inputs_struct)
        outputs = keras3.tree.map_structure(lambda t: values[id(t)], model._outputs_struct)
        return keras.Model(inputs, outputs, name=model.name)

    def call(self, op, args: tuple, kwargs: dict) -> Any:
        """The tf_keras copy of the Keras 3 layer or model ``op`` called on converted arguments.

        An activation tf_keras lacks or defines differently (``_EXPANSIONS``) is written out after
        the copy (made linear); an ``Activation`` layer of one is only that, with no layer of its own.
        """
        expanded = None if isinstance(op, _keras3().Model) else _expanded_activation(op)
        if expanded is not None and type(op).__name__ == "Activation":
            return _EXPANSIONS[expanded](*args)
        outputs = self.layer(op)(*args, **kwargs)
        return outputs if expanded is None else _EXPANSIONS[expanded](outputs)

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
      names, configurations and weights: its float outputs are the Keras 3 model's. ``keras.ops``
      calls and the hard_sigmoid/hard_silu activations become TF arithmetic nodes (``TFOpLambda``).
      Not compiled.
    Raises:
      ValueError listing every layer that cannot be converted (a custom layer, a ``keras.ops``
      call kerasq cannot read, a subclassed model, a layer class kerasq does not support, a layer
      quantized by Keras 3, an option tf_keras cannot take, hard_sigmoid/hard_silu in a
      Sequential) with its class, all at once.
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
