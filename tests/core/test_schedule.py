"""The timestep weight scheduler (pure core, no comfy)."""
import math

import pytest

from p3s_core.schedule import PRESETS, WeightSchedule


@pytest.mark.parametrize("preset,at0,at_half,at1", [
    ("constant", 1.0, 1.0, 1.0),
    ("ramp_up", 0.2, 0.6, 1.0),
    ("ramp_down", 1.0, 0.6, 0.2),
    ("cosine", 0.2, 0.6, 1.0),
    ("step", 0.2, 1.0, 1.0),
])
def test_presets_between_low_and_high(preset, at0, at_half, at1):
    s = WeightSchedule(preset, low=0.2, high=1.0)
    assert [round(s.weight(p), 6) for p in (0.0, 0.5, 1.0)] == [at0, at_half, at1]


def test_cosine_eases_in_and_out():
    s = WeightSchedule("cosine", 0.0, 1.0)
    assert s.weight(0.1) < 0.1 and s.weight(0.9) > 0.9  # slow start, slow finish, unlike ramp_up
    assert math.isclose(s.weight(0.25), (1 - math.cos(math.pi * 0.25)) / 2)


def test_window_maps_progress_and_is_zero_outside():
    s = WeightSchedule("ramp_up", 0.0, 1.0, start_percent=0.2, end_percent=0.6)
    assert s.weight(0.1) == 0.0 and s.weight(0.7) == 0.0
    assert math.isclose(s.weight(0.4), 0.5)
    assert math.isclose(s.weight(0.6), 1.0)
    closed = WeightSchedule("constant", 0.0, 1.0, start_percent=0.5, end_percent=0.5)
    assert all(closed.weight(p) == 0.0 for p in (0.0, 0.5, 1.0))


def test_scaled_and_with_window():
    s = WeightSchedule("ramp_down", 0.5, 1.0).scaled(2.0).with_window(0.0, 0.5)
    assert (s.low, s.high, s.end_percent) == (1.0, 2.0, 0.5)
    assert s.weight(0.0) == 2.0 and s.weight(0.75) == 0.0


@pytest.mark.parametrize("kwargs,match", [
    ({"preset": "linear"}, "schedule='linear' is invalid"),
    ({"start_percent": 0.8, "end_percent": 0.2}, "start_percent=0.8 is invalid"),
    ({"end_percent": 1.5}, "use values in 0..1"),
    ({"low": -0.1}, "weights must be >= 0"),
    ({"high": float("nan")}, "give a finite number"),
])
def test_bad_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WeightSchedule(**kwargs)


def test_every_preset_is_covered():
    assert set(PRESETS) == {"constant", "ramp_up", "ramp_down", "cosine", "step"}


@pytest.mark.parametrize("build,match", [
    (lambda: WeightSchedule.constant(float("nan")), r"^P3S: weight=nan is invalid: give a finite number"),
    (lambda: WeightSchedule.constant(-1.0), r"^P3S: weight=-1.0 is invalid: weights must be >= 0"),
    (lambda: WeightSchedule.constant(1.0, float("nan"), 1.0), r"^P3S: start_percent=nan is invalid"),
    (lambda: WeightSchedule.constant(1.0, 0.0, "1"), r"^P3S: end_percent='1' is invalid"),
    (lambda: WeightSchedule.curve("ramp_up", 0.2, float("nan")), r"^P3S: weight_high=nan is invalid"),
    (lambda: WeightSchedule.curve("ramp_up", float("inf"), 1.0), r"^P3S: weight_low=inf is invalid"),
])
def test_node_inputs_are_named_as_the_user_sees_them(build, match):
    with pytest.raises(ValueError, match=match):
        build()
    assert WeightSchedule.curve("ramp_up", 0.2, 1.0) == WeightSchedule("ramp_up", 0.2, 1.0)
