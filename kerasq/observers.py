"""Observers: statistics of a tensor that propose its quantization range; they never round.

An observer watches the float values a quantizer is about to round and keeps a running
``[min, max]`` in three variables it creates on the layer (``min``, ``max`` and ``count``,
the number of batches seen). The quantizer reads the range back to build its grid; whether
observing is on is decided per call (``QuantizedLayer``: during ``fit``, or while
``kerasq.calibrate`` runs the model in inference mode), independently of rounding.
This is the split of PyTorch's ``ao.quantization`` (observer vs fake-quantize): statistics
collection and rounding are separate objects, and calibration is "observers on, rounding off".

- ``MovingAverageObserver(decay)``: ``r̂ ← d·r̂ + (1-d)·r_batch`` for the batch min and max,
  the first batch initialising ``r̂`` (the seed lecture's "during training" statistics; tfmot's
  ``MovingAverageQuantizer``). The default for quantization-aware training.
- ``MinMaxObserver()``: the min and max over every batch seen (the TFLite converter's
  calibration). The default of ``kerasq.calibrate``.

Both keep the same three variables, so a model calibrated with min/max continues its
moving average from the calibrated range when it is trained.

Post-training calibration adds observers that clip: they choose the range from a histogram of
the tensor (``HistogramObserver``), which ``kerasq.calibrate`` collects in a second pass over
the data, after a min/max pass has fixed the histogram's span (as TensorRT does). The choice
itself is math in ``kerasq.clipping``:

- ``PercentileObserver(percentile=99.99)``: the range between two percentiles;
- ``MSEObserver()``: the range ``α·[min, max]`` minimizing ``E[(X - Q(X))²]``;
- ``KLObserver()``: TensorRT's entropy calibration (Migacz 2017): the threshold whose
  quantized distribution is closest in KL divergence to the 2048-bin histogram of ``|x|``;
- ``ACIQObserver(distribution="laplace")``: Banner et al. 2019's analytic clip,
  ``2.83b, 3.89b, 5.03b`` for 2, 3, 4 bits on Laplace(μ, b) data.

Distributed training (``tf.distribute``): every statistic a quantizer folds in during a forward
pass is a statistic of the *global* batch. Under ``MirroredStrategy`` or
``MultiWorkerMirroredStrategy`` each replica runs the forward pass on its own slice of the batch,
and a variable assigned there with ``VariableAggregation.NONE`` (Keras' default) is updated on
that replica's copy only: the saved, exported and cross-replica value is replica 0's, so with N
replicas (N-1)/N of the data never reaches the range. ``replica_reduce`` combines the per-replica
statistic first (min/max by an all-gather, sums by an all-reduce), so every replica folds in the
same single-device value; ``state_variable`` creates the state with
``VariableAggregation.ONLY_FIRST_REPLICA``, so the write itself is one value broadcast to every
copy. Outside a replica context (eager code, ``kerasq.calibrate``, callbacks) both are no-ops
beyond what a plain variable does.
"""

from __future__ import annotations

from typing import Any

from kerasq import clipping
from kerasq.compat import tf
from kerasq.registry import ConfigEquality, get, register

__all__ = [
    "ACIQObserver",
    "HistogramCollector",
    "HistogramObserver",
    "KLObserver",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageObserver",
    "Observer",
    "ObserverByTensor",
    "PercentileObserver",
    "get_observer",
    "global_mean",
    "global_range",
    "replica_reduce",
    "state_variable",
]

_REDUCTIONS = ("sum", "min", "max")


