"""K-means weight sharing (Deep Compression, Han et al. 2016): clustering, gradients, export."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_config_round_trip, dense_model, assert_exact_parity, reload_identical, SEED_W as W, accuracy, fit_qat
from sklearn.cluster import KMeans as SKLearnKMeans

import kerasq
import tflite_export
from kerasq import keras, tf
from kerasq.kmeans import KMeans, KMeansQuantizer, codebook_codes, codebook_codes_numpy, kmeans_1d

# The lecture's cluster index table and its codebook "3: 2.00, 2: 1.50, 1: 0.00, 0: -1.00"
# (labels already in increasing centroid order, which is kerasq's order too).
LECTURE_ASSIGNMENTS = np.array([[3, 0, 2, 1], [1, 1, 0, 3], [0, 3, 1, 0], [3, 1, 2, 2]])
LECTURE_CENTROIDS = np.array([-1.00, 0.00, 1.50, 2.00])
# What Lloyd with linear init converges to (one update, then stable), from the float32 inputs:
# -1.0 = mean(-0.98, -1.08, -0.91, -1.03); 7.45e-10 = mean(0.09, 0.05, -0.14, 0, 0) in float32
# (0.09 + 0.05 - 0.14 is not exactly 0 in float32); 1.5 = mean(1.48, 1.53, 1.49); 2.0.
EXACT_CENTROIDS = np.array([-1.0, 7.4505806e-10, 1.5, 2.0], np.float32)


def seed_qmodel(clusters: int = 4) -> keras.Model:
    return kerasq.quantize_model(dense_model(W.T), "int8", layer_schemes={"fc": KMeans(clusters=clusters)})


def test_seed_matrix_codebook_and_assignments():
    qmodel = seed_qmodel(4)
    layer = qmodel.get_layer("fc")
    codebook = layer.weight_quantizer_variables["codebook"].numpy()
    np.testing.assert_allclose(codebook, EXACT_CENTROIDS, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(np.round(codebook, 2) + 0.0, LECTURE_CENTROIDS)
    # Assignments live in the Dense kernel layout [in, out]: transpose back to the lecture's rows.
    np.testing.assert_array_equal(layer.weight_quantizer_variables["assignments"].numpy().T, LECTURE_ASSIGNMENTS)
    # Deployed codebook: s = 2/127; -1/s = -63.5 rounds half to even to -64, 1.5/s = 95.25 -> 95.
    grid = layer.weight_grid()
    assert grid.bits == 8
    assert grid.scale.reshape(()) == np.float32(2.0) / np.float32(127)
    np.testing.assert_array_equal(grid.codes.T, np.array([-64, 0, 95, 127])[LECTURE_ASSIGNMENTS])
    deployed = kerasq.quantized_weights(qmodel)["fc"].T
    np.testing.assert_array_equal(deployed, grid.dequantize().T)
    assert np.abs(deployed - codebook[LECTURE_ASSIGNMENTS]).max() <= grid.scale.item() / 2  # at most s/2


def test_lloyd_matches_sklearn_from_linear_init():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-0.3, 0.05, 300), rng.normal(0.1, 0.1, 500), rng.laplace(0, 0.02, 200)])
    values = values.astype(np.float32)
    centroids, assignments = kmeans_1d(values.reshape(20, 50), 16)
    init = np.linspace(values.min(), values.max(), 16).reshape(-1, 1).astype(np.float64)
    reference = SKLearnKMeans(16, init=init, n_init=1, tol=0.0, max_iter=1000, algorithm="lloyd").fit(
        values.astype(np.float64).reshape(-1, 1)
    )
    np.testing.assert_allclose(centroids, reference.cluster_centers_.ravel(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(assignments.ravel(), reference.labels_)
    assert assignments.shape == (20, 50) and assignments.dtype == np.int32
    assert np.all(np.diff(centroids) > 0)  # index order is value order


@pytest.mark.parametrize(
    "values, clusters, centroids, why",
    [
        ([0.0, 0.0, 0.0], 3, [0.0, 0.0, 0.0], "constant layer: all in cluster 0, others keep their init"),
        ([-1.0, 1.0], 4, [-1.0, -1.0 / 3, 1.0 / 3, 1.0], "more clusters than values: empty ones keep their init"),
        ([0.0, 1.0, 2.0], 2, [0.5, 2.0], "1.0 sits on the first midpoint: ties go to the smaller centroid"),
    ],
)
def test_kmeans_golden_edge_cases(values, clusters, centroids, why):
    got, _ = kmeans_1d(np.array(values, np.float32), clusters)
    np.testing.assert_allclose(got, centroids, rtol=1e-6, atol=1e-7, err_msg=why)


def test_codebook_grid_numpy_mirror():
    rng = np.random.default_rng(1)
    for codebook in (rng.standard_normal(16).astype(np.float32), np.zeros(4, np.float32), np.float32([-3.0, 0.5])):
        codes, scale = codebook_codes(codebook)
        np_codes, np_scale = codebook_codes_numpy(codebook)
        np.testing.assert_array_equal(codes.numpy(), np_codes)
        assert scale.numpy() == np_scale
        assert np.abs(np_codes).max() <= 127
        assert np.abs(np_codes.astype(np.float32) * np_scale - codebook).max() <= np_scale / 2


def test_centroid_gradient_is_sum_of_weight_gradients():
    rng = np.random.default_rng(2)
    kernel = tf.Variable(rng.standard_normal((3, 3, 4, 8)).astype(np.float32))
    quantizer = KMeansQuantizer(clusters=8)
    weights = {
        "codebook": tf.Variable(tf.zeros(8)),
        "assignments": tf.Variable(tf.zeros(kernel.shape, tf.int32), trainable=False),
    }
    quantizer.initialize(kernel, weights)
    upstream = rng.standard_normal(kernel.shape).astype(np.float32)
    with tf.GradientTape() as tape:
        q = quantizer(kernel, True, weights)
        loss = tf.reduce_sum(q * upstream)
    grad_codebook, grad_kernel = tape.gradient(loss, [weights["codebook"], kernel])
    assignments = weights["assignments"].numpy()
    # Deep Compression's fine-tuning rule: dL/dc_k = sum of dL/dW_i over the weights of cluster k.
    oracle = np.bincount(assignments.ravel(), weights=upstream.ravel().astype(np.float64), minlength=8)
    np.testing.assert_allclose(tf.convert_to_tensor(grad_codebook).numpy(), oracle, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(grad_kernel.numpy(), np.zeros(kernel.shape, np.float32))  # not trained
    grid = quantizer.integer_grid(kernel, weights)
    np.testing.assert_array_equal(grid.dequantize(), q.numpy())  # forward == exported values
    assert np.unique(grid.codes).size <= 8


def test_fit_trains_codebook_keeps_assignments():
    qmodel = seed_qmodel(4)
    layer = qmodel.get_layer("fc")
    before = {name: var.numpy().copy() for name, var in layer.weight_quantizer_variables.items()}
    kernel_before = layer.kernel.numpy().copy()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((128, 4)).astype(np.float32)
    qmodel.compile(keras.optimizers.Adam(1e-2), "mse")
    qmodel.fit(x, x @ np.ones((4, 4), np.float32), epochs=2, batch_size=32, verbose=0)
    codebook = layer.weight_quantizer_variables["codebook"].numpy()
    assert np.abs(codebook - before["codebook"]).min() > 1e-3  # every centroid moved
    np.testing.assert_array_equal(layer.weight_quantizer_variables["assignments"].numpy(), before["assignments"])
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel_before)
    quantized = kerasq.quantized_weights(qmodel)["fc"]
    assert np.unique(quantized).size <= 4
    codes, scale = codebook_codes_numpy(codebook)
    np.testing.assert_array_equal(quantized, (codes.astype(np.float32) * scale)[before["assignments"]])


def test_validation_errors():
    for bad in (1, 256, 2.5):
        with pytest.raises(ValueError, match=f"Received: clusters={bad}"):
            KMeans(clusters=bad)
        with pytest.raises(ValueError, match=f"Received: clusters={bad}"):
            KMeansQuantizer(clusters=bad)
    with pytest.raises(ValueError, match="finite"):
        kmeans_1d(np.array([0.0, np.nan]), 2)


def test_serialization_round_trip(tmp_path):
    for obj in (KMeansQuantizer(clusters=5), KMeans(clusters=32)):
        assert_config_round_trip(obj)
    assert kerasq.get_scheme("kmeans16") == KMeans(16)
    assert kerasq.get_scheme("kmeans") == KMeans()
    assert KMeans(16).weight_bits == 4 and KMeans(200).weight_bits == 8

    qmodel = seed_qmodel(3)
    x = np.random.default_rng(4).standard_normal((16, 4)).astype(np.float32)
    kerasq.calibrate(qmodel, x)
    restored = reload_identical(qmodel, x, str(tmp_path / "kmeans.keras"))
    layer = restored.get_layer("fc")
    assert layer.weight_quantizer == KMeansQuantizer(3)
    for name in ("codebook", "assignments"):
        original = qmodel.get_layer("fc").weight_quantizer_variables[name].numpy()
        np.testing.assert_array_equal(layer.weight_quantizer_variables[name].numpy(), original)


def test_end_to_end_kmeans16_on_digits(trained_float_cnn, digits):
    """Every weight layer clustered to 16 centroids, fine-tuned, exported integer-only."""
    _, (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    qmodel = kerasq.quantize_model(trained_float_cnn, KMeans(clusters=16), first_last_int8=False)
    codebooks = {
        layer.name: layer.weight_quantizer_variables["codebook"].numpy().copy()
        for layer in kerasq.quantized_layers(qmodel)
        if layer.weight_quantizer is not None
    }
    fit_qat(qmodel, digits, epochs=3, lr=1e-3)
    names = [layer.name for layer in kerasq.quantized_layers(qmodel) if layer.weight_quantizer is not None]
    assert names == ["conv1", "dw2", "pw2", "fc"]
    assert all(not np.array_equal(qmodel.get_layer(n).weight_quantizer_variables["codebook"].numpy(), codebooks[n]) for n in names)

    blob = tflite_export.convert(qmodel)
    report = tflite_export.inspect(blob)
    assert report.is_integer_only
    quantized = kerasq.quantized_weights(qmodel)
    for info, name in zip(report.weights, names):
        np.testing.assert_allclose(info.keras_kernel(), quantized[name], rtol=1e-6, atol=1e-7)
        assert info.tensor.dtype == "int8"
        assert info.tensor.distinct_values <= 16 and info.bits <= 4

    assert_exact_parity(qmodel, blob, x_test)
    float_acc = accuracy(trained_float_cnn, x_test, y_test)
    tflite_acc = tflite_export.evaluate(blob, x_test, y_test)
    # Measured: float 0.9556, QAT and TFLite 0.9511; parity max 1 LSB, 99.96 % bit exact.
    assert tflite_acc >= float_acc - 0.04
