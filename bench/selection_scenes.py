"""Procedural scenes with known instance masks for ``bench/selection.py`` (numpy + scipy only).

Every scene has several look-alike subjects (one shape family, colour and texture per scene, small
per-instance variation) on a background. The families stress one thing each:

- ``separated``: 2-5 look-alikes with background between them, mildly textured background;
- ``touching``: 2-5 look-alikes that touch or overlap (later ones occlude earlier ones);
- ``textured``: separated look-alikes on a strongly textured background (stripes, checks, grain);
- ``colour_patch``: background regions of the subject's own colour (flat, without its texture or
  shading), some touching the subjects;
- ``thin``: animals with thin legs and a tail; ``thin_masks`` marks the thin parts;
- ``many``: 4-7 smaller look-alikes, some touching;
- ``border``: look-alikes cut by the image border.

Shapes: wobbly superellipse animals with a head, star-like radial polygons, rounded rectangles and
blobs made of overlapping discs. Subject textures: fine noise, spots, stripes, soft fur bands.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

FAMILIES = ("separated", "touching", "textured", "colour_patch", "thin", "many", "border")
SHAPES = ("animal", "star", "rounded_rect", "discs")


@dataclass
class Scene:
    image: np.ndarray  # [S, S, 3] float32 0..1
    masks: list  # visible instance masks [S, S] bool
    thin_masks: list = field(default_factory=list)  # per instance: its thin parts (or None)


def _noise(rng: np.random.Generator, size: int, scale: float, ch: int = 1) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal((size, size, ch)), (scale, scale, 0))
    return n / (n.std() + 1e-8)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1)))


def _grid(size: int, cx: float, cy: float, ang: float):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ca, sa = np.cos(ang), np.sin(ang)
    return (xx - cx) * ca + (yy - cy) * sa, -(xx - cx) * sa + (yy - cy) * ca


def _segment(size: int, p0, p1, half_width: float) -> np.ndarray:
    """Pixels within ``half_width`` of the segment p0-p1 (a leg, a tail)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
    return (xx - x0 - t * dx) ** 2 + (yy - y0 - t * dy) ** 2 <= half_width ** 2


def _shape(size: int, cx: float, cy: float, r: float, rng: np.random.Generator, p: dict):
    """One silhouette of kind ``p["kind"]``; returns (mask, thin-part mask or None)."""
    ang = rng.uniform(0, np.pi)
    u, v = _grid(size, cx, cy, ang)
    kind = p["kind"]
    if kind == "star":
        theta, rad = np.arctan2(v, u), np.hypot(u, v)
        edge = r * (1 + p["spikes_amp"] * np.cos(p["spikes"] * theta + rng.uniform(0, 6.3))
                    + 0.05 * np.cos(2 * theta + rng.uniform(0, 6.3)))
        return rad <= edge, None
    if kind == "rounded_rect":
        a, b, c = r * p["aspect"], r, 0.35 * r
        qx, qy = np.maximum(np.abs(u) - (a - c), 0), np.maximum(np.abs(v) - (b - c), 0)
        return qx * qx + qy * qy <= c * c, None
    if kind == "discs":
        m = np.zeros((size, size), bool)
        for k in range(p["discs"]):
            a = 2 * np.pi * k / p["discs"] + rng.uniform(-0.3, 0.3)
            ox, oy = 0.55 * r * np.cos(a), 0.55 * r * np.sin(a)
            m |= (u - ox) ** 2 + (v - oy) ** 2 <= (0.62 * r * rng.uniform(0.85, 1.1)) ** 2
        return m, None
    # animal: wobbly superellipse body, round head at one end; optional legs and tail (thin parts)
    a, b = r * p["aspect"] * rng.uniform(0.92, 1.08), r * rng.uniform(0.92, 1.08)
    theta = np.arctan2(v, u)
    wob = 1 + sum(rng.uniform(-0.06, 0.06) * np.cos(k * theta + rng.uniform(0, 6.3)) for k in (2, 3, 5))
    n = p["exponent"]
    body = (np.abs(u / a) ** n + np.abs(v / b) ** n) ** (1 / n) <= wob
    hx, hy = a * 0.95, rng.uniform(-0.3, 0.3) * b
    head = (u - hx) ** 2 + (v - hy) ** 2 <= (b * p["head"]) ** 2
    if not p.get("thin"):
        return body | head, None
    ca, sa = np.cos(ang), np.sin(ang)

    def world(pu, pv):
        return cx + pu * ca - pv * sa, cy + pu * sa + pv * ca

    hw = max(1.5, 0.12 * b)
    thin = _segment(size, world(-0.9 * a, 0), world(-1.9 * a, rng.uniform(-0.6, 0.6) * b), hw)  # tail
    for lx in (-0.55, 0.45):
        thin |= _segment(size, world(lx * a, 0.7 * b), world(lx * a + rng.uniform(-0.2, 0.2) * a, 1.8 * b), hw)
    return body | head | thin, thin & ~(body | head)


