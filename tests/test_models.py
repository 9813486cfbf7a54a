"""The reference networks: vgg_cnn quantizes with a per-tensor scheme and exports exactly."""

from __future__ import annotations

import numpy as np
from conftest import assert_exact_parity, fit_qat

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
