"""Elementwise ops: MUL and SUB (broadcasting), arithmetic with constants, swish, sigmoid — exact on both runtimes.

The pieces squeeze-excite blocks and MobileNetV3/EfficientNet activations are built from:
``x * hard_sigmoid(x)`` written as ``x * (ReLU6(x + 3) * (1/6))`` (Keras records the arithmetic
as TFOpLambda layers), ``Multiply([features, gate])`` with a ``[1, 1, c]`` gate, swish and sigmoid
activations on convolutions.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_requantization import grid, quantize_multiplier, rdpot, srdhm

import kerasq
import tflite_export
from kerasq import keras, runtimes
from kerasq.arithmetic import ScalarArithmetic
from kerasq.compat import tf
from kerasq.graph import LayerGraph


def reference_mul(product: np.ndarray, real: float) -> np.ndarray:
    """TFLite reference ``Mul``: MultiplyByQuantizedMultiplier of the zero-centred product."""
    m0, shift = quantize_multiplier(real)
    return rdpot(srdhm(product << max(shift, 0), m0), max(-shift, 0))


@pytest.mark.parametrize("scales", [(0.02, 0.05, 0.01), (0.5, 0.003, 0.25), (0.004, 0.004, 1e-5), (1.0, 1.0, 0.003)])
def test_mul_emulation_matches_integer_models_on_every_pair_of_codes(scales):
    codes = np.arange(-128, 128, dtype=np.int64)
    a, b = (c.ravel() for c in np.meshgrid(codes, codes, indexing="ij"))
    s_a, s_b, s_o = (np.float32(s) for s in scales)
    z_a, z_b = 5, -17
    product = (a - z_a) * (b - z_b)
    x_a = tf.constant(((a - z_a) * s_a).astype(np.float32))
    x_b = tf.constant(((b - z_b) * s_b).astype(np.float32))
    grids = grid(s_a, z_a), grid(s_b, z_b), grid(s_o, 0)

    reference = runtimes.mul(runtimes.Target("reference"), x_a, x_b, *grids).numpy()
    np.testing.assert_array_equal(reference, reference_mul(product, float(s_a) * float(s_b) / float(s_o)))
    scale = np.float32(np.float32(s_a * s_b) / s_o)
    xnnpack = runtimes.mul(runtimes.Target("xnnpack"), x_a, x_b, *grids).numpy()
    if 2.0**-16 <= scale < 2.0**8:
        np.testing.assert_array_equal(xnnpack, np.round(product.astype(np.float32) * scale))  # one rounding, ties to even
    else:  # XNNPACK refuses the op; LiteRT's builtin kernel rounds as the reference does
        np.testing.assert_array_equal(xnnpack, reference)


def _functional(inputs, outputs):
    return keras.Model(inputs, outputs)


def fit_logits(model, x, y, epochs: int):
    """Train a model whose first output is logits; other outputs carry no loss."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(3e-3), [loss] + [None] * (len(model.outputs) - 1))
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def assert_same_output_codes(qmodel, blob, x, runtime, outputs=("head",), batch_size=256) -> np.ndarray:
    """The file's int8 outputs equal the Keras model's, code for code, on ``runtime``'s kernels; returns Keras' first output."""
    keras_outs = qmodel.predict(x, verbose=0)
    keras_outs = keras_outs if isinstance(keras_outs, list) else [keras_outs]
    file_outs = tflite_export.run(
        blob, x, dequantize=False, reference_kernels=runtime == "reference", batch_size=batch_size, all_outputs=True
    )
    for name, keras_out, file_out in zip(outputs, keras_outs, file_outs):
        grid = qmodel.get_layer(name).output_params()
        np.testing.assert_array_equal(np.round(keras_out / grid.scale) + grid.zero_point, file_out.astype(np.float64))
    return keras_outs[0]


def quantize_and_export(model, x_calibration, runtime):
    qmodel = kerasq.quantize_model(model, target=runtime, calibration_data=x_calibration)
    blob = tflite_export.convert(qmodel)
    assert tflite_export.inspect(blob).is_integer_only
    return qmodel, blob


