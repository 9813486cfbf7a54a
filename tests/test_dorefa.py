"""DoReFa-Net: tanh-normalised k-bit weights, [0, 1] activations, stochastic k-bit gradients."""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from conftest import assert_config_round_trip, assert_exact_parity, reload_identical, export_with_exact_weights, accuracy, fit_qat

import kerasq
import tflite_export
from kerasq import keras, ops, tf
from kerasq.dorefa import (
    DoReFa,
    DoReFaActivationQuantizer,
    DoReFaWeightQuantizer,
    dorefa_activation,
    dorefa_weight_codes,
    dorefa_weights_numpy,
    quantize_gradient,
    quantize_k,
    quantize_k_numpy,
)
from kerasq.quantizers import MovingAverageQuantizer
from tflite_export.runtime import quantize_input

# Seed lecture weight matrix; rows are output channels (as a Dense kernel: W.T, [in=4, out=4]).
W = np.array(
    [[2.09, -0.98, 1.48, 0.09], [0.05, -0.14, -1.08, 2.12], [-0.91, 1.92, 0.0, -1.03], [1.87, 0.0, 1.53, 1.49]],
    np.float32,
)


def one_layer(scheme, activation=None, kernel=W.T) -> keras.Model:
    dense = keras.layers.Dense(4, activation=activation, use_bias=False, name="fc")
    model = keras.Sequential([keras.Input((4,)), dense])
    model.set_weights([kernel])
    return kerasq.quantize_model(model, layer_schemes={"fc": scheme})


# --- quantize_k ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "r, bits, expected, why",
    [
        (0.0, 2, 0.0, "0 is a level"),
        (1.0, 2, 1.0, "1 is a level"),
        (0.2, 2, 1 / 3, "0.6 steps round to 1"),
        (0.5, 2, 2 / 3, "1.5 steps: a tie, rounds half to even (2)"),
        (1 / 6, 2, 0.0, "0.5 steps: a tie, rounds half to even (0)"),
        (0.9, 2, 1.0, "2.7 steps round to 3"),
        (0.5, 4, 8 / 15, "7.5 steps: tie to even 8"),
        (0.3, 4, 4 / 15, "4.5 steps: tie to even 4"),
    ],
)
def test_quantize_k_golden(r, bits, expected, why):
    value = float(quantize_k(tf.constant([r], tf.float32), bits).numpy()[0])
    assert value == pytest.approx(expected, abs=1e-7), why
    assert float(quantize_k_numpy(np.array([r], np.float32), bits)[0]) == pytest.approx(expected, abs=1e-7), why


# --- weights: golden values from the seed lecture's W -------------------------------------------
def test_seed_matrix_two_bit_table():
    """The lecture's 2-bit DoReFa table: Q(w) = (2/3) q_w - 1 with q_w a 2-bit unsigned integer."""
    q = kerasq.quantized_weights(one_layer(DoReFa(weight_bits=2)))["fc"].T  # rows = output channels
    # max|tanh(W)| = tanh(2.12) = 0.9716; e.g. w = -0.98: tanh/(2·0.9716) + 1/2 = 0.112, 3·0.112 = 0.34
    # -> q_w = 0 -> Q = -1. Zeros sit exactly on the tie 1.5 and round to even q_w = 2 -> Q = 1/3.
    q_w = np.array([[3, 0, 3, 2], [2, 1, 0, 3], [0, 3, 2, 0], [3, 2, 3, 3]])
    np.testing.assert_allclose(q, 2 / 3 * q_w - 1, atol=1e-7)
    assert set(np.round(q.ravel() * 3).astype(int)) <= {-3, -1, 1, 3}  # {-1, -1/3, 1/3, 1}
    grid = one_layer(DoReFa(weight_bits=2)).get_layer("fc").weight_grid()
    np.testing.assert_array_equal(grid.codes.T, 2 * q_w - 3)  # odd codes, scale 1/3
    assert float(grid.scale.reshape(-1)[0]) == np.float32(1 / 3) and grid.bits == 3


