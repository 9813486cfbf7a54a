"""Calibration clipping math: known answers, a loop reference for KL, measured errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

from kerasq import clipping, ops
from kerasq.clipping import Histogram


def sample_mse(x: np.ndarray, lo: float, hi: float, bits: int = 8) -> float:
    """Mean squared error of ``x`` rounded onto ``nudged_affine(lo, hi, bits)``, as FakeQuant does."""
    p = ops.nudged_affine(lo, hi, bits)
    codes = np.clip(np.round(x / np.float32(p.scale)) + p.zero_point, p.code_min, p.code_max)
    return float(np.mean((x - p.dequantize(codes)) ** 2))


# --- Histogram -----------------------------------------------------------------------------------
def test_histogram_layout_and_fold():
    x = np.array([-3.0, -0.2, 0.1, 0.2, 2.9, 3.0])
    hist = clipping.histogram_of(x, bins=3)  # 6 bins of width 1 over [-3, 3]
    assert hist.limit == 3.0 and hist.bins == 3 and hist.bin_width == 1.0
    np.testing.assert_array_equal(hist.counts, [1, 0, 1, 2, 0, 2])
    np.testing.assert_array_equal(hist.centers(), [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])
    # |x| = 3, .2, .1, .2, 2.9, 3 over [0, 3]: 3 in [0, 1), 3 in [2, 3].
    np.testing.assert_array_equal(hist.folded(), [3, 0, 3])


# --- percentile ----------------------------------------------------------------------------------
def test_percentile_range_on_uniform_data():
    x = np.random.default_rng(0).uniform(-1, 3, 10**6)
    lo, hi = clipping.percentile_range(clipping.histogram_of(x), x.min(), x.max(), 99)
    assert lo == pytest.approx(-0.96, abs=0.01)
    assert hi == pytest.approx(2.96, abs=0.01)


def test_percentile_range_stays_inside_observed_and_contains_zero():
    x = np.random.default_rng(1).uniform(-1, 3, 10**5)
    hist = clipping.histogram_of(x)
    # p = 100 reaches the histogram's outer edges; the observed min/max bound it.
    assert clipping.percentile_range(hist, x.min(), x.max(), 100) == (x.min(), x.max())
    positive = np.random.default_rng(2).uniform(2, 3, 10**5)
    lo, hi = clipping.percentile_range(clipping.histogram_of(positive), positive.min(), positive.max(), 99)
    assert lo == 0.0 and hi == pytest.approx(2.99, abs=0.01)


@pytest.mark.parametrize("percentile", [50, 100.5, -1])
def test_percentile_range_rejects_bad_percentiles(percentile):
    hist = clipping.histogram_of(np.linspace(-1, 1, 11))
    with pytest.raises(ValueError, match="percentile"):
        clipping.percentile_range(hist, -1, 1, percentile)


# --- MSE -----------------------------------------------------------------------------------------
def test_mse_range_clips_outliers_and_lowers_the_measured_error():
    x = np.random.default_rng(1).laplace(0, 1, 10**6)
    x[:2] = [50.0, -48.0]
    lo, hi = clipping.mse_range(clipping.histogram_of(x), x.min(), x.max(), bits=8)
    assert 0.5 * x.min() < lo < 0 < hi < 0.5 * x.max()
    chosen, full = sample_mse(x, lo, hi), sample_mse(x, x.min(), x.max())
    print(f"8-bit MSE: clipped to [{lo:.2f}, {hi:.2f}] {chosen:.2e}, min/max {full:.2e}")
    assert chosen < 0.5 * full


def test_mse_range_is_the_best_candidate_on_the_samples():
    # Each α's histogram estimate ranks candidates as the samples do (coarse steps, so the
    # ranking is not decided by bin-center rounding).
    x = np.random.default_rng(3).normal(0.5, 1.0, 2 * 10**5)
    steps = 10
    lo, hi = clipping.mse_range(clipping.histogram_of(x), x.min(), x.max(), bits=3, steps=steps)
    alphas = np.linspace(1 / steps, 1, steps)
    measured = [sample_mse(x, a * x.min(), a * x.max(), bits=3) for a in alphas]
    best = alphas[int(np.argmin(measured))]
    assert (lo, hi) == pytest.approx((best * x.min(), best * x.max()))


# --- KL ------------------------------------------------------------------------------------------
def _smooth_distribution(p, eps=0.0001):
    """MXNet's ``_smooth_distribution`` (in float64)."""
    is_zeros = (p == 0).astype(np.float64)
    is_nonzeros = (p != 0).astype(np.float64)
    n_zeros = is_zeros.sum()
    n_nonzeros = p.size - n_zeros
    if not n_nonzeros:
        raise ValueError("The discrete probability distribution is malformed. All entries are 0.")
    eps1 = eps * float(n_zeros) / float(n_nonzeros)
    assert eps1 < 1.0
    hist = p.astype(np.float64)
    hist += eps * is_zeros + (-eps1) * is_nonzeros
    assert (hist <= 0).sum() == 0
    return hist


