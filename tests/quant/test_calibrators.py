"""Calibrators against hand-computed thresholds, streaming and constant memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecoinfer.quant import (
    CalibrationDataError,
    EntropyCalibrator,
    MinMaxCalibrator,
    MSECalibrator,
    PercentileCalibrator,
    fp8_scale,
    make_calibrator,
    per_channel_amax,
    per_channel_minmax,
    per_channel_scale,
)


# ---------------------------------------------------------------------------- min-max
def test_minmax_known_arrays() -> None:
    c = MinMaxCalibrator(name="x")
    c.observe(np.array([-3.0, 1.0, 2.0]))
    c.observe(torch.tensor([[0.5, 2.54]]))  # torch tensors are accepted too
    assert c.min_val == -3.0
    assert c.max_val == pytest.approx(2.54)
    assert c.amax() == 3.0
    assert c.scale() == pytest.approx(3.0 / 127)
    assert c.scale(num_bits=4) == pytest.approx(3.0 / 7)
    # asymmetric: range [-3, 2.54] over 255 steps
    assert c.scale(symmetric=False) == pytest.approx(5.54 / 255)


def test_fp8_scale() -> None:
    assert fp8_scale(896.0) == 2.0
    assert fp8_scale(0.0) == 1.0


def test_no_data_is_a_clear_error() -> None:
    for method in ("minmax", "percentile", "entropy", "mse"):
        c = make_calibrator(method, name="act")
        with pytest.raises(CalibrationDataError, match="'act'.*seen no data"):
            c.amax()


def test_nan_is_a_clear_error() -> None:
    c = PercentileCalibrator(name="act")
    with pytest.raises(CalibrationDataError, match="'act'.*NaN"):
        c.observe(np.array([1.0, np.nan]))


def test_unknown_method() -> None:
    with pytest.raises(CalibrationDataError, match="unknown calibration method 'kl'"):
        make_calibrator("kl")


def test_all_zeros_gives_zero_amax_and_unit_scale() -> None:
    for method in ("minmax", "percentile", "entropy", "mse"):
        c = make_calibrator(method)
        c.observe(np.zeros(10))
        assert c.amax() == 0.0
        assert c.scale() == 1.0


def test_zeros_before_range_are_counted() -> None:
    c = PercentileCalibrator(percentile=50.0, num_bins=10)
    c.observe(np.zeros(90))
    c.observe(np.full(10, 10.0))
    # 90 % zeros: the median is in bin 0, whose upper edge is 1.0
    assert c.hist[0] == 90 and c.hist[-1] == 10
    assert c.amax() == 1.0


# ---------------------------------------------------------------------------- per channel
def test_per_channel_amax_and_scale() -> None:
    w = np.array([[[1.0, -4.0]], [[0.0, 0.0]], [[2.0, 0.5]]])  # 3 output channels
    np.testing.assert_array_equal(per_channel_amax(w, axis=0), [4.0, 0.0, 2.0])
    np.testing.assert_allclose(per_channel_scale(w, axis=0), [4 / 127, 1.0, 2 / 127])
    np.testing.assert_array_equal(per_channel_amax(torch.tensor(w), axis=-1), [2.0, 4.0])
    lo, hi = per_channel_minmax(w, axis=0)
    np.testing.assert_array_equal(lo, [-4.0, 0.0, 0.5])
    np.testing.assert_array_equal(hi, [1.0, 0.0, 2.0])


# ---------------------------------------------------------------------------- percentile
def test_percentile_on_arange_within_one_bin() -> None:
    x = np.arange(10_000, dtype=np.float64)
    for p in (99.9, 99.99, 99.999):
        c = PercentileCalibrator(percentile=p)
        c.observe(x)
        exact = np.percentile(x, p)  # 99.9 -> 9989.001
        assert abs(c.amax() - exact) <= c.bin_width
    c = PercentileCalibrator(percentile=99.9)
    c.observe(x)
    # by hand: range 9999 over 2048 bins; 9990 values <= 9989 reach 99.9 %, and 9989 lies
    # in bin floor(9989 * 2048 / 9999) = 2045, whose upper edge is 2046 * 9999 / 2048
    assert c.amax() == pytest.approx(2046 * 9999 / 2048)


def test_percentile_uses_absolute_values() -> None:
    c = PercentileCalibrator(percentile=100.0)
    c.observe(np.array([-8.0, 1.0, 2.0]))
    assert c.amax() == 8.0


# ---------------------------------------------------------------------------- entropy, mse
def _bulk_with_outliers() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(0.0, 1.0, 100_000), [50.0, -50.0, 49.0, 48.0]])


def test_entropy_clips_outliers_but_keeps_the_bulk() -> None:
    x = _bulk_with_outliers()
    c = EntropyCalibrator()
    c.observe(x)
    t = c.amax()
    bulk = np.abs(x[:-4])
    # above the bulk (its 99.9th percentile, ~3.3), far below the outliers
    assert np.percentile(bulk, 99.9) < t < 10.0
    assert c.scale() == pytest.approx(t / 127)


def test_entropy_keeps_everything_without_outliers() -> None:
    # uniform data: clipping any of it costs more than the coarser grid, so T ~ max
    c = EntropyCalibrator()
    c.observe(np.linspace(-1.0, 1.0, 100_001))
    assert c.amax() > 0.95


def test_mse_hand_computed_threshold() -> None:
    # 200k values uniform in [-1, 1] and two outliers at +-16. For t > 1 the expected error
    # is rounding noise 200k * (t/127)^2 / 12 plus clipping 2 * (16 - t)^2; its derivative
    # 2 * 200k / (127^2 * 12) * t - 4 * (16 - t) vanishes at t = 64 / (4 + 2.0667) = 10.55
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(-1.0, 1.0, 200_000), [16.0, -16.0]])
    c = MSECalibrator()
    c.observe(x)
    a = 2 * 200_000 / (127**2 * 12)
    expected = 64 / (a + 4)
    assert expected == pytest.approx(10.55, abs=0.01)
    assert abs(c.amax() - expected) < 0.1
    assert 1.0 < c.amax() < 16.0


# ---------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_two_halves_equal_whole_within_a_bin(method: str) -> None:
    x = _bulk_with_outliers()
    # sorted by |x|: the second half holds the outliers, so it forces the range to widen
    x = x[np.argsort(np.abs(x), kind="stable")]
    whole = make_calibrator(method)
    whole.observe(x)
    halves = make_calibrator(method)
    halves.observe(x[: x.size // 2])
    halves.observe(x[x.size // 2 :])
    assert halves.range >= whole.range
    # widening merges bins, so compare at the coarser of the two bin widths
    assert abs(halves.amax() - whole.amax()) <= max(halves.bin_width, whole.bin_width)


def test_widening_is_exact_merge() -> None:
    c = PercentileCalibrator(num_bins=8)
    c.observe(np.array([0.5, 1.5, 3.5, 4.0]))  # range 4, width 0.5
    assert c.hist.tolist() == [0, 1, 0, 1, 0, 0, 0, 2]
    c.observe(np.array([9.0]))  # k = ceil(9 / 4) = 3: range 12, width 1.5
    assert c.range == 12.0
    # old bins (width 0.5) 0-2 -> new bin 0, 3-5 -> 1, 6-7 -> 2; then 9.0 lands in bin 6
    assert c.hist.tolist() == [1, 1, 2, 0, 0, 0, 1, 0]
    assert c.hist.sum() == 5


def test_memory_does_not_grow_with_batches() -> None:
    rng = np.random.default_rng(3)
    cals = [make_calibrator(m) for m in ("percentile", "entropy", "mse")]
    sizes = None
    for i in range(200):
        batch = rng.normal(0.0, 1.0 + i / 10, 1000)  # growing range: many widenings
        for c in cals:
            c.observe(batch)
        now = [(c.hist.shape, c.hist.nbytes) for c in cals]
        sizes = sizes or now
        assert now == sizes
    assert all(c.hist.shape == (2048,) and c.hist.sum() == 200_000 for c in cals)


def test_kl_of_one_candidate_by_hand() -> None:
    from ecoinfer.quant.calibrators import _kl_clipped  # noqa: PLC0415 (the inner step)

    head = np.array([4.0, 0.0, 2.0, 2.0])
    # 2 levels over 4 bins: groups {0,1} and {2,3}; the empty bin 1 stays empty, so Q == P
    assert _kl_clipped(head, 0.0, levels=2) == pytest.approx(0.0)
    # 4 outliers join P's last bin: P = [4,0,2,6]/12, Q = [4,0,2,2]/8;
    # KL = 1/3 ln(2/3) + 1/6 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    assert _kl_clipped(head, 4.0, levels=2) == pytest.approx(0.5 * np.log(4 / 3))
    # outliers landing on an empty last bin: P has mass where Q has none
    assert _kl_clipped(np.array([4.0, 0.0]), 1.0, levels=1) == np.inf


def test_entropy_ignores_the_zero_spike_of_relu_outputs() -> None:
    # after a ReLU most values are exact zeros; their bin must not drag the threshold down
    x = np.maximum(np.random.default_rng(0).normal(-0.25, 1.0, 200_000), 0.0)  # ~60% zeros
    c = EntropyCalibrator()
    c.observe(x)
    assert c.amax() > np.percentile(x[x > 0], 99)
