"""tflite_export.runtime: input quantization, batched running, accuracy, latency and parity.

One tiny conv + dense classifier is trained on scikit-learn's digits and converted with the stock
full-integer post-training quantization once per module; every test reuses it.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the runtime tests train on scikit-learn's digits")

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from kerasq.datasets import load_digits  # noqa: E402
from tflite_export import runtime  # noqa: E402
from tflite_export.runtime import (  # noqa: E402
    LatencyStats,
    ParityReport,
    benchmark,
    compare,
    evaluate,
    make_interpreter,
    quantize_input,
    run,
)


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits):
    """(float Keras model, its full-integer PTQ .tflite bytes)."""
    (x_train, y_train), _ = digits
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential(
        [
            tf_keras.layers.Input((8, 8, 1)),
            tf_keras.layers.Conv2D(8, 3, activation="relu"),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(32, activation="relu"),
            tf_keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=tf_keras.optimizers.Adam(1e-2),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)

    def representative_dataset():
        for i in range(0, 200, 8):
            yield [x_train[i : i + 8]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with warnings.catch_warnings():
        # The converter asks for input statistics it does not need with a representative set.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        tflite = converter.convert()
    return model, tflite


@pytest.fixture(scope="module")
def tflite_bytes(trained):
    return trained[1]


# ----------------------------------------------------------------------------------------------
# quantize_input
# ----------------------------------------------------------------------------------------------


def _tf_nudge(min_value: float, max_value: float):
    """TF FakeQuant's Nudge() for 8 bits in float32 -> (scale, int8 zero point)."""
    mn, mx = np.float32(min_value), np.float32(max_value)
    scale = (mx - mn) / np.float32(255)
    zp_from_min = np.float32(0) - mn / scale
    zp_u8 = 0 if zp_from_min < 0 else 255 if zp_from_min > 255 else int(np.round(zp_from_min))
    return scale, zp_u8 - 128


def _tf_fake_quant_codes(x: np.ndarray, min_value: float, max_value: float) -> np.ndarray:
    """int8 codes of tf.quantization.fake_quant_with_min_max_vars(x, min, max)."""
    scale, zp = _tf_nudge(min_value, max_value)
    out = tf.quantization.fake_quant_with_min_max_vars(
        tf.constant(x, tf.float32), np.float32(min_value), np.float32(max_value)
    ).numpy()
    # TF returns (code - zero point) * scale: an integer multiple of the scale.
    return (np.round(out.astype(np.float64) / float(scale)) + zp).astype(np.int64)


def test_quantize_input_golden_scale_1_over_255():
    # scale = float32(1/255), zero point -128: the usual [0, 1] image input.
    scale = np.float32(1) / np.float32(255)
    x = np.array([0.0, 1.0, -0.3, 2.0, 0.25, 0.5], np.float32)
    codes = quantize_input(x, scale, -128, np.int8)
    assert codes.dtype == np.int8
    # 0 -> -128 and 1 -> 127 exactly; out of range clips; 0.25 / scale = 63.75 -> 64 - 128.
    # 0.5 is not a tie in float32: float32(1/255) is slightly above 1/255, so 0.5 / scale is
    # 127.4999924 and rounds down to 127 - 128 = -1 (TensorFlow agrees, checked below).
    assert codes.tolist() == [-128, 127, -128, 127, -64, -1]
    assert codes.tolist() == _tf_fake_quant_codes(x, 0.0, 1.0).tolist()


