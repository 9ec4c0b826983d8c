"""Clicked points on a reference image (image pixels), parsing and validation.

Points travel as JSON in image pixels of the image they were clicked on:
``{"width": W, "height": H, "positive": [{"x":..,"y":..}], "negative": [...]}``.
The KJNodes / SAM2 list format ``[{"x":..,"y":..}]`` (all positive) is accepted too.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

log = logging.getLogger("P3S")

Point = tuple[float, float]

# One bound everywhere points enter (Point Picker, P3S Apply, the live preview, training points files):
# a few clicks on the subject and one on each look-alike are all a selection needs.
MAX_POINTS = 64
MAX_POINTS_TEXT = 64 * 1024  # characters of points JSON, checked before parsing

_NO_POSITIVE = (
    "P3S: points: no positive point was given. Click on the subject in the P3S Point Picker, "
    "or connect a MASK."
)


def check_count(n: int) -> None:
    """A user-facing error when ``n`` points (positive and negative together) exceed MAX_POINTS."""
    if n > MAX_POINTS:
        raise ValueError(
            f"P3S: points: {n} points were given; at most {MAX_POINTS} (positive and negative together) "
            "are allowed. A few points on the subject and one on each look-alike are enough."
        )


def _show(value: Any, limit: int) -> str:
    """A short repr for messages: never huge, never a RecursionError on deeply nested input."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _num(value: Any, what: str) -> float:
    """A finite float, or a user-facing error naming the offending value."""
    if isinstance(value, bool):  # bool is an int subclass; True as a coordinate is a bug
        raise ValueError(f"P3S: points: {what} is {_show(value, 60)}, not a number. Coordinates are pixel numbers.")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"P3S: points: {what} is {_show(value, 60)}, not a number. Coordinates must be numbers "
            "in image pixels, e.g. {\"x\": 120, \"y\": 80}."
        ) from None
    if not math.isfinite(out):
        raise ValueError(
            f"P3S: points: {what} is {_show(value, 60)} (NaN/inf). Re-click the point in the P3S Point Picker."
        )
    return out


def _parse_point(p: Any, what: str) -> Point:
    if isinstance(p, dict):
        if "x" not in p or "y" not in p:
            raise ValueError(f"P3S: points: {what} is {_show(p, 80)}; expected an object with \"x\" and \"y\".")
        return (_num(p["x"], f"{what}.x"), _num(p["y"], f"{what}.y"))
    if isinstance(p, (list, tuple)) and len(p) == 2:
        return (_num(p[0], f"{what}.x"), _num(p[1], f"{what}.y"))
    raise ValueError(f"P3S: points: {what} is {_show(p, 80)}; expected {{\"x\": .., \"y\": ..}} or [x, y].")


def _parse_list(items: Any, what: str) -> list[Point]:
    if items is None:
        return []
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"P3S: points: \"{what}\" is {_show(items, 80)}; expected a list of {{\"x\": .., \"y\": ..}}.")
    check_count(len(items))
    return [_parse_point(p, f"{what}[{i}]") for i, p in enumerate(items)]


def _bad_text(text: str) -> ValueError:
    head = text[:60] + ("..." if len(text) > 60 else "")
    return ValueError(
        f"P3S: points: the points text is not valid JSON (starts with {head!r}). Expected "
        "{\"width\": W, \"height\": H, \"positive\": [{\"x\": .., \"y\": ..}], \"negative\": [...]} "
        "or a list [{\"x\": .., \"y\": ..}]; re-click the points in the P3S Point Picker."
    )


def _loads(text: str) -> Any:
    """JSON first; then Python-literal-ish text (single quotes, as some packs emit).

    Integers parse as floats, so a number too long for Python's int conversion becomes inf and is
    refused as such; deep nesting and other garbage end in one clear message, never a traceback.
    """
    if len(text) > MAX_POINTS_TEXT:
        raise ValueError(
            f"P3S: points: the points text is {len(text)} characters long; at most {MAX_POINTS_TEXT} are "
            f"read (that is far more than {MAX_POINTS} points). Re-click the points in the P3S Point Picker."
        )
    try:
        return json.loads(text, parse_int=float)
    except (ValueError, RecursionError):
        pass
    try:
        with warnings.catch_warnings():  # odd escapes in hostile text: a refusal, not log noise
            warnings.simplefilter("ignore")
            return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _bad_text(text) from None


