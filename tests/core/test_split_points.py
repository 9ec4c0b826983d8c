"""Negative points on touching look-alikes (``p3s_core.split``): what a user's second click must do."""
import sys
from pathlib import Path

import numpy as np
import pytest

from p3s_core.split import split_lookalikes


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.mark.parametrize("gap", [30, 40])
@pytest.mark.parametrize("off", [0, 12, 20])
def test_a_negative_point_anywhere_on_an_overlapping_look_alike_cuts_it_off(gap, off):
    """Two overlapping discs (no neck), the clicked one and a look-alike marked by a negative point at its
    centre or off it. The negative point floods its body from the top of its hill: flooded from the point
    alone, the clicked side took that top first, and a point 12-20 px off the centre left 0.97-0.99 of the
    look-alike selected."""
    h, w = 80, 130
    a, b = _disc(h, w, 40, 40, 25), _disc(h, w, 40, 40 + gap, 25)
    out = split_lookalikes(a | b, [(40, 40)], [(40, 40 + gap + off)], auto=False)
    assert (out & b & ~a).sum() < 0.05 * (b & ~a).sum()
    assert (out & a & ~b).sum() > 0.95 * (a & ~b).sum()


def test_negative_points_on_the_look_alikes_a_click_took_raise_the_iou():
    """Touching look-alikes of the bench generator (a seed the bench does not use, 256 px). Where one click
    took in a look-alike (precision < 0.75), bench/selection.py's ``corrected`` adds a negative point at the
    deepest point of the look-alike it took most of, then of the next, as a user would: the mean IoU over
    those targets rises, and no correction costs more than a little. Targets one click got right are left
    as they were."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from selection import corrected, iou, pack_select
    from selection_scenes import click_point, make_scene

    rng = np.random.default_rng(7)
    before, after, untouched = [], [], 0
    for _ in range(16):
        scene = make_scene(rng, "touching", 256)
        for j, m in enumerate(scene.masks):
            sel = pack_select(scene.image, [click_point(m)])
            fixed, used = corrected(scene.image, scene.masks, j, sel)
            if (sel & m).sum() >= 0.75 * sel.sum():
                assert used == 0 and fixed is sel
                untouched += 1
                continue
            assert used >= 1
            before.append(iou(sel, m))
            after.append(iou(fixed, m))
    assert len(before) >= 4 and untouched >= 20
    gain = np.array(after) - np.array(before)
    assert gain.mean() > 0.1 and gain.min() > -0.1, (before, after)
