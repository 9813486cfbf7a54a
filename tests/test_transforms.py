"""quantize_model's graph transforms: BN folding, activation fusion, scheme resolution."""

from __future__ import annotations

import numpy as np
import pytest

import kerasq
from kerasq import keras
from kerasq.layers import QuantizedLayer
from kerasq.schemes import Linear


def _bn_model(kind: str) -> keras.Model:
    inputs = keras.Input((6, 6, 3))
    if kind == "conv":
        x = keras.layers.Conv2D(5, 3, name="w")(inputs)
    elif kind == "depthwise":
        x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="w")(inputs)
    else:
        x = keras.layers.Dense(5, name="w")(keras.layers.Flatten()(inputs))
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, keras.layers.ReLU(name="act")(x))


def _bn_model_with_statistics(kind: str) -> tuple[keras.Model, np.ndarray]:
    model = _bn_model(kind)
    rng = np.random.default_rng(0)
    bn = model.get_layer("bn")
    n = bn.moving_mean.shape[0]
    bn.set_weights([rng.uniform(0.5, 2, n), rng.normal(size=n), rng.normal(size=n), rng.uniform(0.5, 2, n)])
    return model, rng.random((16, 6, 6, 3), np.float32)


@pytest.mark.parametrize("kind", ["conv", "depthwise", "dense"])
def test_batch_norm_folding_into_the_kernel_preserves_the_float_function(kind):
    model, x = _bn_model_with_statistics(kind)
    qmodel = kerasq.quantize_model(model, Linear(8, 8), bn_folding="kernel")
    layer = qmodel.get_layer("w")
    assert isinstance(layer, QuantizedLayer) and layer.activation.kind == "relu"
    assert layer.channel_scale is None
    assert [l.name for l in qmodel.layers if isinstance(l, keras.layers.BatchNormalization)] == []
    # The folded float layer (no quantization) reproduces conv -> BN -> ReLU.
    folded = keras.activations.relu(layer.layer(x if kind != "dense" else x.reshape(16, -1)))
    np.testing.assert_allclose(folded.numpy(), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["conv", "depthwise", "dense"])
def test_batch_norm_folding_as_channel_scale(kind):
    model, x = _bn_model_with_statistics(kind)
    bn = model.get_layer("bn")
    factor = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    qmodel = kerasq.quantize_model(model, Linear(8, 8))
    layer = qmodel.get_layer("w")
    # The kernel stays the float layer's own; gamma/sigma sits after the quantizer, times the
    # least-squares gain of Q(W) onto W, which int8 per-channel keeps within 0.5 %.
    np.testing.assert_array_equal(layer.kernel.numpy(), model.get_layer("w").get_weights()[0])
    scale = layer.channel_scale.numpy().reshape(-1)
    np.testing.assert_allclose(scale, factor, rtol=5e-3)
    assert not np.array_equal(scale, factor)
    np.testing.assert_allclose(layer.quantized_kernel(), kerasq.quantized_weights(qmodel)["w"])
    grid = layer.weight_grid()
    np.testing.assert_allclose(grid.dequantize(), layer.quantized_kernel(), rtol=2.0**-21, atol=0)
    # The quantized model computes conv -> BN -> ReLU to within a few output steps.
    kerasq.calibrate(qmodel, x)
    step = qmodel.get_layer("w").activation_params().scale
    assert np.abs(qmodel.predict(x, verbose=0) - model.predict(x, verbose=0)).max() <= 3 * step


def test_batch_norm_with_negative_gamma_exports_positive_scales():
    model, x = _bn_model_with_statistics("conv")
    bn = model.get_layer("bn")
    gamma = bn.gamma.numpy()
    gamma[[0, 2]] *= -1
    gamma[4] = 0.0
    bn.gamma.assign(gamma)
    layer = kerasq.quantize_model(model, Linear(4, 8), first_last_int8=False).get_layer("w")
    grid = layer.weight_grid()
    assert np.all(grid.scale > 0)
    kernel = layer.quantized_kernel()
    np.testing.assert_allclose(grid.dequantize(), kernel, rtol=2.0**-21, atol=0)
    assert np.all(kernel[..., 4] == 0) and np.all(grid.codes[..., 4] == 0)
    assert np.all(grid.codes[..., 0] == -layer.weight_quantizer.integer_grid(layer.kernel, {}).codes[..., 0])


def test_bn_folding_must_be_known():
    with pytest.raises(ValueError, match="bn_folding must be one of"):
        kerasq.quantize_model(_bn_model("conv"), bn_folding="weights")


def test_original_model_is_untouched():
    model = _bn_model("conv")
    before = [w.copy() for w in model.get_weights()]
    kerasq.quantize_model(model)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert [l.name for l in model.layers][1:] == ["w", "bn", "act"]


def test_first_last_policy_and_explicit_override():
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8, name="first"), keras.layers.Dense(8, name="mid"), keras.layers.Dense(2, name="last")]
    )
    low = Linear(weight_bits=4, activation_bits=8)
    q = kerasq.quantize_model(model, low)
    bits = {l.name: l.weight_quantizer.bits for l in kerasq.quantized_layers(q)}
    assert bits == {"first": 8, "mid": 4, "last": 8}
    q = kerasq.quantize_model(model, low, first_last_int8=False)
    assert {l.weight_quantizer.bits for l in kerasq.quantized_layers(q)} == {4}
    q = kerasq.quantize_model(model, low, layer_schemes={"last": Linear(weight_bits=2)})
    assert {l.name: l.weight_quantizer.bits for l in kerasq.quantized_layers(q)}["last"] == 2
    with pytest.raises(ValueError, match="does not have"):
        kerasq.quantize_model(model, layer_schemes={"nope": None})


def test_relu6_and_relu1_get_fixed_ranges():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, activation="relu6", name="a")(inputs)
    x = keras.layers.Dense(4, name="b")(x)
    x = keras.layers.ReLU(max_value=1.0, name="relu1")(x)
    q = kerasq.quantize_model(keras.Model(inputs, x))
    assert q.get_layer("a").activation_params().scale == pytest.approx(6 / 255)
    assert q.get_layer("b").activation.max_value == 1.0
    assert q.get_layer("b").activation_params().scale == pytest.approx(1 / 255)


def test_batch_norm_that_is_not_per_channel_is_an_error():
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(4, 1, activation="relu", name="c")(inputs)
    x = keras.layers.BatchNormalization(axis=1, name="bn")(x)
    with pytest.raises(ValueError, match="'bn' .*only a per-channel"):
        kerasq.quantize_model(keras.Model(inputs, x))


def test_subclassed_model_is_an_error():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="Sequential or Functional"):
        kerasq.quantize_model(Net())


def test_import_does_not_print_tensorflow_noise():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import kerasq, tflite_export"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "" and done.stdout.strip() == ""
