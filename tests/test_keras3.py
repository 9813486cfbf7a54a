"""Keras 3 models (``import keras``) through kerasq: conversion to tf_keras, QAT, PTQ, export, CLI."""

from __future__ import annotations

import keras as keras3
import numpy as np
import pytest

import kerasq
import tflite_export
from kerasq import keras
from kerasq.cli import main
from kerasq.datasets import to_rgb
from kerasq.graph import LayerGraph
from kerasq.keras3 import is_keras3_file, is_keras3_model, supported_layer_classes, to_tf_keras

# Keras 3's TensorFlow backend converts tensors with np.array(x, copy=False), which NumPy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FLOAT_TOLERANCE = 1e-5  # max |tf_keras - Keras 3| over float outputs


def _randomize_batch_norms(model, seed: int = 0) -> None:
    """Non-trivial BatchNormalization statistics, so a swapped weight order would show."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras3.Model):
            _randomize_batch_norms(layer, seed + 1)
        elif isinstance(layer, keras3.layers.BatchNormalization):
            gamma, beta, mean, variance = (w.shape for w in layer.get_weights())
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma).astype("float32"), rng.normal(0, 0.1, beta).astype("float32"),
                rng.normal(0, 0.1, mean).astype("float32"), rng.uniform(0.5, 1.5, variance).astype("float32"),
            ])


def _max_float_difference(k3_model, tf_model, x) -> float:
    return float(np.max(np.abs(tf_model.predict(x, verbose=0) - np.asarray(k3_model.predict(x, verbose=0)))))


def _digits_cnn(name: str = "k3_cnn") -> "keras3.Model":
    """A Keras 3 functional CNN: Conv2D+BN+ReLU, DepthwiseConv2D, Add, Concatenate, pooling, Dense, softmax."""
    inputs = keras3.Input((8, 8, 1), name="image")
    x = keras3.layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = keras3.layers.BatchNormalization(name="stem_bn")(x)
    x = keras3.layers.ReLU(name="stem_relu")(x)
    d = keras3.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    d = keras3.layers.BatchNormalization(name="dw_bn")(d)
    d = keras3.layers.ReLU(6.0, name="dw_relu")(d)
    x = keras3.layers.Add(name="residual")([x, d])
    p = keras3.layers.Conv2D(8, 1, activation="relu", name="project")(x)
    x = keras3.layers.Concatenate(name="concat")([x, p])
    x = keras3.layers.MaxPooling2D(name="pool")(x)
    x = keras3.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras3.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras3.layers.Dropout(0.1, name="drop")(x)
    outputs = keras3.layers.Dense(10, activation="softmax", name="classifier")(x)
    return keras3.Model(inputs, outputs, name=name)


@pytest.fixture(scope="module")
def trained_k3_cnn(digits):
    """The Keras 3 CNN trained in float on digits (10 epochs)."""
    (x_train, y_train), _ = digits
    keras3.utils.set_random_seed(0)
    model = _digits_cnn()
    model.compile(keras3.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)
    return model


def _fit_briefly(qmodel, x, y, steps: int = 4, run_eagerly: bool = False):
    """A few QAT steps; asserts they changed the weights. (A few steps of a large model run faster
    eagerly than traced into a graph first.)"""
    before = [w.copy() for w in qmodel.get_weights()]
    qmodel.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", run_eagerly=run_eagerly)
    qmodel.fit(x[: 32 * steps], y[: 32 * steps], batch_size=32, epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, qmodel.get_weights()))
    return qmodel


def test_is_keras3_model_tells_the_two_kerases_apart():
    k3 = keras3.Sequential([keras3.Input((3,)), keras3.layers.Dense(2)])
    tfk = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert is_keras3_model(k3) and not is_keras3_model(tfk)
    assert not is_keras3_model(np.zeros(3)) and not is_keras3_model(keras3.layers.Dense(2))
    assert to_tf_keras(tfk) is tfk
    with pytest.raises(TypeError, match="Received: model of type numpy"):
        to_tf_keras(np.zeros(3))
    assert "Conv2D" in supported_layer_classes() and "TransposedConv2D" not in supported_layer_classes()


def test_mobilenet_v2_converts_exactly_and_exports_within_one_lsb(digits):
    (x_train, y_train), (x_test, _) = digits
    x_train, x_test = to_rgb(x_train[:160], 32), to_rgb(x_test[:64], 32)
    keras3.utils.set_random_seed(1)
    k3 = keras3.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10)
    _randomize_batch_norms(k3)

    converted = to_tf_keras(k3)
    assert [layer.name for layer in converted.layers] == [layer.name for layer in k3.layers]
    assert _max_float_difference(k3, converted, x_test) <= FLOAT_TOLERANCE

    qmodel = kerasq.quantize_model(k3, "int8", calibration_data=x_train[:64])
    assert isinstance(qmodel, kerasq.QuantizedModel)
    _fit_briefly(qmodel, x_train, y_train[:160], run_eagerly=True)
    blob = tflite_export.convert(qmodel)
    assert tflite_export.inspect(blob).is_integer_only
    parity = tflite_export.compare(qmodel, blob, x_test)
    assert parity.max_abs_lsb <= 1, parity
    assert parity.top1_agreement >= 0.98, parity


def test_mobilenet_v3_small_converts_exactly_and_exports_within_one_lsb(digits):
    """keras.ops arithmetic (hard_sigmoid as ``ReLU(6)(x + 3) * (1/6)``) and Activation("hard_swish")."""
    (x_train, _), (x_test, _) = digits
    x_train, x_test = to_rgb(x_train[:64], 32), to_rgb(x_test[:64], 32)
    keras3.utils.set_random_seed(4)
    k3 = keras3.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=10, include_preprocessing=False)
    _randomize_batch_norms(k3)

    converted = to_tf_keras(k3)
    written_out = {  # Activation("hard_swish") layers become arithmetic nodes only
        layer.name for layer in k3.layers
        if isinstance(layer, keras3.layers.Activation) and layer.get_config()["activation"] == "hard_silu"
    }
    assert written_out and {layer.name for layer in k3.layers} - written_out <= {layer.name for layer in converted.layers}
    assert _max_float_difference(k3, converted, x_test) <= FLOAT_TOLERANCE

    qmodel = kerasq.quantize_model(k3, "int8", calibration_data=x_train)
    blob = tflite_export.convert(qmodel)
    assert tflite_export.inspect(blob).is_integer_only
    parity = tflite_export.compare(qmodel, blob, x_test)
    assert parity.max_abs_lsb <= 1, parity


def _ops_model() -> "keras3.Model":
    """Every keras.ops call and hard activation to_tf_keras writes as TF arithmetic."""
    L, ops = keras3.layers, keras3.ops
    inputs = keras3.Input((6, 6, 3), name="x")
    x = L.Conv2D(8, 3, padding="same", activation="hard_silu", name="conv_hs")(inputs)
    y = L.DepthwiseConv2D(3, padding="same", activation="hard_sigmoid", name="dw_hsig")(x)
    x = (x + 3.0) * y - 1.0  # Add, Multiply of two tensors, Subtract
    x = 2.0 * (0.5 - x) / 4  # number first: Multiply, Subtract; TrueDivide
    x = ops.subtract(ops.divide(-x, np.float32(3.0)), y) + ops.add(1, x)
    x = L.Activation("hard_silu", name="act_hs")(ops.relu6(x))
    x = L.Activation("hard_sigmoid", name="act_hsig")(ops.hard_silu(x) - 0.25) + ops.hard_sigmoid(x)
    x = ops.relu(ops.sigmoid(x) + ops.tanh(x) + ops.silu(x) + ops.gelu(x, approximate=False) + ops.elu(x) - 0.5)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = ops.softmax(L.Dense(4, activation="hard_swish", name="head")(x))
    return keras3.Model(inputs, outputs, name="ops")


def test_keras_ops_and_hard_activations_convert_exactly():
    keras3.utils.set_random_seed(5)
    k3 = _ops_model()
    rng = np.random.default_rng(5)
    for layer in k3.layers:  # non-zero biases, so activations see both signs
        layer.set_weights([w + rng.normal(0, 0.3, w.shape).astype("float32") for w in layer.get_weights()])
    x = rng.normal(0, 2.0, (32, 6, 6, 3)).astype("float32")

    converted = to_tf_keras(k3)
    assert converted.get_layer("conv_hs").get_config()["activation"] == "linear"  # written out after it
    assert "act_hs" not in [layer.name for layer in converted.layers]
    assert _max_float_difference(k3, converted, x) <= FLOAT_TOLERANCE
    # Keras 3's hard_sigmoid is relu6(x + 3) / 6, not tf_keras' clip(0.2x + 0.5): converted, not renamed.
    hard = keras3.Model(k3.input, keras3.layers.Activation("hard_sigmoid")(k3.input))
    np.testing.assert_allclose(to_tf_keras(hard).predict(x, verbose=0), np.clip(x + 3.0, 0, 6) / 6.0, atol=1e-6)

    # kerasq's graph reads every arithmetic node (as ScalarArithmetic, Add/Subtract/Multiply, Activation).
    read = [type(node.layer).__name__ for node in LayerGraph.from_model(converted).nodes]
    assert "TFOpLambda" not in read and {"ScalarArithmetic", "Add", "Subtract", "Multiply", "Activation"} <= set(read)


def test_sequential_refuses_activations_that_become_several_nodes():
    k3 = keras3.Sequential(
        [keras3.Input((4,)), keras3.layers.Dense(3, activation="hard_silu", name="d"),
         keras3.layers.Activation("hard_sigmoid", name="a"), keras3.layers.Activation("relu6", name="r")],
        name="seq",
    )
    with pytest.raises(ValueError) as error:
        to_tf_keras(k3)
    message = str(error.value)
    assert "2 layer(s) cannot" in message
    assert "'d' (keras.src.layers.core.dense.Dense): activation 'hard_silu' becomes several tf_keras nodes" in message
    assert "'a' " in message and "Sequential model cannot hold" in message and "keras.Model(inputs, outputs)" in message


def test_functional_cnn_converts_exactly_then_qat_and_ptq_export(trained_k3_cnn, digits):
    (x_train, y_train), (x_test, y_test) = digits
    k3 = trained_k3_cnn
    float_accuracy = float(np.mean(np.argmax(k3.predict(x_test, verbose=0), -1) == y_test))
    assert float_accuracy > 0.8

    converted = to_tf_keras(k3)
    assert _max_float_difference(k3, converted, x_test) <= FLOAT_TOLERANCE
    assert converted.get_layer("stem_bn").get_config()["epsilon"] == k3.get_layer("stem_bn").epsilon

    # QAT: quantize the Keras 3 model, fine-tune a few steps, export, parity in output LSBs.
    qmodel = kerasq.quantize_model(k3, "int8", calibration_data=x_train[:256])
    _fit_briefly(qmodel, x_train, y_train, steps=8)
    blob = tflite_export.convert(qmodel)
    parity = tflite_export.compare(qmodel, blob, x_test)
    assert parity.max_abs_lsb <= 1 and parity.top1_agreement >= 0.99, parity
    accuracy = tflite_export.evaluate(blob, x_test, y_test)
    assert accuracy > float_accuracy - 0.05, (accuracy, float_accuracy)

    # PTQ straight from the Keras 3 float model: the same file as quantize_model + calibration.
    ptq_blob = tflite_export.convert(k3, representative_data=x_train[:256])
    assert tflite_export.inspect(ptq_blob).is_integer_only
    reference = kerasq.quantize_model(converted, "int8", calibration_data=x_train[:256])
    ptq_parity = tflite_export.compare(reference, ptq_blob, x_test)
    assert ptq_parity.max_abs_lsb <= 1, ptq_parity
    assert tflite_export.evaluate(ptq_blob, x_test, y_test) > float_accuracy - 0.05


def test_every_supported_layer_class_keeps_its_weights_and_outputs():
    """Weight order and renamed options: BN, Depthwise, Separable, transposed conv, PReLU, LeakyReLU, ..."""
    L = keras3.layers
    normalization = L.Normalization(name="norm")
    normalization.adapt(np.random.default_rng(0).normal(0.5, 2.0, (64, 12, 12, 3)).astype("float32"))
    inputs = keras3.Input((12, 12, 3), name="x")
    x = normalization(inputs)
    x = L.Rescaling(0.5, offset=0.1, name="rescale")(x)
    x = L.ZeroPadding2D(1, name="pad")(x)
    x = L.Conv2D(8, 3, name="conv")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.PReLU(shared_axes=[1, 2], name="prelu")(x)
    x = L.SeparableConv2D(8, 3, padding="same", depth_multiplier=2, name="sep")(x)
    x = L.LeakyReLU(negative_slope=0.2, name="leaky")(x)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=1, name="dw")(x)
    x = L.ELU(name="elu")(x)
    x = L.Conv2DTranspose(6, 3, strides=2, padding="same", name="deconv")(x)
    x = L.Cropping2D(2, name="crop")(x)
    x = L.AveragePooling2D(2, name="avg")(x)
    x = L.UpSampling2D(2, interpolation="bilinear", name="up")(x)
    x = L.Activation("swish", name="swish")(x)
    a = L.Conv2D(6, 1, name="a")(x)
    x = L.Multiply(name="mul")([L.Subtract(name="sub")([x, a]), L.Maximum(name="max")([x, a])])
    x = L.Minimum(name="min")([x, a])
    x = L.Reshape((20, 20, 6), name="reshape")(x)
    x = L.Permute((2, 1, 3), name="permute")(x)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(5, name="dense")(x)
    outputs = L.Softmax(name="softmax")(x)
    k3 = keras3.Model(inputs, outputs, name="every_layer")
    _randomize_batch_norms(k3)
    rng = np.random.default_rng(1)
    for layer in k3.layers:  # non-zero biases and PReLU slopes
        if layer.name in ("conv", "sep", "dw", "deconv", "prelu", "dense"):
            layer.set_weights([w + rng.normal(0, 0.1, w.shape).astype("float32") for w in layer.get_weights()])

    converted = to_tf_keras(k3)
    x_test = rng.normal(0.5, 2.0, (16, 12, 12, 3)).astype("float32")
    assert _max_float_difference(k3, converted, x_test) <= FLOAT_TOLERANCE
    assert converted.get_layer("leaky").get_config()["alpha"] == pytest.approx(0.2)
    for layer in k3.layers[1:]:
        for mine, theirs in zip(converted.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(mine, theirs, err_msg=layer.name)


def test_sequential_and_nested_backbones_convert():
    keras3.utils.set_random_seed(2)
    backbone = keras3.Sequential(
        [keras3.Input((8, 8, 1)), keras3.layers.Conv2D(8, 3, activation="relu"), keras3.layers.BatchNormalization()],
        name="backbone",
    )
    inner_in = keras3.Input((6, 6, 8))
    inner = keras3.Model(inner_in, keras3.layers.MaxPooling2D()(keras3.layers.Conv2D(8, 1)(inner_in)), name="inner")
    inputs = keras3.Input((8, 8, 1))
    features = inner(backbone(inputs))
    outputs = keras3.layers.Dense(4)(keras3.layers.Flatten()(features))
    k3 = keras3.Model(inputs, outputs, name="nested")
    _randomize_batch_norms(k3)
    x = np.random.default_rng(0).uniform(0, 1, (8, 8, 8, 1)).astype("float32")

    converted = to_tf_keras(k3)
    assert type(converted.get_layer("backbone")) is keras.Sequential
    assert _max_float_difference(k3, converted, x) <= FLOAT_TOLERANCE
    qmodel = kerasq.quantize_model(k3, "int8", calibration_data=x)
    assert "backbone" not in [layer.name for layer in qmodel.layers]  # inlined
    np.testing.assert_allclose(qmodel.predict(x, verbose=0), converted.predict(x, verbose=0), atol=0.1)

    sequential = to_tf_keras(backbone)
    assert type(sequential) is keras.Sequential
    assert _max_float_difference(backbone, sequential, x) <= FLOAT_TOLERANCE


class Scale(keras3.layers.Layer):
    def call(self, x):
        return x * 2.0


class Subclassed(keras3.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras3.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def test_unsupported_layers_are_named_in_one_error():
    inputs = keras3.Input((8, 8, 1))
    x = keras3.layers.Conv2D(4, 3, name="conv")(inputs)
    x = Scale(name="my_scale")(x)
    x = keras3.ops.add(x, 1.0)  # converts
    x = keras3.ops.matmul(x, keras3.ops.transpose(x, (0, 1, 3, 2)))
    x = x + np.ones((6,), "float32")  # a tensor constant
    x = keras3.ops.gelu(x)  # approximate=True by default: kerasq reads the erf form only
    x = 2.0 / x
    x = keras3.layers.LayerNormalization(name="ln")(x)
    x = keras3.layers.Flatten()(x)
    k3 = keras3.Model(inputs, keras3.layers.Dense(2, activation="hard_tanh", name="head")(x), name="odd")
    with pytest.raises(ValueError) as error:
        kerasq.quantize_model(k3, "int8")
    message = str(error.value)
    assert "8 layer(s) cannot" in message, message
    assert "'my_scale' (test_keras3.Scale): a custom layer class" in message
    assert "(keras.src.ops.numpy.Matmul): a keras.ops call (Matmul) in the graph" in message
    assert "(keras.src.ops.numpy.Transpose): a keras.ops call (Transpose)" in message
    assert "a keras.ops call (Add) with a constant ndarray of shape (6,)" in message
    assert "a keras.ops call (Gelu) with {'approximate': True}" in message
    assert "a keras.ops call (TrueDivide) of a number by a tensor" in message
    assert "'ln' (keras.src.layers.normalization.layer_normalization.LayerNormalization)" in message
    assert "'head'" in message and "activation 'hard_tanh' has no tf_keras equivalent" in message
    assert "'conv'" not in message and "(Add) in the graph" not in message

    with pytest.raises(ValueError, match="subclassed Model has no graph"):
        tflite_export.convert(Subclassed(), representative_data=np.zeros((2, 3), np.float32))


def test_quantized_and_mixed_precision_policies():
    keras3.utils.set_random_seed(3)
    inputs = keras3.Input((6,))
    hidden = keras3.layers.Dense(8, activation="relu", dtype="mixed_float16", name="half")(inputs)
    k3 = keras3.Model(inputs, keras3.layers.Dense(3, dtype="float32", name="out")(hidden))
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    with pytest.warns(UserWarning, match=r"\['half'\] use a mixed-precision"):
        converted = to_tf_keras(k3)
    assert converted.get_layer("half").dtype == "float32"
    difference = _max_float_difference(k3, converted, x)
    assert 0 < difference < 1e-2  # the Keras 3 model's float16 rounding

    k3.get_layer("out").quantize("int8")
    with pytest.raises(ValueError, match="'out' .*quantized by Keras 3"):
        to_tf_keras(k3)


def test_cli_exports_a_keras3_file(trained_k3_cnn, digits, tmp_path, capsys):
    path, out = tmp_path / "k3.keras", tmp_path / "k3.tflite"
    trained_k3_cnn.save(path)
    assert is_keras3_file(str(path))
    assert main(["export", str(path), "--out", str(out), "--dataset", "digits"]) == 0
    assert "integer-only=True" in capsys.readouterr().out
    _, (x_test, y_test) = digits
    accuracy = tflite_export.evaluate(str(out), x_test, y_test)
    float_accuracy = float(np.mean(np.argmax(trained_k3_cnn.predict(x_test, verbose=0), -1) == y_test))
    assert accuracy > float_accuracy - 0.05, (accuracy, float_accuracy)


def test_tf_keras_files_are_not_keras3_files(tmp_path):
    path = tmp_path / "tfk.keras"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(path)
    (tmp_path / "junk.keras").write_bytes(b"not a model")
    assert not is_keras3_file(str(path)) and not is_keras3_file(str(tmp_path / "junk.keras"))


def test_cli_loader_reads_tfmot_models_from_h5(tmp_path):
    import tensorflow_model_optimization as tfmot

    from kerasq.cli import _load_model

    float_model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.ReLU(),
                                    keras.layers.Flatten(), keras.layers.Dense(10)])
    qat = tfmot.quantization.keras.quantize_model(float_model)
    x = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 1)).astype("float32")
    with pytest.warns(UserWarning, match="HDF5"):
        qat.save(tmp_path / "qat.h5")
    np.testing.assert_array_equal(_load_model(str(tmp_path / "qat.h5")).predict(x, verbose=0), qat.predict(x, verbose=0))
    qat.save(tmp_path / "qat.keras")
    with pytest.raises(ValueError, match="tfmot-quantized model in the .keras format.*save it with model.save"):
        _load_model(str(tmp_path / "qat.keras"))