def _background(rng: np.random.Generator, size: int, subj: np.ndarray, family: str):
    """A background whose colour differs from the subject's; returns (image, hue, sat, val)."""
    while True:
        bh, bs, bv = rng.uniform(0, 1), rng.uniform(0.05, 0.7), rng.uniform(0.2, 0.9)
        if np.abs(_hsv(bh, bs, bv) - subj).sum() > 0.35:
            break
    img = np.empty((size, size, 3), np.float32)
    img[:] = _hsv(bh, bs, bv)
    lum = 0.07 * _noise(rng, size, size / 24) + 0.04 * _noise(rng, size, 2)
    img += lum + 0.03 * _noise(rng, size, size / 24, 3) + 0.015 * _noise(rng, size, 2, 3)
    clutter = _noise(rng, size, size / 16)[..., 0] > 1.2
    img[clutter] = img[clutter] * 0.6 + 0.4 * _hsv(bh + rng.uniform(-0.15, 0.15), bs, bv * 0.8)
    if family == "textured":
        u, v = _grid(size, size / 2, size / 2, rng.uniform(0, np.pi))
        period = rng.uniform(6, 20)
        stripes = np.sin(2 * np.pi * u / period) > 0
        checks = (np.floor(u / (2.5 * period)) + np.floor(v / (2.5 * period))) % 2 == 0
        second = _hsv(bh + rng.uniform(-0.2, 0.2), bs, bv * rng.uniform(0.45, 0.7))
        pattern = stripes ^ checks if rng.uniform() < 0.5 else stripes
        img[pattern] = 0.3 * img[pattern] + 0.7 * second
        img += 0.12 * _noise(rng, size, 0.7)  # coarse grain, as gravel or a carpet
    return img, (bh, bs, bv)


def _subject_texture(rng: np.random.Generator, size: int, style: str) -> np.ndarray:
    tex = 0.04 * _noise(rng, size, 1.5)
    if style == "spots":
        tex += -0.15 * (_noise(rng, size, size / 80) > 1.3)
    elif style == "stripes":
        u, _ = _grid(size, 0, 0, rng.uniform(0, np.pi))
        tex += 0.08 * np.sign(np.sin(2 * np.pi * u / rng.uniform(5, 12)))[..., None]
    elif style == "fur":
        tex += 0.06 * _noise(rng, size, 4)
    return tex


def _colour_patches(rng, img, subj_col, size, centres, r):
    """Flat regions of the subject's colour (no subject texture or shading), some at a subject."""
    for k in range(int(rng.integers(2, 4))):
        if k == 0 and centres:  # one right next to a subject, touching it
            cx, cy = centres[int(rng.integers(len(centres)))]
            a = rng.uniform(0, 2 * np.pi)
            cx, cy = cx + 1.3 * r * np.cos(a), cy + 1.3 * r * np.sin(a)
        else:
            cx, cy = rng.uniform(0.1, 0.9, 2) * size
        u, v = _grid(size, cx, cy, rng.uniform(0, np.pi))
        patch = (np.abs(u) <= r * rng.uniform(0.6, 1.4)) & (np.abs(v) <= r * rng.uniform(0.3, 0.7))
        img[patch] = subj_col + 0.02 * _noise(rng, size, 2)[patch]


def _place(rng, size, family, centres, occupied, r, params, touching):
    """Try positions until one fits the family's rule; returns (mask, thin, (cx, cy)) or None."""
    lo, hi = (0.0, 1.0) if family == "border" else (0.12, 0.88)
    for _try in range(200):
        if touching and centres:
            px, py = centres[int(rng.integers(len(centres)))]
            a, d = rng.uniform(0, 2 * np.pi), r * rng.uniform(1.6, 2.2)
            cx, cy = px + d * np.cos(a), py + d * np.sin(a)
        elif family == "border":  # centre near an edge, so the border cuts the silhouette
            cx, cy = rng.uniform(0.15, 0.85, 2) * size
            side = int(rng.integers(4))
            off = rng.uniform(0.1, 0.6) * r
            cx, cy = [(off, cy), (size - off, cy), (cx, off), (cx, size - off)][side]
        else:
            cx, cy = rng.uniform(0.15, 0.85, 2) * size
        if not (lo * size <= cx <= hi * size and lo * size <= cy <= hi * size):
            continue
        m, thin = _shape(size, cx, cy, r, rng, params)
        if m.sum() < 50:
            continue
        inter = (m & occupied).sum() / m.sum()
        near = ndimage.binary_dilation(occupied, iterations=max(2, int(0.03 * size))) & m
        ok = (0 < inter < 0.25 or (inter == 0 and near.any())) if (touching and centres) else not near.any()
        if ok:
            return m, thin, (cx, cy)
    return None


