"""PointSet parsing, validation and rescaling (no comfy)."""

import json
import math

import pytest
import torch

from p3s_core.points import PointSet
from p3s_core.rngr import select_subject


def test_from_pixels_and_json_roundtrip():
    ps = PointSet.from_pixels(positive=[(10, 20.5)], negative=[(30, 40)], width=100, height=80)
    back = PointSet.from_json(ps.to_json())
    assert back == ps
    data = json.loads(ps.to_json())
    assert data == {"width": 100, "height": 80, "positive": [{"x": 10.0, "y": 20.5}], "negative": [{"x": 30.0, "y": 40.0}]}


def test_our_format_uses_json_size_over_args():
    text = '{"width": 512, "height": 256, "positive": [{"x": 5, "y": 6}], "negative": []}'
    ps = PointSet.from_json(text, width=1000, height=1000)
    assert (ps.width, ps.height) == (512, 256)
    assert ps.positive == [(5.0, 6.0)] and ps.negative == []


def test_kjnodes_list_is_all_positive_in_image_pixels():
    ps = PointSet.from_json('[{"x": 10, "y": 20}, {"x": 30, "y": 40}]', width=64, height=48)
    assert ps.positive == [(10.0, 20.0), (30.0, 40.0)] and ps.negative == []
    assert (ps.width, ps.height) == (64, 48)


def test_single_quotes_are_tolerated():
    ps = PointSet.from_json("[{'x': 1, 'y': 2}]", width=8, height=8)
    assert ps.positive == [(1.0, 2.0)]
    ps = PointSet.from_json("{'width': 8, 'height': 8, 'positive': [{'x': 3, 'y': 4}], 'negative': [{'x': 5, 'y': 6}]}")
    assert ps.negative == [(5.0, 6.0)] and ps.width == 8


@pytest.mark.parametrize("text", ["", "   ", "[]"])
def test_empty_means_no_points_and_selection_says_click(text):
    ps = PointSet.from_json(text, width=32, height=32)
    assert ps.positive == [] and ps.negative == []
    with pytest.raises(ValueError, match=r"P3S: .*no positive point.*Point Picker.*MASK"):
        select_subject(torch.rand(32, 32, 3), ps)


def test_invalid_json_quotes_the_start_of_the_text():
    with pytest.raises(ValueError, match=r"P3S: .*not valid JSON.*\{\"positive\": \[oops"):
        PointSet.from_json('{"positive": [oops, this is broken', width=10, height=10)


@pytest.mark.parametrize(
    "text, bad",
    [
        ('[{"x": NaN, "y": 3}]', "nan"),
        ('[{"x": 3, "y": Infinity}]', "inf"),
        ('[{"x": "left", "y": 3}]', "left"),
        ('[{"x": null, "y": 3}]', "None"),
        ('[{"x": 3}]', "x"),
    ],
)
def test_bad_coordinates_name_the_value(text, bad):
    with pytest.raises(ValueError, match="P3S: points") as e:
        PointSet.from_json(text, width=10, height=10)
    assert bad in str(e.value)


def test_nan_from_pixels_rejected():
    with pytest.raises(ValueError, match="NaN"):
        PointSet.from_pixels(positive=[(math.nan, 1.0)], width=4, height=4)


def test_point_outside_image_names_point_size_and_units():
    ps = PointSet.from_pixels(positive=[(600, 10)], width=512, height=512)
    with pytest.raises(ValueError) as e:
        ps.validate()
    msg = str(e.value)
    assert msg.startswith("P3S:") and "(600, 10)" in msg and "512x512" in msg and "image pixels" in msg
    # The same through select_subject on an image of that size.
    with pytest.raises(ValueError, match="outside"):
        select_subject(torch.rand(512, 512, 3), ps)


def test_negative_point_outside_also_rejected():
    ps = PointSet.from_pixels(positive=[(1, 1)], negative=[(-3, 2)], width=10, height=10)
    with pytest.raises(ValueError, match="negative point 0"):
        ps.validate()


def test_rescaled_is_proportional():
    ps = PointSet.from_pixels(positive=[(256, 128)], negative=[(512, 0)], width=512, height=512)
    r = ps.rescaled(1024, 768)
    assert r.positive == [(512.0, 192.0)] and r.negative == [(1024.0, 0.0)]
    assert (r.width, r.height) == (1024, 768)
    assert ps.positive == [(256, 128)]  # original untouched


def test_to_grid_cells():
    ps = PointSet.from_pixels(positive=[(0, 0), (511.9, 255)], negative=[(512, 512)], width=512, height=512)
    pos, neg = ps.to_grid(16, 16)
    assert pos == [(0, 0), (7, 15)]
    assert neg == [(15, 15)]  # the far edge clamps into the last cell


# --- bounds and hostile input (issue 14): every failure is a "P3S:" ValueError, never a traceback ---

