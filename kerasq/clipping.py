"""Clipping ranges for post-training calibration: choose ``[min, max]`` from a histogram.

Min/max calibration spends the grid on the rare extreme values; clipping them trades a little
clipping error on the tails for a finer grid on the bulk. Every function here is NumPy (float64)
math on a ``Histogram`` of the tensor; the observers in ``kerasq.observers`` collect it.

Activation ranges (each takes the histogram and the observed ``[lo, hi]``; the result never
extends beyond ``[lo, hi]`` and always contains 0, as the nudged grid does):

- ``percentile_range`` (Wu et al. 2020, "Integer quantization for deep learning inference"):
  ``[F⁻¹(1 - p/100), F⁻¹(p/100)]``, ``F`` the empirical CDF, linear inside a bin.
- ``mse_range`` (Wu et al. 2020; Nagel et al. 2021, "A white paper on neural network
  quantization", §3.4): ``α·[lo, hi]`` for the ``α ∈ {1/n, ..., 1}`` minimizing
  ``Σ_c n_c (c - Q_α(c))²`` over bin centers ``c``, ``Q_α`` rounding onto the nudged grid.
- ``kl_range`` (Migacz 2017, "8-bit inference with TensorRT"; MXNet's
  ``_get_optimal_threshold``): the threshold ``T`` minimizing ``KL(P || Q)`` between the
  histogram ``P`` of ``|x|`` clipped at ``T`` and its ``levels``-bin quantization ``Q``.
- ``aciq_range`` (Banner, Nahshan & Soudry 2019, "Post-training 4-bit quantization of
  convolution networks for rapid deployment"): ``μ ± α*``, ``α*`` minimizing clipping noise plus
  rounding noise ``α²/(3·4^M)`` of a Laplace or Gaussian fit (the paper's ``2.83b, 3.89b,
  5.03b`` for ``M = 2, 3, 4`` bits on Laplace(μ, b); ``1.71σ, 2.15σ, 2.55σ`` on Gaussian data).

Weights:

- ``mse_weight_scale`` (Nagel et al. 2021, §3.4): the symmetric scale ``S = α·max|w|/q_max``
  per channel minimizing ``Σ (w - S·clamp(round(w/S)))²``.

Histogram convention: ``counts`` has ``2·bins`` bins over the symmetric span ``[-A, A]``,
``A = max(|min|, |max|)`` of the data (edges ``linspace(-A, A, 2·bins + 1)``), so ``|x|`` is
the fold of the two halves onto ``[0, A]``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from kerasq import ops

__all__ = [
    "Histogram",
    "aciq_alpha",
    "aciq_range",
    "histogram_of",
    "kl_range",
    "kl_threshold",
    "mse_range",
    "mse_weight_scale",
    "percentile_range",
]

# MXNet's ``_smooth_distribution`` constant: the mass, in counts, given to each empty bin.
_SMOOTHING_EPS = 1e-4
_DISTRIBUTIONS = ("laplace", "gaussian")


class Histogram(NamedTuple):
    """Counts of a tensor's values in ``2·bins`` equal bins over ``[-limit, limit]``.

    ``counts``: float64, shape ``[2·bins]`` (bin ``k`` is
    ``[-limit + k·w, -limit + (k+1)·w)``, ``w = limit/bins``); ``limit``: ``max |x|`` (> 0);
    ``zeros``: how many of the counted values are exactly 0 (they are in bin ``bins``).
    """

    counts: np.ndarray
    limit: float
    zeros: float = 0.0

    @property
    def bins(self) -> int:
        """Bins per half, i.e. bins of ``|x|``."""
        return len(self.counts) // 2

    @property
    def bin_width(self) -> float:
        """Width ``w = limit / bins`` of every bin, in the units of ``x``."""
        return float(self.limit) / self.bins

    def edges(self) -> np.ndarray:
        """The ``2·bins + 1`` bin edges, float64."""
        return np.linspace(-float(self.limit), float(self.limit), len(self.counts) + 1)

    def centers(self) -> np.ndarray:
        """The ``2·bins`` bin centers, float64: the value each bin's samples are represented by."""
        edges = self.edges()
        return (edges[:-1] + edges[1:]) / 2

    def folded(self) -> np.ndarray:
        """Counts of ``|x|`` in ``bins`` bins over ``[0, limit]``: ``counts[bins + k] + counts[bins - 1 - k]``."""
        counts = np.asarray(self.counts, np.float64)
        half = self.bins
        return counts[half:] + counts[:half][::-1]