def test_seed_matrix_four_bit_codes():
    grid = one_layer(DoReFa(weight_bits=4)).get_layer("fc").weight_grid()
    # 15·(tanh(W)/(2M) + 1/2) = [[14.99, 1.69, 14.46, 8.19], [7.89, 6.43, 1.38, 15], ...]; codes 2u - 15.
    expected = np.array([[15, -11, 13, 1], [1, -3, -13, 15], [-11, 15, 1, -11], [15, 1, 15, 13]])
    np.testing.assert_array_equal(grid.codes.T, expected)
    assert float(grid.scale.reshape(-1)[0]) == np.float32(1 / 15) and grid.bits == 5


def test_zero_has_no_level():
    codes, scale = dorefa_weight_codes(tf.constant([0.0, 0.2, -3.0, 3.0]), 2)
    np.testing.assert_array_equal(codes.numpy(), [1, 1, -3, 3])  # the docstring example
    codes, _ = dorefa_weight_codes(tf.zeros([3, 2]), 4)  # all zero: normalised by 1, no NaN
    np.testing.assert_array_equal(codes.numpy(), np.ones([3, 2]))


@pytest.mark.parametrize("bits", [2, 3, 4, 7])
@pytest.mark.parametrize(
    "shape, axes", [((3, 3, 4, 6), ()), ((3, 3, 4, 6), (-1,)), ((3, 3, 5, 2), (2, 3)), ((7, 5), (-1,))]
)
def test_integer_grid_is_the_forward_pass_exactly(bits, shape, axes):
    rng = np.random.default_rng(bits)
    w = (rng.normal(size=shape) * rng.uniform(0.1, 2.0)).astype(np.float32)
    quantizer = DoReFaWeightQuantizer(bits, axes)
    grid = quantizer.integer_grid(w, {})
    forward = quantizer(tf.constant(w), False, {}).numpy()
    np.testing.assert_array_equal(grid.dequantize(), forward)
    n = 2**bits - 1
    assert np.all(grid.codes % 2 == 1) and np.abs(grid.codes).max() == n
    assert len(np.unique(grid.codes)) <= 2**bits and grid.bits == bits + 1
    np.testing.assert_allclose(forward, dorefa_weights_numpy(w, bits, axes), atol=1e-6)
    if axes:  # per channel: every channel reaches ±1
        reduce = tuple(a for a in range(w.ndim) if a not in {x % w.ndim for x in axes})
        np.testing.assert_array_equal(np.abs(grid.codes).max(axis=reduce), n)