def test_arithmetic_on_tensors_is_read_as_layers():
    x = keras.Input((4, 4, 3))
    y = keras.layers.Conv2D(3, 1)(x)
    branches = [y + 3.0, 2.0 * y, y - 1.5, y / 4.0, y * y, y - y, tf.nn.relu6(y), tf.math.sigmoid(y)]
    model = _functional(x, keras.layers.Concatenate()(branches))
    layers = {n.name: n.layer for n in LayerGraph.from_model(model).nodes}
    read = [(type(l).__name__, getattr(l, "op", None), getattr(l, "value", None)) for l in layers.values()]
    activations = [keras.activations.serialize(l.activation) for l in layers.values() if type(l).__name__ == "Activation"]
    assert activations == ["relu6", "sigmoid"]
    assert ("ScalarArithmetic", "add", 3.0) in read
    assert ("ScalarArithmetic", "multiply", 2.0) in read
    assert ("ScalarArithmetic", "add", -1.5) in read
    assert ("ScalarArithmetic", "multiply", 0.25) in read
    assert ("Multiply", None, None) in read and ("Subtract", None, None) in read


def test_arithmetic_kerasq_cannot_read_is_refused_by_name():
    x = keras.Input((4, 4, 3))
    y = keras.layers.Conv2D(3, 1)(x)
    model = _functional(x, keras.layers.Add()([1.0 - y, tf.math.exp(y)]))
    with pytest.raises(ValueError) as error:
        kerasq.quantize_model(model)
    message = str(error.value)
    assert "cannot quantize 2 layer(s)" in message
    assert "TFOpLambda 'math.subtract'" in message and "TFOpLambda 'math.exp'" in message


def test_scalar_arithmetic_rejects_bad_arguments_and_round_trips():
    with pytest.raises(ValueError, match="op must be one of"):
        ScalarArithmetic("divide", 2.0)
    with pytest.raises(ValueError, match="finite number"):
        ScalarArithmetic("add", float("nan"))
    layer = ScalarArithmetic("multiply", 1.0 / 6.0, name="sixth")
    restored = ScalarArithmetic.from_config(layer.get_config())
    assert (restored.op, restored.value, restored.name) == ("multiply", 1.0 / 6.0, "sixth")
    params = layer.constant_params()
    assert layer.constant_code() == 127 and np.float32(params.scale) == np.float32(1.0 / 6.0 / 127.0)
    assert ScalarArithmetic("add", 0.0).constant_code() == 0


def squeeze_excite_net() -> keras.Model:
    """MobileNetV3's and EfficientNet's elementwise arithmetic on 8x8 digits, in one small net."""
    x = keras.Input((8, 8, 1))
    y = keras.layers.Conv2D(8, 3, padding="same")(x)
    y = keras.layers.BatchNormalization()(y)
    y = y * (keras.layers.ReLU(6.0)(y + 3.0) * (1.0 / 6.0))  # hard-swish as Keras applications write it
    y = keras.layers.Conv2D(12, 3, strides=2, padding="same", activation="swish")(y)
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True)(y)
    gate = tf.nn.relu(keras.layers.Conv2D(4, 1)(gate))  # a TFOpLambda activation, fused into the conv
    gate = keras.layers.Conv2D(12, 1, activation="sigmoid")(gate)
    y = keras.layers.Multiply()([y, gate])  # [4, 4, 12] · [1, 1, 12]
    z = keras.layers.Conv2D(12, 1)(y)
    z = keras.layers.BatchNormalization()(z)
    y = keras.layers.Subtract()([z, y])
    y = keras.layers.Activation("swish")(y)  # on the SUB's output
    y = keras.layers.GlobalAveragePooling2D()(y)
    return keras.Model(x, keras.layers.Dense(10, activation="softmax")(y))