def _replicas() -> tf.distribute.ReplicaContext | None:
    """The replica context when several replicas run in sync, else None (one device, cross-replica code)."""
    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def replica_reduce(value: tf.Tensor, reduction: str) -> tf.Tensor:
    """Combine this replica's ``value`` with every other replica's, elementwise: ``"sum"``, ``"min"`` or ``"max"``.

    Every quantizer state updated in a forward pass goes through it. Under a ``tf.distribute``
    strategy each replica sees only its slice of the global batch; without the reduction a
    replica would fold its own slice's statistic into its own copy of the state, and the value
    that is read back, saved and exported would be replica 0's alone. With it, every replica
    gets the statistic of the whole batch (the single-device value; sums up to float rounding,
    since they are added in another order) and the copies stay equal.

    ``"sum"`` is an all-reduce; ``"min"``/``"max"`` an all-gather (``tf.distribute.ReduceOp``
    has no MIN/MAX) reduced locally. A replica with an empty slice contributes the neutral
    element if ``value`` is ``reduce_min``/``reduce_max``/``reduce_sum`` of it (``+inf``,
    ``-inf``, 0). In cross-replica context and with one replica in sync ``value`` is returned
    unchanged.

    >>> float(replica_reduce(tf.constant(3.0), "max"))  # one replica: the value itself
    3.0
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(_REDUCTIONS)}. Received: reduction={reduction!r}")
    value = tf.convert_to_tensor(value)
    context = _replicas()
    if context is None:
        return value
    if reduction == "sum":
        return context.all_reduce(tf.distribute.ReduceOp.SUM, value)
    gathered = context.all_gather(value[tf.newaxis], axis=0)
    reduced = tf.reduce_min(gathered, axis=0) if reduction == "min" else tf.reduce_max(gathered, axis=0)
    return tf.ensure_shape(reduced, value.shape)  # the gather loses the static shape


def global_range(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``(min(x), max(x))`` over the global batch: every replica's slice of ``x`` (one all-gather)."""
    x = tf.convert_to_tensor(x, tf.float32)
    if _replicas() is None:  # one device: no stacking for the all-gather on every training step
        return tf.reduce_min(x), tf.reduce_max(x)
    low, negated_high = tf.unstack(replica_reduce(tf.stack([tf.reduce_min(x), -tf.reduce_max(x)]), "min"))
    return low, -negated_high