def histogram_of(x: np.ndarray, bins: int = 2048) -> Histogram:
    """The ``Histogram`` of ``x`` (any shape) with ``2·bins`` bins over ``[-max|x|, max|x|]``."""
    x = np.asarray(x, np.float64).ravel()
    if x.size == 0:
        raise ValueError("Cannot build a histogram of an empty array.")
    if not np.all(np.isfinite(x)):
        raise ValueError("Cannot build a histogram of values that contain NaN or infinity.")
    if int(bins) < 1:
        raise ValueError(f"bins must be positive. Received: bins={bins}")
    limit = float(np.max(np.abs(x)))
    if limit == 0:
        raise ValueError("Cannot build a histogram of an all-zero array: its span [-0, 0] is empty.")
    counts, _ = np.histogram(x, bins=2 * int(bins), range=(-limit, limit))
    return Histogram(counts.astype(np.float64), limit, float(np.sum(x == 0)))


def _checked_counts(counts: np.ndarray) -> np.ndarray:
    """Finite, non-negative counts with a positive sum (float64); one ValueError names what is wrong."""
    counts = np.asarray(counts, np.float64)
    if not np.all(np.isfinite(counts)):
        raise ValueError("Histogram counts contain NaN or infinity; the observed tensor was not finite.")
    if np.any(counts < 0):
        raise ValueError("Histogram counts must not be negative.")
    if not counts.sum() > 0:
        raise ValueError("Histogram is empty (its counts sum to 0): no values were observed.")
    return counts


def _checked(hist: Histogram) -> tuple[np.ndarray, float]:
    """``(counts, limit)`` as float64 after validation; one ValueError names what is wrong."""
    counts = np.asarray(hist.counts, np.float64)
    limit = float(hist.limit)
    if counts.ndim != 1 or counts.size < 2 or counts.size % 2:
        raise ValueError(f"Histogram counts must be 1-D with an even number of bins. Received shape {counts.shape}")
    counts = _checked_counts(counts)
    if not (math.isfinite(limit) and limit > 0):
        raise ValueError(f"Histogram limit must be finite and > 0. Received: limit={limit}")
    return counts, limit


def _checked_range(lo: float, hi: float) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"The observed range must be finite with lo <= hi. Received: lo={lo}, hi={hi}")
    return lo, hi


def _with_zero(lo: float, hi: float) -> tuple[float, float]:
    return float(min(lo, 0.0)), float(max(hi, 0.0))


# --- percentile ----------------------------------------------------------------------------------
def _quantile(counts: np.ndarray, edges: np.ndarray, target: float) -> float:
    """Smallest ``x`` with ``F(x) = target`` counts, ``F`` linear inside each bin."""
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    if target <= 0:
        return float(edges[np.flatnonzero(counts)[0]])
    target = min(target, cumulative[-1])
    # First bin whose upper edge has F >= target; its lower edge has F < target, so it is not empty.
    k = int(np.searchsorted(cumulative[1:], target, side="left"))
    return float(edges[k] + (target - cumulative[k]) / counts[k] * (edges[k + 1] - edges[k]))


def percentile_range(hist: Histogram, lo: float, hi: float, percentile: float = 99.99) -> tuple[float, float]:
    """The values at the ``100 - p`` and ``p`` percentiles of the histogram, as ``(min, max)``.

    Args:
      hist: the tensor's ``Histogram``.
      lo, hi: the observed min and max; the result stays inside them.
      percentile: ``p`` in ``(50, 100]``.
    Returns: ``(min, max)`` in the units of ``x``, widened to contain 0.
    """
    if not 50.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (50, 100]. Received: percentile={percentile}")
    counts, _ = _checked(hist)
    lo, hi = _checked_range(lo, hi)
    edges = hist.edges()
    total = float(np.sum(counts))
    fraction = float(percentile) / 100.0
    lower = _quantile(counts, edges, (1.0 - fraction) * total)
    upper = _quantile(counts, edges, fraction * total)
    return _with_zero(max(lo, lower), min(hi, upper))


