"""Overlapping look-alikes told apart by the outline of the one in front (``p3s_core.split``: ``CUT``, ``MAYBE``)."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from p3s_core.points import PointSet
from p3s_core.rngr import select_subject

S = 256


def _scene(shape: str, gap: int, rim: float, spots: bool = False):
    """Two look-alikes side by side ``gap`` px apart, the right one in front, shaded darker towards its
    edge by ``rim`` (0: no outline at all), on a flat background. Returns (image, visible masks)."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    img = np.empty((S, S, 3), np.float32)
    img[:] = (0.35, 0.55, 0.3)
    colour = np.array([0.85, 0.6, 0.25], np.float32)
    masks = []
    for cx in (S / 2 - gap / 2, S / 2 + gap / 2):
        if shape == "disc":
            m = (xx - cx) ** 2 + (yy - S / 2) ** 2 <= 40 ** 2
        else:  # an upright ellipse
            m = ((xx - cx) / 28) ** 2 + ((yy - S / 2) / 52) ** 2 <= 1
        shade = 1 - rim + rim * np.clip(ndimage.distance_transform_edt(m) / 20, 0, 1)
        body = colour * shade[..., None]
        if spots:  # dark blotches: texture edges inside the body, as strong as an outline
            blot = ndimage.gaussian_filter(np.random.default_rng(int(cx)).standard_normal((S, S)), 5)
            body = body * np.where(blot / blot.std() > 1.2, 0.7, 1.0)[..., None]
        img[m] = body[m]
        for prev in masks:
            prev &= ~m
        masks.append(m)
    img += np.random.default_rng(0).normal(0, 0.02, img.shape).astype(np.float32)
    return np.clip(img, 0, 1), masks


def _select_deepest(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    dt = ndimage.distance_transform_edt(m)
    y, x = np.unravel_index(int(np.argmax(dt)), dt.shape)
    pts = PointSet.from_pixels(positive=[(x + 0.5, y + 0.5)], width=S, height=S)
    return select_subject(torch.from_numpy(img), pts).mask.numpy() > 0.5


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("shape", ["disc", "ellipse"])
def test_the_outline_of_the_look_alike_in_front_separates_the_two(shape):
    """Two look-alikes overlapping by about half, without a neck between them; the one in front is outlined
    by its darker rim. Clicked at its deepest point, each is selected without the other. Before the cuts
    and the "maybe" bodies, clicking the one in front took in the one behind (IoU 0.63 for discs, 0.56 for
    ellipses): the one behind has no hill of its own in the region's thickness, or too low a one."""
    img, masks = _scene(shape, 40, rim=0.3)
    for j, m in enumerate(masks):
        sel = _select_deepest(img, m)
        assert _iou(sel, m) > 0.88, (j, _iou(sel, m))
        assert (sel & masks[1 - j]).sum() < 0.15 * masks[1 - j].sum()


def test_texture_edges_do_not_cut_the_clicked_body_apart():
    """Dark blotches inside a body make edges as strong as an outline; the body's own height is read
    without the cuts, so its parts between the blotches never pass for other bodies."""
    img, masks = _scene("ellipse", 90, rim=0.0, spots=True)
    for m in masks:
        assert _iou(_select_deepest(img, m), m) > 0.9
