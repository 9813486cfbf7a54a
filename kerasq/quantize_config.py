"""kerasq schemes as tfmot ``QuantizeConfig`` objects, for existing tfmot QAT pipelines.

``QuantizeConfig(scheme)`` tells tfmot's ``QuantizeWrapperV2`` to quantize a layer's weights
with the scheme's weight quantizers (one per weight the layer table lists, on its output-channel
axes) and the layer's activation with the scheme's activation quantizer::

    q = tfmot.quantization.keras
    annotated = keras.Sequential([
        keras.Input((32, 32, 3)),
        q.quantize_annotate_layer(keras.layers.Conv2D(8, 3, activation="relu"),
                                  quantize_config=kerasq.QuantizeConfig("pact")),
        ...
    ])
    with q.quantize_scope(kerasq.custom_objects()):
        qat = q.quantize_apply(annotated)

What the wrapper holds for a layer under a kerasq config (what the exporter reads):

- ``wrapper.quantize_config``: this object; ``wrapper.quantize_config.scheme`` the ``Scheme``;
- ``wrapper._weight_vars``: ``[(float weight, kerasq WeightQuantizer, {key: variable})]`` in the
  order of ``weight_attributes(layer)``; the variables live on the wrapper, named
  ``{wrapper}/{weight}_{key}`` (``kernel_w_p``, ``depthwise_kernel_codebook``, ...);
- ``wrapper._quantize_activations``: one tfmot ``QuantizeAwareActivation`` whose ``quantizer``
  is the kerasq ``ActivationQuantizer``; it rounds after ``linear``/``relu``/``swish``
  (``_post_activation_vars``, variables ``{wrapper}/post_activation_{key}``) and before
  ``softmax``/``sigmoid``/``tanh`` (``_pre_activation_vars``, ``pre_activation_{key}``);
- no output quantizer.

Weight quantizers with data-dependent state (TTQ's scales, the k-means codebook, stored scales)
are initialized from the layer's weights when the wrapper builds them: inside ``quantize_apply``
the layer already holds the float model's weights then. A model loaded from disk builds first
and reads its saved variables afterwards, so trained quantizer state is kept.
"""

from __future__ import annotations

from typing import Any

import tensorflow_model_optimization as tfmot

from kerasq.activations import ActivationSpec
from kerasq.binary import CLIPPED_METHODS, Binary, WeightClip
from kerasq.compat import keras, tf
from kerasq.layer_table import LAYER_TABLE, WeightSpec, unsupported_reason
from kerasq.quantizers import WeightQuantizer
from kerasq.registry import ConfigEquality, all_custom_objects, register
from kerasq.schemes.base import Scheme, get_scheme

__all__ = ["QuantizeConfig", "custom_objects", "supported_layer_classes", "weight_specs"]

# Layers whose weights the scheme quantizes inside one tfmot wrapper, with the weights' output
# channel axes. Conv2DTranspose keeps its kernel as [h, w, out, in]: output channels on axis -2
# (kerasq.quantize_model instead rewrites it as TransposedConv2D with out last).
_WEIGHTS: dict[type, tuple[WeightSpec, ...]] = {
    **{cls: LAYER_TABLE[cls].weights for cls in (keras.layers.Conv2D, keras.layers.Conv1D, keras.layers.DepthwiseConv2D, keras.layers.Dense)},
    keras.layers.Conv2DTranspose: (WeightSpec("kernel", (-2,)),),
}

# Weight layers of the layer table that one tfmot wrapper cannot quantize as TFLite runs them.
_UNSUPPORTED: dict[type, str] = {
    keras.layers.SeparableConv2D: (
        "TFLite runs it as DEPTHWISE_CONV_2D then CONV_2D with an int8 tensor between them, and one tfmot "
        "wrapper has no quantizer for that inner tensor. Write it as DepthwiseConv2D + Conv2D(kernel_size=1) "
        "with a kerasq config each, or annotate it without a quantize_config (tfmot's default 8-bit splits it)"
    ),
    keras.layers.PReLU: (
        "PRELU has no activation attribute for tfmot's wrapper to quantize after it, and tfmot's default 8-bit "
        "has no PReLU either; kerasq.quantize_model quantizes it"
    ),
}

# Activations tfmot's QuantizeAwareActivation accepts (quantize_aware_activation.py).
_TFMOT_ACTIVATIONS = ("linear", "relu", "swish", "softmax", "sigmoid", "tanh", "gelu")


def supported_layer_classes() -> list[type]:
    """The layer classes ``QuantizeConfig`` quantizes."""
    return list(_WEIGHTS)


