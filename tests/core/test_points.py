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