def test_weight_gradient_matches_tanh_oracle():
    rng = np.random.default_rng(3)
    w = tf.Variable(rng.normal(size=(3, 3, 4, 5)).astype(np.float32))
    upstream = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    for axes in ((), (-1,)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(DoReFaWeightQuantizer(3, axes)(w, True, {}) * upstream)
        grad = tape.gradient(loss, w).numpy()
        t = np.tanh(w.numpy().astype(np.float64))
        reduce = (0, 1, 2, 3) if not axes else (0, 1, 2)
        m = np.abs(t).max(axis=reduce, keepdims=True)
        # Straight-through rounding, max held constant: ∂Q/∂w = (1 - tanh²(w)) / max|tanh(w)|
        # (float32 loses digits of 1 - tanh² for saturated weights, hence atol).
        np.testing.assert_allclose(grad, upstream * (1 - t**2) / m, rtol=1e-5, atol=1e-6)


# --- export of the weights -----------------------------------------------------------------------
@pytest.mark.parametrize("bits, dtype, stored_peak", [(2, "int4", 6), (3, "int4", 7), (4, "int8", 120)])
def test_weight_storage(bits, dtype, stored_peak):
    """k + 1 signed bits: k <= 3 fits INT4, k = 4 (odd codes to ±15) is INT8 with 16 codes."""
    qmodel = one_layer(DoReFa(weight_bits=bits), activation="relu")
    kerasq.calibrate(qmodel, np.random.default_rng(0).uniform(-1, 1, (32, 4)).astype(np.float32))
    report = tflite_export.inspect(tflite_export.convert(qmodel))
    assert report.is_integer_only
    (info,) = report.weights
    assert info.tensor.dtype == dtype
    # Codes are widened by a power of two to fill the storage range: ±3 -> ±6, ±15 -> ±120.
    assert int(np.abs(info.codes).max()) == stored_peak
    assert info.tensor.distinct_values <= 2**bits and info.bits <= bits
    np.testing.assert_allclose(info.keras_kernel(), kerasq.quantized_weights(qmodel)["fc"], rtol=1e-6, atol=1e-7)


# --- activations ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "x, expected, why",
    [
        (-0.5, 0.0, "below 0 clips"),
        (0.0, 0.0, "zero"),
        (0.1, 0.0, "0.3 steps round down"),
        (1 / 6, 1 / 3, "0.5 steps: FakeQuant rounds the tie up"),
        (0.5, 2 / 3, "1.5 steps: tie rounds up"),
        (0.8, 2 / 3, "2.4 steps round down"),
        (1.0, 1.0, "one"),
        (3.0, 1.0, "above 1 clips"),
    ],
)
def test_activation_golden_two_bits(x, expected, why):
    y = float(dorefa_activation(tf.constant([x]), 2).numpy()[0])
    assert y == pytest.approx(expected, abs=1e-7), why


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_activation_is_fake_quant_on_unit_range(bits):
    rng = np.random.default_rng(bits)
    x = rng.uniform(-0.5, 1.5, 2000).astype(np.float32)
    y = DoReFaActivationQuantizer(bits)(tf.constant(x), False, {}).numpy()
    np.testing.assert_array_equal(y, ops.fake_quant_affine(x, 0.0, 1.0, bits).numpy())
    # Same values as quantize_k(clip(x, 0, 1)) except on exact ties (half up vs half to even).
    np.testing.assert_allclose(y, quantize_k_numpy(np.clip(x, 0, 1), bits), atol=1e-6)
    params = DoReFaActivationQuantizer(bits).affine_params({})
    assert params == ops.nudged_affine(0.0, 1.0, bits)
    assert (params.zero_point, params.code_max) == (-128, -128 + 2**bits - 1)
    np.testing.assert_array_equal(params.dequantize(np.round(y / np.float32(params.scale)) + params.zero_point), y)


def test_activation_gradient_is_straight_through_on_unit_range():
    x = tf.constant([-0.5, 0.0, 0.4, 1.0, 1.5])
    for quantizer in (DoReFaActivationQuantizer(4), DoReFaActivationQuantizer(4, gradient_bits=16)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = quantizer(x, True, {})
        # A constant upstream gradient is exact on any gradient grid (it is its own max).
        np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [0, 1, 1, 1, 0])


# --- gradient quantization -----------------------------------------------------------------------
def _activation_gradient(x, upstream, gradient_bits, seed=None):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = dorefa_activation(x, 4, gradient_bits, seed)
        loss = tf.reduce_sum(y * upstream)
    return tape.gradient(loss, x).numpy()


@pytest.mark.parametrize("bits", [2, 4])
def test_quantized_gradient_lies_on_the_grid(bits):
    rng = np.random.default_rng(bits)
    x = rng.uniform(0.05, 0.95, (8, 6, 5)).astype(np.float32)  # inside [0, 1]: STE passes everything
    g = rng.normal(size=x.shape).astype(np.float32)
    tf.random.set_seed(0)
    q = _activation_gradient(x, g, bits)
    n = 2**bits - 1
    m = np.abs(g).max(axis=(1, 2), keepdims=True)  # one scale per sample
    levels = q / m * n  # Q(g) = M (2u - n)/n: odd integers in [-n, n]
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    assert set(np.round(levels).astype(int).ravel()) <= set(range(-n, n + 1, 2))
    # Noise plus rounding move a value by less than one step 2M/n.
    assert np.all(np.abs(q - g) < 2 * m / n + 1e-6)
    # The largest |g| of each sample is a level itself: -M or +M.
    np.testing.assert_allclose(np.abs(q).max(axis=(1, 2)), m.ravel(), rtol=1e-6)