@dataclass
class PointSet:
    """Positive/negative clicks in image pixels of a ``width`` x ``height`` image."""

    positive: list[Point] = field(default_factory=list)
    negative: list[Point] = field(default_factory=list)
    width: int | None = None
    height: int | None = None

    @classmethod
    def from_pixels(
        cls,
        positive: Iterable[Sequence[float]] = (),
        negative: Iterable[Sequence[float]] = (),
        width: int | None = None,
        height: int | None = None,
    ) -> "PointSet":
        positive, negative = list(positive), list(negative)
        check_count(len(positive) + len(negative))
        pos = [_parse_point(tuple(p), f"positive[{i}]") for i, p in enumerate(positive)]
        neg = [_parse_point(tuple(p), f"negative[{i}]") for i, p in enumerate(negative)]
        w = None if width is None else int(_num(width, "width"))
        h = None if height is None else int(_num(height, "height"))
        return cls(pos, neg, w, h)

    @classmethod
    def from_json(cls, text: str, width: int | None = None, height: int | None = None) -> "PointSet":
        """Parse our format or the KJNodes/SAM2 list; ``width``/``height`` fill in a missing size."""
        if text is None or not str(text).strip():
            return cls([], [], width, height)
        data = _loads(str(text).strip())
        if isinstance(data, (list, tuple)):  # KJNodes / SAM2: all positive, image pixels
            return cls.from_pixels(_parse_list(data, "points"), [], width, height)
        if not isinstance(data, dict):
            raise ValueError(
                f"P3S: points: expected a JSON object or list, got {type(data).__name__} {_show(data, 80)}."
            )
        w = data.get("width", width)
        h = data.get("height", height)
        return cls.from_pixels(
            _parse_list(data.get("positive"), "positive"),
            _parse_list(data.get("negative"), "negative"),
            w,
            h,
        )

    @classmethod
    def for_image(cls, points: "PointSet | str | None", width: int, height: int) -> "PointSet":
        """The one way points reach a selection: parse text, check, rescale to a width x height image."""
        if points is None or isinstance(points, str):
            points = cls.from_json(points, width, height)
        if points.width is None or points.height is None:
            points = cls(list(points.positive), list(points.negative), width, height)
        points.validate()
        return points.rescaled(width, height)

    def to_json(self) -> str:
        return json.dumps(
            {
                "width": self.width,
                "height": self.height,
                "positive": [{"x": x, "y": y} for x, y in self.positive],
                "negative": [{"x": x, "y": y} for x, y in self.negative],
            }
        )

    def rescaled(self, width: int, height: int) -> "PointSet":
        """The same points on a ``width`` x ``height`` image (proportional scaling)."""
        if self.width is None or self.height is None or (self.width, self.height) == (width, height):
            return PointSet(list(self.positive), list(self.negative), int(width), int(height))
        sx, sy = width / self.width, height / self.height
        return PointSet(
            [(x * sx, y * sy) for x, y in self.positive],
            [(x * sx, y * sy) for x, y in self.negative],
            int(width),
            int(height),
        )

    def validate(self, require_positive: bool = True) -> "PointSet":
        """Raise a user-facing ValueError for bad sizes, too many points, points outside the image, no positive."""
        check_count(len(self.positive) + len(self.negative))
        if self.width is not None and self.height is not None:
            if self.width <= 0 or self.height <= 0:
                raise ValueError(
                    f"P3S: points: image size {self.width}x{self.height} is not positive; "
                    "re-open the image in the P3S Point Picker."
                )
            for kind, pts in (("positive", self.positive), ("negative", self.negative)):
                for i, (x, y) in enumerate(pts):
                    _num(x, f"{kind}[{i}].x")
                    _num(y, f"{kind}[{i}].y")
                    if not (0 <= x <= self.width and 0 <= y <= self.height):
                        raise ValueError(
                            f"P3S: points: {kind} point {i} at ({x:g}, {y:g}) is outside the "
                            f"{self.width}x{self.height} image. Points are in image pixels of the "
                            "width/height recorded in the points JSON; re-click it in the P3S Point "
                            "Picker or fix the width/height."
                        )
        if require_positive and not self.positive:
            raise ValueError(_NO_POSITIVE)
        return self

    def to_grid(self, h: int, w: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(row, col) patch-grid cells of the positive and negative points on an h x w grid."""
        if self.width is None or self.height is None:
            raise ValueError("P3S: points: width/height unknown; pass the image size to from_json.")

        def cell(p: Point) -> tuple[int, int]:
            col = min(w - 1, max(0, int(p[0] / self.width * w)))
            row = min(h - 1, max(0, int(p[1] / self.height * h)))
            return (row, col)

        return [cell(p) for p in self.positive], [cell(p) for p in self.negative]