def _entropy(p, q):
    """``scipy.stats.entropy(p, q)``: KL divergence of the normalized distributions."""
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def reference_kl_divergences(hist, num_quantized_bins):
    """MXNet's ``_get_optimal_threshold`` loop, transliterated onto the one-sided histogram of ``|x|``."""
    divergence = np.zeros(hist.size - num_quantized_bins + 1)
    quantized_bins = np.zeros(num_quantized_bins)
    for i in range(num_quantized_bins, hist.size + 1):
        sliced_nd_hist = hist[:i]
        p = sliced_nd_hist.copy()
        p[-1] += np.sum(hist[i:])  # outliers into the last kept bin
        is_nonzeros = (p != 0).astype(np.int64)
        num_merged_bins = sliced_nd_hist.size // num_quantized_bins
        for j in range(num_quantized_bins):
            start = j * num_merged_bins
            stop = start + num_merged_bins
            quantized_bins[j] = sliced_nd_hist[start:stop].sum()
        quantized_bins[-1] += sliced_nd_hist[num_quantized_bins * num_merged_bins :].sum()
        q = np.zeros(sliced_nd_hist.size, dtype=np.float64)
        for j in range(num_quantized_bins):
            start = j * num_merged_bins
            if j == num_quantized_bins - 1:
                stop = len(is_nonzeros)
            else:
                stop = start + num_merged_bins
            norm = is_nonzeros[start:stop].sum()
            if norm != 0:
                q[start:stop] = float(quantized_bins[j]) / float(norm)
        q[p == 0] = 0
        p = _smooth_distribution(p)
        try:
            q = _smooth_distribution(q)
        except ValueError:
            divergence[i - num_quantized_bins] = float("inf")
            continue
        divergence[i - num_quantized_bins] = _entropy(p, q)
    return divergence


def _heavy_tailed_histograms():
    rng = np.random.default_rng(7)
    student = clipping.histogram_of(rng.standard_t(2, 10**5), bins=1024)
    # Values on a coarse lattice leave empty bins inside the bulk too.
    lattice = clipping.histogram_of(np.round(rng.laplace(0, 1, 10**5) * 8) / 8, bins=512)
    return {"student_t": student.folded(), "lattice": lattice.folded()}


@pytest.mark.parametrize("name", ["student_t", "lattice"])
@pytest.mark.parametrize("levels", [128, 256])
def test_kl_threshold_matches_the_loop_reference(name, levels):
    folded = _heavy_tailed_histograms()[name]
    reference = reference_kl_divergences(folded, levels)
    np.testing.assert_allclose(clipping._kl_divergences(folded, levels), reference, rtol=1e-9, atol=1e-13)
    expected_index = levels + int(np.argmin(reference))
    assert clipping.kl_threshold(folded, 0.01, levels) == pytest.approx(expected_index * 0.01, rel=1e-12)
    # The data exercise the case where P's last bin holds only outliers and Q is empty there.
    assert any(
        folded[(levels - 1) * (i // levels) : i].sum() == 0 and folded[i:].sum() > 0
        for i in range(levels, folded.size + 1)
    )


def test_kl_threshold_clips_isolated_outliers():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0, 1, 10**6), np.full(100, 10.0)])
    hist = clipping.histogram_of(x)
    threshold = clipping.kl_threshold(hist.folded(), hist.bin_width, 128)
    assert 1.0 <= threshold <= 1.1


