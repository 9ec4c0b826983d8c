"""Cutting touching look-alikes off the clicked subject (our addition; the paper relies on connectivity).

Two look-alikes that touch form one connected region. What still tells them apart is their shape
and the edge where they meet: the region is thinner at the junction (a neck) and an outline or
shading line often runs along it. So the region is seen as a landscape: its thickness (distance to
the region's boundary; outside the image counts as outside), lowered along image edges. Each look-alike is a hill of its own, with a
pass (the neck) between. A strong edge inside the region (``CUT``) counts as outside: where two
look-alikes overlap without a neck, the outline of the one in front is what splits them into two hills.

1. The clicked body: the hill under each positive point (climbed from the click), its height ``T`` (read
   without the cuts: texture edges cut a body into smaller hills).
2. Other bodies: hills at least ``ALIKE`` x as high (thinner parts, such as legs, tails, ears, a head,
   are never look-alikes) and far enough from the click (``APART`` x ``T``) to be another body, not
   a lobe of this one. Negative points mark other bodies too. Hills from ``MAYBE`` x ``T`` up, as far
   away, are "maybe" bodies: a look-alike half hidden behind another, or a head.
3. Parts too far from the click to be the clicked body: thick parts (at least ``FAR_THICK`` x the
   clicked body's thickness ``D``) more than ``FAR`` x ``D`` away from every click and from its centre
   (the top of the click's hill and the ridge around it, ``RIDGE``). A look-alike merged with the
   clicked body without a neck of its own has no hill of its own, but a body whose inscribed radius is
   ``D`` rarely reaches that far; thin parts (legs, a tail) are not thick enough to count. ``D`` is
   measured on the shape alone (no edge term) on that centre, not at the click: users click anywhere,
   and a click near a body's edge measured by its own small depth made the body's own far end "too
   far" (select4, reverted). The far parts are one more marker.
4. A marker watershed splits the region between those markers along the passes. The clicked body is
   flooded from the disc around each click that is surely inside it and from the top of the click's
   hill, so a neighbour's flood cannot take the clicked body's top or the side of it nearer to the
   neighbour's top than to the click. A negative point floods its body from the top of its hill too.
5. A body joins the clicked side again only when the pass to it is as high as the lower of the two
   hills (``NECK``: no neck and no edge at all, e.g. the far end of one long body) and no outline runs
   along the border between them (``OUTLINE``: overlapping look-alikes have no neck); otherwise it is cut
   off (bench/selection.py measured cutting as the better default for touching look-alikes). A body a
   negative point marks, and the far parts, are always cut off. A "maybe" body joins wherever it touches
   the clicked side, unless an outline or a cut runs along their border.
6. Where the clicked side meets the bodies cut off, a random walker on the colour image re-decides the
   border within ``CORE`` pixels of it (``walker``): the flood knows the shape, not the image, and where
   look-alikes overlap without a neck the outline of the one in front is the only trace of the border.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .features import sobel
from .walker import walk

Cell = tuple[int, int]

ALIKE = 0.75  # a hill at least this x the clicked body's height may be another body
APART = 1.6  # ... when at least this x that height away from the click
NECK = 1.0  # a pass as high as the lower hill (a plateau: one long body) joins the two
EDGE_WEIGHT = 1.0  # how much an image edge lowers the landscape (0 = shape alone)
# An edge this strong (``edge_strength`` smoothed, 0..1) counts as outside in the landscape: an outline.
# Overlapping look-alikes whose thickest part is the overlap form one hill; the outline of the one in
# front splits it into two. The clicked body's height is still read without the cuts (``_height``):
# texture edges (spots, stripes) cut a body into smaller hills, and its own parts passed for other bodies.
# 0.5 / 0.6 / 0.7 within 0.01 on touching look-alikes; 0.4 and below cut bodies at their texture
# (bench/selection.py, seeds 0 and 1).
CUT = 0.6
# A hill between ``MAYBE`` and ``ALIKE`` x the clicked body's height, as far away as another body, is "maybe"
# another body: a look-alike behind another shows less of itself than the clicked one, and a head or a
# lobe of the clicked body is as thin. It joins the clicked side wherever they touch, unless an outline
# (``OUTLINE``) or a cut runs along most of their border. Two overlapping discs with the front one
# outlined, the front one clicked: with the cuts alone the one behind was taken in (IoU 0.54-0.63 at 40-60 %
# overlap), 0.94-0.96 with "maybe" bodies; 0.5-0.6 within 0.004 of none on bench/selection.py's touching
# look-alikes (tests/core/test_split_outlines.py).
MAYBE = 0.5
# A pass is never a join when an outline runs along the border there (``_outlines``: the median colour
# gradient along it at least this x the median inside the region): overlapping look-alikes have no neck,
# so their pass often passed the join. Borders inside one body measured a median 2.0 (90th percentile
# 3.0), between bodies 2.75 (75th percentile 4.8); 2.5-4 cut more touching look-alikes but lost some
# off-centre clicks (a body's own top cut off), 5 none (bench/selection.py, seeds 0-2).
OUTLINE = 5.0
# A click's disc reaches at most this x the distance to the nearest other body's marker (0.45 -> 0.55
# with the far parts, 0.6 with ``UP_SLOPE``: touching look-alikes up in bench/selection.py, seeds 0
# and 1), for a click at the top of its hill (``ON_TOP``).
DISC_GAP = 0.6
FAR = 2.0  # thick parts farther than this x the clicked body's thickness from its clicks and centre: another body
FAR_THICK = 0.6  # ... when at least this x that thickness (thin parts: legs, a tail, never are)
# The clicked body's centre: the top of its hill and the ridge around it at least this x as high (a long
# body's ridge is flat: measured from one point of it, the far end of a 2:1 rounded rectangle clicked
# off-centre was "too far"; 0.95 and 0.9 within 0.005 on touching look-alikes).
RIDGE = 0.95
# A click on a slope (below this x the top of its hill: off a body's middle) keeps the narrower disc:
# with the wider one a body clicked near its edge lost more to its own top taken for another body
# (bench/selection.py, off-centre clicks on separated look-alikes).
ON_TOP = 0.9
SLOPE_GAP = 0.45
# The clicked body's height, for a click between half and ``LOW`` x the top of its hill (off its middle),
# is read this part of the way up from the click to that top: measured at the click alone, the body's
# own top, or a bump of it, passed for another body (off-centre clicks in bench/selection.py); measured
# at the top, touching look-alikes lost their markers (the top of a merged hill is often in the overlap).
LOW = 0.6
UP_SLOPE = 0.25
# The random walker (``_walk_border``) re-decides the clicked side's border with the other bodies within this
# many working-resolution pixels of it (seeds farther away); 4-6 within 0.003 on touching look-alikes, 0 (the
# markers alone as seeds) and 2 worse (bench/selection.py, seeds 0 and 1).
CORE = 5


def gradient(lab: torch.Tensor) -> np.ndarray:
    """[h, w] colour gradient magnitude of ``lab`` [1, 3, h, w]."""
    gx, gy = sobel(lab)
    return (gx * gx + gy * gy).sum(1)[0].sqrt().numpy()


def edge_strength(mag: np.ndarray, region: np.ndarray) -> np.ndarray:
    """[h, w] 0..1: the colour gradient magnitude ``mag`` (``gradient``) relative to its typical strength
    inside ``region`` (the 90th percentile), so texture inside a subject stays well below 1."""
    ref = np.percentile(mag[region], 90) if region.any() else 0.0
    return np.clip(mag / max(ref * 2.0, 1e-6), 0, 1)


def _landscapes(region: np.ndarray, edge: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(the shape alone: the region's thickness; that lowered along ``edge`` (``edge_strength``); the same with
    the outlines counted as outside, as the region's boundary is; those outlines (``CUT``)). Without ``edge``
    all three landscapes are the shape alone and there are no outlines."""
    # Outside the image counts as outside: a body cut by the border is measured by what is visible of
    # it (else the border reads as the thickest part, and a body along it as a row of hills).
    thick = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    if edge is None:
        return thick, thick, thick, None
    soft = ndimage.gaussian_filter(edge, 1.0)
    cuts = soft > CUT
    lower = 1 - EDGE_WEIGHT * soft
    cut = ndimage.distance_transform_edt(np.pad(region & ~cuts, 1))[1:-1, 1:-1]
    return thick, thick * lower, cut * lower, cuts


