"""Power-of-two weights and INQ (Zhou et al., ICLR 2017): rounding, masks, gradients, export."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_config_round_trip, dense_model, assert_exact_parity, reload_identical, export_with_exact_weights, SEED_W as W, accuracy

import kerasq
import tflite_export
from kerasq import keras, tf
from kerasq.callbacks import INQ
from kerasq.power_of_two import (
    PowerOfTwo,
    PowerOfTwoQuantizer,
    inq_partition,
    power_of_two_codes,
    power_of_two_codes_numpy,
    round_log2,
)

# Seed lecture's INQ example (section "Incremental Network Quantization").
W5 = np.array(
    [
        [0.01, 0.02, -0.20, 0.04, 0.33],
        [0.17, -0.42, -0.33, 0.02, -0.05],
        [0.02, 0.83, -0.03, 0.03, 0.06],
        [-0.90, 0.07, 0.11, 0.87, -0.36],
        [-0.73, 0.41, 0.42, 0.39, 0.47],
    ],
    np.float32,
)
# The lecture's "50% quantized" slide: the larger half is on powers of two, NaN = still float.
NAN = np.nan
W5_LECTURE_50 = np.array(
    [
        [NAN, NAN, NAN, NAN, 2**-2],
        [NAN, -(2**-1), -(2**-2), NAN, NAN],
        [NAN, 2**0, NAN, NAN, NAN],
        [-(2**0), NAN, NAN, 2**0, -(2**-2)],
        [-(2**-1), 2**-1, 2**-1, 2**-1, 2**-1],
    ]
)


def nearest_level_oracle(w: np.ndarray, bits: int, peak: float) -> np.ndarray:
    """Brute force in float64: nearest of {0, ±2^e_min..±2^e_max}, ties to the larger magnitude."""
    n = 2 ** (bits - 1) - 1
    e_max = math.floor(math.log2(4.0 * peak / 3.0))
    levels = np.array([0.0] + [2.0**e for e in range(e_max - n + 1, e_max + 1)])
    midpoints = (levels[:-1] + levels[1:]) / 2.0
    magnitude = np.abs(w.astype(np.float64))
    index = np.sum(magnitude[..., None] >= midpoints, axis=-1)
    return (np.sign(w) * levels[index]).astype(np.float32)


# (w, expected Q(w), why) with max|w| = 1: e_max = 0, levels 2^-6 .. 2^0, zero below 2^-7.
GOLDEN_4BIT = [
    (1.0, 1.0, "largest weight, exact power: top of the window"),
    (0.5, 0.5, "exact power stays"),
    (0.75, 1.0, "3/2 boundary (0.75 = 1.5 * 2^-1) rounds up"),
    (float(np.nextafter(np.float32(0.75), np.float32(0))), 0.5, "one ulp below the boundary rounds down"),
    (0.375, 0.5, "boundary 1.5 * 2^-2 rounds up"),
    (0.37, 0.25, "just below it rounds down"),
    (-0.75, -1.0, "negative: sign kept, same boundary"),
    (-0.3, -0.25, "negative, inside [0.1875, 0.375)"),
    (0.0, 0.0, "zero stays zero"),
    (2.0**-6, 2.0**-6, "smallest level 2^e_min, e_min = e_max - 6"),
    (0.011, 2.0**-6, "nearest power 2^-7 is outside the window; 0.011 >= 2^-7 goes to 2^-6"),
    (2.0**-7, 2.0**-6, "INQ's (0 + 2^-6)/2 boundary rounds up"),
    (0.0078, 0.0, "below 2^-7: zero"),
    (0.004, 0.0, "nearest power 2^-8 is outside the window: zero"),
    (-1e-30, 0.0, "tiny negative: zero"),
]


def test_golden_table_against_oracle_and_numpy_mirror():
    w = np.array([case[0] for case in GOLDEN_4BIT], np.float32)
    expected = np.array([case[1] for case in GOLDEN_4BIT], np.float32)
    codes, scale = power_of_two_codes(w, bits=4)
    assert scale.numpy().item() == 2.0**-6
    for (value, want, why), got in zip(GOLDEN_4BIT, (codes * scale).numpy()):
        assert got == np.float32(want), f"{value}: {why}"
    np.testing.assert_array_equal(nearest_level_oracle(w, 4, 1.0), expected)
    np_codes, np_scale = power_of_two_codes_numpy(w, bits=4)
    np.testing.assert_array_equal(np_codes, codes.numpy().astype(np.int32))
    np.testing.assert_array_equal(np_codes, [64, 32, 64, 32, 32, 16, -64, -16, 0, 1, 1, 1, 0, 0, 0])
    assert np_scale.item() == 2.0**-6


def test_round_log2_is_inq_exponent():
    # floor(log2(4x/3)): the exponent INQ's 3/2 boundaries select.
    x = np.array([1.0, 1.49, 1.5, 0.75, 0.74, 2.12, 0.9, 3.0, 2.0**-20], np.float32)
    np.testing.assert_array_equal(round_log2(x).numpy(), [0, 0, 1, 0, -1, 1, 0, 2, -20])


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("per_channel", [False, True])
def test_random_kernels_match_oracle(bits, per_channel):
    rng = np.random.default_rng(bits)
    w = (rng.standard_normal((5, 6)) * np.array([1.0, 0.1, 3.0, 0.02, 1.0, 0.5])).astype(np.float32)
    axes = (-1,) if per_channel else ()
    codes, scale = power_of_two_codes(w, bits, axes)
    got = (codes * scale).numpy()
    if per_channel:
        expected = np.stack([nearest_level_oracle(w[:, c], bits, np.abs(w[:, c]).max()) for c in range(6)], -1)
    else:
        expected = nearest_level_oracle(w, bits, np.abs(w).max())
    np.testing.assert_array_equal(got, expected)
    np_codes, np_scale = power_of_two_codes_numpy(w, bits, axes)
    np.testing.assert_array_equal(np_codes.astype(np.float32) * np_scale, got)
    assert np.abs(codes.numpy()).max() == 2 ** (2 ** (bits - 1) - 2)  # the top level ±2^(n-1)


def test_per_channel_windows_and_zero_channel():
    w = np.array([[1.0, 0.1, 0.0], [0.005, 0.005, 0.0]], np.float32)
    per_tensor, _ = power_of_two_codes(w, 4)
    codes, scale = power_of_two_codes(w, 4, (-1,))
    # Per tensor 0.005 is below 2^-7 (zero); channel 1 (max 0.1, e_max = -3) keeps it as 2^-8.
    assert (per_tensor.numpy()[1] == 0).all()
    np.testing.assert_array_equal((codes * scale).numpy(), [[1.0, 0.125, 0.0], [0.0, 2.0**-8, 0.0]])
    np.testing.assert_array_equal(scale.numpy(), [[2.0**-6, 2.0**-9, 1.0]])  # zero channel: scale 1


def test_seed_matrix_through_quantize_model():
    qmodel = kerasq.quantize_model(dense_model(W.T), "int8", layer_schemes={"fc": PowerOfTwo(bits=4)})
    # max|W| = 2.12 -> e_max = 1 (1.5 <= 2.12 < 3): levels 2^-5 .. 2^1, zero below 2^-6.
    expected = np.array(
        [
            [2.0, -1.0, 1.0, 0.0625],  # 1.48 < 1.5 -> 1; 0.09 in [0.046875, 0.09375) -> 2^-4
            [0.0625, -0.125, -1.0, 2.0],  # 0.05 >= 0.75*2^-4 -> 2^-4; 0.14 -> 2^-3
            [-1.0, 2.0, 0.0, -1.0],  # 1.92 >= 1.5 -> 2; zero stays zero
            [2.0, 0.0, 2.0, 1.0],  # 1.53 -> 2 but 1.49 -> 1: the 3/2 boundary
        ],
        np.float32,
    )
    np.testing.assert_array_equal(kerasq.quantized_weights(qmodel)["fc"].T, expected)
    grid = qmodel.get_layer("fc").weight_grid()
    assert grid.bits == 8  # codes up to ±64 need INT8 storage
    assert grid.scale.item() == 2.0**-5
    codes = [[64, -32, 32, 2], [2, -4, -32, 64], [-32, 64, 0, -32], [64, 0, 64, 32]]
    np.testing.assert_array_equal(grid.codes.T, codes)


@pytest.mark.parametrize("bits, storage", [(2, 4), (3, 4), (4, 8)])
def test_integer_grid_is_forward_exactly(bits, storage):
    rng = np.random.default_rng(0)
    for shape, axes in (((3, 3, 4, 8), (-1,)), ((3, 3, 4, 2), (2, 3)), ((7, 5), ())):
        w = tf.constant(rng.standard_normal(shape).astype(np.float32) * 0.3)
        quantizer = PowerOfTwoQuantizer(bits, axes)
        weights = {"mask": tf.Variable(tf.ones(shape)), "freeze": tf.Variable(0.0)}
        grid = quantizer.integer_grid(w, weights)
        assert grid.bits == storage
        assert np.abs(grid.codes).max() <= (7 if storage == 4 else 127)
        assert np.unique(grid.codes).size <= 2 ** bits - 1
        np.testing.assert_array_equal(grid.dequantize(), quantizer(w, False, weights).numpy())


def test_three_bit_grid_exports_as_int4():
    # 3 bits: exponents e_max-2..e_max, codes ±4, ±2, ±1 fit INT4 (two codes a byte).
    qmodel = kerasq.quantize_model(dense_model(W.T), "int8", layer_schemes={"fc": PowerOfTwo(bits=3)})
    kerasq.calibrate(qmodel, np.random.default_rng(5).standard_normal((32, 4)).astype(np.float32))
    info = tflite_export.inspect(tflite_export.convert(qmodel)).weights[0]
    assert info.tensor.dtype == "int4" and info.tensor.packed
    # 2.12 -> e_max = 1: levels 0.5, 1, 2; 0.09 and 0.05 are below 0.25 -> 0, 0.14 -> 0 too.
    expected = np.array([[2, -1, 1, 0], [0, 0, -1, 2], [-1, 2, 0, -1], [2, 0, 2, 1]], np.float32)
    np.testing.assert_array_equal(info.keras_kernel().T, expected)
    np.testing.assert_array_equal(kerasq.quantized_weights(qmodel)["fc"].T, expected)


@pytest.mark.parametrize(
    "mask_fraction, freeze",
    [(1.0, 0.0), (0.5, 1.0), (0.5, 0.0), (1.0, 1.0)],
    ids=["plain-ste", "inq-partial", "partial-unfrozen", "inq-done"],
)
def test_gradient_against_numpy_oracle(mask_fraction, freeze):
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((6, 4)).astype(np.float32)
    upstream = rng.standard_normal((6, 4)).astype(np.float32)
    mask = inq_partition(w0, np.zeros_like(w0), mask_fraction)
    weights = {"mask": tf.Variable(mask), "freeze": tf.Variable(freeze)}
    w = tf.Variable(w0)
    with tf.GradientTape() as tape:
        q = PowerOfTwoQuantizer(4)(w, True, weights)
        loss = tf.reduce_sum(q * upstream)
    grad = tape.gradient(loss, w).numpy()
    # Float weights: identity. Quantized: STE (identity) unless frozen by INQ (zero).
    oracle = np.where(mask > 0.5, upstream * (1.0 - freeze), upstream)
    np.testing.assert_array_equal(grad, oracle)
    quantized = nearest_level_oracle(w0, 4, np.abs(w0).max())
    np.testing.assert_array_equal(q.numpy(), np.where(mask > 0.5, quantized, w0))


def _inq_on(model: keras.Model, callback: INQ) -> INQ:
    callback.set_model(model)
    callback.on_train_begin()
    return callback


def test_lecture_inq_example_first_step():
    qmodel = kerasq.quantize_model(dense_model(W5.T), "int8", layer_schemes={"fc": PowerOfTwo(bits=4)})
    inq = _inq_on(qmodel, INQ())
    np.testing.assert_array_equal(kerasq.quantized_weights(qmodel)["fc"].T, W5)  # mask 0: all float
    inq.on_epoch_begin(0)
    layer = qmodel.get_layer("fc")
    mask = layer.weight_quantizer_variables["mask"].numpy().T
    np.testing.assert_array_equal(mask, ~np.isnan(W5_LECTURE_50))  # the 12 of 25 largest |w|
    got = kerasq.quantized_weights(qmodel)["fc"].T
    quantized = ~np.isnan(W5_LECTURE_50)
    np.testing.assert_array_equal(got[quantized], W5_LECTURE_50[quantized].astype(np.float32))
    np.testing.assert_array_equal(got[~quantized], W5[~quantized])  # the rest retrains in float
    # Later steps: 75%, 87.5%, 100% of 25 weights, rounded down.
    fractions = []
    for epoch in (1, 2, 3):
        inq.on_epoch_end(epoch - 1)
        inq.on_epoch_begin(epoch)
        fractions.append(inq.quantized_fractions["fc"])
    assert fractions == [18 / 25, 21 / 25, 1.0]


def test_inq_during_fit_freezes_and_finishes():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((256, 5)).astype(np.float32)
    y = x @ rng.standard_normal((5, 5)).astype(np.float32)
    qmodel = kerasq.quantize_model(dense_model(W5.T), "int8", layer_schemes={"fc": PowerOfTwo(bits=4)})
    layer = qmodel.get_layer("fc")
    records = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            mask = layer.weight_quantizer_variables["mask"].numpy()
            records.append([mask, layer.kernel.numpy(), kerasq.quantized_weights(qmodel)["fc"]])

        def on_epoch_end(self, epoch, logs=None):
            records[-1] += [layer.kernel.numpy(), kerasq.quantized_weights(qmodel)["fc"]]

    qmodel.compile(keras.optimizers.Adam(1e-2), "mse")
    qmodel.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[INQ(), Probe()])
    assert [int(r[0].sum()) for r in records] == [12, 18, 21, 25]
    for mask, w_begin, q_begin, w_end, q_end in records:
        frozen = mask > 0.5
        np.testing.assert_array_equal(w_end[frozen], w_begin[frozen])  # Adam's momentum is undone
        np.testing.assert_array_equal(q_end[frozen], q_begin[frozen])
        if not frozen.all():
            assert not np.array_equal(w_end[~frozen], w_begin[~frozen])  # the rest did train
            assert np.abs(w_end).max() <= np.abs(W5).max()  # the exponent window stays fixed
    np.testing.assert_array_equal(layer.weight_quantizer_variables["mask"].numpy(), np.ones((5, 5)))
    expected = nearest_level_oracle(layer.kernel.numpy(), 4, 0.9)
    np.testing.assert_array_equal(kerasq.quantized_weights(qmodel)["fc"], expected)


@pytest.mark.parametrize(
    "schedule, epochs_per_step, epochs, seen",
    [
        ((0.5, 1.0), 1, 4, [12, 25, 25, 25]),  # schedule shorter: training continues with the last mask
        ((0.5, 0.75, 0.875, 1.0), 1, 2, [12, 18]),  # longer: steps 3-4 skipped, all quantized at the end
        ((0.5, 1.0), 2, 4, [12, 12, 25, 25]),  # two epochs per step
    ],
)
def test_schedule_shorter_or_longer_than_training(schedule, epochs_per_step, epochs, seen):
    qmodel = kerasq.quantize_model(dense_model(W5.T), "int8", layer_schemes={"fc": PowerOfTwo(bits=4)})
    counts = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: counts.append(int(qmodel.get_layer("fc").weight_quantizer_variables["mask"].numpy().sum()))
    )
    qmodel.compile(keras.optimizers.SGD(1e-2), "mse")
    x = np.random.default_rng(3).standard_normal((64, 5)).astype(np.float32)
    qmodel.fit(x, x, epochs=epochs, batch_size=32, verbose=0, callbacks=[INQ(schedule, epochs_per_step), probe])
    assert counts == seen
    assert qmodel.get_layer("fc").weight_quantizer_variables["mask"].numpy().sum() == 25


def test_export_refuses_unfinished_inq():
    qmodel = kerasq.quantize_model(dense_model(W5.T), "int8", layer_schemes={"fc": PowerOfTwo(bits=4)})
    inq = _inq_on(qmodel, INQ())
    inq.on_epoch_begin(0)
    kerasq.calibrate(qmodel, np.random.default_rng(0).standard_normal((32, 5)).astype(np.float32))
    with pytest.raises(ValueError, match="13 of 25 weights are still float"):
        tflite_export.convert(qmodel)
    inq.on_train_end()
    assert tflite_export.inspect(tflite_export.convert(qmodel)).is_integer_only


def test_validation_errors():
    with pytest.raises(ValueError, match="Received: bits=5"):
        PowerOfTwo(bits=5)
    with pytest.raises(ValueError, match="Received: bits=1"):
        PowerOfTwoQuantizer(bits=1)
    with pytest.raises(ValueError, match="strictly increasing"):
        INQ(schedule=(0.5, 0.5, 1.0))
    with pytest.raises(ValueError, match=r"Received: schedule=\(\)"):
        INQ(schedule=())
    with pytest.raises(ValueError, match="Received: schedule"):
        INQ(schedule=(0.0, 1.0))
    with pytest.raises(ValueError, match="Received: epochs_per_step=0"):
        INQ(epochs_per_step=0)
    qmodel = kerasq.quantize_model(dense_model(W.T), "int8")
    qmodel.compile("sgd", "mse")
    with pytest.raises(ValueError, match="no layer quantized with PowerOfTwoQuantizer"):
        qmodel.fit(np.zeros((4, 4)), np.zeros((4, 4)), verbose=0, callbacks=[INQ()])


def test_serialization_round_trip(tmp_path):
    for obj in (PowerOfTwoQuantizer(bits=3, channel_axes=(2, 3)), PowerOfTwo(bits=3, per_channel=True)):
        assert_config_round_trip(obj)
    assert kerasq.get_scheme("po2") == PowerOfTwo(bits=4)
    assert kerasq.get_scheme("power_of_two") == PowerOfTwo()
    assert kerasq.get_scheme(keras.utils.serialize_keras_object(PowerOfTwo(2, True))) == PowerOfTwo(2, True)

    scheme = PowerOfTwo(bits=3, per_channel=True)
    qmodel = kerasq.quantize_model(dense_model(W5.T), "int8", layer_schemes={"fc": scheme})
    _inq_on(qmodel, INQ()).on_epoch_begin(0)  # non-default state: half the mask, freeze on
    x = np.random.default_rng(4).standard_normal((16, 5)).astype(np.float32)
    kerasq.calibrate(qmodel, x)
    restored = reload_identical(qmodel, x, str(tmp_path / "po2.keras"))
    layer = restored.get_layer("fc")
    assert layer.weight_quantizer == PowerOfTwoQuantizer(3, (-1,))
    original_mask = qmodel.get_layer("fc").weight_quantizer_variables["mask"].numpy()
    np.testing.assert_array_equal(layer.weight_quantizer_variables["mask"].numpy(), original_mask)
    assert float(layer.weight_quantizer_variables["freeze"].numpy()) == 1.0


def test_end_to_end_inq_on_digits(trained_float_cnn, digits):
    """po2-4 with INQ (50/75/87.5/100 %) on the demo CNN, exported integer-only."""
    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    qmodel = kerasq.quantize_model(trained_float_cnn, PowerOfTwo(bits=4))  # conv1, fc stay int8
    po2_layers = [
        layer for layer in kerasq.quantized_layers(qmodel) if isinstance(layer.weight_quantizer, PowerOfTwoQuantizer)
    ]
    assert [layer.name for layer in po2_layers] == ["dw2", "pw2"]
    counts, frozen_moved = [], []

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = [(layer.weight_quantizer_variables["mask"].numpy() > 0.5, layer.kernel.numpy()) for layer in po2_layers]
            counts.append([int(mask.sum()) for mask, _ in self.start])

        def on_epoch_end(self, epoch, logs=None):
            for (mask, w), layer in zip(self.start, po2_layers):
                frozen_moved.append(bool(np.any(layer.kernel.numpy()[mask] != w[mask])))

    qmodel.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x_train, y_train, epochs=4, batch_size=32, verbose=0, callbacks=[INQ((0.5, 0.75, 0.875, 1.0)), Probe()])
    sizes = [layer.kernel.shape.num_elements() for layer in po2_layers]  # 144 and 512 weights
    assert counts == [[math.floor(f * n) for n in sizes] for f in (0.5, 0.75, 0.875, 1.0)]
    assert not any(frozen_moved)

    blob, report = export_with_exact_weights(qmodel)
    assert list(kerasq.quantized_weights(qmodel)) == ["conv1", "dw2", "pw2", "fc"]
    for info in report.weights[1:3]:  # the power-of-two layers: INT8 codes, <= 15 values
        assert info.tensor.dtype == "int8"
        assert info.bits <= 4 and info.tensor.distinct_values <= 15
        assert set(np.unique(np.abs(info.codes))) <= {0, 1, 2, 4, 8, 16, 32, 64}

    assert_exact_parity(qmodel, blob, x_test)
    float_acc = accuracy(trained_float_cnn, x_test, y_test)
    tflite_acc = tflite_export.evaluate(blob, x_test, y_test)
    # Measured: float 0.9556, QAT and TFLite 0.9600; parity 0 LSB, 100 % bit exact.
    assert tflite_acc >= float_acc - 0.04
