"""Shared fixtures: real data (scikit-learn digits) and a float demo CNN trained once per session."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from kerasq import keras
from kerasq.datasets import load_digits
from kerasq.models import demo_cnn


@pytest.fixture(scope="session")
def digits():
    """``(x_train, y_train), (x_test, y_test)``: 1347/450 real 8x8 digits in [0, 1]."""
    return load_digits()


@pytest.fixture(scope="session")
def trained_float_cnn(digits):
    """The demo CNN (logits output) trained in float on digits, seeded; do not modify it in a test."""
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    model = demo_cnn((8, 8, 1), 10)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=30, batch_size=32, verbose=0)
    return model


def fit_qat(qmodel, digits, epochs: int = 2, lr: float = 1e-3):
    """Compile and fine-tune a quantized model on digits; returns it."""
    (x_train, y_train), _ = digits
    qmodel.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    qmodel.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    return qmodel


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def assert_int8_storage_parity(qmodel, x):
    """Export with low-bit grids stored as widened INT8 and assert the ≤ 1 LSB / ≥ 99 % parity bound.

    The Keras model is switched to that storage first (``kerasq.set_target``: INT8 layers run on
    other kernels, which round differently), then back to what it was.
    """
    import kerasq
    import tflite_export

    with kerasq.using_target(qmodel, kerasq.Target(qmodel.target.runtime, pack_int4=False)):
        blob = tflite_export.convert(qmodel)
        parity = tflite_export.compare(qmodel, blob, x)
    assert parity.max_abs_lsb <= 1, parity
    assert parity.top1_agreement >= 0.99, parity
    return parity


def assert_exact_parity(qmodel, blob, x, min_bit_exact: float = 0.99):
    """The issue's parity bound on ``blob`` (≤ 1 output LSB, ≥ 99 % top-1), a bit-exact share, then INT8 storage."""
    import tflite_export

    parity = tflite_export.compare(qmodel, blob, x)
    assert parity.max_abs_lsb <= 1, parity
    assert parity.top1_agreement >= 0.99, parity
    assert parity.bit_exact_fraction >= min_bit_exact, parity
    assert_int8_storage_parity(qmodel, x)
    return parity


# Seed lecture's 4x4 weight matrix (rows = output channels); as a Dense kernel it is SEED_W.T.
SEED_W = np.array(
    [[2.09, -0.98, 1.48, 0.09], [0.05, -0.14, -1.08, 2.12], [-0.91, 1.92, 0.0, -1.03], [1.87, 0.0, 1.53, 1.49]],
    np.float32,
)


def assert_config_round_trip(obj) -> None:
    """``obj`` survives ``from_config(get_config())`` and Keras (de)serialization as ``kerasq>Name``."""
    assert type(obj).from_config(obj.get_config()) == obj
    config = keras.utils.serialize_keras_object(obj)
    assert config["registered_name"] == f"kerasq>{type(obj).__name__}"
    assert keras.utils.deserialize_keras_object(config) == obj


def dense_model(kernel: np.ndarray, name: str = "fc") -> keras.Model:
    """A one-layer float model whose Dense kernel (``[in, out]``, no bias) is ``kernel``."""
    model = keras.Sequential(
        [keras.Input((kernel.shape[0],)), keras.layers.Dense(kernel.shape[1], use_bias=False, name=name)]
    )
    model.set_weights([kernel])
    return model


def export_with_exact_weights(qmodel, **convert_kwargs):
    """Convert, assert integer-only, assert every exported kernel equals ``quantized_weights``.

    Weight ops are matched to Keras layers in order (CONV_2D/DEPTHWISE_CONV_2D/FULLY_CONNECTED
    follow the weight layers). Returns ``(blob, report)``.
    """
    import kerasq
    import tflite_export

    blob = tflite_export.convert(qmodel, **convert_kwargs)
    report = tflite_export.inspect(blob)
    assert report.is_integer_only, report.float_ops
    quantized = kerasq.quantized_weights(qmodel)
    assert len(report.weights) == len(quantized)
    for info, (name, kernel) in zip(report.weights, quantized.items()):
        np.testing.assert_allclose(info.keras_kernel(), kernel, rtol=1e-6, atol=1e-7, err_msg=name)
    return blob, report


def reload_identical(qmodel, x, path):
    """Save ``qmodel`` to ``path``, load it in ``kerasq.quantize_scope()``, assert equal predictions.

    Returns the restored model for further checks of its quantizers' state.
    """
    import kerasq

    qmodel.save(path)
    with kerasq.quantize_scope():
        restored = keras.models.load_model(path)
    np.testing.assert_array_equal(restored.predict(x, verbose=0), qmodel.predict(x, verbose=0))
    return restored