@pytest.fixture(scope="module")
def trained_squeeze_excite(digits):
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(1)
    model = squeeze_excite_net()
    loss = keras.losses.SparseCategoricalCrossentropy()
    model.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0)
    qmodel = kerasq.quantize_model(model, calibration_data=x_train[:256])
    qmodel.compile(keras.optimizers.Adam(3e-4), loss, metrics=["accuracy"])
    qmodel.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
    return model, qmodel


@pytest.mark.parametrize("runtime", ["xnnpack", "reference"])
def test_squeeze_excite_hard_swish_and_swish_export_code_for_code(trained_squeeze_excite, digits, runtime):
    _, qmodel = trained_squeeze_excite
    _, (x_test, y_test) = digits
    with kerasq.using_target(qmodel, runtime):
        blob = tflite_export.convert(qmodel)
        keras_out = assert_same_output_codes(qmodel, blob, x_test, runtime, outputs=(qmodel.layers[-1].name,))
    report = tflite_export.inspect(blob)
    assert report.is_integer_only, report
    counts = report.op_counts()
    # hard-swish: ADD, MUL, MUL; two swish: LOGISTIC, MUL each; squeeze-excite: LOGISTIC, MUL; SUB
    assert (counts["LOGISTIC"], counts["MUL"], counts["ADD"], counts["SUB"]) == (3, 5, 1, 1), counts
    assert np.mean(np.argmax(keras_out, -1) == y_test) > 0.9


def test_squeeze_excite_float_map_and_reload(trained_squeeze_excite, digits, tmp_path):
    model, qmodel = trained_squeeze_excite
    _, (x_test, y_test) = digits
    names = {type(layer.layer).__name__ for layer in kerasq.quantized_layers(qmodel)}
    assert {"ScalarArithmetic", "Multiply", "Subtract"} <= names
    # Calibrated, before any QAT step, the integer model follows the float one.
    (x_train, _), _ = digits
    calibrated = kerasq.quantize_model(model, calibration_data=x_train[:256])
    float_probs, int_probs = model.predict(x_test, verbose=0), calibrated.predict(x_test, verbose=0)
    assert np.abs(int_probs - float_probs).max() < 0.1  # measured 0.052
    float_accuracy, int_accuracy = (np.mean(np.argmax(p, -1) == y_test) for p in (float_probs, int_probs))
    assert int_accuracy >= float_accuracy - 0.02, (float_accuracy, int_accuracy)
    reload_path = tmp_path / "se.keras"
    from conftest import reload_identical

    reload_identical(qmodel, x_test[:64], str(reload_path))


@pytest.mark.parametrize("scales, alpha", [((0.05, 0.04), 0.1), ((0.02, 0.05), 0.3), ((0.1, 0.02), 0.01)])
def test_leaky_relu_emulation_matches_integer_models_on_every_code(scales, alpha):
    s_in, s_out = (np.float32(s) for s in scales)
    d = np.arange(-128, 128, dtype=np.int64) - 7
    x = tf.constant((d * s_in).astype(np.float32))
    grids = grid(s_in, 7), grid(s_out, 0)
    ratio = float(s_in) / float(s_out)
    negative = ratio * float(np.float32(alpha))
    reference = np.where(d >= 0, reference_mul(d, ratio), reference_mul(d, negative))
    np.testing.assert_array_equal(runtimes.leaky_relu(runtimes.Target("reference"), x, *grids, alpha).numpy(), reference)
    r32 = np.float32(s_in / s_out)
    r32_negative = np.float32(r32 * np.float32(alpha))
    xnnpack = runtimes.leaky_relu(runtimes.Target("xnnpack"), x, *grids, alpha).numpy()
    if 2.0**-8 <= r32_negative and r32 <= 2.0**7:
        m = np.where(d >= 0, np.round(256 * r32), np.round(256 * r32_negative)).astype(np.int64)
        np.testing.assert_array_equal(xnnpack, (d * m + 128) >> 8)  # 8-bit multipliers, ties up
    else:
        np.testing.assert_array_equal(xnnpack, reference)