def test_quantized_gradient_is_unbiased():
    """E[Q(g)] = g: 4000 draws of the same sample (copies share one max) average to g."""
    g_row = np.array([1.0, 0.7, 0.2, -0.05, -0.55, -1.0, 0.0, 0.333], np.float32)
    g = np.tile(g_row, (4000, 1))
    x = np.full(g.shape, 0.5, np.float32)
    tf.random.set_seed(1)
    q = _activation_gradient(x, g, gradient_bits=2, seed=3)  # step 2/3: coarse, visibly random
    assert len(np.unique(q[:, 1])) == 2  # 0.7 lies between levels 1/3 and 1 and takes both
    # Per draw |error| < 2/3, so the mean of 4000 has standard error < 0.0053.
    np.testing.assert_allclose(q.mean(axis=0), g_row, atol=0.025)
    # Without the noise rounding would be biased: 0.7 -> always 1, 0.2 -> always 1/3.
    assert abs(q[:, 1].mean() - 1.0) > 0.2 and abs(q[:, 2].mean() - 1 / 3) > 0.1


def test_gradient_noise_is_seedable_and_zero_stays_zero():
    g = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
    g[2] = 0.0
    x = np.full(g.shape, 0.5, np.float32)
    tf.random.set_seed(5)
    first = _activation_gradient(x, g, 3, seed=7)
    tf.random.set_seed(5)
    second = _activation_gradient(x, g, 3, seed=7)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[2], 0.0)
    q = quantize_gradient(tf.constant(g), 3, seed=7).numpy()
    assert q.shape == g.shape and np.all(np.isfinite(q))


def test_gradient_bits_change_training_not_inference():
    x = np.random.default_rng(1).uniform(-1, 1, (64, 4)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 4, 64)
    models = []
    for gradient_bits in (None, 6):
        keras.utils.set_random_seed(0)
        qmodel = one_layer(DoReFa(gradient_bits=gradient_bits), activation="relu", kernel=np.eye(4, dtype=np.float32))
        models.append(qmodel)
    np.testing.assert_array_equal(models[0].predict(x, verbose=0), models[1].predict(x, verbose=0))
    kernels = []
    for qmodel in models:
        keras.utils.set_random_seed(0)
        qmodel.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        qmodel.fit(x, y, epochs=2, batch_size=16, verbose=0)
        kernels.append(qmodel.get_layer("fc").kernel.numpy())
        assert np.all(np.isfinite(kernels[-1]))
    assert not np.array_equal(kernels[0], kernels[1])  # quantized gradients took other steps


# --- scheme, validation, serialization ------------------------------------------------------------
def test_scheme_places_quantizers():
    scheme = kerasq.get_scheme("dorefa")
    assert scheme == DoReFa() and scheme.is_low_bit
    assert scheme.weight_quantizers(keras.layers.Dense(3))["kernel"] == DoReFaWeightQuantizer(4, ())
    per_channel = DoReFa(per_channel=True)
    assert per_channel.weight_quantizers(keras.layers.DepthwiseConv2D(3))["depthwise_kernel"] == DoReFaWeightQuantizer(4, (2, 3))
    relu6 = kerasq.ActivationSpec("relu", 6.0)
    assert DoReFa(3, 5, 8).activation_quantizer(None, relu6) == DoReFaActivationQuantizer(5, 8)
    assert scheme.activation_quantizer(None, kerasq.ActivationSpec("linear")) == MovingAverageQuantizer(4)
    assert "dorefa" in kerasq.available_schemes()


def test_validation_errors():
    cases = [
        (lambda: DoReFaWeightQuantizer(bits=1), "bits=1"),
        (lambda: DoReFaWeightQuantizer(bits=8), "bits=8"),
        (lambda: DoReFaActivationQuantizer(bits=9), "bits=9"),
        (lambda: DoReFaActivationQuantizer(gradient_bits=0), "gradient_bits=0"),
        (lambda: DoReFa(weight_bits=8), "bits=8"),
        (lambda: DoReFa(gradient_bits=17), "gradient_bits=17"),
    ]
    for make, fragment in cases:
        with pytest.raises(ValueError, match="Received:") as error:
            make()
        assert fragment in str(error.value)