# --- MSE -----------------------------------------------------------------------------------------
def _grid_error(centers: np.ndarray, counts: np.ndarray, params: ops.AffineParams) -> float:
    """``Σ counts·(c - Q(c))²``, ``Q`` rounding to the nearest value of the grid after clamping."""
    scale = float(np.float32(params.scale))
    codes = np.clip(np.round(centers / scale) + params.zero_point, params.code_min, params.code_max)
    return float(np.sum(counts * (centers - (codes - params.zero_point) * scale) ** 2))


def mse_range(hist: Histogram, lo: float, hi: float, bits: int = 8, steps: int = 100) -> tuple[float, float]:
    """The range ``α·[lo, hi]`` whose ``bits``-bit nudged grid has the least expected squared error.

    Candidates are ``α ∈ linspace(1/steps, 1, steps)``; each grid is
    ``ops.nudged_affine(α·lo, α·hi, bits)`` (the grid FakeQuant rounds onto) and its error
    ``Σ_c n_c (c - Q(c))²`` over the bin centers ``c``. Ties go to the larger ``α``.

    Args:
      hist: the tensor's ``Histogram``.
      lo, hi: the observed min and max (widened to contain 0 first).
      bits: grid bits, ``2^bits`` levels.
      steps: number of candidate ``α``.
    Returns: ``(min, max)`` in the units of ``x``.
    """
    counts, _ = _checked(hist)
    lo, hi = _with_zero(*_checked_range(lo, hi))
    if int(steps) < 1:
        raise ValueError(f"steps must be positive. Received: steps={steps}")
    ops.signed_range(bits)  # validates bits
    centers = hist.centers()
    keep = counts > 0  # empty bins add nothing; skipping them makes each candidate cheaper
    centers, counts = centers[keep], counts[keep]
    alphas = np.linspace(1.0 / steps, 1.0, int(steps))
    errors = np.array([_grid_error(centers, counts, ops.nudged_affine(a * lo, a * hi, bits)) for a in alphas])
    best = len(errors) - 1 - int(np.argmin(errors[::-1]))  # last minimum: ties go to the larger α
    return _with_zero(float(alphas[best] * lo), float(alphas[best] * hi))


