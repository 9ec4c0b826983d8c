"""RNGR-Encoder selection: points -> subject mask -> subject-only reference (DESIGN.md section 1).

All heavy work runs on the patch grid and a working resolution (long side ``work_side`` px); only
the final masks are upsampled, so a 4096 px image costs little more than a 1024 px one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .features import as_hwc, working_size, builtin_features_chw, downsample
from .points import PointSet

log = logging.getLogger("P3S")

FILL_MODES = ("blur", "flat")

_EMPTY = (
    "P3S: points: the selection around the positive point(s) is empty. Move or add a positive "
    "point onto the subject, remove negative points near it, or connect a MASK to skip point selection."
)


@dataclass
class Selection:
    """Result of :func:`select_subject`; masks are float 0/1 at image size."""

    mask: torch.Tensor  # [H, W] expanded subject mask
    subject_image: torch.Tensor  # [H, W, 3] image with everything outside ``mask`` filled
    similarity: torch.Tensor  # [h, w] smoothed similarity score on the patch grid
    base_mask: torch.Tensor  # [H, W] mask before expansion
    lookalike: torch.Tensor | None = None  # [H, W] everything subject-like (the fill avoids it)
    points: PointSet = field(default_factory=PointSet)  # points in this image's pixels


def _gauss1d(sigma: float) -> torch.Tensor:
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, C, h, w] with reflect-free replicate padding."""
    if sigma <= 0:
        return x
    k = _gauss1d(sigma)
    r = k.numel() // 2
    c = x.shape[1]
    kx = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), kx, groups=c)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), kx.transpose(2, 3), groups=c)
    return x


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D set of values (maximises between-class variance)."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:
        return hi
    hist = torch.histc(values, bins=bins, min=lo, max=hi).double()
    centers = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    centers = 0.5 * (centers[:-1] + centers[1:])
    w0 = hist.cumsum(0)
    m0 = (hist * centers).cumsum(0)
    total, mtot = w0[-1], m0[-1]
    w1 = total - w0
    between = (mtot * w0 / total - m0) ** 2 / (w0 * w1 / total).clamp_min(1e-12)
    between[w1 <= 0] = -1
    i = int(torch.argmax(between))
    return float(0.5 * (centers[i] + centers[min(i + 1, bins - 1)]))


def _sample(feats: torch.Tensor, pts: list[tuple[float, float]], width: int, height: int) -> torch.Tensor:
    """Bilinear feature vectors [N, D] at pixel points of a width x height image; feats [D, h, w]."""
    g = torch.tensor([[2 * x / width - 1, 2 * y / height - 1] for x, y in pts], dtype=torch.float32)
    out = F.grid_sample(feats[None], g.view(1, -1, 1, 2), mode="bilinear", align_corners=False)
    return out[0, :, :, 0].t()


