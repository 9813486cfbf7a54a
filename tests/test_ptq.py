"""Post-training quantization: equalization, bias correction, AdaRound, calibration methods, export parity."""

from __future__ import annotations

import numpy as np
import pytest

import kerasq
import kerasq.ptq
import tflite_export
from kerasq.compat import keras, tf
from kerasq.ptq.bias_correction import expected_activation
from kerasq.ptq.equalization import _input_ranges, _output_ranges
from kerasq.schemes import Linear
from tflite_export.runtime import run as run_tflite

from conftest import dense_model, export_with_exact_weights, reload_identical


def _mobile_block(activation: str = "relu", seed: int = 0, input_shape=(12, 12, 3)) -> keras.Model:
    """Conv+BN+act → depthwise+BN+act → pointwise+BN+act → GAP → Dense, with uneven channel ranges."""
    keras.utils.set_random_seed(seed)
    act = (lambda name: keras.layers.ReLU(6.0, name=name)) if activation == "relu6" else (lambda name: keras.layers.ReLU(name=name))
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = act("relu1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = act("relu2")(x)
    x = keras.layers.Conv2D(16, 1, use_bias=False, name="pw2")(x)
    x = keras.layers.BatchNormalization(name="bn3")(x)
    x = act("relu3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(5, name="fc")(x)
    model = keras.Model(inputs, outputs, name="mobile_block")
    rng = np.random.default_rng(seed)
    for bn, following in (("bn1", "dw2"), ("bn2", "pw2")):
        layer = model.get_layer(bn)
        c = layer.gamma.shape[0]
        # Channel gains over three decades, undone by the next layer's input weights (as in trained
        # MobileNets): every channel matters, and a per-tensor weight grid loses the small ones.
        gain = np.exp(rng.uniform(-4.0, 3.0, c)).astype(np.float32)
        layer.set_weights([gain, gain * rng.uniform(-0.5, 1.5, c).astype(np.float32), np.zeros(c, np.float32), np.ones(c, np.float32)])
        kernel = model.get_layer(following).get_weights()[0]
        model.get_layer(following).set_weights([kernel / gain.reshape(1, 1, c, 1)])
    bn3 = model.get_layer("bn3")
    bn3.set_weights([rng.uniform(0.5, 1.5, 16).astype(np.float32), rng.uniform(-0.5, 1.0, 16).astype(np.float32),
                     np.zeros(16, np.float32), np.ones(16, np.float32)])
    return model


def _data(n=96, shape=(12, 12, 3), seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)


def _relative_difference(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# --- cross-layer equalization ---------------------------------------------------------------------


def test_equalize_keeps_float_outputs_and_evens_ranges():
    model = _mobile_block("relu")
    x = _data()
    equalized = kerasq.ptq.equalize(model, x)
    assert _relative_difference(equalized.predict(x, verbose=0), model.predict(x, verbose=0)) < 1e-4
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in equalized.layers)
    # Each equalized pair ends with equal ranges on its shared channels (the last pair of the sweep exactly).
    pw, fc = equalized.get_layer("pw2"), equalized.get_layer("fc")
    np.testing.assert_allclose(_output_ranges(pw, pw.get_weights()[0]), _input_ranges(fc, fc.get_weights()[0]), rtol=1e-4)


def test_one_pair_ranges_become_the_geometric_mean():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(4, activation="relu", name="first")(inputs)
    outputs = keras.layers.Dense(3, name="second")(h)
    model = keras.Model(inputs, outputs)
    w1, b1 = model.get_layer("first").get_weights()
    model.get_layer("first").set_weights([w1 * np.array([10.0, 0.1, 1.0, 3.0], np.float32), b1])
    w1, w2 = model.get_layer("first").get_weights()[0], model.get_layer("second").get_weights()[0]
    r1, r2 = np.abs(w1).max(axis=0), np.abs(w2).max(axis=1)
    equalized = kerasq.ptq.equalize(model, high_bias_absorption=False)
    e1, e2 = equalized.get_layer("first").get_weights()[0], equalized.get_layer("second").get_weights()[0]
    np.testing.assert_allclose(np.abs(e1).max(axis=0), np.sqrt(r1 * r2), rtol=1e-5)
    np.testing.assert_allclose(np.abs(e2).max(axis=1), np.sqrt(r1 * r2), rtol=1e-5)
    x = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    assert _relative_difference(equalized.predict(x, verbose=0), model.predict(x, verbose=0)) < 1e-5


def test_relu6_becomes_relu_between_equalized_layers():
    x = _data()
    equalized = kerasq.ptq.equalize(_mobile_block("relu6"), x)
    reference = _mobile_block("relu")  # same seed, same weights, ReLU instead of ReLU6
    caps = [layer.max_value for layer in equalized.layers if isinstance(layer, keras.layers.ReLU)]
    assert caps and all(cap is None for cap in caps)
    assert _relative_difference(equalized.predict(x, verbose=0), reference.predict(x, verbose=0)) < 1e-4


def test_high_bias_absorption_moves_bias_into_next_layer():
    model = _mobile_block("relu")
    x = _data()
    plain = kerasq.ptq.equalize(model, high_bias_absorption=False)
    absorbed = kerasq.ptq.equalize(model, x)
    # pw2 → fc passes a shift through GAP exactly: pw2's bias drops, fc's changes, outputs equal.
    assert np.sum(absorbed.get_layer("pw2").get_weights()[1]) < np.sum(plain.get_layer("pw2").get_weights()[1])
    assert _relative_difference(absorbed.predict(x, verbose=0), plain.predict(x, verbose=0)) < 1e-4


def test_per_tensor_ptq_with_equalization_tracks_float_closer():
    model = _mobile_block("relu")
    x, x_test = _data(128), _data(64, seed=7)
    reference = model.predict(x_test, verbose=0)
    per_tensor = Linear(per_channel=False)
    plain = kerasq.ptq.quantize(model, x, scheme=per_tensor, verbose=0)
    equalized = kerasq.ptq.quantize(model, x, scheme=per_tensor, equalize=True, verbose=0)
    error = lambda q: float(np.mean((q.predict(x_test, verbose=0) - reference) ** 2))  # noqa: E731
    assert error(equalized) < 0.5 * error(plain)


# --- bias correction --------------------------------------------------------------------------------


def test_expected_activation_matches_monte_carlo():
    rng = np.random.default_rng(0)
    mean, std = np.array([-1.0, 0.5, 3.0, 7.0]), np.array([1.0, 2.0, 0.5, 2.0])
    samples = rng.normal(mean, std, (400_000, 4))
    np.testing.assert_allclose(expected_activation(mean, std, "relu"), np.maximum(samples, 0).mean(0), atol=0.01)
    np.testing.assert_allclose(expected_activation(mean, std, "relu", 6.0), np.clip(samples, 0, 6).mean(0), atol=0.01)
    np.testing.assert_allclose(expected_activation(mean, std, "linear"), mean)


def _biased_head(seed=0):
    """Dense → BN → ReLU → Dense whose weights sit 0.4 steps above a 4-bit grid point: rounding is biased."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,), name="features")
    h = keras.layers.Dense(8, use_bias=False, name="mix")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    outputs = keras.layers.Dense(4, name="head")(h)
    model = keras.Model(inputs, outputs)
    model.get_layer("mix").set_weights([np.eye(8, dtype=np.float32)])
    rng = np.random.default_rng(seed)
    model.get_layer("bn").set_weights([
        rng.uniform(0.5, 1.5, 8).astype(np.float32), rng.uniform(0.5, 2.0, 8).astype(np.float32),
        np.zeros(8, np.float32), np.ones(8, np.float32) - 1e-3,
    ])
    step = 1.0 / 7.0  # 4-bit symmetric grid of max|w| = 1
    codes = rng.integers(-6, 6, (8, 4)).astype(np.float32)
    kernel = (codes + 0.4) * step
    kernel[0, :] = 1.0  # pins max|w| per channel so the grid step is exactly 1/7
    model.get_layer("head").set_weights([kernel, np.zeros(4, np.float32)])
    return model


@pytest.mark.parametrize("method", ["empirical", "analytical"])
def test_bias_correction_removes_the_mean_output_shift(method):
    model = _biased_head()
    x = np.random.default_rng(2).normal(size=(2048, 8)).astype(np.float32)  # BN output is then N(β, γ²)
    scheme = Linear(weight_bits=4, per_channel=True)
    reference = model.predict(x, verbose=0)
    shift = lambda q: np.mean(q.predict(x, verbose=0) - reference, axis=0)  # noqa: E731
    plain = kerasq.ptq.quantize(model, x, scheme=scheme, first_last_int8=False, verbose=0)
    corrected = kerasq.ptq.quantize(model, x, scheme=scheme, first_last_int8=False, bias_correction=method, verbose=0)
    before, after = np.abs(shift(plain)), np.abs(shift(corrected))
    assert np.all(before > 0.1)
    assert np.max(after) < 0.1 * np.max(before)


# --- AdaRound ---------------------------------------------------------------------------------------


def test_adaround_lowers_reconstruction_error_at_4_bits():
    model = _mobile_block("relu")
    x = _data(128)
    qmodel = kerasq.ptq.quantize(model, x, scheme=Linear(weight_bits=4, per_channel=False), first_last_int8=False,
                                 adaround=True, adaround_iterations=300, verbose=0)
    layers = [layer for layer in kerasq.quantized_layers(qmodel) if layer.weight_quantizer]
    results = kerasq.ptq.adaround(qmodel, x, iterations=300, verbose=0)
    assert set(results) == {"conv1", "dw2", "pw2", "fc"}
    improvements = [r.learned / r.nearest for r in results.values()]
    assert all(r.learned <= r.nearest or not r.kept for r in results.values())
    assert np.median(improvements) < 0.9, improvements
    # Rounding stays within one step of nearest: codes are floor or ceil of w/S.
    for layer in layers:
        grid = layer.weight_grid()
        ratio = layer.kernel.numpy() / grid.scale
        assert np.all((grid.codes == np.floor(ratio)) | (grid.codes == np.ceil(ratio)) | (np.abs(grid.codes) == 7))


def test_w2a8_adaround_exports_exactly():
    model = _mobile_block("relu")
    x, x_test = _data(64), _data(32, seed=9)
    qmodel = kerasq.ptq.quantize(model, x, scheme=Linear(weight_bits=2, per_channel=False), weight_method="mse",
                                 adaround=True, adaround_iterations=100, verbose=0)
    blob, report = export_with_exact_weights(qmodel)
    scale = qmodel.get_layer("fc").activation_params().scale
    assert np.max(np.abs(run_tflite(blob, x_test) - qmodel.predict(x_test, verbose=0))) / scale <= 1 + 1e-3
    codes = qmodel.get_layer("dw2").weight_grid().codes
    assert set(np.unique(codes)) <= {-1, 0, 1}  # 2-bit narrow range


def test_adaround_needs_learned_rounding_weights():
    qmodel = kerasq.ptq.quantize(_mobile_block(), _data(32), verbose=0)
    with pytest.raises(ValueError, match="learned-rounding"):
        kerasq.ptq.adaround(qmodel, _data(32), iterations=2, verbose=0)


# --- weights ------------------------------------------------------------------------------------------


def test_mse_weight_clipping_lowers_weight_error_at_4_bits():
    # Laplace-distributed weights (as trained ones are): clipping the outliers buys finer steps.
    kernel = np.random.default_rng(4).laplace(0, 0.05, (1024, 8)).astype(np.float32)
    model = dense_model(kernel)
    x = np.random.default_rng(5).normal(size=(32, 1024)).astype(np.float32)
    errors = {}
    for weight_method in ("minmax", "mse"):
        qmodel = kerasq.ptq.quantize(model, x, scheme=Linear(weight_bits=4), first_last_int8=False, weight_method=weight_method, verbose=0)
        layer = qmodel.get_layer("fc")
        errors[weight_method] = np.sum((layer.quantized_kernel() - kernel) ** 2, axis=0)
    assert np.all(errors["mse"] <= errors["minmax"] * (1 + 1e-6))
    assert np.sum(errors["mse"]) < 0.8 * np.sum(errors["minmax"]), errors


# --- calibration methods and export -------------------------------------------------------------------


@pytest.mark.parametrize("method", kerasq.ptq.METHODS)
@pytest.mark.parametrize("scheme", ["int8", Linear(weight_bits=4, per_channel=False)], ids=["w8a8", "w4a8_per_tensor"])
def test_ptq_exports_integer_only_and_matches_keras(method, scheme):
    model = _mobile_block("relu6")
    x, x_test = _data(96), _data(64, seed=5)
    qmodel = kerasq.ptq.quantize(model, x, scheme=scheme, method=method, verbose=0)
    blob, _ = export_with_exact_weights(qmodel)
    scale = qmodel.get_layer("fc").activation_params().scale
    lsb = np.abs(run_tflite(blob, x_test) - qmodel.predict(x_test, verbose=0)) / scale
    assert np.max(lsb) <= 1 + 1e-3


def test_clipping_methods_choose_narrower_ranges_than_minmax():
    model = _mobile_block("relu")
    x = _data(128)
    ranges = {}
    for method in ("minmax", "percentile", "mse", "kl", "aciq"):
        qmodel = kerasq.ptq.quantize(model, x, method=method, verbose=0)
        params = qmodel.get_layer("pw2").activation_params()
        ranges[method] = params.scale * 255
    for method in ("percentile", "mse", "kl", "aciq"):
        assert ranges[method] <= ranges["minmax"] * (1 + 1e-6), ranges


def test_relu6_outputs_are_calibrated_inside_the_cap():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu6", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    qat_grid = kerasq.quantize_model(model, calibration_data=x).get_layer("hidden").activation_params()
    ptq_grid = kerasq.ptq.quantize(model, x, verbose=0).get_layer("hidden").activation_params()
    assert qat_grid.scale == pytest.approx(6.0 / 255)  # quantization-aware training keeps [0, 6]
    observed = float(np.max(keras.Model(inputs, hidden).predict(x, verbose=0)))
    assert 0.5 < observed < 6.0
    assert ptq_grid.scale == pytest.approx(observed / 255, rel=1e-5) and ptq_grid.zero_point == -128


def test_layer_methods_override_one_layer():
    model = _mobile_block("relu")
    x = _data(64)
    base = kerasq.ptq.quantize(model, x, method="minmax", verbose=0)
    mixed = kerasq.ptq.quantize(model, x, method="minmax", layer_methods={"pw2": kerasq.observers.PercentileObserver(99.0)}, verbose=0)
    assert mixed.get_layer("conv1").activation_params() == base.get_layer("conv1").activation_params()
    assert mixed.get_layer("pw2").activation_params().scale < base.get_layer("pw2").activation_params().scale


def test_dataset_and_callable_calibration_equal_array_calibration():
    model = _mobile_block("relu")
    x = _data(96)
    from_array = kerasq.ptq.quantize(model, x, method="kl", verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x)))).batch(32)
    from_dataset = kerasq.ptq.quantize(model, dataset, method="kl", batch_size=32, verbose=0)
    from_callable = kerasq.ptq.quantize(model, lambda: (x[i : i + 32] for i in range(0, 96, 32)), method="kl", verbose=0)
    for other in (from_dataset, from_callable):
        for name in ("image_quantize", "conv1", "pw2", "fc"):
            assert other.get_layer(name).activation_params() == from_array.get_layer(name).activation_params()


def test_ptq_model_saves_and_loads(tmp_path):
    model = _mobile_block("relu")
    x = _data(64)
    qmodel = kerasq.ptq.quantize(model, x, scheme=Linear(weight_bits=4), weight_method="mse", adaround=True,
                                 adaround_iterations=20, first_last_int8=False, verbose=0)
    loaded = reload_identical(qmodel, x, tmp_path / "ptq.keras")
    assert tflite_export.convert(loaded) == tflite_export.convert(qmodel)


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((0, 12, 12, 3), np.float32), "empty"),
        (np.full((4, 12, 12, 3), np.nan, np.float32), "NaN or infinite"),
        (np.full((4, 12, 12, 3), np.inf, np.float32), "NaN or infinite"),
        (np.zeros((4, 10, 10, 3), np.float32), "sample shape"),
        (tf.data.Dataset.from_tensor_slices(np.zeros((0, 12, 12, 3), np.float32)).batch(4), "empty"),
        ((b for b in [np.zeros((4, 12, 12, 3), np.float32)]), "reads the data twice"),
    ],
    ids=["empty", "nan", "inf", "shape", "empty_dataset", "generator_for_kl"],
)
def test_bad_calibration_data_gets_one_clear_error(data, message):
    with pytest.raises(ValueError, match=message):
        kerasq.ptq.quantize(_mobile_block(), data, method="kl", verbose=0)


def test_bad_options_are_named():
    model, x = _mobile_block(), _data(8)
    with pytest.raises(ValueError, match="method must be one of"):
        kerasq.ptq.quantize(model, x, method="entropy", verbose=0)
    with pytest.raises(ValueError, match="bias_correction"):
        kerasq.ptq.quantize(model, x, bias_correction="yes", verbose=0)
    with pytest.raises(ValueError, match="symmetric linear weights"):
        kerasq.ptq.quantize(model, x, scheme="pact", adaround=True, verbose=0)
    with pytest.raises(ValueError, match="layers without observed ranges"):
        kerasq.ptq.quantize(model, x, layer_methods={"nope": "kl"}, verbose=0)
    with pytest.raises(ValueError, match="read the calibration data again"):
        kerasq.ptq.quantize(model, iter([x]), equalize=True, verbose=0)
    with pytest.raises(ValueError, match="already quantized"):
        kerasq.ptq.quantize(kerasq.quantize_model(model), x, verbose=0)
