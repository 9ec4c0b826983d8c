"""The random walker that re-decides the border between touching look-alikes (``p3s_core.walker``, used by
``split._walk_border``): it follows a colour edge, not the distance to the seeds."""
import numpy as np
import pytest

from p3s_core import split
from p3s_core.walker import walk


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_the_walk_cuts_at_the_colour_edge_not_halfway_between_the_seeds():
    rng = np.random.default_rng(0)
    keep = np.ones((30, 60), bool)
    lab = np.zeros((3, 30, 60)) + rng.normal(0, 0.5, (3, 30, 60))
    lab[0, :, 40:] += 30.0  # an edge at column 40, far from the seeds' midpoint (column 30)
    fg, bg = np.zeros_like(keep), np.zeros_like(keep)
    fg[:, :2], bg[:, -2:] = True, True
    cut = (walk(keep, lab, fg, bg) > 0.5).sum(1)
    assert np.all(np.abs(cut - 40) <= 1), cut
    flat = (walk(keep, rng.normal(0, 0.5, lab.shape), fg, bg) > 0.5).sum(1)
    assert np.all(np.abs(flat - 30) <= 12), flat  # no edge: the noise and the distance decide
    assert walk(keep, lab, fg, np.zeros_like(keep)) is None and walk(keep, lab, keep, bg) is None


@pytest.mark.parametrize("rim", [15.0, 30.0])
def test_the_border_moves_onto_the_outline_of_the_look_alike_in_front(rim):
    """Two overlapping discs of one texture, the right one in front with a dark outline over the left one.
    The flood cut the region halfway between their centres; the walker moves the border onto the outline,
    and without an outline it leaves the flood's border about where it was."""
    rng = np.random.default_rng(1)
    h, w = 80, 115
    back, front = _disc(h, w, 40, 40, 25), _disc(h, w, 40, 75, 25)
    keep, truth = back | front, back & ~front
    lab = np.zeros((3, h, w))
    lab[0] = 60 + rng.normal(0, 2.0, (h, w))
    halfway = keep & (np.mgrid[0:h, 0:w][1] < 58)
    plain = split._walk_border(keep, halfway, lab, [(40, 40)], [])
    lab[0][front & ~_disc(h, w, 40, 75, 23) & back] -= rim
    got = split._walk_border(keep, halfway, lab, [(40, 40)], [])

    def iou(a):
        return (a & truth).sum() / (a | truth).sum()
    assert iou(got) > 0.95 and iou(got) > iou(halfway) + 0.05, (iou(halfway), iou(got))
    assert (plain ^ halfway).sum() < 0.05 * halfway.sum()
    assert got[40, 40] and not got[40, 75]


def test_a_negative_point_next_to_the_border_stays_out():
    """A negative point within the walked band is a seed of the other side, like the positive point of its own."""
    rng = np.random.default_rng(2)
    keep = np.ones((30, 60), bool)
    lab = np.zeros((3, 30, 60)) + rng.normal(0, 0.5, (3, 30, 60))
    inside = keep & (np.mgrid[0:30, 0:60][1] < 30)
    got = split._walk_border(keep, inside, lab, [(15, 5)], [(15, 27)])
    assert got[15, 5] and not got[15, 27]
