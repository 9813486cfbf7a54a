"""The reference networks: vgg_cnn with a per-tensor scheme, residual_concat_net with ADD and CONCATENATION, export exactly."""

from __future__ import annotations

import pytest
from conftest import assert_exact_parity, fashion_mnist_or_skip, fit_qat

import kerasq
import tflite_export
from kerasq import keras
from kerasq.models import vgg_cnn
from kerasq.schemes import Ternary


def test_vgg_cnn_ternary_exports_exactly_with_batch_norm_channel_scales(digits):
    (x_train, y_train), (x_test, _) = digits
    keras.utils.set_random_seed(0)
    model = vgg_cnn((8, 8, 1), 10, width=8)
    assert [l.name for l in model.layers if isinstance(l, keras.layers.Conv2D)] == ["conv1", "conv2", "conv3", "conv4"]
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    qmodel = fit_qat(kerasq.quantize_model(model, Ternary("twn")), digits, epochs=1, lr=5e-4)
    layers = {l.name: l for l in kerasq.quantized_layers(qmodel)}
    # Every conv had a BN: its gamma/sigma is a channel scale; the per-tensor ternary grid becomes
    # per-channel weight scales in the file, still three codes per tensor.
    assert all(layers[name].channel_scale is not None for name in ("conv1", "conv2", "conv3", "conv4"))
    assert layers["fc"].channel_scale is None
    blob = tflite_export.convert(qmodel)
    report = tflite_export.inspect(blob)
    assert report.is_integer_only
    hidden = report.weights[1:4]
    assert [w.tensor.dtype for w in hidden] == ["int4"] * 3
    assert all(w.per_channel and w.tensor.distinct_values == 3 for w in hidden)
    # The INT4 convolutions run on LiteRT's built-in kernels, which round twice (ties up), and the
    # Keras layers reproduce that; the INT8 ones run on XNNPACK, one rounding.
    assert all((layers[n].requantization_modes() == kerasq.runtimes.DOUBLE_HALF_UP).all() for n in ("conv2", "conv3", "conv4"))
    assert (layers["conv1"].requantization_modes() == kerasq.runtimes.SINGLE).all()
    assert_exact_parity(qmodel, blob, x_test)


@pytest.fixture(scope="module")
def fashion_residual_concat():
    """residual_concat_net trained 2 epochs on 6,000 Fashion-MNIST images (needs KERASQ_DATA)."""
    from kerasq.models import residual_concat_net

    (x_train, y_train), (x_test, y_test) = fashion_mnist_or_skip()
    data = (x_train[:6000], y_train[:6000]), (x_test[:1000], y_test[:1000])
    keras.utils.set_random_seed(0)
    model = residual_concat_net()
    model.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(*data[0], epochs=2, batch_size=64, verbose=0)
    return model, data


@pytest.mark.parametrize("scheme", ["pact", "int8", "twn"])
def test_residual_add_concatenate_and_linear_outputs_export_exactly(fashion_residual_concat, scheme):
    """An ADD of two grids, a shared-grid CONCATENATION, signed conv outputs; PACT w4a4 in packed INT4."""
    model, ((x_train, y_train), (x_test, y_test)) = fashion_residual_concat
    keras.utils.set_random_seed(0)
    qmodel = kerasq.quantize_model(model, scheme, calibration_data=x_train[:512])
    qmodel.compile(keras.optimizers.Adam(5e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    blob = tflite_export.convert(qmodel)
    report = tflite_export.inspect(blob)
    assert report.is_integer_only and {"ADD", "CONCATENATION", "MEAN"} <= set(report.op_counts())
    if scheme != "int8":
        assert any(w.tensor.dtype == "int4" for w in report.weights)
    # Measured (6,000 images, 1 QAT epoch): PACT 1 LSB / 99.98 % bit-exact, int8 99.84 %, TWN 99.97 %;
    # top-1 agreement 100 % for all three.
    parity = tflite_export.compare(qmodel, blob, x_test)
    assert parity.max_abs_lsb <= 1 and parity.top1_agreement >= 0.99, parity
    # Accuracy after one QAT epoch on 6,000 images is a sanity floor (chance is 0.1): TWN measured
    # 0.54 / 0.65 / 0.66 over seeds 0-2, the float model's own batch-norm statistics being poor.
    assert tflite_export.evaluate(blob, x_test, y_test) >= (0.5 if scheme == "twn" else 0.6)


def test_resnet20_on_colour_images_exports_bit_exactly_with_int4():
    """Nine residual ADDs of signed conv outputs, PACT w4a4 in packed INT4: every rounding must match."""
    from kerasq.datasets import to_rgb
    from kerasq.models import resnet20

    (x_train, y_train), (x_test, _) = fashion_mnist_or_skip()
    x_train, y_train, x_test = to_rgb(x_train[:1024]), y_train[:1024], to_rgb(x_test[:200])
    keras.utils.set_random_seed(0)
    model = resnet20(num_classes=10, width=8)
    model.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    qmodel = kerasq.quantize_model(model, "pact", calibration_data=x_train[:256])
    qmodel.compile(keras.optimizers.Adam(5e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    blob = tflite_export.convert(qmodel)
    assert sum(op.name == "ADD" for op in tflite_export.inspect(blob).ops) == 9
    # Measured: 0 LSB, 100 % bit-exact for both storages. With float32 accumulators in Keras one
    # near-tie code in the stem grew to 5 output LSB over the nine blocks (99.7 % bit-exact).
    assert_exact_parity(qmodel, blob, x_test, min_bit_exact=0.999)
