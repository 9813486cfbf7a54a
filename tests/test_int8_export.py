"""The spine, end to end: int8 QAT of the demo CNN → integer-only TFLite → LiteRT, on real digits."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import accuracy, fit_qat

import kerasq
import tflite_export
from kerasq import keras


@pytest.fixture(scope="module")
def int8_export(trained_float_cnn, digits):
    qmodel = fit_qat(kerasq.quantize_model(trained_float_cnn, "int8"), digits, epochs=3, lr=5e-4)
    return qmodel, tflite_export.convert(qmodel)


def test_export_is_integer_only_and_per_channel(int8_export):
    _, blob = int8_export
    report = tflite_export.inspect(blob)
    assert report.is_integer_only, report.float_ops
    assert [op.name for op in report.ops if op.name != "MINIMUM"] == [
        "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "MAX_POOL_2D", "MEAN", "FULLY_CONNECTED",
    ]
    assert report.inputs[0].dtype == "int8" and report.outputs[0].dtype == "int8"
    # One scale per output channel on every weight op (depthwise on axis 3, as TFLite requires).
    channels = {"CONV_2D": None, "DEPTHWISE_CONV_2D": 16, "FULLY_CONNECTED": 10}
    for weight in report.weights:
        assert weight.per_channel, weight.op_name
        assert len(weight.scales) == weight.tensor.shape[weight.tensor.quantized_axis]
        if channels.get(weight.op_name):
            assert len(weight.scales) == channels[weight.op_name]
    assert report.weights[1].tensor.quantized_axis == 3
    assert len(report.per_channel_ops) == 4


def test_exported_weights_equal_quantized_weights(int8_export):
    qmodel, blob = int8_export
    exported = [w.keras_kernel() for w in tflite_export.inspect(blob).weights]
    expected = list(kerasq.quantized_weights(qmodel).values())
    assert len(exported) == len(expected) == 4
    for got, want in zip(exported, expected):
        # Equal up to float32 rounding of codes·(s·γ/σ) vs (codes·s)·γ/σ: no second rounding.
        np.testing.assert_allclose(got, want, rtol=2.0**-21, atol=0)


def test_parity_with_keras_qat_model(int8_export, digits):
    qmodel, blob = int8_export
    _, (x_test, _) = digits
    parity = tflite_export.compare(qmodel, blob, x_test)
    assert parity.max_abs_lsb <= 1.0, parity
    assert parity.top1_agreement >= 0.99, parity
    assert parity.bit_exact_fraction >= 0.95, parity


def test_int8_accuracy_within_one_point_of_float(int8_export, trained_float_cnn, digits):
    _, blob = int8_export
    _, (x_test, y_test) = digits
    float_accuracy = accuracy(trained_float_cnn, x_test, y_test)
    int8_accuracy = tflite_export.evaluate(blob, x_test, y_test)
    assert float_accuracy > 0.9  # measured 0.95-0.97 with the fixture's seed
    assert int8_accuracy >= float_accuracy - 0.01, (int8_accuracy, float_accuracy)


def test_reference_kernels_agree_with_a_reference_target(int8_export, digits):
    """The Keras model matches the runtime it targets: LiteRT's reference kernels round twice."""
    qmodel, _ = int8_export
    _, (x_test, _) = digits
    with kerasq.using_target(qmodel, "reference"):
        blob = tflite_export.convert(qmodel)
        keras_out = qmodel.predict(x_test, verbose=0)
    reference = tflite_export.run(blob, x_test, reference_kernels=True)
    scale = tflite_export.inspect(blob).outputs[0].scales[0]
    lsb = np.abs(np.round((reference - keras_out) / scale))
    assert lsb.max() <= 1 and np.mean(lsb == 0) >= 0.999


def test_float_io_adds_only_boundary_conversions(int8_export, digits):
    qmodel, _ = int8_export
    _, (x_test, _) = digits
    blob = tflite_export.convert(qmodel, input_type="float32", output_type="float32")
    report = tflite_export.inspect(blob)
    assert report.ops[0].name == "QUANTIZE" and report.ops[-1].name == "DEQUANTIZE"
    assert report.inputs[0].dtype == "float32" and report.outputs[0].dtype == "float32"
    assert tflite_export.compare(qmodel, blob, x_test[:100]).top1_agreement >= 0.99


def test_ptq_of_float_model(trained_float_cnn, digits):
    (x_train, _), (x_test, y_test) = digits
    blob = tflite_export.convert(trained_float_cnn, representative_data=x_train[:300])
    assert tflite_export.inspect(blob).is_integer_only
    float_accuracy = accuracy(trained_float_cnn, x_test, y_test)
    # PTQ without fine-tuning: measured within 1 point of float on digits.
    assert tflite_export.evaluate(blob, x_test, y_test) >= float_accuracy - 0.02


def test_ptq_rejects_missing_empty_and_nan_data(trained_float_cnn):
    with pytest.raises(ValueError, match="representative_data"):
        tflite_export.convert(trained_float_cnn)
    with pytest.raises(ValueError, match="empty"):
        tflite_export.convert(trained_float_cnn, representative_data=np.zeros((0, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="empty"):
        tflite_export.convert(trained_float_cnn, representative_data=[])
    with pytest.raises(ValueError, match="NaN"):
        tflite_export.convert(trained_float_cnn, representative_data=np.full((4, 8, 8, 1), np.nan, np.float32))
    with pytest.raises(ValueError, match="sample shape"):
        tflite_export.convert(trained_float_cnn, representative_data=np.zeros((4, 7, 7, 1), np.float32))


def test_uncalibrated_quantized_model_is_refused(trained_float_cnn):
    qmodel = kerasq.quantize_model(trained_float_cnn)
    with pytest.raises(ValueError, match="never observed"):
        tflite_export.convert(qmodel)


def test_save_load_round_trip_predicts_identically(int8_export, digits, tmp_path):
    qmodel, blob = int8_export
    _, (x_test, _) = digits
    before = qmodel.predict(x_test, verbose=0)
    for name in ("model.keras", "model.h5"):
        qmodel.save(tmp_path / name)
        with kerasq.quantize_scope():
            restored = keras.models.load_model(tmp_path / name)
        np.testing.assert_array_equal(restored.predict(x_test, verbose=0), before)
        assert tflite_export.convert(restored) == blob  # deterministic export


def test_unsupported_layers_raise_naming_the_layer():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))
    with pytest.raises(ValueError, match="'doubler' \\(Lambda\\): Lambda is not a supported layer type"):
        kerasq.quantize_model(model)
    # Documented pass-through: kept in float for QAT, then refused by the integer-only exporter.
    qmodel = kerasq.quantize_model(model, layer_schemes={"doubler": None})
    kerasq.calibrate(qmodel, np.random.default_rng(0).random((8, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="doubler"):
        tflite_export.convert(qmodel)

    conv3d = keras.Sequential([keras.Input((4, 4, 4, 1)), keras.layers.Conv3D(2, 3, name="c3")])
    with pytest.raises(ValueError, match="'c3' \\(Conv3D\\)"):
        kerasq.quantize_model(conv3d)
