"""tfmot QAT models exported by ``tflite_export.convert`` (through ``kerasq.from_tfmot``).

The reference is the tfmot Keras model itself: the file must compute what it computes, to the
output LSB, and name by layer anything TFLite cannot express.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import kerasq
import tflite_export
from kerasq import keras

qat = tfmot.quantization.keras


def _branchy_cnn(input_shape=(8, 8, 1), classes=10, softmax=True) -> keras.Model:
    """Conv+BN+ReLU6, depthwise+BN+ReLU, a residual Add, max and average pooling, a Concatenate,
    global pooling and a Dense: the layer patterns tfmot's default 8-bit transforms treat apart."""
    i = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(i)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(6.0, name="r1")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    y = keras.layers.ReLU(name="r2")(y)
    y = keras.layers.Conv2D(8, 1, name="pw")(y)
    y = keras.layers.BatchNormalization(name="bn3")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.MaxPooling2D(name="mp")(x)
    x = keras.layers.AveragePooling2D(name="ap")(x)
    c = keras.layers.Concatenate(name="cat")([x, keras.layers.Conv2D(4, 1, activation="relu", name="c2")(x)])
    x = keras.layers.GlobalAveragePooling2D(name="gap")(c)
    x = keras.layers.Dense(classes, activation="softmax" if softmax else None, name="fc")(x)
    return keras.Model(i, x)


