"""Linear n-bit weights: known answers from the seed lecture's 4x4 matrix, through quantize_model."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SEED_W as W

import kerasq
from kerasq import keras, ops, tf
from kerasq.quantizers import LinearWeightQuantizer
from kerasq.schemes import Linear


def one_layer(scheme) -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, use_bias=False, name="fc")])
    model.set_weights([W.T])  # Dense kernel is [in, out]
    return kerasq.quantize_model(model, layer_schemes={"fc": scheme})


def test_two_bit_symmetric_per_tensor_error_is_2_28():
    q = kerasq.quantized_weights(one_layer(Linear(weight_bits=2, per_channel=False)))["fc"].T
    assert np.linalg.norm(W - q) == pytest.approx(2.28, abs=0.005)
    # Lecture's reconstructed values: S = 2.12, codes in {-1, 0, 1}.
    assert {round(float(v), 2) for v in np.unique(q)} <= {-2.12, 0.0, 2.12}


def test_two_bit_symmetric_per_channel_error_is_2_08():
    q = kerasq.quantized_weights(one_layer(Linear(weight_bits=2, per_channel=True)))["fc"].T
    assert np.linalg.norm(W - q) == pytest.approx(2.08, abs=0.005)
    # One scale per output channel = row max: 2.09, 2.12, 1.92, 1.87.
    np.testing.assert_allclose(np.abs(q).max(axis=1), [2.09, 2.12, 1.92, 1.87], rtol=1e-6)


def test_two_bit_asymmetric_scale_zero_point_and_codes():
    quantizer = LinearWeightQuantizer(2, symmetric=False, narrow_range=False, channel_axes=())
    grid = quantizer.integer_grid(W.T, {})
    scale = float(grid.scale.reshape(-1)[0])
    assert scale == pytest.approx(1.07, abs=0.005)  # (2.12 - (-1.08)) / (1 - (-2))
    # Export codes are q - Z with Z = -1; the lecture's q table (2-bit signed):
    q_lecture = np.array([[1, -2, 0, -1], [-1, -1, -2, 1], [-2, 1, -1, -2], [1, -1, 0, 0]])
    np.testing.assert_array_equal(grid.codes.T - 1, q_lecture)
    # Through quantize_model: Q(W) = S (q - Z), the lecture's reconstructed matrix.
    q = kerasq.quantized_weights(one_layer(Linear(weight_bits=2, symmetric=False, per_channel=False)))["fc"].T
    np.testing.assert_allclose(q, scale * (q_lecture + 1), rtol=1e-6)
    # First row; the lecture prints 2.14 = 2 x 1.07 from its rounded S, exactly it is 2 x 3.2/3.
    np.testing.assert_allclose(q[0], [2.1333, -1.0667, 1.0667, 0.0], atol=1e-4)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_codes_times_scale_is_the_forward_pass_exactly(bits):
    rng = np.random.default_rng(bits)
    w = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
    quantizer = LinearWeightQuantizer(bits)
    grid = quantizer.integer_grid(w, {})
    forward = quantizer(keras.backend.constant(w), False, {}).numpy()
    np.testing.assert_array_equal(grid.dequantize(), forward)
    qmin, qmax = ops.signed_range(bits, narrow_range=True)
    assert grid.codes.min() >= qmin and grid.codes.max() <= qmax
    # Every output channel reaches its extreme code (S = |w|_max / q_max per channel).
    np.testing.assert_array_equal(np.abs(grid.codes).max(axis=(0, 1, 2)), qmax)


def test_straight_through_gradient_is_identity():
    quantizer = LinearWeightQuantizer(4)
    w = tf.Variable(np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4))
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(quantizer(w, True, {}) * 3.0)
    # Identity everywhere: no clamp is active (S = |w|_max / q_max), the scale is a constant.
    np.testing.assert_allclose(tape.gradient(y, w).numpy(), 3.0)


@pytest.mark.parametrize(
    "min_value, max_value, bits, expected",
    [
        # (range, bits) -> (scale, int8 zero point, code_min, code_max); comments give the source.
        (0.0, 1.0, 8, (1 / 255, -128, -128, 127)),  # unsigned [0, 1]: zp at the bottom code
        (-1.0, 1.0, 8, (2 / 255, -1, -128, 127)),  # float32 1/S = 127.49999 -> 127 -> -1, as TF's FakeQuant
        (0.0, 6.0, 4, (6 / 15, -128, -128, -113)),  # PACT-style 4-bit grid in 16 int8 codes
        (0.5, 2.0, 8, (2 / 255, -128, -128, 127)),  # range widened to contain 0
        (-3.0, -1.0, 8, (3 / 255, 127, -128, 127)),  # all-negative range: zp at the top
    ],
)
def test_nudged_affine_golden(min_value, max_value, bits, expected):
    p = ops.nudged_affine(min_value, max_value, bits)
    assert p.scale == pytest.approx(expected[0], rel=1e-6)
    assert (p.zero_point, p.code_min, p.code_max) == expected[1:]


def test_nudged_affine_rejects_empty_range():
    with pytest.raises(ValueError, match="never observed"):
        ops.nudged_affine(0.0, 0.0)


def test_linear_scheme_validates_bits():
    with pytest.raises(ValueError, match="weight_bits"):
        Linear(weight_bits=1)
    assert Linear(4, 8) == Linear.from_config(Linear(4, 8).get_config())
    assert kerasq.get_scheme("int8") == Linear()
    with pytest.raises(ValueError, match="valid names"):
        kerasq.get_scheme("int7")
