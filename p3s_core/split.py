"""Cutting touching look-alikes off the clicked subject (our addition; the paper relies on connectivity).

Two look-alikes that touch form one connected region. What still tells them apart is their shape
and the edge where they meet: the region is thinner at the junction (a neck) and an outline or
shading line often runs along it. So the region is seen as a landscape: its thickness (distance to
the region's boundary), lowered along image edges. Each look-alike is a hill of its own, with a
pass (the neck) between.

1. The clicked body: the hill under each positive point, its height ``T`` = the body's half-thickness.
2. Other bodies: hills at least ``ALIKE`` x as high (thinner parts, such as legs, tails, ears, a head,
   are never look-alikes) and far enough from the click (``APART`` x ``T``) to be another body, not
   a lobe of this one. Negative points mark other bodies too.
3. A marker watershed splits the region between those hills along the passes.
4. A body joins the clicked side again when the pass to it is nearly as high as the lower of the two
   hills (``NECK`` x: no real neck, e.g. the far end of one long body); otherwise it is cut off.
   A body a negative point marks is always cut off.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

Cell = tuple[int, int]

ALIKE = 0.75  # a hill at least this x the clicked body's height may be another body
APART = 1.6  # ... when at least this x that height away from the click
NECK = 0.9  # a pass at least this x the lower hill joins the two (manual negative points: NEG_NECK)
NEG_NECK = 0.6
EDGE_WEIGHT = 0.6  # how much an image edge lowers the landscape (0 = shape alone)


def edge_strength(lab: torch.Tensor, region: np.ndarray) -> np.ndarray:
    """[h, w] 0..1: colour gradient magnitude of ``lab`` [1, 3, h, w], relative to its typical strength
    inside ``region`` (the 90th percentile), so texture inside a subject stays well below 1."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1) / 8
    x = F.pad(lab, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(x, kx, groups=3), F.conv2d(x, kx.transpose(2, 3), groups=3)
    mag = (gx * gx + gy * gy).sum(1)[0].sqrt().numpy()
    ref = np.percentile(mag[region], 90) if region.any() else 0.0
    return np.clip(mag / max(ref * 2.0, 1e-6), 0, 1)


def _landscape(region: np.ndarray, edge: np.ndarray | None) -> np.ndarray:
    dt = ndimage.distance_transform_edt(region)
    return dt if edge is None else dt * (1 - EDGE_WEIGHT * ndimage.gaussian_filter(edge, 1.0))


def _clicked_height(land: np.ndarray, cells: list[Cell]) -> float:
    """Height of the hill under the clicks: the highest ground within two of its own depths of a click."""
    best = 0.0
    for r, c in cells:
        reach = int(max(3.0, 2 * land[r, c]))
        best = max(best, float(land[max(0, r - reach):r + reach + 1, max(0, c - reach):c + reach + 1].max()))
    return best


def _other_bodies(land: np.ndarray, pos: list[Cell], height: float) -> list[Cell]:
    """Hill tops high enough and far enough from every positive click to be another body."""
    size = max(3, int(height) | 1)
    tops = (land >= ALIKE * height) & (land >= 2) & (land == ndimage.maximum_filter(land, size=size))
    out = []
    for r, c in zip(*np.nonzero(tops)):
        if all((r - pr) ** 2 + (c - pc) ** 2 >= (APART * height) ** 2 for pr, pc in pos):
            out.append((int(r), int(c)))
    return out


def flood(region: np.ndarray, land: np.ndarray, markers: np.ndarray, levels: int = 12) -> np.ndarray:
    """Marker watershed of ``-land`` by flooding: lower the water level step by step and give each newly
    wet pixel the label of the nearest labelled pixel in its connected pool. (scipy's watershed_ift
    leaks labels around basins along equal-cost rims, so it is not used.)"""
    lab = markers.copy()
    top = float(land.max())
    for t in list(np.linspace(top, 0, levels + 1)[1:-1]) + [0.0]:
        wet = region & (land >= t) if t > 0 else region
        todo = wet & (lab == 0)
        seeded = wet & (lab > 0)
        if not todo.any() or not seeded.any():
            continue
        pools, _ = ndimage.label(wet)
        _, (ir, ic) = ndimage.distance_transform_edt(~seeded, return_indices=True)
        ok = todo & (pools[ir, ic] == pools)
        lab[ok] = lab[ir, ic][ok]
    return lab


def _passes(basins: np.ndarray, land: np.ndarray, k: int) -> np.ndarray:
    """[k, k] height of the highest pass between every two touching basins (0 where they do not touch)."""
    neck = np.zeros((k, k))
    for a, b, la, lb in ((basins[:, :-1], basins[:, 1:], land[:, :-1], land[:, 1:]),
                         (basins[:-1], basins[1:], land[:-1], land[1:])):
        sel = (a != b) & (a > 0) & (b > 0)
        np.maximum.at(neck, (a[sel], b[sel]), np.minimum(la[sel], lb[sel]))
    return np.maximum(neck, neck.T)


def _join(kinds: list[str], neck: np.ndarray, peak: np.ndarray, ratio: float) -> set[int]:
    """Labels on the clicked side: grow it over passes at least ``ratio`` x the lower hill, highest first."""
    side = {i + 1 for i, k in enumerate(kinds) if k == "pos"}
    closed = {i + 1 for i, k in enumerate(kinds) if k == "neg"}
    while True:
        best, pick = ratio, None
        for j in range(1, len(kinds) + 1):
            if j in side or j in closed:
                continue
            for i in side:
                if neck[i, j] > 0 and neck[i, j] / max(min(peak[i], peak[j]), 1e-6) >= best:
                    best, pick = neck[i, j] / max(min(peak[i], peak[j]), 1e-6), j
        if pick is None:
            return side
        side.add(pick)


def split_lookalikes(region: np.ndarray, pos: list[Cell], neg: list[Cell], auto: bool = True,
                     edge: np.ndarray | None = None) -> np.ndarray:
    """The part of ``region`` ([h, w] bool) that belongs to the body under the positive cells.

    ``auto``: also find unclicked look-alike bodies (else only negative points mark other bodies);
    ``edge``: [h, w] 0..1 edge strength (``edge_strength``) that deepens the passes along outlines.
    """
    rows, cols = np.nonzero(region)
    r0, c0 = max(int(rows.min()) - 1, 0), max(int(cols.min()) - 1, 0)
    crop = (slice(r0, int(rows.max()) + 2), slice(c0, int(cols.max()) + 2))
    keep = region[crop]
    pos = [(r - r0, c - c0) for r, c in pos if region[r, c]]
    neg = [(r - r0, c - c0) for r, c in neg if region[r, c]]
    if not pos:
        return np.zeros_like(region)
    land = _landscape(keep, None if edge is None else edge[crop])
    others = _other_bodies(land, pos, _clicked_height(land, pos)) if auto else []
    kinds = ["pos"] * len(pos) + ["neg"] * len(neg) + ["other"] * len(others)
    if not neg and not others:
        return region
    markers = np.zeros(keep.shape, np.int32)
    for i, (r, c) in enumerate(pos + neg + others):
        markers[r, c] = i + 1  # later wins: a negative point on a positive one cancels it
    kinds = [kinds[int(markers[r, c]) - 1] if markers[r, c] == i + 1 else "gone"
             for i, (r, c) in enumerate(pos + neg + others)]
    basins = flood(keep, land, markers)
    k = len(kinds) + 1
    peak = np.asarray(ndimage.maximum(land, basins, index=np.arange(k)), dtype=float)
    side = _join(kinds, _passes(basins, land, k), peak, NECK if auto else NEG_NECK)
    out = np.zeros_like(region)
    out[crop] = keep & np.isin(basins, list(side))
    return out
