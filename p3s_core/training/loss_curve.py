"""The loss curve PNG written next to a trained adapter, drawn with Pillow (no plotting library in the host).

Loss per step (light), its moving average (blue) and the Attention Consistency Loss on a second scale
(orange, right-hand labels).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

SIZE, LEFT, RIGHT, TOP, BOTTOM = (800, 420), 70, 70, 40, 50
LOSS, AVERAGE, ACL = (160, 180, 230), (20, 60, 200), (220, 90, 30)


def moving_average(values: Sequence[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1): i + 1]
        out.append(sum(part) / len(part))
    return out


class _Plot:
    """Maps (step, value) into the plot rectangle for one value range."""

    def __init__(self, steps: tuple[int, int], values: tuple[float, float]):
        self.s0, self.s1 = steps
        self.lo, self.hi = values

    def xy(self, step: float, value: float) -> tuple[float, float]:
        w, h = SIZE
        return (LEFT + (step - self.s0) / (self.s1 - self.s0) * (w - LEFT - RIGHT),
                h - BOTTOM - (value - self.lo) / (self.hi - self.lo) * (h - TOP - BOTTOM))


def _span(values: Sequence[float], eps: float) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    return lo, (hi if hi > lo else lo + eps)


def _draw_series(draw, plot: _Plot, points: Sequence[tuple[float, float]], colour, width: int) -> None:
    points = [(s, v) for s, v in points if math.isfinite(v)]
    if len(points) > 1:
        draw.line([plot.xy(s, v) for s, v in points], fill=colour, width=width)


def write_loss_curve(history: Sequence[dict], path: str | os.PathLike, title: str = "P3S adapter training") -> Path:
    """A PNG of ``history`` (dicts with step, loss and optionally acl) at ``path``."""
    from PIL import Image, ImageDraw

    path = Path(path)
    w, h = SIZE
    img = Image.new("RGB", SIZE, "white")
    d = ImageDraw.Draw(img)
    d.text((LEFT, 12), title, fill="black")
    d.rectangle([LEFT, TOP, w - RIGHT, h - BOTTOM], outline="black")
    steps = [e["step"] for e in history]
    losses = [e["loss"] for e in history if math.isfinite(e["loss"])]
    if steps and losses:
        s0, s1 = min(steps), max(max(steps), min(steps) + 1)
        plot = _Plot((s0, s1), _span(losses, 1e-8))
        _draw_series(d, plot, [(e["step"], e["loss"]) for e in history], LOSS, 1)
        avg = moving_average([e["loss"] for e in history], max(1, len(history) // 20))
        _draw_series(d, plot, list(zip(steps, avg)), AVERAGE, 2)
        acl = [(e["step"], e.get("acl", float("nan"))) for e in history]
        acl = [(s, v) for s, v in acl if math.isfinite(v)]
        if len(acl) > 1:
            acl_plot = _Plot((s0, s1), _span([v for _, v in acl], 1e-12))
            _draw_series(d, acl_plot, acl, ACL, 1)
            d.text((w - RIGHT + 4, TOP), f"{acl_plot.hi:.3g}", fill=ACL)
            d.text((w - RIGHT + 4, h - BOTTOM - 10), f"{acl_plot.lo:.3g}", fill=ACL)
        d.text((4, TOP), f"{plot.hi:.4g}", fill="black")
        d.text((4, h - BOTTOM - 10), f"{plot.lo:.4g}", fill="black")
        d.text((LEFT, h - BOTTOM + 6), f"step {s0}", fill="black")
        d.text((w - RIGHT - 60, h - BOTTOM + 6), f"step {s1}", fill="black")
        d.text((LEFT + 150, h - BOTTOM + 26), "loss (light), moving average (blue), ACL (orange, right scale)",
               fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