def global_mean(x: tf.Tensor) -> tf.Tensor:
    """``mean(x)`` over the global batch: the sum and the count of every replica's slice (one all-reduce).

    Slices of different sizes (the last batch of an epoch) weigh by their size, as one device would.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    if _replicas() is None:
        return tf.reduce_mean(x)
    total, count = tf.unstack(replica_reduce(tf.stack([tf.reduce_sum(x), tf.cast(tf.size(x), tf.float32)]), "sum"))
    return total / count


def state_variable(
    layer, name: str, shape, initializer: Any = "zeros", dtype: tf.DType = tf.float32
) -> tf.Variable:
    """A non-trainable quantizer state variable on ``layer`` (observed ranges, scales, masks, assignments).

    Created with ``VariableAggregation.ONLY_FIRST_REPLICA``: an assignment in a replica context
    writes the first replica's value to every copy, so the copies of a mirrored variable cannot
    drift apart (Keras' default, ``NONE``, lets each replica write its own copy). Updates made in
    a forward pass combine their statistic with ``replica_reduce`` first, so that value is the
    whole batch's; assignments in cross-replica context (callbacks, ``initialize``, calibration)
    write every copy as for any mirrored variable.
    """
    return layer.add_weight(
        name,
        shape=shape,
        dtype=dtype,
        initializer=initializer,
        trainable=False,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


class Observer(ConfigEquality):
    """Base: running statistics of a tensor that propose a ``[min, max]`` range."""

    def build(self, layer, name: str) -> dict[str, tf.Variable]:
        """Create the statistics on ``layer``: ``{name}_min``, ``{name}_max`` (float32), ``{name}_count`` (int32)."""
        return {
            "min": state_variable(layer, f"{name}_min", ()),
            "max": state_variable(layer, f"{name}_max", ()),
            "count": state_variable(layer, f"{name}_count", (), dtype=tf.int32),
        }

    def update(self, x: tf.Tensor, state: dict[str, tf.Variable]) -> None:
        """Fold the batch ``x`` (any shape, float32) into the statistics.

        Under a ``tf.distribute`` strategy ``x`` is this replica's slice; implementations fold in
        the whole batch's statistic (``global_range``, ``replica_reduce``).
        """
        raise NotImplementedError

    @staticmethod
    def observed(state: dict[str, tf.Variable]) -> tf.Tensor:
        """True (a bool tensor) once a batch has been folded in."""
        return state["count"] > 0

    @staticmethod
    def range(state: dict[str, tf.Variable]) -> tuple[tf.Tensor, tf.Tensor]:
        """The proposed ``(min, max)`` (float32 scalars; ``(0, 0)`` before the first batch)."""
        return tf.convert_to_tensor(state["min"]), tf.convert_to_tensor(state["max"])

    @staticmethod
    def reset(state: dict[str, tf.Variable]) -> None:
        """Forget everything observed."""
        for variable in state.values():
            variable.assign(tf.zeros_like(variable))

    def get_config(self) -> dict[str, Any]:
        return {}


@register("observer", alias="ema")
class MovingAverageObserver(Observer):
    """Exponential moving average of the batch min and max: ``r̂ ← d·r̂ + (1 - d)·r``.

    The first batch sets ``r̂`` directly. Args: ``decay`` ``d`` in ``[0, 1)``.

    Example (``d = 0.5``): batches with max 2, then 4 → ``max = 2``, then ``0.5·2 + 0.5·4 = 3``.
    """

    def __init__(self, decay: float = 0.99):
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be in [0, 1). Received: decay={decay}")
        self.decay = float(decay)

    def update(self, x, state):
        batch_min, batch_max = global_range(x)
        first = tf.equal(state["count"], 0)
        d = self.decay
        state["min"].assign(tf.where(first, batch_min, d * state["min"] + (1.0 - d) * batch_min))
        state["max"].assign(tf.where(first, batch_max, d * state["max"] + (1.0 - d) * batch_max))
        state["count"].assign_add(1)

    def get_config(self):
        return {"decay": self.decay}


@register("observer", alias="minmax")
class MinMaxObserver(Observer):
    """The smallest and largest value over every batch seen (global min/max calibration).

    Example: batches with ranges ``[-1, 2]`` then ``[0, 5]`` → ``[-1, 5]``.
    """

    def update(self, x, state):
        batch_min, batch_max = global_range(x)
        first = tf.equal(state["count"], 0)
        state["min"].assign(tf.where(first, batch_min, tf.minimum(state["min"], batch_min)))
        state["max"].assign(tf.where(first, batch_max, tf.maximum(state["max"], batch_max)))
        state["count"].assign_add(1)


class HistogramObserver(Observer):
    """Base: chooses a range from the histogram of the tensor instead of folding batches in.

    ``kerasq.calibrate`` runs a min/max pass first (``MinMaxObserver``), then collects a
    ``2·bins``-bin histogram over ``[-A, A]``, ``A = max(|min|, |max|)`` (``HistogramCollector``),
    then asks ``choose_range`` for the range the grid quantizes onto.
    """

    def __init__(self, bins: int = 2048):
        if int(bins) < 256:
            raise ValueError(f"A calibration histogram needs at least 256 bins. Received: bins={bins}")
        self.bins = int(bins)

    def update(self, x, state):
        raise TypeError(
            f"{type(self).__name__} chooses its range from a histogram: use it through kerasq.calibrate "
            "(a min/max pass, then a histogram pass), not as a streaming observer."
        )

    def choose_range(self, histogram: clipping.Histogram, lo: float, hi: float, bits: int) -> tuple[float, float]:
        """The ``(min, max)`` to quantize onto, from the tensor's histogram and its observed ``[lo, hi]``."""
        raise NotImplementedError

    def get_config(self):
        return {"bins": self.bins}


@register("observer", alias="percentile")
class PercentileObserver(HistogramObserver):
    """The range between the ``100 - p`` and ``p`` percentiles of the values (default ``p = 99.99``)."""

    def __init__(self, percentile: float = 99.99, bins: int = 2048):
        super().__init__(bins)
        if not 50.0 < float(percentile) <= 100.0:
            raise ValueError(f"percentile must be in (50, 100]. Received: percentile={percentile}")
        self.percentile = float(percentile)

    def choose_range(self, histogram, lo, hi, bits):
        return clipping.percentile_range(histogram, lo, hi, self.percentile)

    def get_config(self):
        return {"percentile": self.percentile, "bins": self.bins}


@register("observer", alias="mse")
class MSEObserver(HistogramObserver):
    """The range ``α·[min, max]`` whose ``bits``-bit grid minimizes ``E[(X - Q(X))²]`` (``clipping.mse_range``)."""

    def choose_range(self, histogram, lo, hi, bits):
        return clipping.mse_range(histogram, lo, hi, bits)


@register("observer", alias="kl")
class KLObserver(HistogramObserver):
    """TensorRT's entropy calibration (Migacz 2017): the clip minimizing ``KL(P || Q)`` (``clipping.kl_range``).

    ``P`` is the 2048-bin histogram of ``|x|`` with the clipped mass in its last kept bin;
    candidates start at bin 128 for 8-bit data of both signs.
    """

    def choose_range(self, histogram, lo, hi, bits):
        return clipping.kl_range(histogram, lo, hi, bits)


@register("observer", alias="aciq")
class ACIQObserver(HistogramObserver):
    """Banner et al. 2019's analytic clip for Laplace or Gaussian data (``clipping.aciq_range``).

    ``α* = 2.83b, 3.89b, 5.03b`` for 2, 3, 4 bits on Laplace(μ, b) data, ``b = E|x - μ|``.
    """

    def __init__(self, distribution: str = "laplace", bins: int = 2048):
        super().__init__(bins)
        clipping.aciq_alpha(8, distribution)  # validates the name
        self.distribution = str(distribution)

    def choose_range(self, histogram, lo, hi, bits):
        return clipping.aciq_range(histogram, lo, hi, bits, self.distribution)

    def get_config(self):
        return {"distribution": self.distribution, "bins": self.bins}


def _key(state: dict[str, tf.Variable]):
    return state["min"].ref()


class HistogramCollector(Observer):
    """Collects a histogram of every tracked tensor over ``[-A, A]`` (``A`` from its min/max).

    Used for the second calibration pass: ``track(state, bins)`` before the pass creates a
    ``2·bins``-bin float64 histogram for the statistics ``state`` (whose ``min``/``max`` hold
    the range of the first pass and are not changed); ``histogram(state)`` reads it back.
    Values at the span's edges fall into the edge bins.
    """

    def __init__(self):
        self._histograms: dict = {}

    def track(self, state: dict[str, tf.Variable], bins: int) -> None:
        self._histograms[_key(state)] = tuple(
            tf.Variable(
                tf.zeros(shape, tf.float64), trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA
            )
            for shape in ([2 * bins], [])
        )

    def update(self, x, state):
        if _key(state) not in self._histograms:
            return  # a tensor whose method needs no histogram
        counts, zeros = self._histograms[_key(state)]
        values = tf.reshape(tf.convert_to_tensor(x, tf.float32), [-1])
        limit = tf.maximum(tf.maximum(tf.abs(state["min"]), tf.abs(state["max"])), 1e-30)
        batch = tf.histogram_fixed_width(values, tf.stack([-limit, limit]), nbins=counts.shape[0])
        batch_zeros = tf.reduce_sum(tf.cast(tf.equal(values, 0.0), tf.float64))
        # One all-reduce for both: the counts of every replica's slice.
        total = replica_reduce(tf.concat([tf.cast(batch, tf.float64), batch_zeros[tf.newaxis]], 0), "sum")
        counts.assign_add(total[:-1])
        zeros.assign_add(total[-1])

    def histogram(self, state: dict[str, tf.Variable]) -> clipping.Histogram:
        limit = max(abs(float(state["min"].numpy())), abs(float(state["max"].numpy())))
        counts, zeros = self._histograms[_key(state)]
        return clipping.Histogram(counts.numpy(), limit, float(zeros.numpy()))


class ObserverByTensor(Observer):
    """Routes each tensor's statistics to its own observer (per-layer calibration methods).

    ``observers``: ``(statistics, observer)`` pairs, a tensor's statistics dict (as its quantizer
    built it) with the observer it uses; tensors not among them use ``default``.
    """

    def __init__(self, default: Observer, observers: list[tuple[dict, Observer]] = ()):
        self.default = default
        self.observers = {_key(state): observer for state, observer in observers}

    def update(self, x, state):
        self.observers.get(_key(state), self.default).update(x, state)


def get_observer(observer: "Observer | str | dict") -> Observer:
    """An observer from an instance, a name (``"minmax"``, ``"ema"``, ``"percentile"``, ``"mse"``,
    ``"kl"``, ``"aciq"``) or a Keras config."""
    return get("observer", observer, Observer)
