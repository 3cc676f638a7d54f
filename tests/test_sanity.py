"""harness.sanity: each check is fed a fabricated row it must refuse, and one it must let stand; and the
tools use them (the bench's rows, the report's scaling table, the campaign report)."""
from __future__ import annotations

import pytest

from harness import sanity
from harness.stats import summarize


def test_efficiency_above_105_percent_is_impossible():
    """The sweep smoke's scaling table printed `lenet5 | 2 procs | 40.85x | 2042.3%`."""
    flag = sanity.efficiency(20.423)
    assert str(flag) == "impossible: efficiency 2042% > 105%"
    assert sanity.efficiency(1.04) is None and sanity.efficiency(0.6) is None and sanity.efficiency(None) is None


def test_efficiency_below_80_percent_is_flagged_with_the_reason_the_step_rows_give():
    """The like-with-like sweep on the 2-core CPU: lenet5 at 2 processes ran each at 52% of one alone. The
    flag says where the time went: the step grew 9.2 -> 15.2 ms, the data work 1.4 -> 1.9 ms of it."""
    flag = sanity.inefficient(0.519, (9.2, 15.2), (1.4, 1.9))
    assert flag.kind == "inefficient" and str(flag) == (
        "inefficient: efficiency 52% < 80%: the step takes 9.2 -> 15.2 ms per process at the same per-process "
        "batch, data 1.4 -> 1.9 ms of it, and the other 5.5 ms are synchronisation (DDP's gradient all-reduce, "
        "waiting for the slower rank)")
    assert sanity.as_list(sanity.text(sanity.collect(flag))) == [str(flag)]  # one flag survives a CSV cell
    assert str(sanity.inefficient(0.6)) == "inefficient: efficiency 60% < 80%"  # no step rows (a W&B run)
    assert sanity.inefficient(0.85, (1.0, 1.2), (0.1, 0.1)) is None and sanity.inefficient(None) is None


def test_real_data_faster_than_synthetic_beyond_the_spread_is_impossible():
    """The check reads the round-by-round ratios (the backends alternate, so each round pairs like with like)."""
    def ratios(real, synthetic):
        return summarize([a / b for a, b in zip(real, synthetic)])

    synthetic = [100.0, 104.0, 98.0]
    assert "impossible: real data 1.50x synthetic, beyond the spread" in str(
        sanity.real_vs_synthetic(ratios([150.0, 156.0, 147.0], synthetic)))
    # above the synthetic rate in some rounds only: noise, not a flag
    assert sanity.real_vs_synthetic(ratios([103.0, 99.0, 110.0], synthetic)) is None
    assert sanity.real_vs_synthetic(ratios([80.0, 82.0, 79.0], synthetic)) is None
    # one round: an inversion cannot be told from noise, so it is too few, not impossible
    one = sanity.real_vs_synthetic(ratios([7.18], [6.9]))
    assert one.kind == "too few" and "from a single round (n=1)" in str(one)
    assert sanity.real_vs_synthetic(ratios([6.0], [6.9])) is None


def test_a_real_data_inversion_every_round_is_flagged_though_the_machine_drifted():
    """Real 100..120 against synthetic 90..108 images/s: the two rates' spreads overlap (the machine sped up
    over the run), yet real data was 1.11x synthetic in every round."""
    real, synthetic = [100.0, 110.0, 120.0], [90.0, 99.0, 108.0]
    flag = sanity.real_vs_synthetic(summarize([a / b for a, b in zip(real, synthetic)]))
    assert flag.kind == "impossible" and "n=3, min–max 1.11–1.11 > 1" in str(flag)


def test_a_ladder_speed_up_from_one_round_is_too_few():
    from harness.bench.measure import add_speedups

    rows = [{"model": "m", "rung": "baseline", "images_per_s": 100.0, "rounds_images_per_s": [100.0]},
            {"model": "m", "rung": "+bf16", "images_per_s": 180.0, "rounds_images_per_s": [180.0]}]
    add_speedups(rows)
    assert rows[1]["speedup_total"] == 1.8 and rows[1]["flags"] == [
        "too few: speed-up from a single measurement at +bf16: no spread to judge it by"]
    assert not rows[0].get("flags")
    more = [{k: r[k] for k in ("model", "rung", "images_per_s")} | {"rounds_images_per_s": [r["images_per_s"]] * 3}
            for r in rows]
    add_speedups(more)
    assert not more[1].get("flags")


def test_mfu_above_the_datasheet_peak_is_impossible():
    assert str(sanity.mfu(1.3, "table")) == "impossible: MFU 130% > 100% of the datasheet peak"
    assert sanity.mfu(0.45, "table") is None
    # against a measured matmul (a CPU, an unlisted GPU) above 100% says only that the matmul is no ceiling
    assert sanity.mfu(1.46, "measured") is None