def _landscape(region: np.ndarray, edge: np.ndarray | None, cut: bool = False) -> np.ndarray:
    """One of ``_landscapes``: lowered along ``edge`` (None: the shape alone), with the outlines as outside if ``cut``."""
    landscapes = _landscapes(region, edge)
    return landscapes[2] if cut else landscapes[1]


def _top(land: np.ndarray, cell: Cell) -> Cell:
    """Where the clicked body is measured: the click itself when it is deep inside the body (at least
    half as high as the top of its hill), else that top (a click near the edge of a body)."""
    top = _climb(land, cell)
    return cell if land[cell] >= 0.5 * land[top] else top


def _height(land: np.ndarray, cell: Cell) -> float:
    """The clicked body's height in ``land`` seen from ``cell``: at the click when it is high on its hill
    (at least ``LOW`` x the top), ``UP_SLOPE`` of the way up to the top a little lower, at the top below
    half of it (the same top ``_top`` measures from)."""
    low, top = float(land[cell]), float(land[_climb(land, cell)])
    if low < 0.5 * top:
        return top
    return low + UP_SLOPE * (top - low) if low < LOW * top else low


def _climb(land: np.ndarray, cell: Cell) -> Cell:
    """The top of the hill under ``cell``: steepest ascent to a local maximum of ``land``."""
    r, c = cell
    h, w = land.shape
    while True:
        r0, c0 = max(r - 1, 0), max(c - 1, 0)
        win = land[r0:r + 2, c0:c + 2]
        i, j = np.unravel_index(int(np.argmax(win)), win.shape)
        if win[i, j] <= land[r, c]:
            return r, c
        r, c = r0 + int(i), c0 + int(j)