# --- KL (entropy calibration) --------------------------------------------------------------------
def _kl_divergences(folded_counts: np.ndarray, levels: int) -> np.ndarray:
    """``KL(P_i || Q_i)`` for every candidate ``i = levels, ..., bins``, float64, shape ``[bins - levels + 1]``.

    The same quantities as MXNet's loop, from cumulative sums instead of per-candidate slices.
    With ``h`` the counts, ``P_i = h[:i]`` plus the outliers ``Σ h[i:]`` in bin ``i - 1``; ``Q_i``
    spreads each group's sum of ``h[:i]`` evenly over the group's bins where ``P_i`` is nonzero.
    Both are smoothed as MXNet's ``_smooth_distribution`` (in counts: zeros become ``ε``, the
    others lose ``ε·n_zero/n_nonzero``, so totals ``S_P``, ``S_Q`` are kept), then

        KL = (Σ p log p - Σ p log q) / S_P + log(S_Q / S_P)

    where ``Σ p log q`` is one term per group (``q`` is constant on a group) and the ``ε log ε``
    terms of bins empty in both cancel. Candidates whose smoothing leaves a bin ``<= 0`` (MXNet
    fails an assertion there; impossible for integer counts) or whose ``Q`` is empty get ``inf``.
    """
    h = folded_counts
    n_bins = h.size
    eps = _SMOOTHING_EPS
    i = np.arange(levels, n_bins + 1)
    cum = np.concatenate([[0.0], np.cumsum(h)])
    nonzero = h != 0
    cum_nonzero = np.concatenate([[0], np.cumsum(nonzero)])
    total = cum[-1]

    tail = total - cum[i]  # exact zero once h[i:] is empty: cumsum adds zeros exactly
    p_last = h[i - 1] + tail
    last_nonzero = p_last != 0
    inner_nonzero = cum_nonzero[i - 1]  # nonzero bins of P before its last one
    p_nonzero = inner_nonzero + last_nonzero
    eps_p = eps * (i - p_nonzero) / p_nonzero

    # Σ p log p over the inner nonzero bins: candidate i uses the first inner_nonzero[i] nonzero
    # counts, each lowered by its own eps_p, hence one ragged pass over all candidates.
    values = h[nonzero]
    lengths = inner_nonzero.astype(np.int64)
    offsets = np.cumsum(lengths) - lengths
    flat = values[np.arange(lengths.sum()) - np.repeat(offsets, lengths)] - np.repeat(eps_p, lengths)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = flat * np.log(flat)
    inner = np.zeros(i.size)
    used = lengths > 0
    inner[used] = np.add.reduceat(plogp, offsets[used])
    with np.errstate(divide="ignore", invalid="ignore"):
        p_last_s = p_last - eps_p
        self_term = inner + np.where(last_nonzero, p_last_s * np.log(p_last_s), 0.0)
    # Smallest nonzero inner count per candidate: smoothing must keep it positive.
    inner_min = np.where(used, np.minimum.accumulate(values)[np.maximum(lengths - 1, 0)], np.inf)
    valid = (inner_min > eps_p) & (~last_nonzero | (p_last_s > 0))

    # Groups: ``levels`` groups of ``m = i // levels`` bins, the last one ending at i.
    merged = i // levels
    starts = merged[:, None] * np.arange(levels)[None, :]
    ends = starts + merged[:, None]
    ends[:, -1] = i
    group_sum = cum[ends] - cum[starts]  # Q's mass per group (outliers excluded)
    group_nonzero = (cum_nonzero[ends] - cum_nonzero[starts]).astype(np.float64)
    group_nonzero[:, -1] += last_nonzero.astype(np.float64) - nonzero[i - 1]  # P's last bin, not h's
    group_p = group_sum.copy()
    group_p[:, -1] += tail
    # Bins where P is nonzero but Q is zero: only P's last bin, when its group of h is empty.
    q_hole = (group_sum[:, -1] == 0) & last_nonzero
    q_nonzero = p_nonzero - q_hole
    eps_q = eps * (i - q_nonzero) / np.maximum(q_nonzero, 1)
    filled = group_sum > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        q_value = np.where(filled, group_sum / np.where(filled, group_nonzero, 1.0) - eps_q[:, None], 1.0)
        cross = np.sum(np.where(filled, (group_p - eps_p[:, None] * group_nonzero) * np.log(q_value), 0.0), axis=1)
        cross += np.where(q_hole, p_last_s * math.log(eps), 0.0)
    valid &= (q_nonzero > 0) & np.all(~filled | (q_value > 0), axis=1)

    sum_q = cum[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        divergence = (self_term - cross) / total + np.log(sum_q / total)
    return np.where(valid, divergence, np.inf)


def kl_threshold(folded_counts: np.ndarray, bin_width: float, levels: int = 128) -> float:
    """TensorRT's entropy calibration threshold for ``|x|`` (Migacz 2017, as MXNet implements it).

    For each candidate ``i = levels, ..., bins`` the reference ``P`` is ``h[:i]`` with the
    clipped counts ``Σ h[i:]`` added to its last bin, and ``Q`` is ``h[:i]`` merged into
    ``levels`` groups of ``i // levels`` bins (the last group takes the remainder), each group's
    sum spread evenly over its bins where ``P`` is nonzero. After MXNet's smoothing
    (``ε = 1e-4`` counts per empty bin), the candidate with the least ``KL(P || Q)`` wins (the
    first on ties). The threshold is the upper edge of its last kept bin, ``i·bin_width``, as
    MXNet's ``hist_edges[p_bin_idx_stop]``: the slice ``[0, i)`` keeps bins ``0..i-1`` whole.

    Vectorized over candidates: about 15 ms for 2048 bins and 128 levels on one CPU core.

    Args:
      folded_counts: the histogram of ``|x|``, shape ``[bins]`` (``Histogram.folded()``);
        counts of samples (the smoothing constant is in counts).
      bin_width: width of one bin, in the units of ``x``.
      levels: bins of the quantized distribution, e.g. 128 for int8 data of both signs.
    Returns: the threshold ``T > 0``, in the units of ``x``.
    """
    h = np.asarray(folded_counts, np.float64)
    if h.ndim != 1:
        raise ValueError(f"folded_counts must be 1-D. Received shape {h.shape}")
    h = _checked_counts(h)
    if not (math.isfinite(float(bin_width)) and float(bin_width) > 0):
        raise ValueError(f"bin_width must be finite and > 0. Received: bin_width={bin_width}")
    if not 2 <= int(levels) <= h.size:
        raise ValueError(
            f"KL calibration needs 2 <= levels <= bins; use a histogram with more bins. "
            f"Received: levels={levels}, bins={h.size}"
        )
    divergence = _kl_divergences(h, int(levels))
    if not np.any(np.isfinite(divergence)):
        raise ValueError("No KL calibration candidate has a valid smoothed distribution (counts below 1e-4?).")
    return float((int(levels) + int(np.argmin(divergence))) * float(bin_width))


def kl_range(hist: Histogram, lo: float, hi: float, bits: int = 8) -> tuple[float, float]:
    """Entropy-calibrated range: ``[max(lo, -T), min(hi, T)]``, ``T = kl_threshold(|x|)``.

    ``levels`` is the number of grid steps ``T`` must be resolved into. Data of both signs
    spends half of the ``2^bits`` levels on each side, so ``levels = 2^(bits-1)`` (TensorRT's
    128 for int8); one-sided data (``lo >= 0`` or ``hi <= 0``) gets an asymmetric grid that
    spends all ``2^bits`` levels on ``[0, T]``, so ``levels = 2^bits``.

    Args:
      hist: the tensor's ``Histogram``.
      lo, hi: the observed min and max; the result stays inside them.
      bits: grid bits.
    Returns: ``(min, max)`` in the units of ``x``, widened to contain 0.
    """
    _checked(hist)
    lo, hi = _checked_range(lo, hi)
    ops.signed_range(bits)  # validates bits
    one_sided = lo >= 0 or hi <= 0
    levels = 2**bits if one_sided else 2 ** (bits - 1)
    folded = hist.folded()
    # Exact zeros (a ReLU's) are exact on every grid and carry no information about where to
    # clip; left in, their spike in bin 0 makes the divergence favour clipping the rest hard
    # (pytorch-quantization's ``skip_zeros``).
    folded[0] = max(folded[0] - float(hist.zeros), 0.0)
    if not folded.sum() > 0:
        return _with_zero(lo, hi)
    threshold = kl_threshold(folded, hist.bin_width, levels)
    return _with_zero(max(lo, -threshold), min(hi, threshold))


# --- ACIQ ----------------------------------------------------------------------------------------
def _clip_excess(alpha: float, distribution: str) -> float:
    """``E[(|x| - α)⁺]`` for unit-scale data: half the derivative of the clipping noise, negated."""
    if distribution == "laplace":  # Laplace(0, 1)
        return math.exp(-alpha)
    # N(0, 1): 2·(φ(α) - α·(1 - Φ(α)))
    return math.sqrt(2.0 / math.pi) * math.exp(-alpha * alpha / 2.0) - alpha * math.erfc(alpha / math.sqrt(2.0))


def _checked_distribution(distribution: str) -> str:
    name = str(distribution).lower()
    if name not in _DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {_DISTRIBUTIONS}. Received: distribution={distribution!r}")
    return name


def aciq_alpha(bits: int, distribution: str = "laplace") -> float:
    """ACIQ's optimal clip ``α*`` in units of ``b`` (Laplace scale) or ``σ`` (Gaussian std).

    ``α*`` minimizes clipping noise plus the rounding noise ``α²/(3·4^M)`` of ``2^M`` levels
    over ``[-α, α]`` (Banner et al. 2019, ``M = bits``):

    - Laplace(0, b): ``2b²·exp(-α/b)``;
    - N(0, σ²): ``(α² + σ²)(1 - erf(α/(σ√2))) - ασ·sqrt(2/π)·exp(-α²/(2σ²))``.

    Both sums are convex in ``α``; the root of the derivative,
    ``-2·E[(|x| - α)⁺] + 2α/(3·4^M)``, is found by bisection to double precision.

    The roots are ``2.8307, 3.8972, 5.0286`` (Laplace) and ``1.7106, 2.1516, 2.5591``
    (Gaussian) for 2, 3, 4 bits; the paper prints them truncated or rounded to two decimals
    (``2.83, 3.89, 5.03`` and ``1.71, 2.15, 2.55``).

    >>> [round(aciq_alpha(m), 4) for m in (2, 3, 4)]
    [2.8307, 3.8972, 5.0286]

    Args:
      bits: ``M``, in ``[2, 16]``.
      distribution: ``"laplace"`` or ``"gaussian"``.
    Returns: ``α*`` as a multiple of ``b`` or ``σ``.
    """
    name = _checked_distribution(distribution)
    if not 2 <= int(bits) <= 16 or int(bits) != bits:
        raise ValueError(f"bits must be an integer in [2, 16]. Received: bits={bits}")
    rounding = 1.0 / (3.0 * 4.0 ** int(bits))
    low, high = 0.0, 64.0  # derivative < 0 at 0, > 0 at 64 for every bits in range
    for _ in range(200):
        mid = (low + high) / 2
        if mid in (low, high):
            break
        if -_clip_excess(mid, name) + mid * rounding < 0:
            low = mid
        else:
            high = mid
    return float((low + high) / 2)


def aciq_range(
    hist: Histogram, lo: float, hi: float, bits: int = 8, distribution: str = "laplace"
) -> tuple[float, float]:
    """ACIQ's clipped range ``[max(lo, μ - α), min(hi, μ + α)]``, ``α = aciq_alpha(bits)·b`` (or ``·σ``).

    ``μ`` is the histogram mean over bin centers; ``b = E|x - μ|`` (the maximum-likelihood
    Laplace scale) or ``σ`` the standard deviation for ``"gaussian"``.

    Args:
      hist: the tensor's ``Histogram``.
      lo, hi: the observed min and max; the result stays inside them.
      bits: grid bits ``M``.
      distribution: ``"laplace"`` or ``"gaussian"``.
    Returns: ``(min, max)`` in the units of ``x``, widened to contain 0.
    """
    name = _checked_distribution(distribution)
    counts, _ = _checked(hist)
    lo, hi = _checked_range(lo, hi)
    centers = hist.centers()
    weights = counts / np.sum(counts)
    mean = float(np.sum(weights * centers))
    if name == "laplace":
        spread = float(np.sum(weights * np.abs(centers - mean)))
    else:
        spread = float(np.sqrt(np.sum(weights * (centers - mean) ** 2)))
    alpha = aciq_alpha(bits, name) * spread
    return _with_zero(max(lo, mean - alpha), min(hi, mean + alpha))


# --- weights -------------------------------------------------------------------------------------
def mse_weight_scale(
    w: np.ndarray,
    bits: int,
    channel_axes: tuple[int, ...] = (-1,),
    narrow_range: bool = True,
    steps: int = 100,
) -> np.ndarray:
    """Symmetric weight scale per channel minimizing the squared quantization error.

    ``S = α·max|w|/q_max`` with ``α ∈ linspace(1/steps, 1, steps)`` chosen independently for
    each channel to minimize ``Σ (w - S·clamp(round(w/S), q_min, q_max))²`` over the channel
    (``round`` half to even, as ``tf.round``; ties go to the larger ``α``).

    Args:
      w: weights, any shape.
      bits: code bits; ``[q_min, q_max]`` is ``ops.signed_range(bits, narrow_range)``.
      channel_axes: axes with one scale each; ``()`` for one scale per tensor.
      narrow_range: drop the most negative code (``[-127, 127]`` for int8).
      steps: number of candidate ``α``.
    Returns: float32 scales shaped like ``max|w|`` with ``keepdims`` over the reduced axes
      (broadcasts onto ``w``); all-zero channels get 1.
    """
    w = np.asarray(w, np.float64)
    if w.size == 0:
        raise ValueError("Cannot choose a scale for an empty weight tensor.")
    if not np.all(np.isfinite(w)):
        raise ValueError("Weights contain NaN or infinity.")
    if int(steps) < 1:
        raise ValueError(f"steps must be positive. Received: steps={steps}")
    qmin, qmax = ops.signed_range(bits, narrow_range)
    axes = tuple(ops.reduce_axes(w.ndim, tuple(channel_axes)))
    max_abs = np.max(np.abs(w), axis=axes, keepdims=True)
    zero = max_abs == 0
    max_abs = np.where(zero, 1.0, max_abs)
    best_scale = np.ones_like(max_abs)
    best_error = np.full_like(max_abs, np.inf)
    for alpha in np.linspace(1.0 / steps, 1.0, int(steps)):
        # Evaluated with the float32 scale the quantizer will use.
        scale = (alpha * max_abs / qmax).astype(np.float32).astype(np.float64)
        error = np.sum((w - scale * np.clip(np.round(w / scale), qmin, qmax)) ** 2, axis=axes, keepdims=True)
        better = error <= best_error  # ascending α: ties go to the larger one
        best_scale = np.where(better, scale, best_scale)
        best_error = np.where(better, error, best_error)
    return np.where(zero, 1.0, best_scale).astype(np.float32)