def test_kl_threshold_time_on_2048_bins():
    hist = clipping.histogram_of(np.random.default_rng(0).standard_t(2, 10**6), bins=2048)
    folded = hist.folded()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        clipping.kl_threshold(folded, hist.bin_width, 128)
        times.append(time.perf_counter() - start)
    print(f"kl_threshold, 2048 bins, 1921 candidates: {min(times) * 1e3:.1f} ms")
    assert min(times) < 0.5


def test_kl_range_levels_follow_the_sign_of_the_data():
    rng = np.random.default_rng(1)
    two_sided = rng.laplace(0, 1, 10**6)
    two_sided[:3] = [40.0, -40.0, 35.0]
    hist = clipping.histogram_of(two_sided)
    t = clipping.kl_threshold(hist.folded(), hist.bin_width, 128)
    assert t < 20
    assert clipping.kl_range(hist, two_sided.min(), two_sided.max(), 8) == (-t, t)

    one_sided = rng.exponential(1, 10**6)
    one_sided[:3] = 40.0
    hist = clipping.histogram_of(one_sided)
    t_asymmetric = clipping.kl_threshold(hist.folded(), hist.bin_width, 256)
    assert t_asymmetric != clipping.kl_threshold(hist.folded(), hist.bin_width, 128)
    assert clipping.kl_range(hist, one_sided.min(), one_sided.max(), 8) == (0.0, t_asymmetric)


# --- ACIQ ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits, expected", [(2, 2.83), (3, 3.89), (4, 5.03)])
def test_aciq_alpha_laplace_published_values(bits, expected):
    np.testing.assert_almost_equal(clipping.aciq_alpha(bits, "laplace"), expected, decimal=2)


@pytest.mark.parametrize("bits", range(2, 17))
def test_aciq_alpha_laplace_solves_the_stationarity_condition(bits):
    # d/dα [2e^-α + α²/(3·4^M)] = 0  ⇔  α·e^α = 3·4^M.
    alpha = clipping.aciq_alpha(bits, "laplace")
    assert alpha * np.exp(alpha) == pytest.approx(3 * 4.0**bits, rel=1e-9)


def _brute_force_alpha(samples: np.ndarray, bits: int, guess: float) -> float:
    """Minimizer over a 0.05 % grid of measured clipping noise + rounding noise ``α²/(3·4^M)``."""
    magnitude = np.sort(np.abs(samples))
    s1 = np.concatenate([np.cumsum(magnitude[::-1])[::-1], [0.0]])  # Σ |x| from index k on
    s2 = np.concatenate([np.cumsum((magnitude**2)[::-1])[::-1], [0.0]])
    alphas = np.linspace(0.5 * guess, 1.5 * guess, 2001)
    k = np.searchsorted(magnitude, alphas, side="right")
    beyond = magnitude.size - k
    clip_noise = (s2[k] - 2 * alphas * s1[k] + alphas**2 * beyond) / magnitude.size
    return float(alphas[np.argmin(clip_noise + alphas**2 / (3 * 4.0**bits))])


@pytest.mark.parametrize(
    "distribution, bits", [("gaussian", 2), ("gaussian", 3), ("gaussian", 4), ("laplace", 4)]
)
def test_aciq_alpha_matches_brute_force_on_samples(distribution, bits):
    rng = np.random.default_rng(bits)
    samples = rng.standard_normal(10**6) if distribution == "gaussian" else rng.laplace(0, 1, 10**6)
    alpha = clipping.aciq_alpha(bits, distribution)
    assert alpha == pytest.approx(_brute_force_alpha(samples, bits, alpha), rel=0.03)


