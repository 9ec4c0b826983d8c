"""Edge-aware boundaries for the selection: per-pixel refinement at the working resolution and a
guided upsampling of the mask to image size (our additions; the paper's mask comes from patches only).

The patch features decide *which* region is the subject; they are pooled over patches, so their
boundary is a few pixels off. Here every pixel in a band around that boundary is given to the side
whose colour it matches best, judged against the colours of the sure subject and sure background
*near it* (local Gaussian colour models), so an edge between two similar colours is still found.
Then the mask goes to full size with a guided filter (He et al.): the mask is a local linear
function of the image colour, fitted at the working resolution and applied at full resolution, so
the boundary follows the full-resolution edges while the cost stays that of a few image passes.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .filters import box_mean, gaussian_blur


def grow(mask: np.ndarray, n: float) -> np.ndarray:
    """Dilation by a disc of radius ``n`` px (a distance transform: the cost does not grow with ``n``)."""
    if n <= 0 or not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask) <= n


def inside_distance(mask: np.ndarray) -> np.ndarray:
    """Distance of every pixel of ``mask`` to the nearest pixel outside it (0 outside); outside the image
    counts as inside. Computed on the mask's box only: scipy's transform is several times slower on an
    array that is mostly background, and nothing outside the box changes the result."""
    out = np.zeros(mask.shape)
    if mask.any():
        box = bbox(mask, 1)
        out[box] = ndimage.distance_transform_edt(mask[box])
    return out


def shrink(mask: np.ndarray, n: float) -> np.ndarray:
    """Erosion by a disc of radius ``n`` px; outside the image counts as inside (no border erosion)."""
    if n <= 0:
        return mask.copy()
    return inside_distance(mask) > n


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not reach the image border filled (one labelling
    pass; scipy's binary_fill_holes iterates a dilation across the whole background)."""
    if not mask.any():
        return mask.copy()
    # Within the mask's box grown by 1 px: its rim is background joined to the image border.
    box = bbox(mask, 1)
    ids, n = ndimage.label(~mask[box])
    out = mask.copy()
    if n == 0:
        return out
    border = np.unique(np.concatenate([ids[0], ids[-1], ids[:, 0], ids[:, -1]]))
    out[box] |= ~np.isin(ids, border) & (ids > 0)
    return out


def bbox(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The bounding box of ``mask``'s pixels grown by ``margin`` (clipped to the image), as slices."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    return (slice(max(int(rows.min()) - margin, 0), min(int(rows.max()) + margin + 1, h)),
            slice(max(int(cols.min()) - margin, 0), min(int(cols.max()) + margin + 1, w)))


def _nll(x: torch.Tensor, weights: torch.Tensor, r: int, prior: float = 4.0) -> torch.Tensor:
    """Negative log-likelihood [K, h, w] of every pixel of ``x`` [1, C, h, w] under a Gaussian colour
    model of the pixels of each of the K masks ``weights`` [K, 1, h, w] near it (window radius ``r``),
    shrunk towards that mask's global model where the window holds few of its pixels."""
    n = float((2 * r + 1) ** 2)
    total = weights.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    g_mu = (x * weights).sum(dim=(2, 3), keepdim=True) / total  # [K, C, 1, 1]
    g_var = ((x - g_mu) ** 2 * weights).sum(dim=(2, 3), keepdim=True) / total
    stats = box_mean(torch.cat([weights, x * weights, x * x * weights], dim=1), r) * n  # [K, 1 + 2C, h, w]
    c = x.shape[1]
    cnt, s1, s2 = stats[:, :1], stats[:, 1:1 + c], stats[:, 1 + c:]
    mu = (s1 + prior * g_mu) / (cnt + prior)
    var = (s2 + prior * (g_var + g_mu * g_mu)) / (cnt + prior) - mu * mu
    var = var.clamp_min(0) + 1e-3  # floor: sensor noise, and no division by ~0 on flat colours
    return 0.5 * (((x - mu) ** 2) / var + var.log()).sum(1)


