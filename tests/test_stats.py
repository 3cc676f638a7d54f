"""Grouped statistics match numpy on known numbers, the t quantiles match the textbook table, spreads are
min–max below 10 values and p10–p90 from 10, and no interval comes from fewer than 3 values or leaves its
bounds."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness.stats import ACCURACY, format_median, format_mean_std, spread, summarize, t975


def test_summary_matches_numpy():
    xs = [0.9412, 0.9398, 0.9421, 0.9405, 0.9430]
    s = summarize(xs)
    assert s["n"] == 5
    assert s["mean"] == pytest.approx(np.mean(xs))
    assert s["std"] == pytest.approx(np.std(xs, ddof=1))
    assert s["median"] == pytest.approx(np.median(xs))
    assert (s["p10"], s["p90"]) == pytest.approx((np.percentile(xs, 10), np.percentile(xs, 90)))
    half = 2.7764 * np.std(xs, ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert (s["ci95_low"], s["ci95_high"]) == pytest.approx((np.mean(xs) - half, np.mean(xs) + half))


def test_one_value_has_no_spread_and_missing_values_are_skipped():
    s = summarize([0.5, None, float("nan")])
    assert s["n"] == 1 and s["mean"] == 0.5 and s["std"] is None and s["ci95_low"] is None
    assert summarize([])["n"] == 0
    assert format_mean_std(s, scale=100) == "50.00 (n=1)"
    assert format_median(s) == "0 (n=1)" and format_median(summarize([])) == "-"


@pytest.mark.parametrize("df,expected", [(1, 12.706), (9, 2.262), (30, 2.042), (40, 2.021), (60, 2.000),
                                         (120, 1.980), (1000, 1.962)])
def test_t_quantiles(df, expected):
    assert t975(df) == pytest.approx(expected, abs=1.5e-3)


def test_two_runs_give_no_interval_and_say_so():
    """The campaign once printed 'test accuracy 10.16 ± 3.31% (n=2, 95% CI -19.62–39.94)'."""
    s = summarize([0.0785, 0.1247], bounds=ACCURACY)
    assert s["n"] == 2 and s["std"] is not None and s["ci95_low"] is None and s["ci95_high"] is None
    text = format_mean_std(s, 100, 2, "%")
    assert text == "10.16 ± 3.27% (n = 2: too few runs for an interval, min–max 7.85–12.47)"
    assert "-" not in text.split("(")[0] and "CI" not in text


def test_accuracy_intervals_stay_inside_0_1():
    s = summarize([0.02, 0.10, 0.25], bounds=ACCURACY)  # mean 0.123, half-width 0.29: raw low -0.17
    assert s["ci95_low"] == 0.0 and 0 < s["ci95_high"] <= 1
    hi = summarize([0.999, 0.95, 0.999], bounds=ACCURACY)
    assert hi["ci95_high"] == 1.0
    # a summary written without bounds (an older repeats.json): a percentage of a fraction is still clipped
    raw = summarize([0.02, 0.10, 0.25])
    assert raw["ci95_low"] < 0
    text = format_mean_std(raw, 100, 2, "%")
    assert "95% CI 0.00–" in text and "-0." not in text and "–-" not in text


def test_spread_is_min_max_below_10_values_and_p10_p90_from_10():
    few = summarize([1, 2, 3, 100])
    assert spread(few) == (1, 100, "min–max")
    many = summarize(list(range(1, 11)) + [1000])
    low, high, name = spread(many)
    assert name == "p10–p90" and (low, high) == pytest.approx((np.percentile(list(range(1, 11)) + [1000], 10),
                                                               np.percentile(list(range(1, 11)) + [1000], 90)))
    assert format_median(few, ".0f", " ms") == "2 ms (n=4, min–max 1–100)"
    assert "p10–p90" in format_median(many)


def test_format():
    s = summarize([94.0, 94.2, 94.1])
    text = format_mean_std(s)
    assert text.startswith("94.10 ± 0.10 (n=3, min–max 94.00–94.20, 95% CI")
