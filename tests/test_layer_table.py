"""kerasq.layer_table: exact-class rules, one report of every unsupported layer, and a lowering per entry."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_exact_parity

import kerasq
import tflite_export
from kerasq import keras
from kerasq.layer_table import LAYER_TABLE, rule_for
from tflite_export.lower import LOWERINGS


class ScaledConv2D(keras.layers.Conv2D):
    """A user's Conv2D subclass whose call differs from Conv2D's."""

    def call(self, inputs):
        return 2.0 * super().call(inputs)


def test_a_subclass_never_passes_for_its_parent():
    # Conv2DTranspose is a Conv2D too, with its own entry (it runs as TRANSPOSE_CONV, not CONV_2D).
    assert issubclass(keras.layers.Conv2DTranspose, keras.layers.Conv2D)
    assert rule_for(keras.layers.Conv2DTranspose(4, 3)).role == "split"
    assert rule_for(ScaledConv2D(4, 3)) is None
    model = keras.Sequential([keras.Input((4, 4, 3)), ScaledConv2D(5, 3, name="scaled")])
    with pytest.raises(ValueError, match="'scaled' \\(ScaledConv2D\\): ScaledConv2D is not a supported layer type"):
        kerasq.quantize_model(model)


def test_every_unsupported_layer_is_reported_at_once_before_any_work():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", output_padding=1, name="deconv")(inputs)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(x)
    x = keras.layers.Conv2D(4, 3, activation="selu", name="selu_conv")(x)
    x = keras.layers.LayerNormalization(name="norm")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(3, activation="softplus", name="softplus_head")(x)
    with pytest.raises(ValueError) as error:
        kerasq.quantize_model(keras.Model(inputs, x))
    message = str(error.value)
    assert "cannot quantize 5 layer(s)" in message
    for name in ("'deconv' (Conv2DTranspose): output_padding", "'doubler' (Lambda)", "'selu_conv' (Conv2D): activation 'selu'",
                 "'norm' (LayerNormalization)", "'softplus_head' (Dense): activation 'softplus'"):
        assert name in message


def test_add_of_three_inputs_is_refused_before_training():
    inputs = keras.Input((6,))
    branches = [keras.layers.Dense(4, name=f"d{i}")(inputs) for i in range(3)]
    model = keras.Model(inputs, keras.layers.Add(name="sum3")(branches))
    with pytest.raises(ValueError, match="'sum3' \\(Add\\): TFLite's ADD takes two inputs and this Add has 3"):
        kerasq.quantize_model(model)


def test_a_linear_activation_after_a_reshape_is_dropped(digits):
    (x_train, _), (x_test, _) = digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Reshape((144,), name="flat")(x)
    x = keras.layers.Activation("linear", name="identity")(x)
    x = keras.layers.ReLU(name="relu_after_reshape")(x)  # commutes with the reshape: fused into conv
    model = keras.Model(inputs, keras.layers.Dense(10, name="fc")(x))
    qmodel = kerasq.quantize_model(model, calibration_data=x_train[:256])
    assert [layer.name for layer in qmodel.layers if layer.name in ("identity", "relu_after_reshape")] == []
    assert qmodel.get_layer("conv").activation.kind == "relu"
    np.testing.assert_allclose(qmodel.predict(x_test, verbose=0), model.predict(x_test, verbose=0), atol=0.2)
    blob = tflite_export.convert(qmodel)
    assert tflite_export.compare(qmodel, blob, x_test).max_abs_lsb <= 1


def test_zero_padding_is_one_table_entry_and_one_lowering(digits):
    """ZeroPadding2D: a same-grid layer (pads with real 0, the zero point) lowered to PAD."""
    (x_train, y_train), (x_test, _) = digits
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.ZeroPadding2D(((1, 2), (2, 1)), name="pad")(x)
    x = keras.layers.Conv2D(8, 3, name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="fc")(x))
    assert rule_for(model.get_layer("pad")).role == "same_grid"
    qmodel = kerasq.quantize_model(model, calibration_data=x_train[:256])
    qmodel.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x_train, y_train, epochs=1, verbose=0)
    blob = tflite_export.convert(qmodel)
    report = tflite_export.inspect(blob)
    assert report.is_integer_only and report.op_counts()["PAD"] == 1
    pad = next(op for op in report.ops if op.name == "PAD")
    assert report.tensors[pad.inputs[0]].scales == report.tensors[pad.outputs[0]].scales  # one grid
    assert tuple(report.tensors[pad.outputs[0]].shape[1:]) == (9, 9, 6)
    assert_exact_parity(qmodel, blob, x_test, min_bit_exact=0.999)


def test_every_exported_table_entry_has_a_lowering():
    for cls, rule in LAYER_TABLE.items():
        if rule.role in ("weight", "own_grid", "same_grid", "shared_grid"):
            assert cls in LOWERINGS, cls.__name__