def test_aciq_alpha_gaussian_minimizes_the_real_8_bit_quantizer_error():
    # At 8 bits the uniform-rounding-noise model holds: the clip minimizing the error of an
    # actual 256-bin quantizer of [-α, α] (midpoint reconstruction) is the analytic one.
    x = np.random.default_rng(0).standard_normal(10**6)
    alpha = clipping.aciq_alpha(8, "gaussian")

    def error(a):
        step = 2 * a / 256
        bins = np.clip(np.floor((x + a) / step), 0, 255)
        return np.mean((x - (-a + (bins + 0.5) * step)) ** 2)

    candidates = np.linspace(0.85 * alpha, 1.15 * alpha, 31)
    best = candidates[int(np.argmin([error(a) for a in candidates]))]
    assert alpha == pytest.approx(best, rel=0.03)


def test_aciq_range_on_laplace_samples():
    x = np.random.default_rng(0).laplace(0, 0.5, 10**6)
    lo, hi = clipping.aciq_range(clipping.histogram_of(x), x.min(), x.max(), bits=4)
    assert lo == pytest.approx(-5.03 * 0.5, rel=0.02)
    assert hi == pytest.approx(5.03 * 0.5, rel=0.02)


def test_aciq_range_gaussian_and_bounds():
    x = np.random.default_rng(1).normal(1.0, 2.0, 10**6)
    hist = clipping.histogram_of(x)
    lo, hi = clipping.aciq_range(hist, x.min(), x.max(), bits=3, distribution="gaussian")
    alpha = clipping.aciq_alpha(3, "gaussian") * 2.0
    assert lo == pytest.approx(1.0 - alpha, rel=0.02) and hi == pytest.approx(1.0 + alpha, rel=0.02)
    # At 16 bits α exceeds the data: the observed range bounds the result.
    assert clipping.aciq_range(hist, x.min(), x.max(), bits=16, distribution="gaussian") == (x.min(), x.max())


def test_aciq_rejects_unknown_distributions():
    with pytest.raises(ValueError, match="distribution"):
        clipping.aciq_alpha(4, "cauchy")
    with pytest.raises(ValueError, match="distribution"):
        clipping.aciq_range(clipping.histogram_of(np.linspace(-1, 1, 11)), -1, 1, 4, "uniform")


# --- weights -------------------------------------------------------------------------------------
def _channel_mse(w, scale, bits):
    qmin, qmax = ops.signed_range(bits, narrow_range=True)
    s = scale.astype(np.float64)
    return np.mean((w - s * np.clip(np.round(w / s), qmin, qmax)) ** 2, axis=0)


def test_mse_weight_scale_beats_max_abs_with_one_outlier_per_channel():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (256, 8)).astype(np.float32)  # Dense kernel [in, out]
    w[rng.integers(0, 256, 8), np.arange(8)] = 1.0  # one outlier per output channel
    w[:, 3] = 0.0  # a dead channel
    scale = clipping.mse_weight_scale(w, bits=4)
    assert scale.shape == (1, 8) and scale.dtype == np.float32
    assert scale[0, 3] == 1.0
    live = w[:, [c for c in range(8) if c != 3]]
    chosen = scale[:, [c for c in range(8) if c != 3]]
    max_abs_scale = np.max(np.abs(live), axis=0, keepdims=True) / 7
    mse, mse_max_abs = _channel_mse(live, chosen, 4), _channel_mse(live, max_abs_scale, 4)
    print("4-bit weight MSE / max-abs MSE per channel:", np.round(mse / mse_max_abs, 3))
    assert np.all(mse < 0.9 * mse_max_abs)
    assert np.all(chosen < max_abs_scale)


