"""The campaign's time budget: whether the next step still fits, and how long it may run. Pure: the
caller passes in what it measured (no clocks here), so every decision is unit-tested.

A step's estimate is its prior (seconds on the reference GPU, or on a CPU for --smoke) times the ratio
measured / estimated over the steps that have run so far: a GPU half as fast as the reference doubles every
later estimate after its first step. Every second a step took is charged, an over-running one's too,
so the time left is the budget minus the wall time spent, minus a reserve for writing the final report.
A step whose estimate exceeds what is left is skipped (with its estimate and the time left, for the
report), and later steps that still fit run. A step that runs gets a timeout of a few times its estimate,
never past the budget, so one hung step cannot eat the rest.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    run: bool
    estimate_s: float  # the prior scaled by what was measured so far
    timeout_s: float  # 0 when skipped
    reason: str = ""  # why it was skipped ("" when it runs)


@dataclass
class Budget:
    budget_s: float
    reserve_s: float = 0.0  # kept back for the final report (plots, tables)
    slack: float = 3.0  # a running step may take this many times its estimate ...
    grace_s: float = 60.0  # ... or its estimate plus this, whichever is longer (short steps vary most)
    spent_s: float = 0.0  # wall time charged so far: every step's, and the campaign's own between steps
    estimated_s: float = 0.0  # sum of the priors of the steps that ran
    measured_s: float = 0.0  # sum of their measured times

    @property
    def scale(self) -> float:
        """Measured / estimated over the steps run so far; 1 before the first."""
        return self.measured_s / self.estimated_s if self.estimated_s > 0 else 1.0

    @property
    def left_s(self) -> float:
        return self.budget_s - self.reserve_s - self.spent_s

    def decide(self, prior_s: float) -> Decision:
        estimate = prior_s * self.scale
        left = self.left_s
        if estimate > left:
            return Decision(False, estimate, 0.0, f"estimated {estimate:.0f} s, {max(left, 0):.0f} s left")
        return Decision(True, estimate, min(left, max(self.slack * estimate, estimate + self.grace_s)))

    def learn(self, prior_s: float, elapsed_s: float) -> None:
        """A step measured earlier (by a previous call of a resumed campaign): the scale only."""
        self.estimated_s += prior_s
        self.measured_s += elapsed_s

    def charge(self, prior_s: float, elapsed_s: float) -> None:
        """A step ran for `elapsed_s` (however it ended): it counts against the budget and the scale."""
        self.spent_s += elapsed_s
        self.learn(prior_s, elapsed_s)

    def charge_overhead(self, elapsed_s: float) -> None:
        """Time spent outside the steps (device query, data staging, reports): budget only, not the scale."""
        self.spent_s += elapsed_s