@pytest.mark.parametrize("runtime", ["xnnpack", "reference"])
def test_leaky_relu_elu_and_gelu_layers_export_code_for_code(digits, runtime):
    (x_train, y_train), (x_test, _) = digits
    keras.utils.set_random_seed(2)
    x = keras.Input((8, 8, 1))
    y = keras.layers.Conv2D(8, 3, padding="same")(x)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.LeakyReLU(0.1)(y)
    y = keras.layers.Conv2D(8, 3, strides=2, padding="same")(y)
    y = keras.layers.ReLU(negative_slope=0.25)(y)  # a ReLU with a slope is a leaky ReLU
    y = keras.layers.Conv2D(8, 1, activation="gelu")(y)
    if runtime == "xnnpack":  # LiteRT's BUILTIN_REF resolver has no ELU kernel
        y = keras.layers.ELU()(keras.layers.Conv2D(8, 1)(y))
    y = keras.layers.GlobalAveragePooling2D()(y)
    model = fit_logits(keras.Model(x, keras.layers.Dense(10, name="head")(y)), x_train, y_train, epochs=3)
    qmodel, blob = quantize_and_export(model, x_train[:256], runtime)
    counts = tflite_export.inspect(blob).op_counts()
    assert (counts["LEAKY_RELU"], counts["GELU"], counts.get("ELU", 0)) == (2, 1, int(runtime == "xnnpack")), counts
    assert_same_output_codes(qmodel, blob, x_test, runtime)


@pytest.mark.parametrize("runtime", ["xnnpack", "reference"])
def test_conv1d_and_global_average_pooling_1d_export_code_for_code(digits, runtime):
    """Digits as sequences of 8 rows of 8 pixels: Conv1D (same, causal, strided) + BN, pooling over steps."""
    (x_train, y_train), (x_test, y_test) = digits
    sequences = lambda x: x.reshape(len(x), 8, 8)  # noqa: E731
    keras.utils.set_random_seed(3)
    x = keras.Input((8, 8))
    y = keras.layers.Conv1D(16, 3, padding="same")(x)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv1D(16, 3, padding="causal", dilation_rate=2, activation="relu")(y)
    y = keras.layers.Conv1D(16, 2, strides=2, activation="relu")(y)
    y = keras.layers.GlobalAveragePooling1D()(y)
    model = fit_logits(keras.Model(x, keras.layers.Dense(10, name="head")(y)), sequences(x_train), y_train, epochs=12)
    qmodel, blob = quantize_and_export(model, sequences(x_train[:256]), runtime)
    assert tflite_export.inspect(blob).op_counts()["CONV_2D"] == 3
    keras_out = assert_same_output_codes(qmodel, blob, sequences(x_test), runtime)
    assert np.mean(np.argmax(keras_out, -1) == y_test) > 0.9


def test_transposed_conv_computes_what_conv2d_transpose_computes():
    from kerasq.transposed_conv import from_conv2d_transpose

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    for padding, strides in (("same", 2), ("valid", 2), ("valid", 1), ("same", (1, 2))):
        original = keras.layers.Conv2DTranspose(4, 3, strides=strides, padding=padding, activation="relu", name="up")
        expected = original(x).numpy()
        [(replacement, weights)] = from_conv2d_transpose(original)
        replacement(x)  # build
        replacement.set_weights(weights)
        np.testing.assert_allclose(replacement(x).numpy(), expected, rtol=1e-5, atol=1e-5)
        assert replacement.compute_output_shape(x.shape).as_list() == list(expected.shape)


