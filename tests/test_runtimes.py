"""One exported int8 model, three kernel sets: LiteRT default (XNNPACK), LiteRT reference, TFLite Micro."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fit_qat

import kerasq
import tflite_export
from tflite_export.runtime import quantize_input


@pytest.fixture(scope="module")
def qmodel(trained_float_cnn, digits):
    return fit_qat(kerasq.quantize_model(trained_float_cnn, "int8"), digits, epochs=2, lr=5e-4)


def keras_codes_of(qmodel, x) -> np.ndarray:
    params = qmodel.get_layer("fc").activation_params()
    return np.clip(np.floor(qmodel.predict(x, verbose=0) / params.scale + 0.5) + params.zero_point, -128, 127).astype(int)


@pytest.fixture(scope="module")
def exported(qmodel, digits):
    blob = tflite_export.convert(qmodel)
    _, (x_test, _) = digits
    params = qmodel.get_layer("fc").activation_params()
    keras_out = qmodel.predict(x_test, verbose=0)
    keras_codes = np.clip(np.floor(keras_out / params.scale + 0.5) + params.zero_point, -128, 127).astype(int)
    return blob, keras_codes


def micro_outputs(blob: bytes, x: np.ndarray) -> np.ndarray:
    runtime = pytest.importorskip("tflite_micro.python.tflite_micro.runtime", reason="pip install kerasq[micro]")
    interpreter = runtime.Interpreter.from_bytes(blob)
    detail = interpreter.get_input_details(0)["quantization_parameters"]
    codes = quantize_input(x, float(detail["scales"][0]), int(detail["zero_points"][0]), np.int8)
    outputs = []
    for i in range(len(codes)):
        interpreter.set_input(codes[i : i + 1], 0)
        interpreter.invoke()
        outputs.append(interpreter.get_output(0)[0].copy())
    return np.asarray(outputs, int)


def test_every_runtime_within_one_lsb_of_keras(exported, digits):
    blob, keras_codes = exported
    _, (x_test, _) = digits
    outputs = {
        "litert": tflite_export.run(blob, x_test, dequantize=False).astype(int),
        "litert_reference": tflite_export.run(blob, x_test, dequantize=False, reference_kernels=True).astype(int),
        "micro": micro_outputs(blob, x_test),
    }
    for name, codes in outputs.items():
        error = np.abs(codes - keras_codes)
        # Measured: XNNPACK 100 % bit exact. The reference kernels and Micro requantize their
        # int8 MEAN (the global average pool) with two roundings, which the float mean +
        # FakeQuant of Keras cannot follow: 81 % bit exact, and 1 logit of 4,500 is 2 LSB off
        # where the classifier amplifies a 1-LSB pool difference.
        assert error.max() <= (1 if name == "litert" else 2), name
        assert np.mean(error <= 1) >= 0.999, name
        assert np.mean(codes == keras_codes) >= (0.99 if name == "litert" else 0.75), name
        assert np.mean(codes.argmax(1) == keras_codes.argmax(1)) >= 0.99, name
    # TFLite Micro runs the reference kernels' arithmetic.
    assert np.mean(outputs["micro"] == outputs["litert_reference"]) >= 0.99


def test_each_target_reproduces_its_runtime_code_for_code(qmodel, digits):
    """Target("reference") is LiteRT's BUILTIN_REF and Target("micro") TFLite Micro, bit for bit:
    they differ only in the last FULLY_CONNECTED, which TFLite Micro requantizes in fixed point
    (two roundings) where LiteRT's reference kernel rounds double(acc)·M once."""
    _, (x_test, _) = digits
    blob = tflite_export.convert(qmodel)
    file_reference = tflite_export.run(blob, x_test, dequantize=False, reference_kernels=True).astype(int)
    file_micro = micro_outputs(blob, x_test)
    with kerasq.using_target(qmodel, "reference"):
        assert tflite_export.convert(qmodel) == blob  # the target changes the Keras arithmetic, not the file
        reference_codes = keras_codes_of(qmodel, x_test)
    with kerasq.using_target(qmodel, "micro"):
        assert tflite_export.convert(qmodel) == blob
        micro_codes = keras_codes_of(qmodel, x_test)
    np.testing.assert_array_equal(reference_codes, file_reference)
    np.testing.assert_array_equal(micro_codes, file_micro)
    # The two runtimes do part ways on this model (measured: a few of the 4,500 logits).
    assert 0 < np.count_nonzero(file_micro != file_reference) < 0.01 * file_micro.size