def make_scene(rng: np.random.Generator, family: str, size: int = 512) -> Scene:
    """One scene of ``family`` (see the module docstring)."""
    sh, ss, sv = rng.uniform(0, 1), rng.uniform(0.0, 0.85), rng.uniform(0.3, 0.95)
    subj = _hsv(sh, ss, sv)
    img, _ = _background(rng, size, subj, family)
    kind = "animal" if family == "thin" else SHAPES[int(rng.integers(len(SHAPES)))]
    params = {"kind": kind, "aspect": rng.uniform(1.2, 1.8), "exponent": rng.uniform(1.7, 3.0),
              "head": rng.uniform(0.45, 0.7), "spikes": int(rng.integers(4, 8)),
              "spikes_amp": rng.uniform(0.15, 0.35), "discs": int(rng.integers(3, 5)), "thin": family == "thin"}
    k = int(rng.integers(4, 8)) if family == "many" else int(rng.integers(2, 6))
    r = size * rng.uniform(0.06, 0.1) * (0.7 if family == "many" else 1.0 if k <= 3 else 0.85)
    style = ("noise", "spots", "stripes", "fur")[int(rng.integers(4))]
    rim = rng.uniform(0.0, 0.3)  # darker rim (rounded 3-D look); 0 = no edge where two subjects touch
    touching = family == "touching" or (family == "many" and rng.uniform() < 0.5)
    masks, thins, centres = [], [], []
    occupied = np.zeros((size, size), bool)
    if family == "colour_patch":
        centres_hint = [tuple(rng.uniform(0.2, 0.8, 2) * size) for _ in range(2)]
        _colour_patches(rng, img, subj, size, centres_hint, r)
    for _ in range(k):
        placed = _place(rng, size, family, centres, occupied, r, params, touching)
        if placed is None:
            continue
        m, thin, c = placed
        centres.append(c)
        col = _hsv(sh + rng.uniform(-0.02, 0.02), ss * rng.uniform(0.9, 1.1), sv * rng.uniform(0.9, 1.1))
        shade = 1 - rim + rim * np.clip(ndimage.distance_transform_edt(m) / (0.5 * r), 0, 1)
        body = (col[None, None] + _subject_texture(rng, size, style)) * shade[..., None]
        img[m] = body[m]
        for prev, pthin in zip(masks, thins):  # later instances occlude earlier ones
            prev &= ~m
            if pthin is not None:
                pthin &= ~m
        masks.append(m.copy())
        thins.append(None if thin is None else thin.copy())
        occupied |= m
    g = rng.uniform(-1, 1, 2)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    img *= (1 + 0.35 * (g[0] * xx + g[1] * yy))[..., None]
    img += rng.normal(0, 0.02, img.shape)
    keep = [i for i, m in enumerate(masks) if m.sum() > 50]
    return Scene(np.clip(img, 0, 1).astype(np.float32), [masks[i] for i in keep], [thins[i] for i in keep])


def click_point(mask: np.ndarray) -> tuple[float, float]:
    """The target pixel farthest from the mask boundary (x, y), at the pixel centre."""
    dt = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return float(x) + 0.5, float(y) + 0.5


def off_centre_point(mask: np.ndarray, rng: np.random.Generator, lo: float = 0.25,
                     hi: float = 0.75) -> tuple[float, float]:
    """A random target pixel (x, y) whose distance to the mask boundary is between ``lo`` and ``hi`` x the
    target's depth (its largest such distance), at the pixel centre: where a user may click, not only the
    deepest point."""
    dt = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    top = float(dt.max())
    rows, cols = np.nonzero((dt >= lo * top) & (dt <= hi * top))
    if len(rows) == 0:  # a target too thin for the band (depth ~1 px): its deepest point
        return click_point(mask)
    i = int(rng.integers(len(rows)))
    return float(cols[i]) + 0.5, float(rows[i]) + 0.5