def _cos(feats: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """Max cosine similarity of each grid cell [D, h, w] to any reference vector [N, D] -> [h, w]."""
    f = F.normalize(feats, dim=0)
    r = F.normalize(refs, dim=1)
    return torch.einsum("nd,dhw->nhw", r, f).amax(0)


def _rbf(feats: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """Max Gaussian-kernel similarity (0..1) of each cell [D, h, w] to any reference [N, D].

    Used for the built-in features instead of cosine (our choice): their channels are z-scores, where
    an average-looking background cell sits near the origin and its cosine to anything is noise.
    The bandwidth adapts to the image (half the median distance), so far cells go to ~0 and the
    score is bimodal, which is what the Otsu threshold needs.
    """
    d = torch.cdist(refs, feats.flatten(1).t()).view(refs.shape[0], *feats.shape[1:])
    tau = 0.5 * d.median().clamp_min(1e-6)
    return torch.exp(-0.5 * (d / tau) ** 2).amax(0)


def _prepare_points(points: PointSet | str, width: int, height: int) -> PointSet:
    if isinstance(points, str):
        points = PointSet.from_json(points, width, height)
    if points.width is None or points.height is None:
        points = PointSet(list(points.positive), list(points.negative), width, height)
    points.validate()
    return points.rescaled(width, height)


def _to_cell(p: tuple[float, float], width: int, height: int, h: int, w: int) -> tuple[int, int]:
    return (min(h - 1, max(0, int(p[1] / height * h))), min(w - 1, max(0, int(p[0] / width * w))))


def _split(keep: np.ndarray, pos: list, neg: list, auto: bool, neck_ratio: float,
           alike_ratio: float = 0.6) -> np.ndarray:
    """Cut look-alikes off the kept region at the necks between them (our choice; the paper relies
    on connectivity alone). Marker watershed on the inverted distance transform: markers at the
    positive points, the negative points and (``auto``) every distance peak. Basins join the
    positive region when the neck between them is wide relative to the smaller basin's own
    thickness (one body with a head), and stay cut when narrow (two touching bodies).
    Negative basins never join; positive basins are always kept."""
    # Work on the region's bounding box (plus a margin) only: cheap on large working grids.
    rows, cols = np.nonzero(keep)
    r0, r1, c0, c1 = max(rows.min() - 1, 0), rows.max() + 2, max(cols.min() - 1, 0), cols.max() + 2
    full, keep = keep, keep[r0:r1, c0:c1]
    pos = [(r - r0, c - c0) for r, c in pos if full[r, c]]
    neg = [(r - r0, c - c0) for r, c in neg if full[r, c]]
    dt = ndimage.distance_transform_edt(keep)
    n_out = 0
    markers = np.zeros(keep.shape, np.int32)
    labels = []
    if auto:
        peaks = keep & (dt >= 2) & (dt == ndimage.maximum_filter(dt, size=5))
        for r, c in zip(*np.nonzero(peaks)):
            labels.append("peak")
            markers[r, c] = len(labels)
    ws = None
    kinds = {i + 1: k for i, k in enumerate(labels)}
    if auto and labels:
        # Basins grow from the distance peaks only and a click marks the basin it falls in, so an
        # off-centre click does not carve a small basin of its own out of the subject.
        ws = _flood(keep, dt, markers)
        basin = {kind: {int(ws[r, c]) for r, c in cells if keep[r, c] and ws[r, c] > 0}
                 for kind, cells in (("pos", pos), ("neg", neg))}
        if basin["pos"] & basin["neg"]:
            ws = None  # a positive and a negative click share a basin: split between the clicks
        else:
            kinds.update({b: "pos" for b in basin["pos"]} | {b: "neg" for b in basin["neg"]})
    if ws is None:
        for kind, cells in (("pos", pos), ("neg", neg)):  # later wins: a negative on a positive cancels it
            for r, c in cells:
                if keep[r, c]:
                    labels.append(kind)
                    markers[r, c] = len(labels)
        kinds = {i + 1: k for i, k in enumerate(labels)}
        ws = _flood(keep, dt, markers)
    present = set(np.unique(ws).tolist())
    region = {lab for lab, k in kinds.items() if k == "pos" and lab in present}
    if not region:
        return np.zeros_like(full)
    K = len(labels) + n_out + 1
    # Neck between two basins: the thickest point of their shared boundary.
    neck = np.zeros((K, K))
    for a, b, da, db in ((ws[:, :-1], ws[:, 1:], dt[:, :-1], dt[:, 1:]), (ws[:-1], ws[1:], dt[:-1], dt[1:])):
        sel = (a != b) & (a > n_out) & (b > n_out)
        np.maximum.at(neck, (a[sel], b[sel]), np.minimum(da[sel], db[sel]))
    neck = np.maximum(neck, neck.T)
    peak = np.asarray(ndimage.maximum(dt, ws, index=np.arange(K)), dtype=float)
    # Grow the positive and negative sides together, strongest neck first, so a look-alike's own
    # basins join the negative that marks it before they can leak into the positive side. A neck is
    # judged against the thickness of the whole side grown so far, so a chain of thin basins (a
    # bridge) cannot carry the side over into a thick look-alike.
    side = np.zeros(K, np.int8)
    side[list(region)] = 1
    side[[lab for lab, k in kinds.items() if k == "neg" and lab in present and lab not in region]] = 2
    while True:
        side_peak = np.array([0.0, peak[side == 1].max(initial=0), peak[side == 2].max(initial=0)])
        ref = np.minimum(side_peak[side][:, None], peak[None, :])
        open_pair = (side[:, None] > 0) & (side[None, :] == 0) & (neck > 0)
        cand = neck / np.maximum(ref, 1e-6) * open_pair
        if auto:
            # Parts much thinner than the side they touch (legs, tails, ears, a head on a big body)
            # are never look-alikes: they join whatever their neck, only body-sized basins are cut.
            thin = peak[None, :] < alike_ratio * side_peak[side][:, None]
            cand = np.where(open_pair & thin, np.maximum(cand, neck_ratio), cand)
        i, j = np.unravel_index(int(np.argmax(cand)), cand.shape)
        if cand[i, j] < neck_ratio or cand[i, j] <= 0:
            break
        side[j] = side[i]
    region = set(np.nonzero(side == 1)[0].tolist())
    out = np.zeros_like(full)
    out[r0:r1, c0:c1] = keep & np.isin(ws, list(region))
    return out


def _flood(keep: np.ndarray, dt: np.ndarray, markers: np.ndarray, levels: int = 12) -> np.ndarray:
    """Marker watershed of ``-dt`` by flooding: lower the water level step by step and give each
    newly wet pixel the label of the nearest labelled pixel in its connected pool. (scipy's
    watershed_ift leaks labels around basins along equal-cost rims, so it is not used.)"""
    lab = markers.copy()
    top = float(dt.max())
    for t in list(np.linspace(top, 0, levels + 1)[1:-1]) + [0.0]:
        wet = keep & (dt >= t) if t > 0 else keep
        todo = wet & (lab == 0)
        if not todo.any():
            continue
        seeded = wet & (lab > 0)
        if not seeded.any():
            continue
        pools, _ = ndimage.label(wet)
        _, (ir, ic) = ndimage.distance_transform_edt(~seeded, return_indices=True)
        ok = todo & (pools[ir, ic] == pools)
        lab[ok] = lab[ir, ic][ok]
    return lab


def _background_estimate(x: torch.Tensor, drop: torch.Tensor, side: int = 12) -> torch.Tensor:
    """A very wide blur of ``x`` ([1, 3, h, w]), [1, 3, ~side px], that ignores ``drop`` ([h, w]) pixels.

    Normalised convolution: dropped pixels (the subject and its look-alikes) get weight 0, and cells
    with no background at all are filled from their neighbours, so a removed look-alike leaves the
    surrounding background colour instead of a blurred blob of itself (the RNGR's "reduce negative
    information"; how to fill is our choice, the paper does not say).
    """
    w = (drop < 0.5).to(x.dtype)[None, None]
    h, wd = working_size(x.shape[-2], x.shape[-1], side)
    num = F.adaptive_avg_pool2d(x * w, (h, wd))
    den = F.adaptive_avg_pool2d(w, (h, wd))
    if float(den.max()) <= 0:  # nothing but subject: plain blur
        return F.adaptive_avg_pool2d(x, (h, wd))
    kernel = torch.ones(1, 1, 3, 3, dtype=x.dtype)
    for _ in range(2 * max(h, wd)):  # grow valid cells into empty ones (a few steps on a 12 px grid)
        empty = den <= 1e-3
        if not bool(empty.any()):
            break
        num_g = F.conv2d(F.pad(num, (1, 1, 1, 1), mode="replicate"), kernel.repeat(3, 1, 1, 1), groups=3)
        den_g = F.conv2d(F.pad(den, (1, 1, 1, 1), mode="replicate"), kernel)
        num = torch.where(empty, num_g, num)
        den = torch.where(empty, den_g, den)
    return num / den.clamp_min(1e-6)


def _compose(img: torch.Tensor, mask: torch.Tensor, small_bg: torch.Tensor) -> torch.Tensor:
    """The image inside ``mask``, the upsampled background estimate outside."""
    bg = F.interpolate(small_bg, size=img.shape[:2], mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    return torch.where((mask > 0.5).unsqueeze(-1), img, bg.to(img.dtype))


def fill_outside(image: torch.Tensor, mask: torch.Tensor, mode: str = "blur",
                 exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Replace pixels outside ``mask`` ([H, W] 0/1) with a heavy blur or flat grey; inside is untouched.

    ``exclude`` ([H, W] 0/1, optional): pixels the blur must not draw colour from, e.g. the subject
    and look-alikes found by the selection; ``mask`` is always excluded.
    """
    img = as_hwc(image)
    if mode == "blur":
        drop = (mask > 0.5) if exclude is None else ((mask > 0.5) | (exclude > 0.5))
        return _compose(img, mask, _background_estimate(img.permute(2, 0, 1)[None].float(), drop))
    if mode == "flat":
        return torch.where((mask > 0.5).unsqueeze(-1), img, torch.full((1, 1, 3), 0.5, dtype=img.dtype))
    raise ValueError(f"P3S: fill: unknown fill mode {mode!r}; use one of {', '.join(FILL_MODES)}.")


def select_subject(
    image: torch.Tensor,
    points: PointSet | str,
    features: torch.Tensor | None = None,
    *,
    fill: str = "blur",
    sigma: float = 1.0,
    dilation: float = 0.005,
    work_side: int = 256,
    grid: int = 64,
    fill_holes: bool = True,
    split_touching: bool = True,
    neck_ratio: float = 0.6,
    auto_neck_ratio: float = 0.95,
    alike_ratio: float = 0.75,
) -> Selection:
    """Select the clicked subject of ``image`` ([H, W, 3] or [1, H, W, 3], 0..1).

    features: optional [h, w, D] patch grid (e.g. :func:`features.clip_patch_grid`); None uses the
    built-in weight-free features. sigma: similarity smoothing in grid cells. dilation: expansion
    radius as a fraction of the image's long side. fill: how the outside is removed ("blur"/"flat").
    split_touching: also cut unclicked look-alikes joined to the clicked subject: body-sized parts
    (thickness >= ``alike_ratio`` x the clicked side's) joined by a neck thinner than
    ``auto_neck_ratio`` x their thickness are cut off; thinner parts (legs, tails, ears) always stay.
    Negative points split at necks thinner than ``neck_ratio`` x the smaller body's thickness. On by
    default (bench/selection.py, touching look-alikes: IoU 0.27 -> ~0.5, accuracy 0.31 -> ~0.66,
    separated unchanged); a clicked part is always kept, so a head that was cut comes back with a
    click on it.
    """
    img = as_hwc(image)
    H, W = img.shape[:2]
    pts = _prepare_points(points, W, H)
    if fill not in FILL_MODES:
        raise ValueError(f"P3S: fill: unknown fill mode {fill!r}; use one of {', '.join(FILL_MODES)}.")

    x = downsample(img, work_side)  # [1, 3, h, w]
    h, w = x.shape[-2:]
    if features is None:
        cell = max(1, round(max(h, w) / grid))
        feats = builtin_features_chw(x, cell)
    else:
        f = torch.as_tensor(features).float()
        if f.ndim == 4 and f.shape[0] == 1:
            f = f[0]
        if f.ndim != 3:
            raise ValueError(f"P3S: features: expected a patch grid [h, w, D], got {tuple(f.shape)}.")
        feats = f.permute(2, 0, 1)
        # Centring removes the direction all tokens share, which otherwise makes every cosine high.
        feats = feats - feats.mean(dim=(1, 2), keepdim=True)

    # Step 2: similarity to positives (max over points); negatives push look-alike patches down.
    sim = _rbf if features is None else _cos
    score = sim(feats, _sample(feats, pts.positive, W, H))
    if pts.negative:
        neg = sim(feats, _sample(feats, pts.negative, W, H))
        score = score - 2.0 * (neg - score).clamp_min(0)

    # Step 3: smooth on the grid, upsample to the working resolution, Otsu -> base mask.
    score = gaussian_blur(score[None, None], sigma)
    up = F.interpolate(score, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    thr = otsu_threshold(up.flatten())
    base = (up > thr).numpy()

    # Step 4: keep the connected region(s) under the positive points.
    lab, _ = ndimage.label(base)
    pos_cells = [_to_cell(p, W, H, h, w) for p in pts.positive]
    neg_cells = [_to_cell(p, W, H, h, w) for p in pts.negative]
    ids = {int(lab[r, c]) for r, c in pos_cells} - {0}
    keep = np.isin(lab, list(ids)) if ids else np.zeros_like(base)
    if fill_holes and keep.any():
        keep = ndimage.binary_fill_holes(keep)
    if keep.any() and (split_touching or any(keep[r, c] for r, c in neg_cells)):
        keep = _split(keep, pos_cells, neg_cells, split_touching,
                      auto_neck_ratio if split_touching else neck_ratio, alike_ratio)
    if not keep.any():
        raise ValueError(_EMPTY)

    # Expand by a modest radius (relative to the image) so edges and fur are not cut off.
    radius = dilation * max(h, w)
    expanded = ndimage.distance_transform_edt(~keep) <= radius if radius > 0 else keep

    mask = _upsample_mask(expanded, H, W)
    base_mask = _upsample_mask(keep, H, W)
    # Everything that looks like the subject (look-alikes included), slightly grown: the fill must
    # not paint their colours back into the background.
    alike_small = ndimage.binary_dilation(base, iterations=int(radius) + max(2, round(0.03 * max(h, w))))
    alike = _upsample_mask(alike_small, H, W)
    if fill == "blur":  # the background estimate from the working resolution: no full-size pass
        drop = torch.from_numpy(alike_small | expanded)
        subject = _compose(img, mask, _background_estimate(x.float(), drop))
    else:
        subject = fill_outside(img, mask, fill)
    return Selection(
        mask=mask,
        subject_image=subject,
        lookalike=alike,
        similarity=score[0, 0],
        base_mask=base_mask,
        points=pts,
    )


def _upsample_mask(m: np.ndarray, H: int, W: int) -> torch.Tensor:
    """Working-res boolean mask -> [H, W] 0/1 float with smooth (bilinear-then-threshold) edges."""
    t = torch.from_numpy(m.astype(np.float32))
    if t.shape == (H, W):
        return t
    up = F.interpolate(t[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    return (up > 0.5).float()


def select_subject_batch(
    images: torch.Tensor, points: PointSet | str, features: torch.Tensor | None = None, **kwargs
) -> list[Selection]:
    """Apply one point set to every image of a batch [B, H, W, 3]; features None or [B, h, w, D]."""
    imgs = torch.as_tensor(images)
    if imgs.ndim == 3:
        imgs = imgs[None]
    out = []
    for i in range(imgs.shape[0]):
        f = None if features is None else features[i]
        out.append(select_subject(imgs[i], points, f, **kwargs))
    return out


def overlay(image: torch.Tensor, selection: Selection, alpha: float = 0.45) -> torch.Tensor:
    """[H, W, 3] preview: mask tinted blue, positive points green dots, negative points red dots."""
    img = as_hwc(image).clone()
    H, W = img.shape[:2]
    tint = torch.tensor([0.15, 0.45, 1.0])
    m = selection.mask.unsqueeze(-1) > 0.5
    img = torch.where(m, img * (1 - alpha) + tint * alpha, img * 0.7)
    r = max(3, round(0.008 * max(H, W)))
    pts = selection.points.rescaled(W, H) if selection.points.width else selection.points
    for colour, plist in (((0.1, 1.0, 0.2), pts.positive), ((1.0, 0.15, 0.1), pts.negative)):
        for px, py in plist:
            x0, x1 = max(0, int(px) - r), min(W, int(px) + r + 1)
            y0, y1 = max(0, int(py) - r), min(H, int(py) + r + 1)
            if x0 >= x1 or y0 >= y1:
                continue
            yy, xx = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
            d2 = (xx - px) ** 2 + (yy - py) ** 2
            patch = img[y0:y1, x0:x1]
            patch[d2 <= r * r] = 0.0  # dark rim keeps the dot visible on any colour
            patch[d2 <= (r - 1.5) ** 2] = torch.tensor(colour)
    return img
