"""The checks every figure passes before a tool prints or writes it: a figure that cannot be true, or that
its own spread does not support, is flagged with its reason and never shown as if sound.

Each check takes plain numbers or `harness.stats.summarize` dicts and returns None (the figure stands) or
a `Flag`, whose text names the kind and the reason: "impossible: efficiency 2042% > 105%",
"unstable: spread 15.6x (0.96–14.96 s, median 6.15 s)". Tools keep a row's flags in its `flags` field
(a list of those texts in JSON, joined by "; " in CSV and markdown: `text`), print them to the console
(`warn`), and draw a flagged row hatched and grey (`FLAGGED`) or leave it out with a note.

The checks and their thresholds:
  * efficiency: weak-scaling efficiency above 105% (N processes each faster than one alone: a
    measurement that did not compare like with like, e.g. different threads per process);
  * real_vs_synthetic: training fed by real data faster than fed by synthetic batches already on the
    device (the same step minus the data work), beyond the spread of the round-by-round ratios (the
    backends alternate, so each round's ratio pairs like with like; two rates' spreads compared unpaired
    let a drift hide an inversion every round shows);
  * mfu: MFU above 100% of the GPU's datasheet peak (against a measured matmul peak, where the device is
    not listed, more than 100% only says the matmul is no ceiling for convolutions: not flagged);
  * interval: a confidence interval from fewer than 3 values, or one outside its quantity's bounds (also
    when harness.stats.summarize clipped it to them: what is printed is clipped, the flag says so);
  * unstable: a spread wider than half its median (the median is then no figure to quote);
  * unlike: compared rows that differ in a setting that should be equal (threads per process, launcher);
  * single: a comparison (a scaling efficiency) in which a side is one measurement: its noise is
    unknown, so the comparison cannot be told from noise ("too few");
  * inefficient: weak-scaling efficiency below 80% (each of N processes more than 20% slower than one
    alone at the same per-process batch), with the reason the runs' own step rows give: how much of the
    per-process step time grew, and how much of that growth the data work explains (the rest is the
    gradient all-reduce and waiting for the slower rank). A true figure, but not one to quote as "the
    model's" throughput without that reason.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from harness.stats import MIN_INTERVAL_N, spread

EFFICIENCY_MAX = 1.05  # 5% above linear: a little noise, never a real speed-up from sharing nothing
EFFICIENCY_LOW = 0.8  # each process more than 20% slower than one alone: the scaling row needs its reason
MFU_MAX = 1.0
UNSTABLE = 0.5  # spread width over median
# a flagged bar: hatched and grey, so it is never read as a sound figure
FLAGGED = {"color": "0.85", "hatch": "///", "edgecolor": "0.4"}


@dataclass(frozen=True)
class Flag:
    kind: str  # impossible | unstable | too few | unlike | inefficient
    reason: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.reason}"


def _g(x: float) -> str:
    return f"{x:,.4g}" if abs(x) < 1000 else f"{x:,.0f}"


def efficiency(value: float | None) -> Flag | None:
    if value is None or value <= EFFICIENCY_MAX:
        return None
    return Flag("impossible", f"efficiency {100 * value:.0f}% > {100 * EFFICIENCY_MAX:.0f}%")


def inefficient(value: float | None, step_ms: tuple[float | None, float | None] = (None, None),
                data_ms: tuple[float | None, float | None] = (None, None)) -> Flag | None:
    """Efficiency below EFFICIENCY_LOW; `step_ms`, `data_ms`: (baseline, this row) median milliseconds per
    optimiser step and of data work per step, at the same per-process batch, from the runs' step rows."""
    if value is None or value >= EFFICIENCY_LOW:
        return None
    reason = f"efficiency {100 * value:.0f}% < {100 * EFFICIENCY_LOW:.0f}%"
    if None not in step_ms:
        (a, b), (c, d) = step_ms, data_ms
        reason += f": the step takes {a:.1f} -> {b:.1f} ms per process at the same per-process batch"
        if None not in data_ms:
            reason += (f", data {c:.1f} -> {d:.1f} ms of it, and the other {max(0.0, (b - a) - (d - c)):.1f} ms are "
                       f"synchronisation (DDP's gradient all-reduce, waiting for the slower rank)")
    return Flag("inefficient", reason)