def _tfmot_qat(model, digits, epochs=3):
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(1)
    loss = "sparse_categorical_crossentropy" if model.layers[-1].activation.__name__ == "softmax" else (
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.compile(keras.optimizers.Adam(3e-3), loss)
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    quantized = qat.quantize_model(model)
    quantized.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    quantized.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
    return quantized


def _assert_parity(parity, max_lsb: int, within_one: float, bit_exact: float, top1: float) -> None:
    assert parity.max_abs_lsb <= max_lsb, parity
    assert parity.within_one_lsb_fraction >= within_one, parity
    assert parity.bit_exact_fraction >= bit_exact, parity
    assert parity.top1_agreement >= top1, parity


@pytest.fixture(scope="module")
def tfmot_cnn(digits):
    keras.utils.set_random_seed(0)
    return _tfmot_qat(_branchy_cnn(), digits, epochs=10)


def test_tfmot_model_exports_integer_only_and_matches_the_tfmot_keras_model(tfmot_cnn, digits):
    (x_train, _), (x_test, y_test) = digits
    x = np.concatenate([x_train, x_test])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every grid of this model is expressible: no notes
        blob = tflite_export.convert(tfmot_cnn)
    report = tflite_export.inspect(blob)
    assert report.is_integer_only and not report.float_ops, report
    assert "DEPTHWISE_CONV_2D" in report.op_counts() and report.per_channel_ops
    parity = tflite_export.compare(tfmot_cnn, blob, x)
    # Softmax output (scale 1/256): differences start where the int32 bias (on the accumulator's
    # grid, ~1/200 of an output LSB) puts a value on the other side of a rounding boundary than
    # tfmot's float bias; one logit code then moves the softmax by several of its finer codes.
    # Measured: top-1 99.7 %, 95 % of codes equal, at most 7 apart.
    assert parity.top1_agreement >= 0.99, parity
    assert parity.bit_exact_fraction >= 0.9, parity
    assert parity.max_abs_lsb <= 10, parity
    keras_accuracy = float(np.mean(tfmot_cnn.predict(x_test, verbose=0).argmax(-1) == y_test))
    assert tflite_export.evaluate(blob, x_test, y_test) == pytest.approx(keras_accuracy, abs=0.01)


def test_with_biases_on_the_accumulator_grid_only_float32_rounding_remains(tfmot_cnn, digits):
    """TFLite adds the bias as an int32 on the grid ``s_in·s_w·γ/σ``; tfmot's Keras model adds a
    float. ``round_tfmot_biases`` moves each bias (through a folded batch norm's β) onto that grid;
    the tfmot model and the file then differ only where tfmot's float32 sums land within their own
    rounding error of a boundary: measured 95 % -> 99.96 % of output codes equal, top-1 100 %."""
    (x_train, _), (x_test, y_test) = digits
    x = np.concatenate([x_train, x_test])
    saved = [w.copy() for w in tfmot_cnn.get_weights()]
    before = tflite_export.compare(tfmot_cnn, tflite_export.convert(tfmot_cnn), x)
    accuracy = float(np.mean(tfmot_cnn.predict(x_test, verbose=0).argmax(-1) == y_test))
    try:
        shifts = kerasq.round_tfmot_biases(tfmot_cnn)
        blob = tflite_export.convert(tfmot_cnn)
        after = tflite_export.compare(tfmot_cnn, blob, x)
        accuracy_after = float(np.mean(tfmot_cnn.predict(x_test, verbose=0).argmax(-1) == y_test))
        again = kerasq.round_tfmot_biases(tfmot_cnn)  # already on the grid: nothing left to move
    finally:
        tfmot_cnn.set_weights(saved)
    assert sorted(name.split("/")[0] for name in shifts) == ["bn1", "bn2", "bn3", "c2", "fc"], shifts
    assert blob == tflite_export.convert(kerasq.from_tfmot(tfmot_cnn))  # the same codes as before the move
    assert after.bit_exact_fraction >= 0.999 > before.bit_exact_fraction and after.top1_agreement == 1.0, (before, after)
    assert abs(accuracy_after - accuracy) <= 0.005
    assert max(again.values()) < 1e-6, again


def test_from_tfmot_is_the_file_exactly_and_keeps_the_tfmot_model(tfmot_cnn, digits):
    _, (x_test, _) = digits
    before = [w.copy() for w in tfmot_cnn.get_weights()]
    predictions = tfmot_cnn.predict(x_test, verbose=0)
    integer_model = kerasq.from_tfmot(tfmot_cnn)
    blob = tflite_export.convert(integer_model)
    exact = tflite_export.compare(integer_model, blob, x_test)
    assert exact.max_abs_lsb == 0 and exact.bit_exact_fraction == 1.0, exact
    assert blob == tflite_export.convert(tfmot_cnn)  # the same model gives the same bytes
    for old, new in zip(before, tfmot_cnn.get_weights()):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(predictions, tfmot_cnn.predict(x_test, verbose=0))


def test_tfmot_grids_are_written_as_tfmot_stored_them(tfmot_cnn):
    """Input range, per-channel weight scales (max/127 of tfmot's stored range) and BN folding."""
    integer_model = kerasq.from_tfmot(tfmot_cnn)
    wrapper = tfmot_cnn.get_layer("quant_c1")
    kernel, quantizer, variables = wrapper._weight_vars[0]
    expected = np.maximum(np.abs(variables["min_var"].numpy()), np.abs(variables["max_var"].numpy())) / np.float32(127)
    layer = integer_model.get_layer("c1")
    grid = layer.weight_grid()
    bn = tfmot_cnn.get_layer("quant_bn1").layer
    factor = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    np.testing.assert_allclose(grid.scale.reshape(-1), expected * factor, rtol=1e-6)
    codes = np.round(quantizer(kernel, False, weights=variables).numpy() / expected)
    np.testing.assert_array_equal(grid.codes, codes)
    (quantize_layer,) = [layer for layer in tfmot_cnn.layers if type(layer).__name__ == "QuantizeLayer"]
    lo, hi = (float(quantize_layer.quantizer_vars[k].numpy()) for k in ("min_var", "max_var"))
    (quantize_input,) = [layer for layer in integer_model.layers if type(layer) is kerasq.QuantizeInput]
    params = quantize_input.activation_params()
    values = np.linspace(lo - 0.1, hi + 0.1, 4001, dtype=np.float32)
    tfmot_values = kerasq.tf.quantization.fake_quant_with_min_max_vars(values, lo, hi).numpy()
    codes = np.clip(np.floor(values / params.scale + 0.5) + params.zero_point, -128, 127)
    np.testing.assert_allclose((codes - params.zero_point) * params.scale, tfmot_values, atol=1e-6)


def test_logits_model_is_within_one_lsb_almost_everywhere(digits):
    (x_train, _), (x_test, _) = digits
    keras.utils.set_random_seed(3)
    quantized = _tfmot_qat(_branchy_cnn(softmax=False), digits, epochs=5)
    blob = tflite_export.convert(quantized)
    parity = tflite_export.compare(quantized, blob, np.concatenate([x_train, x_test]))
    # Measured: 97 % of codes equal, 99.95 % within one, at most 2 apart (a logit whose input
    # moved one code because of the int32 bias's rounding), top-1 99.9 %.
    _assert_parity(parity, max_lsb=2, within_one=0.999, bit_exact=0.95, top1=0.998)


def test_what_tflite_cannot_express_is_named_by_layer(digits):
    """tfmot rounds a convolution's output and, after a max pool, its ReLU's again; TFLite fuses
    the ReLU into the convolution and rounds once."""
    (x_train, y_train), (x_test, _) = digits
    i = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(i)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(10, name="fc")(x)
    quantized = qat.quantize_model(keras.Model(i, x))
    quantized.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    quantized.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    with pytest.warns(UserWarning) as caught:
        integer_model = kerasq.from_tfmot(quantized)
    message = str(caught[0].message)
    # The file's convolution (ReLU fused) rounds onto the ReLU's range; tfmot's own conv range is not used.
    assert [note.split(":")[0] for note in integer_model.tfmot_notes] == ["conv"], message
    with pytest.warns(UserWarning):
        blob = tflite_export.convert(quantized)
    assert tflite_export.compare(integer_model, blob, x_test).max_abs_lsb == 0


def test_same_padded_average_pools_round_once_onto_their_ranges(digits):
    """TFLite's AVERAGE_POOL_2D keeps its input's grid, and a same-padded pool's divisor changes
    at the borders; each band of windows cut alike becomes a depthwise convolution rounding its
    means once onto tfmot's range for the pool, so the pools compute tfmot's codes."""
    (x_train, _), (x_test, _) = digits
    x = np.concatenate([x_train, x_test])
    i = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(i)
    h = keras.layers.AveragePooling2D(3, 1, padding="same", name="avg")(h)  # windows of 4, 6 and 9 cells
    h = keras.layers.Conv2D(4, 1, name="mix")(h)
    h = keras.layers.AveragePooling2D(3, 2, padding="same", name="avg2")(h)  # 8 -> 4, cut at one border only
    keras.utils.set_random_seed(5)
    quantized = _tfmot_qat(keras.Model(i, keras.layers.Dense(10, name="fc")(keras.layers.Flatten(name="flat")(h))), digits)
    kerasq.round_tfmot_biases(quantized)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        integer_model = kerasq.from_tfmot(quantized)
        blob = tflite_export.convert(quantized)
    assert "AVERAGE_POOL_2D" not in tflite_export.inspect(blob).op_counts()
    # Measured: the pools differ from tfmot's on 0 to 8e-5 of their codes, where a convolution
    # before them meets tfmot's float32 rounding; outputs 99.92 % equal, top-1 all.
    for pool, share in (("avg", 1e-4), ("avg2", 1e-3)):
        tfmot_means = keras.Model(quantized.inputs, quantized.get_layer(f"quant_{pool}").output)(x, training=False)
        integer_means = keras.Model(integer_model.inputs, integer_model.get_layer(pool).output)(x, training=False)
        assert np.mean(np.asarray(integer_means) != np.asarray(tfmot_means)) <= share, pool
    _assert_parity(tflite_export.compare(quantized, blob, x), max_lsb=1, within_one=1.0, bit_exact=0.995, top1=0.995)


def _inception_blocks(input_shape=(8, 8, 1), classes=10) -> keras.Model:
    """InceptionV3's patterns: branches of Conv (no bias) + BatchNorm (no γ) + ReLU layers and a
    nested Concatenate joined by one Concatenate, then a reduction block concatenating a strided
    convolution with a max pool of that Concatenate. (Its same-padded average pools, rounded
    twice, are in ``test_what_tflite_cannot_express_is_named_by_layer``.)"""

    def conv_bn(x, filters, size, name, strides=1):
        x = keras.layers.Conv2D(filters, size, strides, padding="same", use_bias=False, name=name)(x)
        x = keras.layers.BatchNormalization(scale=False, name=f"{name}_bn")(x)
        return keras.layers.Activation("relu", name=f"{name}_relu")(x)

    i = keras.Input(input_shape)
    stem = conv_bn(i, 8, 3, "stem")
    wide = conv_bn(conv_bn(stem, 4, 1, "b2a"), 6, 3, "b2b")
    split = conv_bn(stem, 4, 1, "b3a")
    nested = keras.layers.Concatenate(name="inner")([conv_bn(split, 3, (1, 3), "b3b"), conv_bn(split, 3, (3, 1), "b3c")])
    mixed = keras.layers.Concatenate(name="mixed")([conv_bn(stem, 6, 1, "b1"), wide, nested])
    reduced = conv_bn(mixed, 8, 3, "r1", strides=2)
    x = keras.layers.Concatenate(name="mixed_r")([reduced, keras.layers.MaxPooling2D(3, 2, padding="same", name="r_pool")(mixed)])
    x = keras.layers.Dense(classes, name="fc")(keras.layers.GlobalAveragePooling2D(name="gap")(x))
    return keras.Model(i, x)


def test_concatenated_branches_round_once_onto_the_concatenations_range(digits):
    """tfmot rounds the inputs of a Concatenate (up to six) only after it, and not at all at a
    Concatenate that feeds another: each branch's output gets the outer Concatenate's range, so
    the file rounds once where tfmot does, with no data. A Concatenate read by another (through
    a max pool) is rounded once more onto the outer one's range, as tfmot does."""
    (x_train, _), (x_test, _) = digits
    x = np.concatenate([x_train, x_test])
    keras.utils.set_random_seed(4)
    quantized = _tfmot_qat(_inception_blocks(), digits, epochs=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to note, no data needed
        integer_model = kerasq.from_tfmot(quantized)
    ranges = {
        name: [float(v.numpy()) for v in quantized.get_layer(f"quant_{name}").non_trainable_weights if "output_m" in v.name]
        for name in ("mixed", "mixed_r")
    }
    for name, concat in [("b1", "mixed"), ("b2b", "mixed"), ("b3b", "mixed"), ("b3c", "mixed"), ("r1", "mixed_r")]:
        state = integer_model.get_layer(name)._activation_vars  # tfmot leaves these float until the Concatenate
        assert [float(state["min"].numpy()), float(state["max"].numpy())] == ranges[concat], name
    (rounding,) = [layer for layer in integer_model.layers if layer.name.startswith("mixed_r_input_")]
    assert integer_model.get_layer("r_pool").outbound_nodes[0].outbound_layer is rounding  # onto "mixed_r"'s range
    assert [float(rounding._activation_vars[k].numpy()) for k in ("min", "max")] == ranges["mixed_r"]
    # tfmot reorders a Concatenate's inputs (tensorflow/model-optimization#1179); the file follows the tfmot model.
    assert [t.name.split("/")[0] for t in quantized.get_layer("quant_mixed").input][0] != "quant_b1_relu"
    kerasq.round_tfmot_biases(quantized)
    blob = tflite_export.convert(quantized)
    parity = tflite_export.compare(quantized, blob, x)
    _assert_parity(parity, max_lsb=1, within_one=1.0, bit_exact=0.99, top1=0.995)  # measured: all codes equal


def test_concatenation_reading_the_model_input(digits):
    """A Concatenate fed (through a max pool) by the model input, whose range tfmot's
    QuantizeLayer holds: the input's grid is requantized onto the Concatenate's."""
    (x_train, _), (x_test, _) = digits
    i = keras.Input((8, 8, 1))
    pooled = keras.layers.MaxPooling2D(3, 1, padding="same", name="mp")(i)
    x = keras.layers.Concatenate(name="cat")([pooled, keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c")(i)])
    keras.utils.set_random_seed(6)
    quantized = _tfmot_qat(keras.Model(i, keras.layers.Dense(10, name="fc")(keras.layers.GlobalAveragePooling2D(name="gap")(x))), digits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        blob = tflite_export.convert(quantized)
    # Measured: 96 % of codes equal, all but 1e-4 within one (the int32 biases), top-1 95 %
    # (this small model's logits lie close together).
    _assert_parity(tflite_export.compare(quantized, blob, np.concatenate([x_train, x_test])), 2, 0.999, 0.9, 0.9)


def test_a_tensor_tfmot_leaves_float_needs_data_or_fails_naming_it(digits):
    (x_train, y_train), (x_test, _) = digits
    annotated = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, activation="relu", name="float_conv"),
        keras.layers.Flatten(name="flat"),
        qat.quantize_annotate_layer(keras.layers.Dense(10, name="fc")),
    ])
    quantized = qat.quantize_apply(annotated)
    quantized.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    quantized.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    with pytest.raises(ValueError, match="float_conv"):
        tflite_export.convert(quantized)
    with pytest.warns(UserWarning, match="float_conv: no tfmot range; calibrated"):
        blob = tflite_export.convert(quantized, representative_data=x_train[:256])
    assert tflite_export.compare(quantized, blob, x_test).top1_agreement >= 0.95


def test_saved_tfmot_model_exports_from_the_command_line(tfmot_cnn, digits, tmp_path):
    from kerasq.cli import main

    path = tmp_path / "tfmot_qat.h5"  # tf_keras cannot load tfmot wrappers back from .keras
    tfmot_cnn.save(path)
    out = tmp_path / "tfmot.tflite"
    assert main(["export", str(path), "--out", str(out)]) in (0, None)
    assert out.read_bytes() == tflite_export.convert(tfmot_cnn)
    out.unlink()  # with data: only ranges tfmot never stored would be calibrated; this model has none
    assert main(["export", str(path), "--out", str(out), "--dataset", "digits"]) in (0, None)
    assert out.read_bytes() == tflite_export.convert(tfmot_cnn)


def _tensorflow_converter(model, x) -> bytes:
    """TensorFlow's own integer-only conversion of a tfmot model (the path tfmot documents)."""
    converter = kerasq.tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [kerasq.tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[i : i + 1]] for i in range(128))
    converter.target_spec.supported_ops = [kerasq.tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = kerasq.tf.int8
    return converter.convert()


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["MobileNetV2", "ResNet50"])
def test_tfmot_stock_architectures_export_at_least_as_close_as_tensorflows_converter(architecture, digits):
    """MobileNetV2 within one LSB; ResNet50, whose residual stream carries a one-code difference
    on through every block, no further from the tfmot model than TensorFlow's converter."""
    (x_train, y_train), (x_test, _) = digits
    to_rgb = lambda x: np.repeat(np.pad(x, ((0, 0), (12, 12), (12, 12), (0, 0))), 3, axis=-1)  # noqa: E731
    keras.utils.set_random_seed(0)
    kwargs = {"alpha": 0.35} if architecture == "MobileNetV2" else {}
    model = getattr(keras.applications, architecture)(input_shape=(32, 32, 3), weights=None, classes=10, **kwargs)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(to_rgb(x_train), y_train, epochs=2, batch_size=64, verbose=0)
    quantized = qat.quantize_model(model)
    quantized.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    quantized.fit(to_rgb(x_train), y_train, epochs=1, batch_size=64, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        blob = tflite_export.convert(quantized)
    assert tflite_export.inspect(blob).is_integer_only
    ours = tflite_export.compare(quantized, blob, to_rgb(x_test))
    theirs = tflite_export.compare(quantized, _tensorflow_converter(quantized, to_rgb(x_train)), to_rgb(x_test))
    assert ours.max_abs_lsb <= theirs.max_abs_lsb, (ours, theirs)
    assert ours.bit_exact_fraction >= theirs.bit_exact_fraction - 0.002, (ours, theirs)
    assert ours.top1_agreement >= theirs.top1_agreement - 0.003, (ours, theirs)
    if architecture == "MobileNetV2":
        assert ours.max_abs_lsb <= 1 and ours.top1_agreement >= 0.998, ours


@pytest.mark.parametrize("schemes", [("int8", "pact"), ("twn", "po2")])
def test_model_mixing_tfmot_default_and_kerasq_configs_exports_exactly(schemes, digits):
    (x_train, y_train), (x_test, _) = digits
    first, middle = schemes
    keras.utils.set_random_seed(2)
    annotated = qat.quantize_annotate_model(keras.Sequential([
        keras.Input((8, 8, 1)),
        qat.quantize_annotate_layer(keras.layers.Conv2D(8, 3, activation="relu", name="c1"),
                                    quantize_config=kerasq.QuantizeConfig(first)),
        keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw"),
        qat.quantize_annotate_layer(keras.layers.Conv2D(16, 1, activation="relu", name="pw"),
                                    quantize_config=kerasq.QuantizeConfig(middle)),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(10, name="fc"),
    ]))
    with qat.quantize_scope(kerasq.custom_objects()):
        quantized = qat.quantize_apply(annotated)
    quantized.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    quantized.fit(x_train, y_train, epochs=4, batch_size=32, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        blob = tflite_export.convert(quantized)
    parity = tflite_export.compare(quantized, blob, np.concatenate([x_train, x_test]))
    # The kerasq layers' int32 biases sit on a coarser accumulator grid than int8 layers' (a 4-bit
    # or ternary weight scale), and a 4-bit output code is 17 int8 codes: measured int8+pact
    # 93 % of logit codes equal, 99.99 % within one, top-1 96.5 %; twn+po2 97 %, 100 %, 98 %.
    _assert_parity(parity, max_lsb=2, within_one=0.999, bit_exact=0.9, top1=0.95)
    integer_model = kerasq.from_tfmot(quantized)
    assert type(integer_model.get_layer("pw").weight_quantizer) is type(quantized.get_layer("quant_pw")._weight_vars[0][1])


def test_debugger_takes_the_tfmot_model(tfmot_cnn, digits):
    _, (x_test, _) = digits
    blob = tflite_export.convert(tfmot_cnn)
    report = tflite_export.debug(tfmot_cnn, blob, x_test[:64])
    names = [layer.layer for layer in report.layers]
    assert {"c1", "dw", "pw", "add", "ap", "cat", "gap", "fc"} <= set(names), names
    assert max(layer.max_lsb for layer in report.layers) == 0, report