def test_quantize_input_golden_ties_go_up():
    # scale 0.5 and 0.25 are exact in float32, so x / scale lands exactly on .5.
    x = np.array([0.25, -0.25, 0.75, -0.75, 1.25, -1.25, 0.0], np.float32)
    codes = quantize_input(x, 0.5, 0, np.int8)
    # Half up (toward +inf): 0.5 -> 1, -0.5 -> 0, 1.5 -> 2, -1.5 -> -1, 2.5 -> 3, -2.5 -> -2.
    # np.round would give 0, 0, 2, -2, 2, -2; half away from zero 1, -1, 2, -2, 3, -3.
    assert codes.tolist() == [1, 0, 2, -1, 3, -2, 0]
    # uint8 with zero point 10: 0.125 / 0.25 = 0.5 -> 11; clipping at 0 and 255.
    u = quantize_input(np.array([0.125, -100.0, 100.0, -2.5], np.float32), 0.25, 10, np.uint8)
    assert u.dtype == np.uint8
    assert u.tolist() == [11, 0, 255, 0]


@pytest.mark.parametrize(
    "min_value,max_value",
    [(0.0, 1.0), (-1.3, 2.1), (-0.7, 0.9), (-3.0, 0.2), (-1.0, 1.0), (0.0, 6.0)],
)
def test_quantize_input_matches_tf_fake_quant(min_value, max_value):
    scale, zp = _tf_nudge(min_value, max_value)
    nudged_min = np.float32(-128 - zp) * scale
    rng = np.random.default_rng(1)
    # 10k uniform values reaching 1.0 beyond both ends of the range ...
    uniform = rng.uniform(min_value - 1.0, max_value + 1.0, 10_000).astype(np.float32)
    # ... and values on and next to the .5 boundaries, where the rounding arithmetic shows.
    k = rng.integers(0, 255, 3_000).astype(np.float32)
    ties = (k + np.float32(0.5)) * scale + nudged_min
    near = np.concatenate(
        [ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))]
    )
    x = np.concatenate([uniform, near]).astype(np.float32)

    expected = _tf_fake_quant_codes(x, min_value, max_value)
    got = quantize_input(x, scale, zp, np.int8).astype(np.int64)
    np.testing.assert_array_equal(got, expected)
    assert got.min() == -128 and got.max() == 127  # out-of-range values reached both ends


def test_quantize_input_near_ties_distinguish_reciprocal_arithmetic():
    # Multiplying by float32(1/scale) instead of dividing (as TF's per-tensor kernel does)
    # gives a different code for some boundary values: the tie set above really tests this.
    scale, zp = _tf_nudge(-1.3, 2.1)
    nudged_min = np.float32(-128 - zp) * scale
    k = np.arange(255, dtype=np.float32)
    ties = (k + np.float32(0.5)) * scale + nudged_min
    x = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf))]).astype(np.float32)
    c = np.clip(x, nudged_min, np.float32(127 - zp) * scale) - nudged_min
    reciprocal = np.floor(c * (np.float32(1) / scale) + np.float32(0.5)).astype(np.int64) - 128
    expected = _tf_fake_quant_codes(x, -1.3, 2.1)
    assert (reciprocal != expected).any()
    np.testing.assert_array_equal(quantize_input(x, scale, zp, np.int8), expected)


def test_quantize_input_rejects_bad_parameters():
    with pytest.raises(ValueError, match="scale"):
        quantize_input(np.zeros(3, np.float32), 0.0, 0, np.int8)
    with pytest.raises(ValueError, match="zero_point"):
        quantize_input(np.zeros(3, np.float32), 0.1, 200, np.int8)
    with pytest.raises(ValueError, match="NaN"):
        quantize_input(np.array([np.nan], np.float32), 0.1, 0, np.int8)
    with pytest.raises(ValueError, match="float16|dtype"):
        quantize_input(np.zeros(3, np.float32), 0.1, 0, np.float16)


# ----------------------------------------------------------------------------------------------
# make_interpreter / run
# ----------------------------------------------------------------------------------------------


def test_make_interpreter_from_bytes_and_path(tflite_bytes, tmp_path):
    interp = make_interpreter(tflite_bytes)
    detail = interp.get_input_details()[0]
    assert detail["dtype"] == np.int8
    assert tuple(detail["shape"][1:]) == (8, 8, 1)
    path = tmp_path / "model.tflite"
    path.write_bytes(tflite_bytes)
    assert make_interpreter(path).get_output_details()[0]["dtype"] == np.int8
    assert make_interpreter(str(path), reference_kernels=True) is not None