def real_vs_synthetic(ratio: dict) -> Flag | None:
    """`ratio`: the summary of the round-by-round ratios real-data images/s / synthetic images/s (rows timed
    in the same alternating rounds). Flagged impossible when the ratios' whole spread lies above 1; with
    one round and the ratio above 1, too few to judge."""
    if not ratio.get("n") or ratio["median"] is None:
        return None
    low, high, name = spread(ratio)
    if ratio["n"] < 2:  # no spread to tell a real inversion from noise
        if ratio["median"] <= 1:
            return None
        return Flag("too few", f"real data {ratio['median']:.2f}x synthetic from a single round (n=1): no spread "
                               f"to judge it by")
    if low <= 1:
        return None
    return Flag("impossible", f"real data {ratio['median']:.2f}x synthetic, beyond the spread of the round-by-round "
                              f"ratios (n={ratio['n']}, {name} {low:.2f}–{high:.2f} > 1)")


def mfu(value: float | None, peak_source: str | None) -> Flag | None:
    if value is None or peak_source != "table" or value <= MFU_MAX:
        return None
    return Flag("impossible", f"MFU {100 * value:.0f}% > 100% of the datasheet peak")


def interval(s: dict, bounds: tuple[float, float] | None = None) -> Flag | None:
    """A summary whose interval should not exist (n < 3), lies outside `bounds`, or was clipped to its
    bounds by harness.stats.summarize (`ci95_unclipped`: the printed interval is the clipped one)."""
    low, high = s.get("ci95_low"), s.get("ci95_high")
    if low is None or high is None:
        return None
    if s.get("n", 0) < MIN_INTERVAL_N:
        return Flag("too few", f"n = {s.get('n', 0)}: too few runs for an interval")
    if s.get("ci95_unclipped"):
        a, b = s["ci95_unclipped"]
        return Flag("impossible", f"interval {a:.4g}–{b:.4g} leaves its bounds (printed clipped to {low:.4g}–"
                                  f"{high:.4g}): too few runs or too wide a spread for a t interval")
    if bounds and (low < bounds[0] or high > bounds[1]):
        return Flag("impossible", f"interval {low:.4g}–{high:.4g} outside [{bounds[0]:g}, {bounds[1]:g}]")
    return None


def unstable(s: dict, unit: str = "") -> Flag | None:
    """A spread wider than half the median."""
    if not s.get("n") or s["n"] < 2 or not s.get("median"):
        return None
    lo, hi, name = spread(s)
    if hi - lo <= UNSTABLE * abs(s["median"]):
        return None
    ratio = f"{hi / lo:.1f}x" if lo > 0 else "unbounded"
    return Flag("unstable", f"spread {ratio} ({name} {_g(lo)}–{_g(hi)}{unit}, median {_g(s['median'])}{unit}, "
                            f"n={s['n']})")


def unlike(setting: str, values: dict) -> Flag | None:
    """`values`: label -> the setting's value in each compared row (e.g. {"1 process": 2, "2 processes": 1})."""
    if len({str(v) for v in values.values()}) <= 1:
        return None
    return Flag("unlike", f"{setting} differs: " + ", ".join(f"{v} ({k})" for k, v in values.items()))


def single(counts: dict, what: str) -> Flag | None:
    """`counts`: label -> how many measurements each compared figure is the median of."""
    ones = [str(k) for k, n in counts.items() if (n or 0) < 2]
    if not ones:
        return None
    return Flag("too few", f"{what} from a single measurement at {' and '.join(ones)}: no spread to judge it by")


def collect(*flags: Flag | None) -> list[str]:
    """The texts of the flags that were raised, for a row's `flags` field."""
    return [str(f) for f in flags if f is not None]


def as_list(flags) -> list[str]:
    """A row's flags as a list, whether read from JSON (a list) or from CSV (one "; "-joined cell)."""
    if not flags:
        return []
    return list(flags) if isinstance(flags, (list, tuple)) else [f for f in str(flags).split("; ") if f]


def text(flags) -> str:
    """A row's flags as one cell ("" when sound)."""
    if not flags:
        return ""
    return "; ".join(flags) if isinstance(flags, (list, tuple)) else str(flags)


def warn(where: str, flags, file=None) -> None:
    """One console line per flagged figure."""
    for f in ([flags] if isinstance(flags, str) else flags or []):
        print(f"FLAGGED {where}: {f}", file=file or sys.stderr, flush=True)
