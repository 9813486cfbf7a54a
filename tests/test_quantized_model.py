"""QuantizedModel: links, target, observers apart from rounding, and an export that never changes the model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import fit_qat

import kerasq
import tflite_export
from kerasq import keras
from kerasq.layers import Links


@pytest.fixture(scope="module")
def trained_qmodel(trained_float_cnn, digits):
    (x_train, _), _ = digits
    qmodel = kerasq.quantize_model(trained_float_cnn, "pact", calibration_data=x_train[:256])
    return fit_qat(qmodel, digits, epochs=1, lr=5e-4)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_links_and_target_come_back_when_loading(trained_float_cnn, digits, tmp_path, suffix):
    (x_train, _), (x_test, _) = digits
    qmodel = kerasq.quantize_model(trained_float_cnn, "int8", target="reference", calibration_data=x_train[:128])
    qmodel.save(tmp_path / f"q{suffix}")
    with kerasq.quantize_scope():
        restored = keras.models.load_model(tmp_path / f"q{suffix}")
    assert isinstance(restored, kerasq.QuantizedModel) and restored.target == kerasq.Target("reference")
    for layer in kerasq.quantized_layers(restored):
        assert isinstance(layer._links, Links) and layer._links.target.runtime == "reference"
        assert [source.name for source in layer._links.inputs] == [
            source.name for source in qmodel.get_layer(layer.name)._links.inputs
        ]
    np.testing.assert_array_equal(restored.predict(x_test, verbose=0), qmodel.predict(x_test, verbose=0))


def test_convert_never_changes_the_model_and_gives_the_same_bytes(trained_qmodel, digits):
    (x_train, _), (x_test, _) = digits
    before = trained_qmodel.predict(x_test, verbose=0)
    weights = [w.copy() for w in trained_qmodel.get_weights()]
    int4 = tflite_export.convert(trained_qmodel)
    with pytest.warns(UserWarning, match="does not reproduce"):
        int8 = tflite_export.convert(trained_qmodel, pack_int4=False)
    again = [
        tflite_export.convert(trained_qmodel, representative_data=x_train[:64]),
        tflite_export.convert(trained_qmodel, pack_int4=True),
        tflite_export.convert(trained_qmodel),
    ]
    assert int4 != int8 and all(blob == int4 for blob in again)
    with pytest.warns(UserWarning):
        assert tflite_export.convert(trained_qmodel, pack_int4=False) == int8
    np.testing.assert_array_equal(trained_qmodel.predict(x_test, verbose=0), before)
    for old, new in zip(weights, trained_qmodel.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_a_fresh_model_computes_like_the_float_model_until_ranges_are_observed(trained_float_cnn, digits):
    (x_train, _), (x_test, y_test) = digits
    float_out = trained_float_cnn.predict(x_test, verbose=0)
    fresh = kerasq.quantize_model(trained_float_cnn, "int8")
    fresh_out = fresh.predict(x_test, verbose=0)
    # Only the weights are on their int8 grids: the outputs stay close to float, not at chance.
    assert np.mean(fresh_out.argmax(1) == float_out.argmax(1)) >= 0.98
    with pytest.raises(ValueError, match="never observed"):
        tflite_export.convert(fresh)
    calibrated = kerasq.quantize_model(trained_float_cnn, "int8", calibration_data=x_train[:256])
    accuracy = np.mean(calibrated.predict(x_test, verbose=0).argmax(1) == y_test)
    assert accuracy >= np.mean(float_out.argmax(1) == y_test) - 0.02


def test_calibration_observes_the_inference_model(digits):
    """Calibration: observers on, rounding off, inference mode (Dropout off)."""
    (x_train, _), _ = digits
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(32, name="hidden")(x)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="fc")(x))
    qmodel = kerasq.quantize_model(model, "int8")
    kerasq.calibrate(qmodel, x_train)
    variables = qmodel.get_layer("fc").activation_quantizer_variables
    expected = model.predict(x_train, verbose=0)  # Dropout inactive
    assert float(variables["min"].numpy()) == pytest.approx(float(min(expected.min(), 0.0)), rel=1e-5)
    assert float(variables["max"].numpy()) == pytest.approx(float(max(expected.max(), 0.0)), rel=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        kerasq.calibrate(qmodel, np.full((4, 8, 8, 1), np.nan, np.float32))
    assert float(variables["max"].numpy()) == pytest.approx(float(max(expected.max(), 0.0)), rel=1e-5)  # restored
    with pytest.raises(ValueError, match="empty"):
        kerasq.calibrate(qmodel, iter([]))


def test_concatenate_inputs_share_one_grid_that_litert_accepts(digits):
    (x_train, y_train), (x_test, _) = digits
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="a")(inputs)
    b = keras.layers.Conv2D(6, 1, name="b")(inputs)  # signed: a different range
    c = keras.layers.Conv2D(5, 1, activation="relu6", name="c")(inputs)  # a fixed [0, 6] grid
    x = keras.layers.Concatenate(name="cat")([a, b, c])
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="fc")(x))
    qmodel = kerasq.quantize_model(model, "int8", calibration_data=x_train[:256])
    # a and b join one grid; c's fixed ReLU6 grid cannot, so a Requantize (QUANTIZE op) moves it.
    assert qmodel.get_layer("a").grid_group == ["a", "b", "cat_requantize_2"]
    assert isinstance(qmodel.get_layer("cat_requantize_2"), kerasq.Requantize)
    fit_qat(qmodel, digits, epochs=1)
    blob = tflite_export.convert(qmodel)
    report = tflite_export.inspect(blob)
    concat = next(op for op in report.ops if op.name == "CONCATENATION")
    grids = {(report.tensors[i].scales, report.tensors[i].zero_points) for i in (*concat.inputs, *concat.outputs)}
    assert len(grids) == 1
    parity = tflite_export.compare(qmodel, blob, x_test)  # LiteRT allocates it: no scale mismatch
    assert parity.max_abs_lsb <= 1 and parity.top1_agreement >= 0.99


def test_a_model_with_two_inputs_and_two_outputs(digits):
    (x_train, y_train), (x_test, y_test) = digits
    image = keras.Input((8, 8, 1), name="image")
    extra = keras.Input((4,), name="extra")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(image)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    e = keras.layers.Dense(8, activation="relu", name="side")(extra)
    joined = keras.layers.Add(name="join")([x, e])
    logits = keras.layers.Dense(10, name="logits")(joined)
    aux = keras.layers.Dense(2, name="aux")(joined)
    model = keras.Model([image, extra], [logits, aux])
    rng = np.random.default_rng(0)
    extras_train = rng.standard_normal((len(x_train), 4)).astype(np.float32)
    extras_test = rng.standard_normal((len(x_test), 4)).astype(np.float32)
    qmodel = kerasq.quantize_model(model, "int8", calibration_data=[x_train[:256], extras_train[:256]])
    kerasq.calibrate(qmodel, [[x_train[i : i + 64], extras_train[i : i + 64]] for i in range(0, 256, 64)])  # batches
    blob = tflite_export.convert(qmodel)
    report = tflite_export.inspect(blob)
    assert [t.name for t in report.inputs] == ["image", "extra"] and len(report.outputs) == 2
    parity = tflite_export.compare(qmodel, blob, [x_test, extras_test])
    assert parity.max_abs_lsb <= 1 and parity.top1_agreement >= 0.99
    accuracy = tflite_export.evaluate(blob, [x_test, extras_test], y_test)
    assert 0.0 <= accuracy <= 1.0
    with pytest.raises(ValueError, match="2 inputs"):
        tflite_export.run(blob, x_test)


def test_quantizing_a_quantized_model_is_refused(trained_qmodel):
    with pytest.raises(ValueError, match="already quantized"):
        kerasq.quantize_model(trained_qmodel)


@pytest.mark.parametrize(
    "statement",
    [
        "import kerasq.pact",
        "from kerasq.callbacks import INQ",
        "import kerasq.binary, kerasq.schemes.base; assert kerasq.schemes.Binary is kerasq.binary.Binary",
        "import tflite_export.convert as m, types; assert isinstance(m, types.ModuleType) and callable(m)",
        "import tflite_export.inspect as m, types; assert isinstance(m, types.ModuleType) and callable(m)",
    ],
)
def test_any_import_order_works_in_a_fresh_interpreter(statement):
    result = subprocess.run([sys.executable, "-c", statement], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_traced_predict_equals_the_eager_call_and_the_file(digits):
    """Grids computed in a traced fit/predict equal the eager ones the exporter writes (no reciprocal rewrite)."""
    (x_train, _), (x_test, _) = digits
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu6", name="conv")(inputs)  # a constant [0, 6] grid
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="fc")(x))
    for target in ("xnnpack", "reference"):
        qmodel = kerasq.quantize_model(model, "int8", calibration_data=x_train[:256], target=target)
        traced = qmodel.predict(x_test, verbose=0, batch_size=64)
        np.testing.assert_array_equal(traced, qmodel(x_test, training=False).numpy())
        blob = tflite_export.convert(qmodel)
        codes = tflite_export.run(blob, x_test, dequantize=False, reference_kernels=target == "reference").astype(int)
        params = qmodel.get_layer("fc").activation_params()
        np.testing.assert_array_equal(np.clip(np.floor(traced / params.scale + 0.5) + params.zero_point, -128, 127), codes)