def _other_bodies(land: np.ndarray, tops: list[Cell], height: float, alike: float = ALIKE) -> list[Cell]:
    """Hill tops high enough (at least ``alike`` x the clicked body's ``height``) and far enough from the clicked
    hills' ``tops`` to be another body."""
    size = max(3, int(height) | 1)
    peaks = (land >= alike * height) & (land >= 2) & (land == ndimage.maximum_filter(land, size=size))
    out = []
    for r, c in zip(*np.nonzero(peaks)):
        if all((r - tr) ** 2 + (c - tc) ** 2 >= (APART * height) ** 2 for tr, tc in tops):
            out.append((int(r), int(c)))
    return out


def _summits(land: np.ndarray, pos: list[Cell], others: list[Cell]) -> list[Cell]:
    """The top of the hill each click stands on, when it is nearer the click than any other body's
    marker: a marker there floods the clicked hill from its top, as the other bodies' markers do theirs,
    so a neighbour cannot claim the clicked body's top before the water reaches the click."""
    out = []
    for p in pos:
        top = _climb(land, p)
        d = (top[0] - p[0]) ** 2 + (top[1] - p[1]) ** 2
        if top != p and all((top[0] - o[0]) ** 2 + (top[1] - o[1]) ** 2 > d for o in others):
            out.append(top)
    return out


def _click_discs(markers: np.ndarray, land: np.ndarray, cells: list[Cell], kinds: list[str]) -> None:
    """Grow each click's marker to the disc around it that is surely the clicked body: as wide as the
    click's height in the landscape (the disc inside the region, and inside its edges), and at most
    ``DISC_GAP`` (``SLOPE_GAP`` for a click on a slope) of the way to any other body's marker. Flooding
    from a single pixel lets a neighbour's flood take parts of the clicked body that are nearer to the
    neighbour's top than to the click."""
    rr, cc = np.mgrid[0:land.shape[0], 0:land.shape[1]]
    others = [o for o, k in zip(cells, kinds) if k in ("other", "neg")]
    for i, (cell, kind) in enumerate(zip(cells, kinds)):
        if kind != "pos":
            continue
        gap = DISC_GAP if land[cell] >= ON_TOP * land[_climb(land, cell)] else SLOPE_GAP
        rad = min([float(land[cell])] + [gap * float(np.hypot(o[0] - cell[0], o[1] - cell[1])) for o in others])
        disc = ((rr - cell[0]) ** 2 + (cc - cell[1]) ** 2 <= rad * rad) & (markers == 0) & (land > 0)
        markers[disc] = i + 1


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
        # Only the wet pixels' box: every seeded pixel lies in it, so the nearest one is found there
        # too, and at high water levels the box is small.
        rows, cols = np.nonzero(wet.any(1))[0], np.nonzero(wet.any(0))[0]
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        w_lab, w_todo = lab[box], todo[box]
        pools, _ = ndimage.label(wet[box])
        _, (ir, ic) = ndimage.distance_transform_edt(~seeded[box], return_indices=True)
        ok = w_todo & (pools[ir, ic] == pools)
        w_lab[ok] = w_lab[ir, ic][ok]  # a view: writes into lab
    return lab