def test_too_many_points_refused_everywhere_fast():
    import time

    from p3s_core.points import MAX_POINTS
    many = [{"x": 1, "y": 1}] * 100_000
    cases = [lambda: PointSet.from_json(json.dumps(many), width=8, height=8),
             lambda: PointSet.from_json(json.dumps({"positive": many[:40], "negative": many[:40]}), 8, 8),
             lambda: PointSet.from_pixels(positive=[(1, 1)] * 100_000, width=8, height=8),
             lambda: PointSet([(1.0, 1.0)] * (MAX_POINTS + 1), [], 8, 8).validate()]
    for make in cases:
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=r"^P3S: points: .*at most"):
            make()
        assert time.perf_counter() - t0 < 1.0  # refused before any per-point work (issue 14: within a second)
    ok = PointSet.from_pixels(positive=[(1, 1)] * MAX_POINTS, width=8, height=8).validate()
    assert len(ok.positive) == MAX_POINTS


@pytest.mark.parametrize("text, fragment", [
    ("[" * 100_000, "characters long"),
    ("[" * 5_000, "not valid JSON"),
    ("{" * 3_000, "not valid JSON"),
    ('[{"x": ' + "9" * 5000 + ', "y": 1}]', "NaN/inf"),
    ("{'positive': [{'x': " + "9" * 5000 + ", 'y': 1}]}", "not valid JSON"),
    ('{"positive": ' + "[" * 900 + "]" * 900 + "}", "expected"),
    ('{"positive": [{"x": [' * 300 + "]}]" * 300 + "}", "P3S: points"),
    ('"just a string"', "expected a JSON object or list"),
    ("[1, 2, 3]", "expected"),
    ('{"width": true, "positive": []}', "not a number"),
    ('{"width": 1e400, "height": 5, "positive": [{"x": 1, "y": 1}]}', "NaN/inf"),
])
def test_hostile_points_text_gives_a_p3s_message(text, fragment):
    with pytest.raises(ValueError) as e:
        PointSet.for_image(text, 64, 48)
    msg = str(e.value)
    assert msg.startswith("P3S: points") and fragment in msg and len(msg) < 600


def test_for_image_is_the_one_preparation():
    ps = PointSet.for_image('{"width": 32, "height": 32, "positive": [{"x": 16, "y": 8}]}', 64, 64)
    assert ps.positive == [(32.0, 16.0)] and (ps.width, ps.height) == (64, 64)
    same = PointSet.for_image(PointSet.from_pixels(positive=[(16, 8)]), 64, 64)
    assert same.positive == [(16.0, 8.0)] and (same.width, same.height) == (64, 64)
    with pytest.raises(ValueError, match="no positive point"):
        PointSet.for_image(None, 64, 64)


def _random_json(rng, depth=0):
    kind = rng.integers(0, 9 if depth < 4 else 5)
    if kind == 0:
        return float(rng.choice([0, 1, -1, 1e308, -1e308, 3.5, 1e-300]))
    if kind == 1:
        return int(rng.integers(-10**6, 10**6))
    if kind == 2:
        return "".join(chr(int(c)) for c in rng.integers(0, 0x3000, size=rng.integers(0, 12)))
    if kind == 3:
        return [None, True, False][int(rng.integers(0, 3))]
    if kind == 4:
        return {"x": _random_json(rng, depth + 1), "y": _random_json(rng, depth + 1)}
    if kind in (5, 6):
        return [_random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))]
    keys = ["width", "height", "positive", "negative", "x", "y", "points", ""]
    return {str(rng.choice(keys)): _random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))}


def _mutate(rng, text: str) -> str:
    chars = list(text)
    for _ in range(int(rng.integers(1, 6))):
        op = rng.integers(0, 5)
        i = int(rng.integers(0, len(chars) + 1))
        if op == 0 and chars:
            del chars[min(i, len(chars) - 1)]
        elif op == 1:
            chars.insert(i, str(rng.choice(list('[]{}",:.-eE0123456789nN \\\x00\'') + ["NaN", "Infinity", "1e999"])))
        elif op == 2:
            chars = chars[:i]
        elif op == 3 and chars:
            j = int(rng.integers(0, len(chars)))
            chars[i % len(chars)], chars[j] = chars[j], chars[i % len(chars)]
        else:
            chars.insert(i, "9" * int(rng.integers(1, 6000)))
    return "".join(chars)


def test_points_parser_fuzz():
    """Random and mutated points JSON (issue 14): either points or a clear P3S error, nothing else."""
    import numpy as np

    rng = np.random.default_rng(14)
    valid = PointSet.from_pixels(positive=[(10, 12), (30.5, 7)], negative=[(50, 40)], width=64, height=48).to_json()
    seen = {"ok": 0, "refused": 0}
    for i in range(3000):
        if i % 3 == 0:
            text = json.dumps(_random_json(rng))
        elif i % 3 == 1:
            text = _mutate(rng, valid)
        else:
            text = _mutate(rng, json.dumps(_random_json(rng)))
        try:
            ps = PointSet.for_image(text, 64, 48)
        except ValueError as e:
            assert str(e).startswith("P3S: points"), (text[:200], e)
            seen["refused"] += 1
            continue
        assert ps.positive and all(0 <= x <= 64 and 0 <= y <= 48 for x, y in ps.positive + ps.negative)
        seen["ok"] += 1
    assert seen["ok"] > 30 and seen["refused"] > 1000, seen
