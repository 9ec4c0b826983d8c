"""A second scene generator for ``bench/selection.py --heldout``: nothing in the selection was tuned on it.

``selection_scenes`` is what every constant of the selection was measured on, so its figures may flatter the
pack. These scenes keep the task (look-alikes, one click on one of them) and change everything else:

- shapes: capsules, convex polygons, peanuts (two unequal discs), pears (a disc with a smaller one on top);
- subjects: flat, checked, speckled or shaded across the body (a light from one side, no rim), a specular
  highlight, and in some scenes a dark cartoon outline around every subject;
- backgrounds: two colours blended by a low-frequency field, blobs of other hues, grain, and a soft drop
  shadow under every subject (a dark band along the subject's edge that is not the subject);
- families: ``heldout_separated`` (2-4 look-alikes apart) and ``heldout_touching`` (2-4 overlapping by
  10-40 % of their area; later ones occlude earlier ones).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from selection_scenes import Scene
from selection_scenes import _hsv as _hsv64

HELDOUT_FAMILIES = ("heldout_separated", "heldout_touching")
SHAPES = ("capsule", "polygon", "peanut", "pear")


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return _hsv64(h, s, v).astype(np.float32)


def _field(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal((size, size)), scale)
    return n / (n.std() + 1e-8)


def _shape(rng: np.random.Generator, kind: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ang = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
    v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
    if kind == "capsule":
        half = r * rng.uniform(0.5, 1.0)
        w = r * rng.uniform(0.55, 0.75)
        return (np.clip(u, -half, half) - u) ** 2 + v ** 2 <= w * w
    if kind == "polygon":
        k = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        inside = np.ones((size, size), bool)
        pts = [(r * np.cos(a), r * np.sin(a)) for a in angles]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):  # convex: inside every edge's half-plane
            inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
        return inside if inside.sum() > 0.3 * np.pi * r * r else u * u + v * v <= r * r
    if kind == "peanut":
        a, b = r * rng.uniform(0.6, 0.75), r * rng.uniform(0.45, 0.6)
        return ((u + 0.45 * r) ** 2 + v ** 2 <= a * a) | ((u - 0.55 * r) ** 2 + v ** 2 <= b * b)
    a = r * rng.uniform(0.7, 0.8)  # pear: a body and a smaller top that overlaps it
    return (u ** 2 + (v + 0.2 * r) ** 2 <= a * a) | (u ** 2 + (v - 0.75 * r) ** 2 <= (0.5 * a) ** 2)


def _appearance(rng: np.random.Generator, size: int, style: str, m: np.ndarray, col: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    body = np.broadcast_to(col, (size, size, 3)).copy()
    if style == "checker":
        p = rng.uniform(4, 9)
        body *= np.where((np.floor(xx / p) + np.floor(yy / p)) % 2 == 0, 1.0, 0.85)[..., None]
    elif style == "speckle":
        body += 0.25 * (rng.uniform(size=(size, size)) > 0.97)[..., None]
    elif style == "shaded":  # a light from one side across the whole body
        rows, cols = np.nonzero(m)
        d = rng.uniform(0, 2 * np.pi)
        t = (xx - cols.mean()) * np.cos(d) + (yy - rows.mean()) * np.sin(d)
        body *= (1 + 0.25 * t / max(np.abs(t[m]).max(), 1))[..., None]
    rows, cols = np.nonzero(m)
    hy, hx = rows.mean() - 0.3 * rows.std(), cols.mean() - 0.3 * cols.std()
    highlight = np.exp(-((yy - hy) ** 2 + (xx - hx) ** 2) / (2 * (0.15 * rows.std() + 1) ** 2))
    return body + 0.25 * highlight[..., None]


def _place(rng, kind, size, r, masks, touching):
    occupied = np.any(masks, axis=0) if masks else np.zeros((size, size), bool)
    for _try in range(200):
        if touching and masks:
            ref = masks[int(rng.integers(len(masks)))]
            rows, cols = np.nonzero(ref)
            a, d = rng.uniform(0, 2 * np.pi), r * rng.uniform(1.1, 1.8)
            cx, cy = cols.mean() + d * np.cos(a), rows.mean() + d * np.sin(a)
        else:
            cx, cy = rng.uniform(0.15, 0.85, 2) * size
        if not (0.12 * size <= cx <= 0.88 * size and 0.12 * size <= cy <= 0.88 * size):
            continue
        m = _shape(rng, kind, size, cx, cy, r)
        overlap = (m & occupied).sum() / max(1, m.sum())
        near = ndimage.binary_dilation(occupied, iterations=max(3, int(0.04 * size))) & m
        if (0.1 <= overlap <= 0.4) if (touching and masks) else not near.any():
            return m
    return None


def make_heldout(rng: np.random.Generator, family: str, size: int = 512) -> Scene:
    """One scene of ``family`` (``HELDOUT_FAMILIES``)."""
    sh, ss, sv = rng.uniform(0, 1), rng.uniform(0.1, 0.8), rng.uniform(0.35, 0.9)
    subj = _hsv(sh, ss, sv)
    while True:
        c1, c2 = _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.7), rng.uniform(0.25, 0.9)), \
            _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.7), rng.uniform(0.25, 0.9))
        if min(np.abs(c1 - subj).sum(), np.abs(c2 - subj).sum()) > 0.35:
            break
    blend = 1 / (1 + np.exp(-2 * _field(rng, size, size / 10)))
    img = (c1 * blend[..., None] + c2 * (1 - blend[..., None])).astype(np.float32)
    blobs = _field(rng, size, size / 30) > 1.3
    img[blobs] = 0.5 * img[blobs] + 0.5 * _hsv(rng.uniform(0, 1), 0.5, 0.6)
    img += 0.04 * rng.standard_normal((size, size, 1)).astype(np.float32)
    kind, style = SHAPES[int(rng.integers(len(SHAPES)))], ("flat", "checker", "speckle", "shaded")[int(rng.integers(4))]
    outlined = rng.uniform() < 0.3
    r = size * rng.uniform(0.07, 0.1)
    masks: list[np.ndarray] = []
    for _ in range(int(rng.integers(2, 5))):
        m = _place(rng, kind, size, r, masks, family == "heldout_touching")
        if m is None:
            continue
        shadow = ndimage.shift(ndimage.gaussian_filter(m.astype(np.float32), 4), (5, 4), order=1) * ~m
        img *= (1 - 0.35 * shadow)[..., None]
        col = _hsv(sh + rng.uniform(-0.03, 0.03), ss * rng.uniform(0.9, 1.1), sv * rng.uniform(0.85, 1.15))
        img[m] = _appearance(rng, size, style, m, col)[m]
        if outlined:
            img[m & ~ndimage.binary_erosion(m, iterations=2)] *= 0.35
        for prev in masks:
            prev &= ~m
        masks.append(m)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    keep = [m for m in masks if m.sum() > 50]
    return Scene(np.clip(img, 0, 1).astype(np.float32), keep, [None] * len(keep))
