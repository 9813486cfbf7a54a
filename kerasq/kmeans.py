"""K-means weight sharing (Deep Compression, Han et al., ICLR 2016).

A layer's weights are clustered into ``clusters`` centroids; the layer stores, per weight, the
index of its centroid, plus the codebook of centroids. Fine-tuning trains the codebook only: the
gradient of a centroid is the sum of the gradients of the weights that share it (seed lecture,
"K-Means-based Weight Quantization").

Clustering (``kmeans_1d``): Lloyd's algorithm on the layer's weights, centroids initialised
linearly between ``min(w)`` and ``max(w)`` (the initialisation Deep Compression found best),
iterated in float64 until no weight changes cluster. Deterministic.

Exact integer export: TFLite has no codebook weights, so the exported kernel is int8 with one
scale per layer. The forward pass therefore uses the codebook snapped to the symmetric grid
``s = max|c| / 127``: ``ĉ = s·round(c/s)``, straight-through to the float codebook. The trained
float codebook ``c`` is what the optimizer updates and what is saved; the deployed one is ``ĉ``,
within ``s/2`` of it, and it is also what the Keras forward pass (training and inference) uses,
so ``kerasq.quantized_weights`` equals the exported kernel exactly.

The math is ``kmeans_1d`` (NumPy) and ``codebook_codes`` (TF) with NumPy mirror
``codebook_codes_numpy``; ``KMeansQuantizer`` holds codebook and assignments per layer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kerasq import ops
from kerasq.compat import tf
from kerasq.observers import state_variable
from kerasq.quantizers import WeightGrid, WeightQuantizer
from kerasq.registry import register
from kerasq.schemes.base import Scheme

# Lloyd's iterations stop earlier, when no assignment changes (1-D data converges in a few dozen).
_MAX_LLOYD_ITERATIONS = 1000
_CODE_MAX = 127


def _check_clusters(clusters: int) -> int:
    # At most the distinct codes of a symmetric int8 grid.
    return ops.integer_in_range("clusters", clusters, 2, 255)


def kmeans_1d(values: np.ndarray, clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means of scalar ``values`` with linear initialisation (Han et al. 2016).

    ``c_j = min + j·(max - min)/(clusters - 1)``; then repeat: assign every value to its nearest
    centroid (ties to the smaller one), move each centroid to the mean of its values (an empty
    cluster keeps its centroid), until no assignment changes. In one dimension the centroids stay
    sorted, so index order is value order. Arithmetic in float64.

    Returns: ``(centroids float32 [clusters], assignments int32 of values' shape)``.

    Seed lecture example, the 4x4 ``W`` with 4 clusters: start ``[-1.08, -0.013, 1.047, 2.12]``,
    one update gives ``[-1.0, 0.0, 1.5, 2.0]`` (up to float32 rounding of the inputs) and the
    assignments ``[[3,0,2,1],[1,1,0,3],[0,3,1,0],[3,1,2,2]]``, which are then stable.
    """
    clusters = _check_clusters(clusters)
    x = np.asarray(values, np.float64).reshape(-1)
    if x.size == 0:
        return np.zeros(clusters, np.float32), np.zeros(np.shape(values), np.int32)
    if not np.all(np.isfinite(x)):
        raise ValueError("k-means needs finite weights; the kernel holds NaN or infinite values.")
    centroids = np.linspace(x.min(), x.max(), clusters)
    assignments = None
    for _ in range(_MAX_LLOYD_ITERATIONS):
        boundaries = (centroids[:-1] + centroids[1:]) / 2.0
        new = np.searchsorted(boundaries, x, side="left")
        if assignments is not None and np.array_equal(new, assignments):
            break
        assignments = new
        counts = np.bincount(assignments, minlength=clusters)
        sums = np.bincount(assignments, weights=x, minlength=clusters)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    return centroids.astype(np.float32), assignments.reshape(np.shape(values)).astype(np.int32)


