"""Grouped statistics match numpy on known numbers, and the t quantiles match the textbook table."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness.stats import format_mean_std, summarize, t975


def test_summary_matches_numpy():
    xs = [0.9412, 0.9398, 0.9421, 0.9405, 0.9430]
    s = summarize(xs)
    assert s["n"] == 5
    assert s["mean"] == pytest.approx(np.mean(xs))
    assert s["std"] == pytest.approx(np.std(xs, ddof=1))
    assert s["median"] == pytest.approx(np.median(xs))
    half = 2.7764 * np.std(xs, ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert (s["ci95_low"], s["ci95_high"]) == pytest.approx((np.mean(xs) - half, np.mean(xs) + half))


def test_one_value_has_no_spread_and_missing_values_are_skipped():
    s = summarize([0.5, None, float("nan")])
    assert s["n"] == 1 and s["mean"] == 0.5 and s["std"] is None and s["ci95_low"] is None
    assert summarize([])["n"] == 0
    assert format_mean_std(s, scale=100) == "50.00 (n=1)"


@pytest.mark.parametrize("df,expected", [(1, 12.706), (9, 2.262), (30, 2.042), (40, 2.021), (60, 2.000),
                                         (120, 1.980), (1000, 1.962)])
def test_t_quantiles(df, expected):
    assert t975(df) == pytest.approx(expected, abs=1.5e-3)


def test_format():
    s = summarize([94.0, 94.2])
    text = format_mean_std(s)
    assert text.startswith("94.10 ± 0.14 (n=2, 95% CI")