def _passes(basins: np.ndarray, land: np.ndarray, k: int) -> np.ndarray:
    """[k, k] height of the highest pass between every two touching basins (0 where they do not touch)."""
    neck = np.zeros((k, k))
    for a, b, la, lb in ((basins[:, :-1], basins[:, 1:], land[:, :-1], land[:, 1:]),
                         (basins[:-1], basins[1:], land[:-1], land[1:])):
        sel = (a != b) & (a > 0) & (b > 0)
        np.maximum.at(neck, (a[sel], b[sel]), np.minimum(la[sel], lb[sel]))
    return np.maximum(neck, neck.T)


def _outlines(basins: np.ndarray, mag: np.ndarray, keep: np.ndarray, k: int, ref: float | None = None) -> np.ndarray:
    """[k, k] how strong an outline runs along the border of every two touching basins: the median along
    it of the colour gradient ``mag`` (its 5x5 maximum: the border found by the flood may be a pixel or
    two off the outline), relative to the median gradient inside the region (``keep``, away from its
    edge). A median along a whole border is robust to texture, which peaks only here and there."""
    out = np.zeros((k, k))
    inner = ndimage.binary_erosion(keep, iterations=3)
    if ref is None:
        ref = max(float(np.median(mag[inner])) if inner.any() else float(np.median(mag[keep])), 1e-6)
    peak = ndimage.maximum_filter(mag, size=5) / ref
    vals: dict[tuple[int, int], list[np.ndarray]] = {}
    for a, b, pa in ((basins[:, :-1], basins[:, 1:], peak[:, :-1]), (basins[:-1], basins[1:], peak[:-1])):
        sel = (a != b) & (a > 0) & (b > 0)
        lo, hi, v = np.minimum(a[sel], b[sel]), np.maximum(a[sel], b[sel]), pa[sel]
        for i, j in set(zip(lo.tolist(), hi.tolist())):
            vals.setdefault((i, j), []).append(v[(lo == i) & (hi == j)])
    for (i, j), v in vals.items():
        out[i, j] = out[j, i] = float(np.median(np.concatenate(v)))
    return out


def _join(kinds: list[str], neck: np.ndarray, peak: np.ndarray, ratio: float,
          outline: np.ndarray | None = None, along_cut: np.ndarray | None = None) -> set[int]:
    """Labels on the clicked side: grow it over passes at least ``ratio`` x the lower hill, highest first,
    never across a border that an outline runs along (``outline`` above ``OUTLINE``). A "maybe" body joins
    wherever it touches the side unless an outline runs along their border or a cut does along most of it
    (``along_cut`` at least 0.5)."""
    side = {i + 1 for i, k in enumerate(kinds) if k == "pos"}
    closed = {i + 1 for i, k in enumerate(kinds) if k == "neg"}
    while True:
        best, pick = ratio, None
        for j in range(1, len(kinds) + 1):
            if j in side or j in closed:
                continue
            for i in side:
                if outline is not None and outline[i, j] > OUTLINE:
                    continue
                if kinds[j - 1] == "maybe" and neck[i, j] > 0 and (along_cut is None or along_cut[i, j] < 0.5):
                    best, pick = float("inf"), j
                    continue
                if neck[i, j] > 0 and neck[i, j] / max(min(peak[i], peak[j]), 1e-6) >= best:
                    best, pick = neck[i, j] / max(min(peak[i], peak[j]), 1e-6), j
        if pick is None:
            return side
        side.add(pick)


def _far_parts(thick: np.ndarray, pos: list[Cell]) -> np.ndarray:
    """[h, w] bool: the thick parts of the region (``thick`` > 0, its shape-only landscape) too far from
    every click in ``pos`` and from the clicked body's centre to be the clicked body (step 3). The centre
    is the top of the hill each click climbs to and the ridge around it at least ``RIDGE`` x as high, so
    the measure is the same wherever on the body the click is."""
    centre = np.zeros(thick.shape, bool)
    for p in pos:
        centre[p] = True
        top = _climb(thick, p)
        ridges, _ = ndimage.label(thick >= RIDGE * thick[top])
        centre |= ridges == ridges[top]
    height = float(thick[centre].max())
    near = ndimage.distance_transform_edt(~centre) <= FAR * height
    return ~near & (thick >= FAR_THICK * height) & (thick > 0)