def codebook_codes(codebook: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The codebook on its symmetric int8 grid: ``(round(c/s) clipped to ±127, s = max|c|/127)``.

    Codes are float32 integers; an all-zero codebook gets ``s = 1``. No gradient flows.

    >>> codes, s = codebook_codes(tf.constant([-1.0, 0.0, 1.5, 2.0]))
    >>> codes.numpy().tolist(), round(float(s) * 127, 6)
    ([-64.0, 0.0, 95.0, 127.0], 2.0)
    """
    codebook = tf.stop_gradient(tf.convert_to_tensor(codebook, tf.float32))
    scale = ops.symmetric_scale(tf.reduce_max(tf.abs(codebook)), _CODE_MAX)
    codes = tf.clip_by_value(tf.round(codebook / scale), -float(_CODE_MAX), float(_CODE_MAX))
    return codes, scale


def codebook_codes_numpy(codebook: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """NumPy mirror of ``codebook_codes`` in float32: ``(int32 codes, float32 scale)``."""
    codebook = np.asarray(codebook, np.float32)
    peak = np.float32(np.abs(codebook).max()) if codebook.size else np.float32(0.0)
    scale = np.float32(peak / np.float32(_CODE_MAX)) if peak > 0 else np.float32(1.0)
    codes = np.clip(np.round(codebook / scale), -_CODE_MAX, _CODE_MAX)
    return codes.astype(np.int32), scale


@register("quantizer", alias="kmeans_quantizer")
class KMeansQuantizer(WeightQuantizer):
    """Weight sharing through a trainable per-layer codebook of ``clusters`` centroids.

    State (built per layer): ``codebook`` (trainable float32 ``[clusters]``) and ``assignments``
    (non-trainable int32, kernel shape), set by ``initialize`` from the float kernel with
    ``kmeans_1d`` (Lloyd, linear initialisation). ``quantize_model`` calls ``initialize`` after
    loading the float weights; the assignments then never change.

    Forward: ``Q(w) = ĉ[assignments]`` (``tf.gather``) with ``ĉ = s·round(c/s)``, ``s = max|c|/127``
    — the codebook on the int8 grid it is exported with; the float kernel ``w`` does not change it.
    Backward: straight-through from ``ĉ`` to ``c``, so through ``tf.gather``
    ``∂L/∂c_k = Σ_{i: a_i = k} ∂L/∂Q_i`` (Deep Compression's centroid fine-tuning: the gradients
    of the weights in a cluster are summed). The float kernel gets an explicit zero gradient, so
    optimizers leave it as the clustering found it (and do not warn about a missing gradient).

    Export: codes ``round(c/s)[assignments]`` (at most ``clusters`` distinct int8 values), scale
    ``s`` per layer, zero point 0, INT8 storage (``WeightGrid.bits = 8``); ``inspect`` reports
    ``ceil(log2(clusters))`` effective bits. The deployed codebook differs from the trained float
    codebook by at most ``s/2`` per centroid.

    Args:
      clusters: 2..255 centroids per layer (Deep Compression: 256 for conv, 32 for FC at 8/5 bits).
    Reference: Han, Mao, Dally, "Deep Compression", ICLR 2016.

    Example (the seed lecture's 4x4 ``W``, 4 clusters): centroids ``-1.00, 0.00, 1.50, 2.00``,
    ``s = 2/127``, codes ``[-64, 0, 95, 127]``, so ``1.5`` is deployed as ``95·2/127 = 1.4961``.
    """

    def __init__(self, clusters: int = 16):
        super().__init__(channel_axes=())
        self.clusters = _check_clusters(clusters)
        self.bits = 8

    def build(self, tensor_shape, name, layer):
        return {
            "codebook": layer.add_weight(
                f"{name}_codebook", shape=(self.clusters,), initializer="zeros", trainable=True
            ),
            "assignments": state_variable(layer, f"{name}_assignments", tensor_shape, dtype=tf.int32),
        }

    def initialize(self, w, weights) -> None:
        centroids, assignments = kmeans_1d(np.asarray(w.numpy() if hasattr(w, "numpy") else w), self.clusters)
        weights["codebook"].assign(centroids)
        weights["assignments"].assign(assignments)

    def __call__(self, inputs, training, weights, **kwargs):
        codebook, assignments = weights["codebook"], weights["assignments"]
        codes, scale = codebook_codes(codebook)
        deployed = tf.gather(codes, assignments) * scale
        shared = tf.gather(codebook, assignments)
        w = tf.convert_to_tensor(inputs, tf.float32)
        # Forward value exactly `deployed` (x - stop_gradient(x) is 0): the codebook receives the
        # gradient through tf.gather, the float kernel an explicit zero (it is not shared weights).
        straight_through = shared - tf.stop_gradient(shared)
        return tf.stop_gradient(deployed) + straight_through + 0.0 * (w - tf.stop_gradient(w))

    def scale(self, w, weights):
        _, scale = codebook_codes(weights["codebook"])
        return tf.reshape(scale, [1] * len(w.shape))

    def integer_grid(self, w, weights) -> WeightGrid:
        codes, scale = codebook_codes(weights["codebook"])
        kernel_codes = tf.gather(codes, weights["assignments"]).numpy().astype(np.int32)
        shape = [1] * kernel_codes.ndim
        return WeightGrid(kernel_codes, np.reshape(scale.numpy(), shape).astype(np.float32), 8)

    def get_config(self) -> dict[str, Any]:
        return {"clusters": self.clusters}


@register("scheme", alias="kmeans", presets={"kmeans16": {"clusters": 16}})
class KMeans(Scheme):
    """K-means weight sharing (Deep Compression) with int8 EMA activations.

    Every kernel gets a ``KMeansQuantizer(clusters)``: per-layer Lloyd clustering with linear
    initialisation, trainable codebook (summed gradients), fixed assignments, codebook snapped to
    an int8 grid for exact export. ``weight_bits = ceil(log2(clusters))`` (4 for 16 clusters), so
    by default ``quantize_model`` keeps the first and last layers at int8 below 256 clusters;
    pass ``first_last_int8=False`` to cluster every layer. Activations: 8-bit asymmetric, EMA.

    Args:
      clusters: 2..255 centroids per layer.

    Names: ``get_scheme("kmeans")`` or the preset ``"kmeans16"``.
    """

    activation_bits = 8

    def __init__(self, clusters: int = 16):
        self.clusters = _check_clusters(clusters)
        self.weight_bits = math.ceil(math.log2(self.clusters))

    def weight_quantizer(self, layer, weight):
        return KMeansQuantizer(self.clusters)

    def get_config(self):
        return {"clusters": self.clusters}