def test_make_interpreter_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        make_interpreter(b"")
    with pytest.raises(FileNotFoundError, match="missing.tflite"):
        make_interpreter(tmp_path / "missing.tflite")
    with pytest.raises(ValueError, match="TFL3"):
        make_interpreter(b"\x00" * 64)


def test_run_batch_sizes_give_identical_outputs(tflite_bytes, digits):
    _, (x_test, _) = digits
    x = x_test[:100]
    ref = run(tflite_bytes, x, batch_size=256)
    assert ref.shape == (100, 10) and ref.dtype == np.float32
    for batch_size in (1, 7, 33):  # 7 and 33 end with a partial batch (100 = 14*7 + 2)
        np.testing.assert_array_equal(run(tflite_bytes, x, batch_size=batch_size), ref)
    # Reference kernels: also batch-size independent. They requantize with TFLite's integer
    # multiplier while the default XNNPACK kernels requantize in float32, so single codes
    # may differ by one step (seen on ~0.6% of this model's outputs), never by more.
    ref_kernels = run(tflite_bytes, x, reference_kernels=True, dequantize=False)
    np.testing.assert_array_equal(
        run(tflite_bytes, x, reference_kernels=True, dequantize=False, batch_size=7), ref_kernels
    )
    default_codes = run(tflite_bytes, x, dequantize=False)
    assert np.abs(ref_kernels.astype(np.int64) - default_codes).max() <= 1


def test_run_raw_codes_and_integer_input(tflite_bytes, digits):
    _, (x_test, _) = digits
    x = x_test[:50]
    interp = make_interpreter(tflite_bytes)
    in_scale, in_zp = interp.get_input_details()[0]["quantization"]
    out_scale, out_zp = interp.get_output_details()[0]["quantization"]

    raw = run(tflite_bytes, x, dequantize=False)
    assert raw.dtype == np.int8
    np.testing.assert_array_equal(
        run(tflite_bytes, x), (raw.astype(np.float32) - out_zp) * np.float32(out_scale)
    )
    codes = quantize_input(x, in_scale, in_zp, np.int8)
    np.testing.assert_array_equal(run(tflite_bytes, codes, dequantize=False), raw)


