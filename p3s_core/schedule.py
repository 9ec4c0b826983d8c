"""Timestep-based weight scheduler: how strongly the subject is injected at each point of sampling.

Progress runs from 0 (first step, pure noise) to 1 (last step). The paper's intent is low weight early
(the prompt decides the layout) and high weight late (identity detail comes back). The presets and the
"multiplier of the apply weight" reading are our choices; the paper gives no formula.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

PRESETS = ("constant", "ramp_up", "ramp_down", "cosine", "step")


def _bad(name: str, value, fix: str) -> ValueError:
    return ValueError(f"P3S: {name}={value!r} is invalid: {fix}")


@dataclass(frozen=True)
class WeightSchedule:
    """Weight as a function of sampling progress.

    ``preset`` shapes the curve between ``low`` and ``high`` inside the window
    [``start_percent``, ``end_percent``]; outside the window the weight is 0 (no injection at all):
    constant = high; ramp_up = low -> high; ramp_down = high -> low; cosine = low -> high eased
    (slow start, slow finish); step = low until ``step_at`` of the window, then high.
    """

    preset: str = "constant"
    low: float = 0.0
    high: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    step_at: float = 0.5

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise _bad("schedule", self.preset, f"use one of {', '.join(PRESETS)}")
        for name in ("low", "high", "start_percent", "end_percent", "step_at"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v):
                raise _bad(name, v, "give a finite number")
        if not 0.0 <= self.start_percent <= 1.0 or not 0.0 <= self.end_percent <= 1.0:
            raise _bad("start_percent/end_percent", (self.start_percent, self.end_percent), "use values in 0..1")
        if self.start_percent > self.end_percent:
            raise _bad("start_percent", self.start_percent,
                       f"it must not be after end_percent={self.end_percent}; swap them")
        if self.low < 0 or self.high < 0:
            raise _bad("weight", (self.low, self.high), "weights must be >= 0 (0 = no injection)")

    def active(self, progress: float) -> bool:
        """Inside the window; a zero-length window (start == end) never opens."""
        return self.start_percent < self.end_percent and self.start_percent <= progress <= self.end_percent

    def weight(self, progress: float) -> float:
        """The injection weight at ``progress`` (0..1); 0 outside the window."""
        if not self.active(progress):
            return 0.0
        t = min(max((progress - self.start_percent) / (self.end_percent - self.start_percent), 0.0), 1.0)
        lo, hi = self.low, self.high
        if self.preset == "constant":
            return hi
        if self.preset == "ramp_up":
            return lo + (hi - lo) * t
        if self.preset == "ramp_down":
            return hi + (lo - hi) * t
        if self.preset == "cosine":
            return lo + (hi - lo) * (1.0 - math.cos(math.pi * t)) / 2.0
        return hi if t >= self.step_at else lo  # step

    def scaled(self, factor: float) -> "WeightSchedule":
        """The same curve with both ends multiplied by ``factor`` (the apply node's weight)."""
        return WeightSchedule(self.preset, self.low * factor, self.high * factor, self.start_percent,
                              self.end_percent, self.step_at)

    def with_window(self, start_percent: float, end_percent: float) -> "WeightSchedule":
        return WeightSchedule(self.preset, self.low, self.high, start_percent, end_percent, self.step_at)