def split_lookalikes(region: np.ndarray, pos: list[Cell], neg: list[Cell], auto: bool = True,
                     lab: torch.Tensor | None = None) -> np.ndarray:
    """The part of ``region`` ([h, w] bool) that belongs to the body under the positive cells.

    ``auto``: also find unclicked look-alike bodies (else only negative points mark other bodies);
    ``lab``: the image [1, 3, h, w] (Lab), whose edges deepen the passes along outlines (None: shape only).
    """
    rows, cols = np.nonzero(region)
    r0, c0 = max(int(rows.min()) - 1, 0), max(int(cols.min()) - 1, 0)
    crop = (slice(r0, int(rows.max()) + 2), slice(c0, int(cols.max()) + 2))
    keep = region[crop]
    pos = [(r - r0, c - c0) for r, c in pos if region[r, c]]
    neg = [(r - r0, c - c0) for r, c in neg if region[r, c]]
    if not pos:
        return np.zeros_like(region)
    mag = None if lab is None else gradient(lab[:, :, crop[0], crop[1]])
    thick, plain, land, cuts = _landscapes(keep, None if mag is None else edge_strength(mag, keep))
    height = max(_height(plain, p) for p in pos)  # without the cuts (``CUT``)
    tops = [_top(land, p) for p in pos]
    # hills from MAYBE x the height up (ALIKE without an image: "maybe" bodies are judged by its edges)
    found = _other_bodies(land, tops, height, MAYBE if cuts is not None else ALIKE) if auto else []
    others = [c for c in found if land[c] >= ALIKE * height]
    maybes = [c for c in found if land[c] < ALIKE * height]
    far = _far_parts(thick, pos) if auto else np.zeros(keep.shape, bool)
    if not neg and not others and not far.any() and not maybes:
        return region
    summits = _summits(land, pos, others + neg)
    # a negative point marks its body from the top of its hill too (else the clicked side's flood takes
    # that top before the water reaches the negative point, and the point cuts off only its surroundings)
    neg_tops = _summits(land, neg, others + summits + pos)
    cells = maybes + others + summits + neg_tops + pos + neg
    kinds = ["maybe"] * len(maybes) + ["other"] * len(others) + ["pos"] * len(summits) + ["neg"] * len(neg_tops) \
        + ["pos"] * len(pos) + ["neg"] * len(neg)
    markers = np.zeros(keep.shape, np.int32)
    for i, (r, c) in enumerate(cells):
        markers[r, c] = i + 1  # later wins: a click beats a found body, a negative point on a positive cancels it
    kinds = [k if markers[cell] == i + 1 else "gone" for i, (k, cell) in enumerate(zip(kinds, cells))]
    _click_discs(markers, land, cells, kinds)
    markers[far & (markers == 0)] = len(kinds) + 1  # one more marker: the far parts,
    kinds.append("neg")  # closed to the join like a negative point's body
    basins = flood(keep, land, markers)
    k = len(kinds) + 1
    peak = np.asarray(ndimage.maximum(land, basins, index=np.arange(k)), dtype=float)
    outline = None if mag is None else _outlines(basins, mag, keep, k)
    # how much of each border runs along a cut: the median along it of the (5x5 widened) cut pixels
    along_cut = None if not maybes else _outlines(basins, cuts.astype(float), keep, k, ref=1.0)
    side = _join(kinds, _passes(basins, land, k), peak, NECK, outline, along_cut)
    inside = keep & np.isin(basins, list(side))
    if lab is not None:
        inside = _walk_border(keep, inside, lab[0, :, crop[0], crop[1]].numpy(), pos, neg)
    out = np.zeros_like(region)
    out[crop] = inside
    return out


def _walk_border(keep: np.ndarray, inside: np.ndarray, lab: np.ndarray, pos: list[Cell], neg: list[Cell]) -> np.ndarray:
    """The clicked side ``inside`` of ``keep`` with its border against the other bodies re-decided by a random
    walker on the colour image (``walker``), between the two sides' cores (farther than ``CORE`` from the
    other side) and the clicks; the part connected to the positive clicks is kept. The border against the
    background is not moved."""
    others = keep & ~inside
    if not others.any() or not inside.any():
        return inside
    fg = inside & (ndimage.distance_transform_edt(~others) > CORE)
    bg = others & (ndimage.distance_transform_edt(~inside) > CORE)
    for cells, seeds in ((pos, fg), (neg, bg)):
        for cell in cells:
            seeds[cell] = keep[cell]
    prob = walk(keep, lab, fg, bg)
    if prob is None:
        return inside
    new = keep & (prob > 0.5)
    ids, _ = ndimage.label(new)
    kept = {int(ids[p]) for p in pos if new[p]} - {0}
    return np.isin(ids, list(kept)) if kept else inside