def refine_region(lab: torch.Tensor, region: np.ndarray, band: int, radius: int, reach: float = 0.0,
                  thin: float = 0.2, smooth: float = 1.0) -> np.ndarray:
    """Re-decide every pixel near the boundary of ``region`` ([h, w] bool) by colour.

    lab: [1, 3, h, w] image (Lab). Pixels deeper than ``band`` inside stay subject, deeper outside stay
    background; a band pixel joins the side whose local colour model (window radius ``radius``)
    explains it better, after a light smoothing of that vote (``smooth`` px) so noise does not fray
    the edge. Up to ``reach`` x the region's half-thickness out, *thin* structures (at most about
    2 x ``thin`` x that half-thickness wide) of the subject's colour are added too: legs, tails,
    antennae that the patch features blur away. Works on the region's surroundings only.
    """
    if not region.any():
        return region
    inside_all = inside_distance(region)
    depth = float(inside_all.max())
    thin, reach = max(2, round(thin * depth)), round(reach * depth)
    box = bbox(region, max(band, reach) + radius + 2)
    out = np.zeros_like(region)
    out[box] = _refine_crop(lab[:, :, box[0], box[1]], region[box], inside_all[box], band, radius, reach, thin,
                            smooth, depth)
    return out


def _refine_crop(lab: torch.Tensor, region: np.ndarray, inside: np.ndarray, band: int, radius: int, reach: int,
                 thin: int, smooth: float, depth: float) -> np.ndarray:
    outside = ndimage.distance_transform_edt(~region)
    inner, outer = inside > band, outside <= band
    if not inner.any():  # a thin region has no sure inside: its own pixels are the model
        inner = region
    if outer.all():
        return region
    raw = _vote(lab, inner, ~outer, radius)
    vote = gaussian_blur(raw[None, None], smooth)[0, 0].numpy() > 0
    out = inner | (outer & ~inner & vote)
    if reach > band:
        # Unsmoothed vote: smoothing would drown a limb a few pixels wide in the background around it.
        cand = (raw.numpy() > 0) & ~out & (outside <= reach)
        if cand.any():
            out |= _limbs(cand & ~grow(shrink(cand, thin), thin), out, max(6, round(depth)))
    return out


def _vote(x: torch.Tensor, fg: np.ndarray, bg: np.ndarray, r: int) -> torch.Tensor:
    """[h, w]: how much better the local colour model of the ``fg`` pixels explains each pixel than that
    of the ``bg`` pixels (log-likelihood ratio; > 0: subject)."""
    nll = _nll(x, torch.from_numpy(np.stack([fg, bg]).astype(np.float32))[:, None], r)
    return nll[1] - nll[0]


def _limbs(cand: np.ndarray, body: np.ndarray, min_size: int) -> np.ndarray:
    """The thin candidate pieces that reach ``body`` (across a gap of up to 3 px, where the edge
    blends the two colours) and are at least ``min_size`` px (a limb is long; noise is a speck),
    with the gap bridged."""
    ids, n = ndimage.label(cand, np.ones((3, 3), bool))
    sizes = np.bincount(ids.ravel(), minlength=n + 1)
    touching = np.unique(ids[cand & grow(body, 3)])
    keep = np.isin(ids, touching[(touching > 0) & (sizes[touching] >= min_size)])
    if not keep.any():
        return keep
    bridge = shrink(grow(body | keep, 3), 3) & grow(keep, 3)
    return keep | bridge