def test_mse_weight_scale_channels_are_independent():
    rng = np.random.default_rng(1)
    w = rng.laplace(0, 0.1, (3, 3, 4, 6)).astype(np.float32)  # Conv2D kernel, channels last
    scale = clipping.mse_weight_scale(w, bits=4)
    assert scale.shape == (1, 1, 1, 6)
    permutation = rng.permutation(6)
    np.testing.assert_array_equal(clipping.mse_weight_scale(w[..., permutation], bits=4), scale[..., permutation])
    for c in range(6):
        alone = clipping.mse_weight_scale(w[..., c], bits=4, channel_axes=())
        assert alone.shape == (1, 1, 1) and alone.item() == scale[..., c].item()


def test_mse_weight_scale_is_the_best_candidate():
    w = np.random.default_rng(2).standard_t(3, (64, 5))
    steps = 100
    scale = clipping.mse_weight_scale(w, bits=3, narrow_range=False, steps=steps)
    for c in range(5):
        column = w[:, c]
        candidates = (np.linspace(1 / steps, 1, steps) * np.abs(column).max() / 3).astype(np.float32)
        errors = [np.sum((column - s * np.clip(np.round(column / s), -4, 3)) ** 2) for s in candidates.astype(np.float64)]
        assert scale[0, c] == candidates[len(errors) - 1 - int(np.argmin(errors[::-1]))]


# --- errors --------------------------------------------------------------------------------------
RANGE_FUNCTIONS = [
    lambda h: clipping.percentile_range(h, -1.0, 1.0),
    lambda h: clipping.mse_range(h, -1.0, 1.0),
    lambda h: clipping.kl_range(h, -1.0, 1.0),
    lambda h: clipping.aciq_range(h, -1.0, 1.0),
]


@pytest.mark.parametrize("choose", RANGE_FUNCTIONS)
def test_empty_histogram_is_rejected(choose):
    with pytest.raises(ValueError, match="empty"):
        choose(Histogram(np.zeros(4096), 1.0))


@pytest.mark.parametrize("choose", RANGE_FUNCTIONS)
def test_nan_histogram_is_rejected(choose):
    counts = np.ones(4096)
    counts[7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        choose(Histogram(counts, 1.0))
    with pytest.raises(ValueError, match="limit"):
        choose(Histogram(np.ones(4096), float("nan")))


def test_kl_threshold_and_inputs_are_validated():
    with pytest.raises(ValueError, match="empty"):
        clipping.kl_threshold(np.zeros(2048), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        clipping.kl_threshold(np.full(2048, np.nan), 0.1)
    with pytest.raises(ValueError, match="levels"):
        clipping.kl_threshold(np.ones(100), 0.1, levels=128)
    with pytest.raises(ValueError, match="NaN"):
        clipping.histogram_of(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="NaN"):
        clipping.mse_weight_scale(np.array([[1.0], [np.nan]]), bits=4)


def test_kl_threshold_rejects_counts_too_small_for_the_smoothing():
    # MXNet's smoothing is in counts: a bin holding less than ε·n_zero/n_nonzero of a sample
    # would turn negative, which its loop asserts against; no candidate is valid here.
    folded = _heavy_tailed_histograms()["student_t"] * 1e-9
    assert np.all(np.isinf(clipping._kl_divergences(folded, 128)))
    with pytest.raises(ValueError, match="valid"):
        clipping.kl_threshold(folded, 0.01, 128)


def test_kl_range_ignores_exact_zeros():
    # A ReLU output: half exact zeros, half |N(0, 2)| capped at 6. The zeros are exact on every
    # grid; with them counted, the divergence would clip the rest at 3.75.
    rng = np.random.default_rng(0)
    positive = np.clip(np.abs(rng.normal(0, 2, 200_000)), 0, 6)
    with_zeros = clipping.histogram_of(np.concatenate([np.zeros(200_000), positive]))
    assert with_zeros.zeros == 200_000
    without = clipping.histogram_of(positive)
    assert clipping.kl_range(with_zeros, 0.0, 6.0) == clipping.kl_range(without, 0.0, float(positive.max()))