@pytest.mark.parametrize("runtime", ["xnnpack", "reference"])
def test_conv2d_transpose_exports_code_for_code_at_any_batch_size(digits, runtime):
    """An encoder-decoder on digits: Conv2DTranspose (same and valid, + BN + ReLU) as TRANSPOSE_CONV."""
    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(4)
    x = keras.Input((8, 8, 1))
    y = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)  # 4x4
    y = keras.layers.Conv2DTranspose(8, 3, strides=2, padding="same", use_bias=False)(y)  # 8x8
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2DTranspose(4, 2, padding="valid", activation="relu")(y)  # 9x9
    y = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(16, 3, strides=2, activation="relu")(y))
    model = fit_logits(keras.Model(x, keras.layers.Dense(10, name="head")(y)), x_train, y_train, epochs=15)
    qmodel, blob = quantize_and_export(model, x_train[:256], runtime)
    assert tflite_export.inspect(blob).op_counts()["TRANSPOSE_CONV"] == 2
    for batch_size in (1, 7, 256):
        keras_out = assert_same_output_codes(qmodel, blob, x_test, runtime, batch_size=batch_size)
    assert np.mean(np.argmax(keras_out, -1) == y_test) > 0.85


@pytest.mark.parametrize("runtime", ["xnnpack", "reference"])
def test_bilinear_upsampling_rounds_as_each_runtime_does(digits, runtime):
    """UpSampling2D(interpolation="bilinear") as RESIZE_BILINEAR, by 2 and by (3, 2), output on its input's grid."""
    (x_train, y_train), (x_test, _) = digits
    keras.utils.set_random_seed(5)
    x = keras.Input((8, 8, 1))
    y = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)  # 4x4
    y = keras.layers.UpSampling2D(2, interpolation="bilinear")(y)  # 8x8
    y = keras.layers.Conv2D(8, 3, strides=2, padding="same")(y)  # 4x4, linear: negative codes too
    upsampled = keras.layers.UpSampling2D((3, 2), interpolation="bilinear", name="up")(y)  # 12x8
    y = keras.layers.GlobalAveragePooling2D()(upsampled)
    model = fit_logits(keras.Model(x, [keras.layers.Dense(10, name="head")(y), upsampled]), x_train, y_train, epochs=3)
    qmodel, blob = quantize_and_export(model, x_train[:256], runtime)
    assert tflite_export.inspect(blob).op_counts()["RESIZE_BILINEAR"] == 2
    assert_same_output_codes(qmodel, blob, x_test, runtime, outputs=("head", "up"))  # the logits and the map itself


@pytest.mark.parametrize("runtime", ["xnnpack", "reference"])
def test_prelu_exports_code_for_code(digits, runtime):
    """PReLU with slopes per channel (shared over space) and per position, as PRELU with int8 slopes."""
    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(6)
    x = keras.Input((8, 8, 1))
    y = keras.layers.Conv2D(8, 3, padding="same")(x)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2], name="prelu_c")(y)
    y = keras.layers.Conv2D(8, 3, strides=2, padding="same")(y)
    y = keras.layers.PReLU(name="prelu_hwc")(y)  # slopes start at 0 and train
    y = keras.layers.GlobalAveragePooling2D()(y)
    model = fit_logits(keras.Model(x, keras.layers.Dense(10, name="head")(y)), x_train, y_train, epochs=12)
    assert np.abs(model.get_layer("prelu_hwc").get_weights()[0]).max() > 0
    qmodel, blob = quantize_and_export(model, x_train[:256], runtime)
    assert tflite_export.inspect(blob).op_counts()["PRELU"] == 2
    keras_out = assert_same_output_codes(qmodel, blob, x_test, runtime)
    assert np.mean(np.argmax(keras_out, -1) == y_test) > 0.85


def test_prelu_slopes_stay_int8_per_tensor_under_a_low_bit_scheme():
    x = keras.Input((4, 4, 3))
    y = keras.layers.PReLU(shared_axes=[1, 2], name="prelu")(keras.layers.Conv2D(4, 3, name="conv")(x))
    qmodel = kerasq.quantize_model(keras.Model(x, keras.layers.Flatten()(y)), "pact")
    slopes = qmodel.get_layer("prelu").weight_quantizer
    assert (type(slopes).__name__, slopes.bits, slopes.channel_axes) == ("LinearWeightQuantizer", 8, ())