def test_serialization_round_trip(tmp_path):
    objects = (
        DoReFaWeightQuantizer(3, (2, 3)),
        DoReFaActivationQuantizer(5, gradient_bits=6, seed=11),
        DoReFa(3, 5, gradient_bits=8, per_channel=True),
    )
    for obj in objects:
        assert_config_round_trip(obj)

    qmodel = one_layer(DoReFa(3, 5, gradient_bits=8, per_channel=True), activation="relu")
    x = np.random.default_rng(2).normal(size=(16, 4)).astype(np.float32)
    kerasq.calibrate(qmodel, x)
    restored = reload_identical(qmodel, x, str(tmp_path / "dorefa.keras"))
    layer = restored.get_layer("fc")
    assert layer.weight_quantizer == DoReFaWeightQuantizer(3, (-1,))
    assert layer.activation_quantizer == DoReFaActivationQuantizer(5, 8)


# --- end to end on digits ------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Warning. Enabling `experimental_preserve_all_tensors`:UserWarning")
def test_end_to_end_dorefa_w4a4_on_digits(trained_float_cnn, digits):
    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    qmodel = kerasq.quantize_model(trained_float_cnn, DoReFa(), calibration_data=x_train[:512])  # conv1, fc int8
    dorefa_layers = [
        layer.name
        for layer in kerasq.quantized_layers(qmodel)
        if isinstance(layer.weight_quantizer, DoReFaWeightQuantizer)
    ]
    assert dorefa_layers == ["dw2", "pw2"]
    # Weights lose their scale ([-1, 1]) and ReLUs become clip(x, 0, 1). Over four seeds, 3 epochs at
    # 3e-3 gave 0.86-0.91; 5 epochs at 1e-3 from calibrated ranges 0.90-0.94 (float 0.96).
    fit_qat(qmodel, digits, epochs=5, lr=1e-3)

    blob, report = export_with_exact_weights(qmodel)
    assert list(kerasq.quantized_weights(qmodel)) == ["conv1", "dw2", "pw2", "fc"]
    for info in report.weights[1:3]:  # dw2, pw2: odd codes ±1..±15 (x8 in storage), 16 values
        assert info.tensor.dtype == "int8" and info.bits <= 4
        assert set(np.unique(np.abs(info.codes))) <= set(range(8, 121, 16))

    # The [0, 1] activations on real inputs: scale 1/15, zero point -128, at most 16 codes; pw2 run in
    # Keras on LiteRT's own dw2 tensor matches LiteRT's pw2 within one step (measured: 99.87 % equal).
    interpreter = Interpreter(model_content=blob, experimental_preserve_all_tensors=True)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [len(x_test), 8, 8, 1])
    interpreter.allocate_tensors()
    scale, zero_point = detail["quantization"]
    interpreter.set_tensor(detail["index"], quantize_input(x_test, scale, zero_point, np.int8))
    interpreter.invoke()
    tensors = {d["name"]: d for d in interpreter.get_tensor_details()}
    values = {}
    for name in dorefa_layers:
        d = tensors[f"{name}/clamped"]  # after the exporter's MINIMUM clamp
        codes = interpreter.get_tensor(d["index"])
        assert d["quantization"] == (pytest.approx(1 / 15), -128)
        assert len(np.unique(codes)) <= 16 and codes.min() >= -128 and codes.max() <= -113
        values[name] = (codes.astype(np.float32) + 128) * np.float32(d["quantization"][0])
    keras_pw2 = qmodel.get_layer("pw2")(values["dw2"], training=False).numpy()
    step_diff = np.abs(values["pw2"] - keras_pw2) * 15
    assert step_diff.max() <= 1.0 + 1e-4 and np.mean(step_diff < 0.5) >= 0.99

    # The classifier's input (gap) is int8 under the first/last policy, so no 4-bit rounding
    # flip of the global average reaches the logits at full 4-bit magnitude.
    # Measured: 0 LSB, 100 % of the logits bit exact.
    assert_exact_parity(qmodel, blob, x_test)
    float_acc = accuracy(trained_float_cnn, x_test, y_test)
    qat_acc = accuracy(qmodel, x_test, y_test)
    tflite_acc = tflite_export.evaluate(blob, x_test, y_test)
    # Measured: float 0.9556, QAT and TFLite 0.9156.
    assert tflite_acc >= float_acc - 0.07
    assert abs(tflite_acc - qat_acc) <= 0.02