def fashion_mnist_or_skip():
    """Fashion-MNIST ``((x_train, y_train), (x_test, y_test))`` from ``KERASQ_DATA``, or skip the test."""
    from kerasq.datasets import load_dataset

    data_dir = os.environ.get("KERASQ_DATA", "").strip()
    if not data_dir:
        pytest.skip("KERASQ_DATA is not set (a folder holding fashion-mnist/)")
    return load_dataset("fashion_mnist", data_dir)


# --- every file the suite exports runs on every runtime ------------------------------------------
# Each ``tflite_export.convert`` call in the suite also runs the file it returns on random input
# codes through LiteRT's reference kernels, the numpy reference interpreter, XNNPACK and TFLite
# Micro: the numpy reference must equal BUILTIN_REF code for code (else the exporting test
# fails); XNNPACK's and TFLite Micro's distances are collected and printed at the end of the run.
RUNTIME_CHECKS: list[dict] = []
_CHECK_SAMPLES = 4


def check_runtimes(blob: bytes) -> dict:
    """The cross-runtime check of one exported file (see above); returns its row, and records it."""
    import tflite_export
    from tflite_export.reference import Interpreter

    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    inputs = Interpreter(blob).input_details
    rng = np.random.default_rng(len(blob))
    codes = []
    for spec in inputs:
        shape = (_CHECK_SAMPLES, *spec.shape_signature[1:])
        if np.issubdtype(spec.dtype, np.integer):
            low, high = spec.limits
            codes.append(rng.integers(low, high + 1, shape).astype(spec.dtype))
        else:
            codes.append(rng.uniform(-1, 1, shape).astype(spec.dtype))
    row = {"test": test, "bytes": len(blob), "seconds": 0.0}
    started = time.perf_counter()
    try:
        report = tflite_export.verify(blob, codes if len(codes) > 1 else codes[0], arena=False)
    except ValueError as error:
        if "Didn't find op" not in str(error):  # a kernel BUILTIN_REF lacks (ELU): no baseline
            raise
        row["skipped"] = str(error)
        row["seconds"] = time.perf_counter() - started
        RUNTIME_CHECKS.append(row)
        return row
    for name in ("numpy", "xnnpack", "micro"):
        result = report[name]
        # Float outputs (a DEQUANTIZE at the end) have no LSB: count differing values only.
        worst = result.max_abs_lsb if result.max_abs_lsb is not None else int(result.differing > 0)
        row[name] = (worst, result.differing, sum(o.total for o in result.outputs)) if result.available else result.reason
    row["seconds"] = time.perf_counter() - started
    RUNTIME_CHECKS.append(row)
    numpy_result = report["numpy"]
    assert numpy_result.available and numpy_result.differing == 0, (
        f"numpy reference differs from BUILTIN_REF on the file exported by {test}:\n{report}"
    )
    return row


@pytest.fixture(scope="session", autouse=True)
def every_export_runs_on_every_runtime():
    import tflite_export.convert as module

    original = module.convert

    def convert_and_check(*args, **kwargs):
        blob = original(*args, **kwargs)
        check_runtimes(blob)
        return blob

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "convert", convert_and_check)
        yield


def pytest_terminal_summary(terminalreporter):
    if not RUNTIME_CHECKS:
        return
    write = terminalreporter.write_line
    checked = [row for row in RUNTIME_CHECKS if "skipped" not in row]
    seconds = sum(row["seconds"] for row in RUNTIME_CHECKS)
    write("")
    write(f"Every exported file on every runtime: {len(RUNTIME_CHECKS)} files, {_CHECK_SAMPLES} random input samples "
          f"each, {seconds:.0f} s; against LiteRT BUILTIN_REF (max LSB, output codes differing):")
    for name in ("numpy", "xnnpack", "micro"):
        compared = [row[name] for row in checked if isinstance(row[name], tuple)]
        unavailable = sorted({row[name].split(":")[-1].strip()[:90] for row in checked if not isinstance(row[name], tuple)})
        worst = max((value[0] for value in compared), default=0)
        differing, total = sum(value[1] for value in compared), sum(value[2] for value in compared)
        exact = sum(value[1] == 0 for value in compared)
        write(f"  {name:8s} {len(compared)} files run, {exact} bit-exact, max {worst} LSB, {differing:,} of {total:,} codes differ"
              + (f"; unavailable on {len(checked) - len(compared)} ({'; '.join(unavailable)})" if unavailable else ""))
        above = sorted((row[name][0], row["test"]) for row in checked if isinstance(row[name], tuple) and row[name][0] > 1)
        for worst_lsb, test in above[::-1][:5]:
            write(f"           {worst_lsb} LSB: {test}")
    for row in RUNTIME_CHECKS:
        if "skipped" in row:
            write(f"  no BUILTIN_REF baseline for {row['test']}: {row['skipped'][:120]}")