def weight_specs(layer: keras.layers.Layer) -> tuple[WeightSpec, ...]:
    """The weights ``QuantizeConfig`` quantizes in ``layer``, in the wrapper's order.

    Raises ``ValueError`` naming the layer class if a kerasq config cannot quantize it.
    """
    cls = type(layer)
    if cls in _UNSUPPORTED:
        raise ValueError(
            f"kerasq.QuantizeConfig cannot quantize {cls.__name__} layer {layer.name!r}: {_UNSUPPORTED[cls]}. "
            f"Received: {cls.__name__}"
        )
    if cls not in _WEIGHTS:
        names = ", ".join(c.__name__ for c in _WEIGHTS)
        raise ValueError(
            f"kerasq.QuantizeConfig quantizes the weight layers {names}; {cls.__name__} layer {layer.name!r} is not "
            f"one. Annotate it without a quantize_config for tfmot's default 8-bit. Received: {cls.__name__}"
        )
    if cls is not keras.layers.Conv2DTranspose:
        try:
            reason = unsupported_reason(layer)
        except AttributeError:  # a check that reads the input shape of a layer not called yet (loading)
            reason = None
        if reason is not None:
            raise ValueError(f"{cls.__name__} layer {layer.name!r} cannot be quantized: {reason}. Received: {cls.__name__}")
    return _WEIGHTS[cls]


def _activation_name(activation: Any) -> str:
    return getattr(activation, "__name__", type(activation).__name__)


def _built_by_wrapper(quantizer: WeightQuantizer, weight: tf.Variable) -> WeightQuantizer:
    """``quantizer`` whose ``build`` (called once by tfmot's wrapper) also

    - puts the wrapped layer's trainable weights first among the wrapper's own, as they are when
      ``quantize_apply`` builds the wrapper around a built layer. A wrapper rebuilt from its
      config (loading) builds the layer only inside ``build``, after ``QuantizeWrapperV2`` has
      read the layer's (then empty) weights, so trainable quantizer variables (TTQ's scales, the
      k-means codebook, PACT's ``α``) would come first and the saved weights and optimizer
      slots would be read into the wrong variables;
    - runs ``initialize`` from ``weight``'s current value. In ``quantize_apply`` the layer holds
      the float model's weights then; on loading, the saved values are read after ``build``
      and replace what this computed.
    """
    build = quantizer.build

    def build_and_initialize(tensor_shape, name, wrapper):
        own = getattr(wrapper, "_trainable_weights", None)
        inner = getattr(getattr(wrapper, "layer", None), "trainable_weights", [])
        if own is not None and inner:
            missing = [w for w in inner if not any(w is o for o in own)]
            own[:0] = missing
        variables = build(tensor_shape, name, wrapper)
        with tf.init_scope():
            quantizer.initialize(weight, variables)
        return variables

    quantizer.build = build_and_initialize
    return quantizer


def _set_weight_clip(layer: keras.layers.Layer, attribute: str, clip: keras.constraints.Constraint) -> None:
    """Put the latent-weight clip of BinaryConnect/BNN on an already built layer.

    tfmot builds the layer before consulting the config; the optimizer reads the variable's
    ``constraint``, the saved config the layer's ``*_constraint`` attribute: both get ``clip``.
    """
    constraint_attr = "depthwise_constraint" if attribute == "depthwise_kernel" else "kernel_constraint"
    current = getattr(layer, constraint_attr, None)
    if current is not None and current != clip:
        raise ValueError(
            f"Layer {layer.name!r} already has {constraint_attr}={current!r}; BinaryConnect/BNN clip the latent "
            f"weights with {clip!r} instead. Received: {constraint_attr}={current!r}"
        )
    setattr(layer, constraint_attr, clip)
    variable = getattr(layer, attribute)
    variable._constraint = clip  # noqa: SLF001 (tf.Variable keeps its constraint there; no setter)


