"""Statistics over repeated measurements: n, mean ± std, median, spread and a 95% confidence interval of
the mean, and the one way every tool writes them.

One helper for every tool that reports repeats (the report's seed groups and scaling rows, the speed
recipe's repeats, the benchmark's repeats and rounds, the campaign): airbench-style claims ("94.01% mean
over n = 25 runs") need the interval, not one lucky seed, and a timed figure needs its spread.

  * Spread: min–max for n < 10, p10–p90 from n = 10 on (`spread`): with few values the extremes are the
    honest range, with many one outlier should not set it.
  * Interval: Student's t, mean ± t(0.975, n - 1) · std / sqrt(n), with the sample std (ddof = 1), and only
    from n >= 3 (`MIN_INTERVAL_N`): at n = 2, t(0.975, 1) = 12.7 makes the interval 9x the std wide, which
    is how the campaign once printed an accuracy interval of -19.62–39.94% (`format_mean_std` prints
    "n = 2: too few runs for an interval" instead).
  * Bounds: a quantity with a known range (an accuracy is in [0, 1]: `ACCURACY`) has its interval clipped
    to it, and the unclipped ends kept (`ci95_unclipped`), so harness.sanity.interval flags the clipped
    interval with its reason; a fraction shown as a percentage (scale 100, unit "%") is clipped to [0, 100]
    when written.

No SciPy: the two-sided 95% quantiles for 1..30 degrees of freedom are the standard table values; above
30 a Cornish-Fisher expansion around the normal quantile is within 1e-4 of the exact value.
"""
from __future__ import annotations

import math
import statistics

# t(0.975, df) for df = 1..30 (two-sided 95%)
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959964

MIN_INTERVAL_N = 3  # the fewest values an interval is computed from
PERCENTILE_N = 10  # from this many values on, the spread is p10–p90 rather than min–max
ACCURACY = (0.0, 1.0)  # bounds of an accuracy (a fraction)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def percentile(xs: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `xs`, linear between order statistics (numpy's default)."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (pos - lo)


def _clip(x, bounds):
    return x if bounds is None or x is None else min(max(x, bounds[0]), bounds[1])


def summarize(values, bounds: tuple[float, float] | None = None) -> dict:
    """n, mean, std (sample), median, min, max, p10, p90 and the 95% interval of the mean of `values`
    (None and NaN skipped). The interval is None below MIN_INTERVAL_N values, and clipped to `bounds`
    (e.g. ACCURACY) when given; `ci95_unclipped` then holds the ends before clipping (None when nothing
    was clipped), for harness.sanity.interval. One value: std is None too (one run says nothing about the
    spread)."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "median": None, "min": None, "max": None, "p10": None,
                "p90": None, "ci95_low": None, "ci95_high": None, "ci95_unclipped": None}
    mean = statistics.fmean(xs)
    std = statistics.stdev(xs) if n > 1 else None
    half = t975(n - 1) * std / math.sqrt(n) if n >= MIN_INTERVAL_N else None
    raw = (mean - half, mean + half) if half is not None else (None, None)
    low, high = _clip(raw[0], bounds), _clip(raw[1], bounds)
    return {"n": n, "mean": mean, "std": std, "median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "p10": percentile(xs, 10), "p90": percentile(xs, 90), "ci95_low": low, "ci95_high": high,
            "ci95_unclipped": list(raw) if (low, high) != raw else None}


def spread_name(n: int) -> str:
    """The name of the spread of `n` values: min–max below PERCENTILE_N, p10–p90 from it on."""
    return "p10–p90" if n >= PERCENTILE_N else "min–max"


def spread(s: dict) -> tuple[float | None, float | None, str]:
    """(low, high, its name) of a `summarize` dict: min–max for n < 10, p10–p90 from 10 values on."""
    if not s.get("n"):
        return None, None, ""
    if spread_name(s["n"]) == "p10–p90" and s.get("p10") is not None:
        return s["p10"], s["p90"], "p10–p90"
    return s["min"], s["max"], "min–max"


def format_figure(median: float | None, n: int | None, low: float | None = None, high: float | None = None,
                  fmt: str = ",.0f", unit: str = "", scale: float = 1.0) -> str:
    """'1,234 (n=5, min–max 1,100–1,300)': a median with n and its spread (named by `spread_name(n)`);
    'x (n=1)' for one value, '-' for none. The one way every tool writes a timed figure, from a summary
    (`format_median`) or from a row's columns (harness.bench.outputs.figure)."""
    if median is None or not n:
        return "-"
    f = lambda v: format(v * scale, fmt)  # noqa: E731
    if n == 1 or low is None or high is None:
        return f"{f(median)}{unit} (n={n})"
    return f"{f(median)}{unit} (n={n}, {spread_name(n)} {f(low)}–{f(high)})"


def format_median(s: dict, fmt: str = ",.0f", unit: str = "", scale: float = 1.0) -> str:
    """'1,234 (n=5, min–max 1,100–1,300)': the median with n and the spread; 'x (n=1)' for one value."""
    if not s.get("n"):
        return "-"
    lo, hi, _ = spread(s)
    return format_figure(s["median"], s["n"], lo, hi, fmt, unit, scale)


def format_mean_std(s: dict, scale: float = 1.0, digits: int = 2, unit: str = "",
                    bounds: tuple[float, float] | None = None) -> str:
    """'94.05 ± 0.12% (n=10, p10–p90 93.90–94.20, 95% CI 93.96–94.14)' from a `summarize` dict; 'x (n=1)'
    for one value; 'x ± s (n = 2: too few runs for an interval, min–max a–b)' below MIN_INTERVAL_N. The
    interval is clipped to `bounds` (before scaling); a fraction written as a percentage (scale 100, unit
    '%') is bounded by [0, 1] whatever the dict holds (it may come from an older file)."""
    if not s.get("n"):
        return "-"
    if bounds is None and scale == 100 and unit.strip() == "%":
        bounds = ACCURACY
    f = lambda v: f"{v * scale:.{digits}f}"  # noqa: E731
    if s.get("std") is None:
        return f"{f(s['mean'])}{unit} (n=1)"
    lo, hi, name = spread(s)
    if s["n"] < MIN_INTERVAL_N or s.get("ci95_low") is None:
        return f"{f(s['mean'])} ± {f(s['std'])}{unit} (n = {s['n']}: too few runs for an interval, {name} " \
               f"{f(lo)}–{f(hi)})"
    text = f"{f(s['mean'])} ± {f(s['std'])}{unit} (n={s['n']}, {name} {f(lo)}–{f(hi)}"
    return f"{text}, 95% CI {f(_clip(s['ci95_low'], bounds))}–{f(_clip(s['ci95_high'], bounds))})"


def proportion_interval(p: float, n: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a proportion `p` measured on `n` items (an accuracy on n test
    images): (low, high), always inside [0, 1], even at p = 0 or 1 where the normal approximation's
    p ± 1.96·sqrt(p(1 - p)/n) collapses to a point. None for n = 0. At p = 0.94, n = 1,000 it is
    about 92.4%–95.3% (the normal approximation: ±1.5 points)."""
    if n <= 0:
        return None
    z2 = _Z975 ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z975 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