def _solve_sym3(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Solve S x = v per pixel for symmetric positive-definite 3x3 S given as its 6 entries
    (xx, xy, xz, yy, yz, zz), each [h, w], and v [3, h, w]; by cofactors (no batched LAPACK call)."""
    a, b, c, d, e, f = s
    ca, cb, cc = d * f - e * e, c * e - b * f, b * e - c * d
    cd, ce, cf = a * f - c * c, b * c - a * e, a * d - b * b
    det = a * ca + b * cb + c * cc
    x = torch.stack([ca * v[0] + cb * v[1] + cc * v[2],
                     cb * v[0] + cd * v[1] + ce * v[2],
                     cc * v[0] + ce * v[1] + cf * v[2]])
    return x / det


def guided_coefficients(guide: torch.Tensor, p: torch.Tensor, r: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided-filter coefficients (a [1, 3, h, w], b [1, 1, h, w]) of ``p`` [1, 1, h, w] under a colour
    ``guide`` [1, 3, h, w]: p ~ a . guide + b in every window of radius ``r``, regularised by ``eps``."""
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    g = guide[0]
    stats = box_mean(torch.cat([guide, p, guide * p, torch.stack([g[i] * g[j] for i, j in pairs])[None]], 1), r)[0]
    mean_i, mean_p, mean_ip, mean_ii = stats[:3], stats[3], stats[4:7], stats[7:]
    cov_ip = mean_ip - mean_i * mean_p
    var = [mean_ii[k] - mean_i[i] * mean_i[j] + (eps if i == j else 0.0) for k, (i, j) in enumerate(pairs)]
    a = _solve_sym3(var, cov_ip)
    b = mean_p - (a * mean_i).sum(0)
    ab = box_mean(torch.cat([a, b[None]])[None], r)
    return ab[:, :3], ab[:, 3:]


def upsample_mask(mask: np.ndarray, small: torch.Tensor, image: torch.Tensor, r: int = 2,
                  eps: float = 1e-3) -> torch.Tensor:
    """Working-resolution mask [h, w] -> [H, W] 0/1 float whose edges follow ``image`` ([H, W, 3]).

    ``small``: the image at the working resolution, [1, 3, h, w], the guide the coefficients are fitted
    on. Away from the boundary the mask is just repeated (nearest); only pixels within ``r`` working
    pixels of the boundary evaluate the guided filter at full resolution, and the coefficients are
    fitted around the mask only, so the cost follows the mask's size and boundary, not the image's.
    """
    H, W = image.shape[:2]
    h, w = mask.shape
    if (H, W) == (h, w) or not mask.any():
        return torch.from_numpy(mask.astype(np.float32)) if (H, W) == (h, w) else torch.zeros(H, W)
    rs, cs = bbox(mask, 2 * r + 2)  # every window the two box passes need lies inside
    m = torch.from_numpy(mask[rs, cs].astype(np.float32))[None, None]
    a, b = guided_coefficients(small[:, :, rs, cs], m, r, eps)
    # Full-resolution rows/columns whose nearest working pixel lies in the box (PyTorch's nearest rule).
    r0, r1 = -(-rs.start * H // h), -(-rs.stop * H // h)
    c0, c1 = -(-cs.start * W // w), -(-cs.stop * W // w)
    src_r = torch.arange(r0, r1) * h // H - rs.start
    src_c = torch.arange(c0, c1) * w // W - cs.start
    out = torch.zeros(H, W)
    out[r0:r1, c0:c1] = m[0, 0][src_r][:, src_c]
    k = 2 * r + 1  # a square band is fine here, and max pooling is cheap for a small r
    band = ((F.max_pool2d(m, k, 1, r) > 0) & (-F.max_pool2d(-m, k, 1, r) < 1))[0, 0]
    ys, xs = torch.nonzero(band[src_r][:, src_c], as_tuple=True)
    if ys.numel() == 0:
        return out
    ys, xs = ys + r0, xs + c0
    # Sample the coefficients where the full-resolution pixel centres fall on the working grid.
    gy = ((ys.float() + 0.5) * h / H - 0.5 - rs.start + 0.5) / (rs.stop - rs.start) * 2 - 1
    gx = ((xs.float() + 0.5) * w / W - 0.5 - cs.start + 0.5) / (cs.stop - cs.start) * 2 - 1
    coef = F.grid_sample(torch.cat([a, b], 1), torch.stack([gx, gy], -1).view(1, -1, 1, 2), mode="bilinear",
                         padding_mode="border", align_corners=False)[0, :, :, 0]  # [4, N]
    q = (coef[:3] * image[ys, xs, :3].float().t()).sum(0) + coef[3]
    out[ys, xs] = (q > 0.5).float()
    return out