@register("quantize_config", alias="quantize_config")
class QuantizeConfig(ConfigEquality, tfmot.quantization.keras.QuantizeConfig):
    """A tfmot ``QuantizeConfig`` that quantizes one layer with a kerasq scheme.

    Weights: ``scheme.weight_quantizer(layer, spec)`` for each weight of the layer (Conv2D,
    Conv1D and Dense ``kernel`` per output channel ``(-1,)``, DepthwiseConv2D
    ``depthwise_kernel`` on ``(2, 3)``, Conv2DTranspose ``kernel`` on ``(-2,)``); the scheme
    decides per tensor or per channel. Activation: ``scheme.activation_quantizer(layer, spec)``
    for the layer's activation, applied by tfmot's ``QuantizeAwareActivation`` after
    ``linear``/``relu``/``swish``/``gelu`` and before ``softmax``/``sigmoid``/``tanh``/``gelu``.
    No output quantizer. The quantizers are kerasq's own (not FakeQuant), so 1-bit and ternary
    weights, PACT's learned clip and k-means codebooks train inside tfmot's wrapper.

    Args:
      scheme: a ``kerasq.schemes`` object, a name from ``kerasq.available_schemes()`` or a Keras
        config of one (default ``"int8"``).
      quantize_activations: quantize the activation (False: weights only, e.g. for a layer
        followed by a BatchNormalization whose output tfmot quantizes).

    Raises ``ValueError`` naming the layer class when the wrapper is built around a layer it
    cannot quantize (SeparableConv2D, PReLU, layers without weights), or for an activation
    tfmot's wrapper does not take (``relu6``, ``elu``, ...: use a separate ReLU layer).

    >>> QuantizeConfig("ttq").scheme
    Ternary(method='ttq', threshold=0.7, per_channel=False)
    """

    def __init__(self, scheme: Scheme | str | dict = "int8", quantize_activations: bool = True):
        self.scheme = get_scheme(scheme)
        self.quantize_activations = bool(quantize_activations)
        # (layer class, name) -> the attributes get_weights_and_quantizers returned, for set_quantize_weights.
        self._attributes: dict[tuple[type, str], tuple[str, ...]] = {}

    def weight_attributes(self, layer: keras.layers.Layer) -> list[str]:
        """The attributes of ``layer`` whose weights this config quantizes, in the wrapper's order."""
        known = self._attributes.get((type(layer), layer.name))
        return list(known) if known is not None else [spec.attribute for spec in weight_specs(layer)]

    def get_weights_and_quantizers(self, layer):
        clipped = isinstance(self.scheme, Binary) and self.scheme.method in CLIPPED_METHODS
        pairs = []
        for spec in weight_specs(layer):
            if clipped and layer.built:  # Binary.weight_quantizer sets the clip on an unbuilt layer itself
                _set_weight_clip(layer, spec.attribute, WeightClip(1.0))
            quantizer = self.scheme.weight_quantizer(layer, spec)
            if quantizer is not None:  # a scheme may keep a weight float
                weight = getattr(layer, spec.attribute)
                pairs.append((spec.attribute, weight, _built_by_wrapper(quantizer, weight)))
        self._attributes[(type(layer), layer.name)] = tuple(attribute for attribute, _, _ in pairs)
        return [(weight, quantizer) for _, weight, quantizer in pairs]

    def get_activations_and_quantizers(self, layer):
        if not self.quantize_activations:
            return []
        activation = layer.activation
        if _activation_name(activation) not in _TFMOT_ACTIVATIONS:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) has activation {_activation_name(activation)!r}; tfmot's "
                f"QuantizeWrapper quantizes only {', '.join(_TFMOT_ACTIVATIONS)}. Use a linear layer followed by an "
                f"activation layer (e.g. keras.layers.ReLU(6.0)). Received: activation={_activation_name(activation)!r}"
            )
        spec = ActivationSpec.from_keras(activation)
        return [(activation, self.scheme.activation_quantizer(layer, spec))]

    def set_quantize_weights(self, layer, quantize_weights):
        attributes = self.weight_attributes(layer)
        if len(attributes) != len(quantize_weights):
            raise ValueError(
                f"set_quantize_weights on layer {layer.name!r}: {len(quantize_weights)} weights for "
                f"{len(attributes)} quantized attributes {attributes}. Received: {len(quantize_weights)} weights"
            )
        for attribute, weight in zip(attributes, quantize_weights):
            current = getattr(layer, attribute)
            if current.shape != weight.shape:
                raise ValueError(
                    f"Layer {layer.name!r}: quantized {attribute} has shape {weight.shape}, the layer's {current.shape}. "
                    f"Received: shape={weight.shape}"
                )
            setattr(layer, attribute, weight)

    def set_quantize_activations(self, layer, quantize_activations):
        if not self.quantize_activations:
            return
        if len(quantize_activations) != 1:
            raise ValueError(
                f"set_quantize_activations on layer {layer.name!r} expects one activation. "
                f"Received: {len(quantize_activations)}"
            )
        layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return []

    def __repr__(self) -> str:
        return f"QuantizeConfig(scheme={self.scheme!r}, quantize_activations={self.quantize_activations})"

    def get_config(self) -> dict[str, Any]:
        return {"scheme": keras.utils.serialize_keras_object(self.scheme), "quantize_activations": self.quantize_activations}


def custom_objects() -> dict[str, type]:
    """Every kerasq serializable class by ``kerasq>Name`` and bare name, ``QuantizeConfig`` included.

    For ``tfmot.quantization.keras.quantize_scope(kerasq.custom_objects())`` around
    ``quantize_apply`` and ``tf_keras.models.load_model``; ``kerasq.quantize_scope()`` uses the
    same table.
    """
    return all_custom_objects()
