"""The campaign's time budget: whether the next step still fits, how long it may run (its hard cap), and
the plan of a whole allocation. Pure: the caller passes in what it measured (no clocks here), so every
decision is unit-tested.

A step's estimate has three parts (steps.py says where each number comes from): start and compile
seconds, which do not depend on the GPU and are never rescaled, and run seconds, which are multiplied by
the ratio measured / estimated learned from the steps so far. What a step took beyond its start and
compile estimates counts as its run time (an overrun of the compile estimate therefore also raises the
later run estimates: the cautious direction). The ratio is kept at least MIN_SCALE: a GPU that looks
faster than assumed never shrinks an estimate to nothing.

Every second a step took is charged, an over-running one's too, so the time left is the budget minus the
wall time spent, minus a reserve for the final report. A step whose estimate exceeds what is left is
skipped (with its estimate and the time left, for the report), and later steps that still fit run. A
step that runs gets a hard cap: 1.5x its estimate or its estimate + 30 s, whichever is longer, never past
the budget; at the cap its processes are stopped and what it wrote so far is kept.
"""
from __future__ import annotations

from dataclasses import dataclass

MIN_SCALE = 0.5


@dataclass(frozen=True)
class Estimate:
    start_s: float = 0.0
    compile_s: float = 0.0
    run_s: float = 0.0

    @property
    def fixed_s(self) -> float:
        """What the GPU's speed does not change."""
        return self.start_s + self.compile_s


@dataclass(frozen=True)
class Decision:
    run: bool
    estimate_s: float  # fixed + run x the learned ratio
    timeout_s: float  # the hard cap; 0 when skipped
    reason: str = ""  # why it was skipped ("" when it runs)


@dataclass
class Budget:
    budget_s: float
    reserve_s: float = 0.0  # kept back for the final report (plots, tables)
    slack: float = 1.5  # a running step may take this many times its estimate ...
    grace_s: float = 30.0  # ... or its estimate plus this, whichever is longer (short steps vary most)
    spent_s: float = 0.0  # wall time charged so far: every step's, and the campaign's own between steps
    run_estimated_s: float = 0.0  # sum of the run parts of the steps that ran
    run_measured_s: float = 0.0  # what those steps took beyond their fixed parts

    @property
    def scale(self) -> float:
        """Measured / estimated run time over the steps so far (at least MIN_SCALE); 1 before the first."""
        if self.run_estimated_s <= 0:
            return 1.0
        return max(MIN_SCALE, self.run_measured_s / self.run_estimated_s)

    @property
    def left_s(self) -> float:
        return self.budget_s - self.reserve_s - self.spent_s

    def estimate(self, e: Estimate) -> float:
        return e.fixed_s + e.run_s * self.scale

    def cap(self, estimate_s: float) -> float:
        return min(self.left_s, max(self.slack * estimate_s, estimate_s + self.grace_s))

    def decide(self, e: Estimate) -> Decision:
        estimate = self.estimate(e)
        left = self.left_s
        if estimate > left:
            return Decision(False, estimate, 0.0, f"estimated {estimate:.0f} s, {max(left, 0):.0f} s left")
        return Decision(True, estimate, self.cap(estimate))

    def learn(self, e: Estimate, elapsed_s: float) -> None:
        """A step measured earlier (by a previous call of a resumed campaign): the ratio only."""
        if e.run_s > 0:
            self.run_estimated_s += e.run_s
            self.run_measured_s += max(0.0, elapsed_s - e.fixed_s)

    def charge(self, e: Estimate, elapsed_s: float) -> None:
        """A step ran for `elapsed_s` (however it ended): it counts against the budget and the ratio."""
        self.spent_s += elapsed_s
        self.learn(e, elapsed_s)

    def charge_overhead(self, elapsed_s: float) -> None:
        """Time spent outside the steps (device query, reports): budget only, not the ratio."""
        self.spent_s += elapsed_s


@dataclass(frozen=True)
class PlannedStep:
    name: str
    estimate: Estimate
    decision: Decision
    at_s: float  # when it would start, counted from the campaign's start


def plan(steps: list[tuple[str, Estimate]], budget_s: float, reserve_s: float = 0.0) -> list[PlannedStep]:
    """What a call would do if every step took exactly its estimate: which steps run (in the order given),
    each one's cap, and which are skipped for time."""
    b = Budget(budget_s, reserve_s)
    out = []
    for name, e in steps:
        d = b.decide(e)
        out.append(PlannedStep(name, e, d, b.spent_s))
        if d.run:
            b.charge(e, d.estimate_s)
    return out