def test_an_interval_from_fewer_than_3_runs_is_refused():
    """A summary read from an older file, with an interval from n = 2 (and a negative accuracy bound)."""
    old = {"n": 2, "mean": 0.1016, "std": 0.0331, "median": 0.1016, "min": 0.078, "max": 0.125,
           "ci95_low": -0.1962, "ci95_high": 0.3994}
    assert str(sanity.interval(old)) == "too few: n = 2: too few runs for an interval"
    bad = {**old, "n": 5}
    assert str(sanity.interval(bad, bounds=(0, 1))).startswith("impossible: interval -0.1962–0.3994 outside [0, 1]")
    assert sanity.interval(summarize([0.5, 0.6, 0.55]), bounds=(0, 1)) is None
    assert sanity.interval(summarize([0.5, 0.6])) is None  # summarize gives none below 3


def test_an_accuracy_interval_clipped_to_0_1_is_flagged_with_its_reason():
    """summarize(bounds=ACCURACY) prints the interval clipped to [0, 1]; the check still sees the raw ends."""
    from harness.stats import ACCURACY

    s = summarize([0.1, 0.5, 0.9], bounds=ACCURACY)  # mean 0.5, half-width 0.99
    assert (s["ci95_low"], s["ci95_high"]) == (0.0, 1.0)
    flag = sanity.interval(s, ACCURACY)
    assert flag.kind == "impossible" and "interval -0.4937–1.494 leaves its bounds (printed clipped to 0–1)" in str(flag)
    assert sanity.interval(summarize([0.5, 0.6, 0.55], bounds=ACCURACY), ACCURACY) is None


def test_a_spread_wider_than_half_the_median_is_unstable():
    """The data suite's three repeats of one row were [14.96, 6.15, 0.96] s."""
    flag = sanity.unstable(summarize([14.96, 6.15, 0.96]), " s")
    assert str(flag).startswith("unstable: spread 15.6x (min–max 0.96–14.96 s, median 6.15 s, n=3)")
    assert sanity.unstable(summarize([10.0, 11.0, 12.0])) is None
    assert sanity.unstable(summarize([10.0])) is None  # one value: no spread to judge


def test_unlike_settings_are_named():
    flag = sanity.unlike("threads per process", {"1 process": 2, "2 processes": 1})
    assert str(flag) == "unlike: threads per process differs: 2 (1 process), 1 (2 processes)"
    assert sanity.unlike("threads per process", {"1 process": 1, "2 processes": 1}) is None


def test_a_comparison_of_single_measurements_is_too_few():
    """The sweep smoke's runs had one epoch each: an efficiency of one rate over another says nothing."""
    flag = sanity.single({"1 proc": 1, "2 proc": 1}, "efficiency")
    assert str(flag) == "too few: efficiency from a single measurement at 1 proc and 2 proc: no spread to judge it by"
    assert sanity.single({"1 proc": 2, "2 proc": 3}, "efficiency") is None


def test_flags_go_to_the_console_and_into_one_cell(capsys):
    flags = sanity.collect(sanity.efficiency(1.5), None, sanity.unstable(summarize([1.0, 5.0, 9.0])))
    assert len(flags) == 2 and sanity.text(flags).count("; ") == 1 and sanity.text([]) == ""
    assert sanity.as_list(sanity.text(flags)) == flags and sanity.as_list("") == []  # a CSV cell back to a list
    sanity.warn("lenet5 x2", flags)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "FLAGGED lenet5 x2: impossible: efficiency 150% > 105%" and len(err) == 2


def test_the_bench_flags_an_impossible_row():
    """A fabricated bench row through the bench's own derived columns: scaling efficiency from a baseline
    row with other threads per process is flagged twice, and the report's note says why."""
    import csv
    import tempfile
    from pathlib import Path

    from harness.bench import measure, outputs

    one = {"model": "lenet5", "batch_size": 8, "precision": "fp32", "channels_last": False, "compile": False,
           "data": "synthetic", "mode": "train", "rung": "", "images_per_s": 100.0, "world_size": 1, "threads": 2,
           "launcher": "python"}
    with tempfile.TemporaryDirectory() as d:
        outputs.write_csv(Path(d) / "bench.csv", [one])
        two = {**one, "world_size": 2, "images_per_s": 4085.0, "per_device_images_per_s": 2042.5, "threads": 1,
               "launcher": "accelerate launch (torchrun)", "flags": []}
        measure.add_scaling([two], Path(d) / "bench.csv")
        with open(Path(d) / "bench.csv", newline="") as f:
            assert next(csv.DictReader(f))["threads"] == "2"
    assert two["scaling_efficiency"] == pytest.approx(20.425)
    assert "impossible: efficiency 2042% > 105%" in two["flags"]
    assert any(f.startswith("unlike: threads per process differs: 2 (1 process), 1 (2 processes)") for f in two["flags"])
    assert "impossible: efficiency 2042%" in outputs.note(two)
