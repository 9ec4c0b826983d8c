"""Timestep-based weight scheduler: how strongly the subject is injected at each point of sampling.

This file is the one place that decides the injection strength (docs/design.md, "The schedule"):

- ``WeightSchedule``: the weight as a function of sampling progress, validated once when it is built.
  P3S Apply builds ``WeightSchedule.constant(weight, start_percent, end_percent)``; P3S Sampler builds a
  shape ``WeightSchedule(preset, low, high)`` that ``shaped_by`` lays over the Apply's weight and window.
- ``SigmaSchedule``: the same schedule on one model's noise levels (sigma <-> progress), built once per
  sampling run from the model's ``model_sampling``; the patch asks it ``weight_at(sigma)`` at every call.

Progress runs from 0 (first step, pure noise) to 1 (last step). The paper's intent is low weight early
(the prompt decides the layout) and high weight late (identity detail comes back). The presets and the
"multiple of the apply weight" reading are our choices; the paper gives no formula.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

PRESETS = ("constant", "ramp_up", "ramp_down", "cosine", "step")


def _bad(name: str, value, fix: str) -> ValueError:
    return ValueError(f"P3S: {name}={value!r} is invalid: {fix}")


def _check_inputs(values: dict[str, Any]) -> None:
    """Check node inputs under the names the user sees (a NaN weight is 'weight=nan', not a field's name)."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _bad(name, v, "give a finite number")
        if name.startswith("weight") and v < 0:
            raise _bad(name, v, "weights must be >= 0 (0 = no injection)")


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

    @classmethod
    def constant(cls, weight: float, start_percent: float = 0.0, end_percent: float = 1.0) -> "WeightSchedule":
        """P3S Apply's schedule: ``weight`` throughout the window (what the stock KSampler gets)."""
        _check_inputs({"weight": weight, "start_percent": start_percent, "end_percent": end_percent})
        return cls("constant", weight, weight, start_percent, end_percent)

    @classmethod
    def curve(cls, preset: str, weight_low: float, weight_high: float) -> "WeightSchedule":
        """P3S Sampler's shape (laid over P3S Apply's weight by ``shaped_by``), checked under its input names."""
        _check_inputs({"weight_low": weight_low, "weight_high": weight_high})
        return cls(preset, weight_low, weight_high)

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
        """The same curve with both ends multiplied by ``factor``."""
        return WeightSchedule(self.preset, self.low * factor, self.high * factor, self.start_percent,
                              self.end_percent, self.step_at)

    def with_window(self, start_percent: float, end_percent: float) -> "WeightSchedule":
        return WeightSchedule(self.preset, self.low, self.high, start_percent, end_percent, self.step_at)

    def shaped_by(self, shape: "WeightSchedule | None") -> "WeightSchedule":
        """This schedule's window and strength with ``shape``'s curve (None: unchanged).

        P3S Sampler's reading: ``shape.low``/``shape.high`` are multiples of this schedule's ``high``
        (P3S Apply's weight), and the window stays the Apply's.
        """
        if shape is None:
            return self
        return shape.scaled(self.high).with_window(self.start_percent, self.end_percent)


def progress_from_timestep(timestep: float, num_timesteps: int) -> float:
    """Sampling progress 0..1 of a discrete model's timestep (the last timestep is 0, timestep 0 is 1)."""
    last = max(1, int(num_timesteps) - 1)
    return min(max(1.0 - float(timestep) / last, 0.0), 1.0)


@dataclass(frozen=True)
class SigmaSchedule:
    """A ``WeightSchedule`` on one model's noise levels: built once per sampling run.

    The window is checked on sigmas, as ComfyUI's own start/end percent inputs are (``sigma_start`` is
    the larger sigma); inside it the weight follows the progress of the sigma, clamped to the window.
    """

    schedule: WeightSchedule
    sigma_start: float
    sigma_end: float
    sigmas_to_timestep: Any      # model_sampling.timestep: sigma tensor -> timestep tensor
    num_timesteps: int

    @classmethod
    def for_model(cls, schedule: WeightSchedule, model_sampling: Any) -> "SigmaSchedule":
        """``model_sampling``: a ComfyUI model_sampling (``percent_to_sigma``, ``timestep``, ``sigmas``)."""
        return cls(schedule, float(model_sampling.percent_to_sigma(schedule.start_percent)),
                   float(model_sampling.percent_to_sigma(schedule.end_percent)), model_sampling.timestep,
                   int(model_sampling.sigmas.shape[0]))

    def progress(self, sigma: float) -> float:
        """Sampling progress 0..1 of ``sigma`` (the inverse of ``percent_to_sigma``)."""
        t = self.sigmas_to_timestep(torch.tensor([float(sigma)], dtype=torch.float32))
        return progress_from_timestep(float(t[0]), self.num_timesteps)

    def weight_at(self, sigma: float) -> tuple[float, float]:
        """(progress, weight) at ``sigma``; 0 outside the window or for a zero-length window."""
        s = self.schedule
        progress = self.progress(sigma)
        if s.start_percent >= s.end_percent or not (self.sigma_end <= sigma <= self.sigma_start):
            return progress, 0.0
        return progress, s.weight(min(max(progress, s.start_percent), s.end_percent))
