"""Shared fixtures: real data (scikit-learn digits) and a float demo CNN trained once per session."""

from __future__ import annotations

import os

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