def test_run_input_errors(tflite_bytes):
    with pytest.raises(ValueError, match=r"Received: x.shape=\(5, 9, 9, 1\)"):
        run(tflite_bytes, np.zeros((5, 9, 9, 1), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 8, 8, 1\).*Received: x.shape=\(5, 8, 8\)"):
        run(tflite_bytes, np.zeros((5, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"at least one sample.*Received: x.shape=\(0, 8, 8, 1\)"):
        run(tflite_bytes, np.zeros((0, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        run(tflite_bytes, np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        run(tflite_bytes, np.zeros((2, 8, 8, 1), np.float32), batch_size=0)


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------


def test_evaluate_accuracy_on_digits(tflite_bytes, digits):
    _, (x_test, y_test) = digits
    accuracy, outputs = evaluate(tflite_bytes, x_test, y_test, return_outputs=True)
    assert accuracy > 0.8
    by_hand = float(np.mean(np.argmax(run(tflite_bytes, x_test), axis=1) == y_test))
    assert accuracy == by_hand
    np.testing.assert_array_equal(outputs, run(tflite_bytes, x_test))
    one_hot = np.eye(10, dtype=np.float32)[y_test]
    assert evaluate(tflite_bytes, x_test, one_hot, batch_size=64) == accuracy


def test_evaluate_rejects_mismatched_labels(tflite_bytes, digits):
    _, (x_test, y_test) = digits
    with pytest.raises(ValueError, match="same number of samples"):
        evaluate(tflite_bytes, x_test[:10], y_test[:9])


# ----------------------------------------------------------------------------------------------
# benchmark
# ----------------------------------------------------------------------------------------------


def test_benchmark_stats(tflite_bytes):
    stats = benchmark(tflite_bytes, warmup=5, runs=50)
    assert isinstance(stats, LatencyStats)
    assert stats.runs == 50 and stats.num_threads == 1
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms
    assert stats.mean_ms > 0 and stats.std_ms >= 0
    assert set(stats.to_dict()) >= {
        "median_ms", "p90_ms", "mean_ms", "std_ms", "min_ms", "runs", "num_threads"
    }
    assert "median" in str(stats) and "50 runs" in str(stats)
    batched = benchmark(tflite_bytes, warmup=2, runs=10, batch_size=16)
    assert batched.batch_size == 16 and batched.median_ms > 0


def test_benchmark_rejects_bad_runs(tflite_bytes):
    with pytest.raises(ValueError, match="runs"):
        benchmark(tflite_bytes, runs=0)


# ----------------------------------------------------------------------------------------------
# compare
# ----------------------------------------------------------------------------------------------


def test_compare_float_keras_vs_ptq(trained, digits):
    model, tflite = trained
    _, (x_test, _) = digits
    report = compare(model, tflite, x_test)
    assert isinstance(report, ParityReport)
    assert report.n_samples == len(x_test)
    assert report.top1_agreement >= 0.95
    interp = make_interpreter(tflite)
    scale, zp = interp.get_output_details()[0]["quantization"]
    assert report.output_scale == pytest.approx(scale) and report.output_zero_point == zp
    # PTQ of a float model: a few output steps apart at worst, mostly within one.
    assert 0 < report.max_abs_lsb < 30
    # The float Keras value lies up to half a step off its nearest code (or beyond the clipped range).
    assert report.max_abs_error >= (report.max_abs_lsb - 0.5) * scale - 1e-6
    assert 0 < report.bit_exact_fraction <= report.within_one_lsb_fraction <= 1
    assert report.within_one_lsb_fraction > 0.5
    assert report.ok(max_lsb=30, min_top1=0.95)
    assert not report.ok(max_lsb=report.max_abs_lsb / 2, min_top1=0.0)
    assert str(report).startswith("ParityReport(") and "\n" not in str(report)
    assert report.to_dict()["n_samples"] == len(x_test)


class _TFLiteAsKeras:
    """Stands in for a Keras model whose outputs are the TFLite model's, dequantized."""

    def __init__(self, tflite: bytes):
        self.tflite = tflite

    def __call__(self, x, training=False):
        assert training is False
        return run(self.tflite, x)


def test_compare_exact_case(tflite_bytes, digits):
    _, (x_test, _) = digits
    report = compare(_TFLiteAsKeras(tflite_bytes), tflite_bytes, x_test[:97], batch_size=10)
    assert report.n_samples == 97
    assert report.max_abs_lsb == 0.0 and report.max_abs_error == 0.0
    assert report.bit_exact_fraction == 1.0 and report.within_one_lsb_fraction == 1.0
    assert report.top1_agreement == 1.0
    assert report.ok(max_lsb=0.0, min_top1=1.0)


def test_compare_one_lsb_offset_is_counted(tflite_bytes, digits):
    # A Keras stand-in one output step above the TFLite values: 1 LSB everywhere.
    _, (x_test, _) = digits
    x = x_test[:40]
    scale, _ = make_interpreter(tflite_bytes).get_output_details()[0]["quantization"]
    raw = run(tflite_bytes, x, dequantize=False)
    assert raw.max() < 127  # no code at the top of the range, where the shift would clip

    class Shifted(_TFLiteAsKeras):
        def __call__(self, x, training=False):
            return run(self.tflite, x) + np.float32(scale)

    report = compare(Shifted(tflite_bytes), tflite_bytes, x)
    assert report.max_abs_lsb == pytest.approx(1.0, abs=1e-3)
    assert report.bit_exact_fraction == 0.0
    assert report.within_one_lsb_fraction == 1.0
    assert report.ok(max_lsb=1.001, min_top1=1.0)
    assert not report.ok(max_lsb=0.5, min_top1=0.0)




def test_compare_float_output_model(trained, digits):
    model, _ = trained
    _, (x_test, _) = digits
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    float_tflite = converter.convert()
    report = compare(model, float_tflite, x_test[:64])
    assert report.output_scale is None and report.max_abs_lsb is None
    assert report.bit_exact_fraction is None and report.within_one_lsb_fraction is None
    assert report.top1_agreement == 1.0
    assert report.max_abs_error < 1e-4
    assert report.ok()
    assert "float output" in str(report)


def test_runtime_does_not_import_tensorflow():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(runtime))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"tensorflow", "tf_keras", "keras"}


# ----------------------------------------------------------------------------------------------
# tf.Tensor and tf.data.Dataset inputs
# ----------------------------------------------------------------------------------------------


def test_tf_tensor_and_datasets_give_the_numpy_figures(tflite_bytes, digits):
    _, (x_test, y_test) = digits
    x, y = x_test[:100], y_test[:100]
    expected = run(tflite_bytes, x)
    accuracy = evaluate(tflite_bytes, x, y)

    np.testing.assert_array_equal(run(tflite_bytes, tf.constant(x)), expected)
    assert evaluate(tflite_bytes, tf.constant(x), tf.constant(y)) == accuracy

    samples = tf.data.Dataset.from_tensor_slices(x)  # elements of one sample's shape
    np.testing.assert_array_equal(run(tflite_bytes, samples, batch_size=32), expected)
    assert evaluate(tflite_bytes, samples, y, batch_size=32) == accuracy
    pairs = tf.data.Dataset.from_tensor_slices((x, y))  # (x, y) elements: labels from the dataset
    assert evaluate(tflite_bytes, pairs) == accuracy
    np.testing.assert_array_equal(run(tflite_bytes, pairs), expected)
    batched = pairs.batch(7)  # already batched: used as it comes
    assert evaluate(tflite_bytes, batched, batch_size=5) == accuracy
    outputs = evaluate(tflite_bytes, batched, return_outputs=True)[1]
    np.testing.assert_array_equal(outputs, expected)


def test_wrong_dataset_and_tensor_shapes_are_named(tflite_bytes, digits):
    _, (x_test, y_test) = digits
    with pytest.raises(ValueError, match=r"expected shape \(N, 8, 8, 1\)\. Received: x.shape=\(5, 8, 8\)"):
        run(tflite_bytes, tf.constant(x_test[:5, :, :, 0]))
    flat = tf.data.Dataset.from_tensor_slices(x_test[:10].reshape(10, 64))
    with pytest.raises(ValueError, match=r"x elements have shape \[64\].*samples of shape \[8, 8, 1\]"):
        run(tflite_bytes, flat)
    two_channels = tf.data.Dataset.from_tensor_slices(np.repeat(x_test[:10], 2, axis=-1))
    with pytest.raises(ValueError, match=r"expected shape \(N, 8, 8, 1\)\. Received: x.shape=\(10, 8, 8, 2\)"):
        run(tflite_bytes, two_channels)
    with pytest.raises(ValueError, match="pass y=None"):
        evaluate(tflite_bytes, tf.data.Dataset.from_tensor_slices((x_test[:10], y_test[:10])), y_test[:10])
    with pytest.raises(ValueError, match="y \\(the labels\\) is required"):
        evaluate(tflite_bytes, x_test[:10])


def test_compare_takes_a_dataset(trained, digits):
    model, tflite = trained
    _, (x_test, _) = digits
    expected = compare(model, tflite, x_test[:64])
    assert compare(model, tflite, tf.data.Dataset.from_tensor_slices(x_test[:64])) == expected
    assert compare(model, tflite, tf.constant(x_test[:64])) == expected


# ----------------------------------------------------------------------------------------------
# Hostile files and memory
# ----------------------------------------------------------------------------------------------


def test_run_refuses_outputs_without_one_row_per_sample():
    """MEAN over the batch axis, the shapes after it declared to match: the reader's checks pass,
    LiteRT returns 16 rows for any batch, and run must refuse them."""
    from pathlib import Path

    from ai_edge_litert import schema_py_generated as schema

    from tflite_export.flatbuffer import InvalidModelError, serialize

    blob = (Path(__file__).parent / "hostile" / "mean_axes_batch.tflite").read_bytes()
    model = schema.ModelT.InitFromPackedBuf(blob, 0)
    tensors = {t.name: t for t in model.subgraphs[0].tensors}
    tensors[b"gap"].shape, tensors[b"fc"].shape = np.array([4, 4, 32], np.int32), np.array([16, 10], np.int32)
    tensors[b"gap"].shapeSignature = tensors[b"fc"].shapeSignature = None
    consistent = serialize(model)
    x = np.random.default_rng(0).uniform(0, 1, (10, 8, 8, 1)).astype(np.float32)
    with pytest.raises(InvalidModelError, match=r"output 0 \('fc'\) has shape \[16, 10\] for a batch of 10 input rows"):
        run(consistent, x)
    with pytest.raises(InvalidModelError, match="one row per input row"):
        evaluate(consistent, x, np.zeros(10, np.int64))


def test_runtime_refuses_paths_and_oversized_tensors(tflite_bytes, tmp_path):
    from tflite_export.flatbuffer import InvalidModelError

    x = np.zeros((4, 8, 8, 1), np.float32)
    for call in (lambda m: run(m, x), lambda m: evaluate(m, x, np.zeros(4, int)), lambda m: benchmark(m, runs=1)):
        with pytest.raises(InvalidModelError, match="is a directory"):
            call(tmp_path)
    # The bound is taken at the batch size run: raising batch_size can cross it.
    run(tflite_bytes, x, max_bytes=1 << 20)
    with pytest.raises(InvalidModelError, match=r"at batch size 4000, more than max_bytes"):
        run(tflite_bytes, np.zeros((4000, 8, 8, 1), np.float32), batch_size=4000, max_bytes=1 << 20)
    with pytest.raises(InvalidModelError, match=r"at batch size 4000"):
        benchmark(tflite_bytes, runs=1, warmup=0, batch_size=4000, max_bytes=1 << 20)


_EVALUATE_MEMORY = r"""
import re, sys
import numpy as np
import tflite_export

def kib(field):
    return int(re.search(field + r":\s+(\d+)", open("/proc/self/status").read()).group(1))

x = np.random.default_rng(0).uniform(0, 1, (20000, 28, 28, 1)).astype(np.float32)
y = np.zeros(20000, np.int64)
tflite_export.evaluate(sys.argv[1], x[:512], y[:512])  # first allocations of the interpreter
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # peak RSS := current RSS
before = kib("VmRSS")
tflite_export.evaluate(sys.argv[1], x, y)
print(kib("VmHWM") - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures peak RSS through /proc")
def test_evaluate_memory_does_not_grow_with_the_data_set(tmp_path):
    """20,000 float images of 28x28 (60 MiB): quantizing all of x at once took +373 MiB of peak
    RSS; batch by batch it is the batch's few hundred kB."""
    import subprocess
    import sys

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([
        tf_keras.layers.Input((28, 28, 1)),
        tf_keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
        tf_keras.layers.GlobalAveragePooling2D(),
        tf_keras.layers.Dense(10),
    ])
    samples = np.random.default_rng(0).uniform(0, 1, (32, 28, 28, 1)).astype(np.float32)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s[None]] for s in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        path = tmp_path / "cnn28.tflite"
        path.write_bytes(converter.convert())
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", _EVALUATE_MEMORY, str(path)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    growth_kib = int(done.stdout.split()[-1])
    assert growth_kib < 32 * 1024, f"evaluate's peak RSS grew by {growth_kib / 1024:.1f} MiB"
