"""Procedural benchmark of RNGR subject selection with the built-in weight-free features.

Each scene has 2-5 look-alike "animals" (wobbly superellipse bodies with a head, one colour and
texture per scene, small per-instance variation) on a textured, unevenly lit, noisy background.
Half the scenes have separated subjects, half touching/overlapping ones. One click per target at
its most interior point. Prints mean IoU of the expanded mask with the target and selection
accuracy (IoU with the target above IoU with every other instance), then timings, and ends with:
``selection separated_iou=.. separated_acc=.. touching_iou=.. touching_acc=.. ms_1024=..``

Usage: python bench/selection.py [--scenes 200] [--size 512] [--seed 0]
"""

from __future__ import annotations

import argparse
import colorsys
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from p3s_core.points import PointSet  # noqa: E402
from p3s_core.rngr import select_subject  # noqa: E402


def _smooth_noise(rng: np.random.Generator, size: int, scale: float, ch: int = 1) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal((size, size, ch)), (scale, scale, 0))
    return n / (n.std() + 1e-8)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1)))


def _shape(size: int, cx: float, cy: float, r: float, rng: np.random.Generator, p: dict) -> np.ndarray:
    """One animal-ish silhouette: wobbly rotated superellipse body plus a round head."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ang = rng.uniform(0, np.pi)
    ca, sa = np.cos(ang), np.sin(ang)
    u, v = (xx - cx) * ca + (yy - cy) * sa, -(xx - cx) * sa + (yy - cy) * ca
    a, b = r * p["aspect"] * rng.uniform(0.92, 1.08), r * rng.uniform(0.92, 1.08)
    theta = np.arctan2(v, u)
    wob = 1 + sum(rng.uniform(-0.06, 0.06) * np.cos(k * theta + rng.uniform(0, 6.3)) for k in (2, 3, 5))
    n = p["exponent"]
    body = (np.abs(u / a) ** n + np.abs(v / b) ** n) ** (1 / n) <= wob
    hx, hy = a * 0.95, rng.uniform(-0.3, 0.3) * b  # head at one end of the long axis
    head = (u - hx) ** 2 + (v - hy) ** 2 <= (b * p["head"]) ** 2
    return body | head


def make_scene(rng: np.random.Generator, size: int = 512, touching: bool = False):
    """Returns image [size, size, 3] float32 0..1 and a list of visible instance masks."""
    # Subject class: one colour/texture per scene, small per-instance variation (look-alikes).
    sh, ss, sv = rng.uniform(0, 1), rng.uniform(0.25, 0.8), rng.uniform(0.35, 0.9)
    subj = _hsv(sh, ss, sv)
    while True:  # background must differ from the subject somewhat (else nothing is selectable)
        bh, bs, bv = rng.uniform(0, 1), rng.uniform(0.05, 0.7), rng.uniform(0.2, 0.9)
        bg_col = _hsv(bh, bs, bv)
        if np.abs(bg_col - subj).sum() > 0.35:
            break
    img = np.empty((size, size, 3), np.float32)
    img[:] = bg_col
    # Background texture: two scales of colour noise plus clutter blobs of a second colour.
    # Mostly lightness variation with some chroma variation, as in real grass/fabric/wood.
    lum = 0.07 * _smooth_noise(rng, size, size / 24) + 0.04 * _smooth_noise(rng, size, 2)
    img += lum + 0.03 * _smooth_noise(rng, size, size / 24, 3) + 0.015 * _smooth_noise(rng, size, 2, 3)
    clutter = _smooth_noise(rng, size, size / 16) [..., 0] > 1.2
    img[clutter] = img[clutter] * 0.6 + 0.4 * _hsv(bh + rng.uniform(-0.15, 0.15), bs, bv * 0.8)

    k = int(rng.integers(2, 6))
    params = {"aspect": rng.uniform(1.2, 1.8), "exponent": rng.uniform(1.7, 3.0), "head": rng.uniform(0.45, 0.7)}
    r = size * rng.uniform(0.06, 0.1) * (1.0 if k <= 3 else 0.85)
    spots = rng.uniform() < 0.5
    masks: list[np.ndarray] = []
    occupied = np.zeros((size, size), bool)
    centres: list[tuple[float, float]] = []
    for _ in range(k):
        for _try in range(200):
            if touching and centres:
                # Next to a previous instance, close enough that the silhouettes touch or overlap.
                px, py = centres[int(rng.integers(len(centres)))]
                a = rng.uniform(0, 2 * np.pi)
                d = r * rng.uniform(1.6, 2.2)
                cx, cy = px + d * np.cos(a), py + d * np.sin(a)
            else:
                cx, cy = rng.uniform(0.15, 0.85, 2) * size
            if not (0.12 * size < cx < 0.88 * size and 0.12 * size < cy < 0.88 * size):
                continue
            m = _shape(size, cx, cy, r, rng, params)
            inter = (m & occupied).sum() / m.sum()
            near = ndimage.binary_dilation(occupied, iterations=max(2, int(0.03 * size))) & m
            if touching and centres:
                ok = 0 < inter < 0.25 or (inter == 0 and near.any())
            else:
                ok = not near.any()
            if ok:
                break
        else:
            continue
        centres.append((cx, cy))
        col = _hsv(sh + rng.uniform(-0.02, 0.02), ss * rng.uniform(0.9, 1.1), sv * rng.uniform(0.9, 1.1))
        tex = 0.05 * _smooth_noise(rng, size, 1.5)
        if spots:
            tex += -0.15 * (_smooth_noise(rng, size, size / 80) > 1.3)
        shade = ndimage.distance_transform_edt(m)
        shade = 0.75 + 0.25 * np.clip(shade / (0.5 * r), 0, 1)  # darker rim: rounded 3D look
        body = (col[None, None] + tex) * shade[..., None]
        img[m] = body[m]
        for prev in masks:  # later instances occlude earlier ones
            prev &= ~m
        masks.append(m.copy())
        occupied |= m
    # Lighting gradient and sensor noise over everything.
    g = rng.uniform(-1, 1, 2)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    img *= (1 + 0.35 * (g[0] * xx + g[1] * yy))[..., None]
    img += rng.normal(0, 0.02, img.shape)
    return np.clip(img, 0, 1).astype(np.float32), [m for m in masks if m.sum() > 50]


def click_point(mask: np.ndarray) -> tuple[float, float]:
    """The target pixel farthest from the mask boundary (x, y), at the pixel centre."""
    dt = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return float(x) + 0.5, float(y) + 0.5


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def run_scenes(n: int, size: int, seed: int) -> dict:
    res = {"separated": ([], []), "touching": ([], [])}
    rng = np.random.default_rng(seed)
    errors = 0
    for i in range(n):
        touching = i % 2 == 1
        img, masks = make_scene(rng, size, touching)
        if len(masks) < 2:
            continue
        t = torch.from_numpy(img)
        for j, m in enumerate(masks):
            pts = PointSet.from_pixels(positive=[click_point(m)], width=size, height=size)
            try:
                sel = select_subject(t, pts).mask.numpy() > 0.5
            except ValueError:
                sel = np.zeros_like(m)
                errors += 1
            ious = [iou(sel, o) for o in masks]
            ious_t, others = ious[j], ious[:j] + ious[j + 1 :]
            key = "touching" if touching else "separated"
            res[key][0].append(ious_t)
            res[key][1].append(float(all(ious_t > o for o in others)))
    res["errors"] = errors
    return res


def timing(size: int = 1024, reps: int = 15) -> float:
    rng = np.random.default_rng(123)
    img, masks = make_scene(rng, size, False)
    t = torch.from_numpy(img)
    pts = PointSet.from_pixels(positive=[click_point(masks[0])], width=size, height=size)
    select_subject(t, pts)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        select_subject(t, pts)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def big_run() -> tuple[float, float]:
    rng = np.random.default_rng(7)
    img, masks = make_scene(rng, 512, False)
    x, y = click_point(masks[0])
    big = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=(4096, 4096))
    big = big[0].permute(1, 2, 0).contiguous()
    del img
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pts = PointSet.from_pixels(positive=[(x, y)], width=512, height=512)  # rescaled to 4096
    t0 = time.perf_counter()
    sel = select_subject(big, pts)
    ms = (time.perf_counter() - t0) * 1000
    assert sel.mask.shape == (4096, 4096)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"4096x4096: {ms:.0f} ms, peak RSS {peak:.0f} MiB (before the call {before:.0f} MiB)")
    return ms, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    res = run_scenes(args.scenes, args.size, args.seed)
    figs = {}
    for key in ("separated", "touching"):
        ious, acc = res[key]
        figs[key] = (float(np.mean(ious)) if ious else 0.0, float(np.mean(acc)) if acc else 0.0)
        print(f"{key:9s}: {len(ious)} targets, mean IoU {figs[key][0]:.3f}, accuracy {figs[key][1]:.3f}")
    print(f"selection errors (empty result): {res['errors']}; scenes took {time.time() - t0:.0f} s")
    ms = timing()
    print(f"1024x1024: median {ms:.1f} ms over 15 runs (2 threads)")
    big_run()
    print(
        f"selection separated_iou={figs['separated'][0]:.2f} separated_acc={figs['separated'][1]:.2f} "
        f"touching_iou={figs['touching'][0]:.2f} touching_acc={figs['touching'][1]:.2f} ms_1024={ms:.0f}"
    )


if __name__ == "__main__":
    main()
