"""A flat, editable view of a Sequential or Functional tf_keras model.

``LayerGraph`` lists the model's layers in topological order with the names of the layers
feeding each one. Transforms (BN folding, activation absorption, wrapping) edit this list and
``build()`` turns it back into a Functional model. A nested Sequential or Functional model
(a backbone used as a layer) is read as the layers it holds. Shared layers are rejected with an
error naming them, because a layer called twice has no single set of quantization parameters.
Arithmetic Keras records as ``TFOpLambda`` (``x + 3.0``, ``x * y``) is read as the layer it
computes (``kerasq.arithmetic``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kerasq.arithmetic import from_tf_op_lambda
from kerasq.compat import keras


@dataclass
class Node:
    """One layer call: ``layer`` applied to the outputs of the nodes named in ``inbound``."""

    layer: keras.layers.Layer
    inbound: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.layer.name


@dataclass
class LayerGraph:
    """Model inputs (``keras.Input`` specs), nodes in topological order, output node names."""

    inputs: dict[str, tuple]  # input name -> shape without batch
    input_dtypes: dict[str, str]
    nodes: list[Node]
    outputs: list[str]
    name: str = "model"

    @classmethod
    def from_model(cls, model: keras.Model) -> "LayerGraph":
        if isinstance(model, keras.Sequential):
            cls._check_built(model)
            return cls._from_sequential(model)
        if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
            raise ValueError(
                "kerasq needs a tf_keras Sequential or Functional model (subclassed models have no "
                f"inspectable graph). Received: {type(model).__module__}.{type(model).__name__}"
            )
        cls._check_built(model)
        return cls._from_functional(model)

    @staticmethod
    def _check_built(model: keras.Model) -> None:
        if not model.built or not model.inputs:
            raise ValueError(
                f"Model {model.name!r} has no defined input shape; build it with an Input layer or input_shape."
            )
        for layer in model.layers:
            if isinstance(layer, keras.Model) and not (
                isinstance(layer, keras.Sequential) or getattr(layer, "_is_graph_network", False)
            ):
                raise ValueError(
                    f"Nested model {layer.name!r} is a subclassed model (no inspectable graph); kerasq reads "
                    "nested Sequential and Functional models only."
                )

    @classmethod
    def _from_sequential(cls, model: keras.Sequential) -> "LayerGraph":
        spec = model.inputs[0]
        input_name = spec.name.split(":")[0]
        nodes, previous = [], input_name
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if isinstance(layer, keras.Model):
                previous = cls._inline(layer, [previous], nodes)
                continue
            nodes.append(Node(layer, [previous]))
            previous = layer.name
        return cls({input_name: tuple(spec.shape[1:])}, {input_name: spec.dtype.name}, nodes, [previous], model.name)

    @classmethod
    def _from_functional(cls, model: keras.Model) -> "LayerGraph":
        """Read the graph from the model's own call records (``_inbound_nodes`` and Keras history)."""
        network_nodes = model._network_nodes  # the calls that belong to this model
        inputs, dtypes, nodes = {}, {}, []
        aliases: dict[str, str] = {}  # a nested model's name -> the node producing its output
        for layer in model.layers:
            calls = [
                node
                for index, node in enumerate(layer._inbound_nodes)
                if f"{layer.name}_ib-{index}" in network_nodes and not node.is_input
            ]
            if isinstance(layer, keras.layers.InputLayer):
                inputs[layer.name] = tuple(layer.output_shape[0][1:] if isinstance(layer.output_shape, list) else layer.output_shape[1:])
                dtypes[layer.name] = layer.dtype
                continue
            if len(calls) != 1:
                raise ValueError(f"Layer {layer.name!r} is called {len(calls)} times (a shared layer); this is not supported.")
            inbound = []
            for tensor in calls[0].keras_inputs:
                producer, _, tensor_index = tensor._keras_history
                if tensor_index != 0:
                    raise ValueError(
                        f"Layer {layer.name!r} reads output {tensor_index} of the multi-output layer "
                        f"{producer.name!r}; multi-output layers are not supported."
                    )
                inbound.append(aliases.get(producer.name, producer.name))
            if isinstance(layer, keras.Model):
                aliases[layer.name] = cls._inline(layer, inbound, nodes)
                continue
            if type(layer).__name__ == "TFOpLambda":  # `x + 3.0` in a Functional model: a layer of its own
                layer = from_tf_op_lambda(layer, calls[0]) or layer
            nodes.append(Node(layer, inbound))
        outputs = [aliases.get(t._keras_history[0].name, t._keras_history[0].name) for t in model.outputs]
        order = [tensor._keras_history[0].name for tensor in model.inputs]
        missing = [name for name in order if name not in inputs]
        if missing:
            raise ValueError(f"Model inputs {missing} were not found among the model layers.")
        inputs = {name: inputs[name] for name in order}  # the model's input order
        return cls(inputs, {name: dtypes[name] for name in order}, nodes, outputs, model.name)

    @classmethod
    def _inline(cls, inner: keras.Model, inbound: list[str], nodes: list[Node]) -> str:
        """Append the nodes of a nested single-output model, reading ``inbound``; returns its output node.

        A model used as a layer (a pretrained backbone, say) is read as the layers it holds, so
        each of them is quantized like the outer model's own.
        """
        graph = cls.from_model(inner)
        if len(graph.outputs) != 1 or len(graph.inputs) != len(inbound):
            raise ValueError(
                f"Nested model {inner.name!r} has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs; "
                "kerasq inlines nested models with one output."
            )
        taken = {node.name for node in nodes} | set(inbound)
        clashes = sorted(taken & {node.name for node in graph.nodes})
        if clashes:
            raise ValueError(
                f"Nested model {inner.name!r} has layers named like layers of the outer model: {clashes}; "
                "layer names must be unique across the nesting."
            )
        rename = dict(zip(graph.inputs, inbound))
        for node in graph.nodes:
            nodes.append(Node(node.layer, [rename.get(name, name) for name in node.inbound]))
        return rename.get(graph.outputs[0], graph.outputs[0])

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"No layer named {name!r} in model {self.name!r}.")

    def consumers(self, name: str) -> list[Node]:
        return [node for node in self.nodes if name in node.inbound]

    def remove(self, name: str) -> None:
        """Drop a single-input node, rewiring its consumers (and model outputs) to its input."""
        node = self.node(name)
        if len(node.inbound) != 1:
            raise ValueError(f"Only single-input layers can be removed; {name!r} has {len(node.inbound)} inputs.")
        source = node.inbound[0]
        self.nodes.remove(node)
        for consumer in self.consumers(name):
            consumer.inbound = [source if n == name else n for n in consumer.inbound]
        self.outputs = [source if n == name else n for n in self.outputs]

    def build(self, name: str | None = None, model_class: type | None = None, **kwargs) -> keras.Model:
        """A Functional model (of ``model_class``, default ``keras.Model``) applying the nodes' layers in order."""
        tensors = {n: keras.Input(shape=s, name=n, dtype=self.input_dtypes[n]) for n, s in self.inputs.items()}
        model_inputs = list(tensors.values())
        for node in self.nodes:
            args = [tensors[n] for n in node.inbound]
            tensors[node.name] = node.layer(args[0] if len(args) == 1 else args)
        outputs = [tensors[n] for n in self.outputs]
        return (model_class or keras.Model)(
            model_inputs if len(model_inputs) > 1 else model_inputs[0],
            outputs if len(outputs) > 1 else outputs[0],
            name=name or self.name,
            **kwargs,
        )
