"""The selection: clicked points -> subject mask -> subject-only reference (docs/design.md, section 1).

The paper calls this component the "RNGR-Encoder". The material this project has does not expand the
acronym; docs/design.md reads its job as reducing negative information: keep the clicked subject, drop
everything else, the look-alike next to it above all. The code calls it what it does, the selection;
this module keeps the paper's name so the public API (``p3s_core.rngr.select_subject``) stays. Steps:

1. patch features of the image (``features``: a CLIP patch grid, or the built-in colour/texture ones);
2. similarity of every patch to the patches under the positive points, lowered where a negative
   point matches better, smoothed, Otsu-thresholded (``similarity``);
3. the connected region(s) under the positive points: connectivity, not the features, separates two
   look-alikes; a region that leaked into a background of similar colour is cut back at a higher, stable
   threshold (``_stable_level``);
4. its boundary re-decided pixel by pixel by colour, thin parts of the subject's colour (legs, a tail)
   added (``refine``);
5. touching look-alikes cut off at the neck or outline between them (``split``); a click deep inside a
   subject always ends inside the mask (if all else fails, the colour region grown from the click);
6. the mask brought to image size along the image's edges (``refine.upsample_mask``) and everything
   outside it removed (``fill``, made on first use).

Steps 1-5 run at a fixed working resolution (long side ``work_side``); only step 6 touches the full
image, and only along the mask's boundary, so time hardly grows with image size or texture.
"""
from __future__ import annotations

import functools
import logging

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .features import as_hwc, builtin_features_chw, downsample, rgb_to_lab
from .fill import FILL_MODES, background_estimate, check_fill, compose, fill_outside
from .points import PointSet
from .refine import bbox, fill_holes, grow, refine_region, upsample_mask
from .similarity import gaussian_blur, otsu_threshold, similarity_map
from .split import split_lookalikes

GRID = 64  # built-in feature grid, long side (cells)
BAND = 5  # px at the working resolution: how far the colour refinement may move the boundary
MODEL_RADIUS = 8  # px: window of the local colour models
LIMB_REACH = 2.0  # thin parts of the subject's colour are added up to this x its half-thickness away
LEVELS = 10  # threshold steps between Otsu's threshold and the clicks' score (``_stable_level``)
LEAK = 0.6  # the region leaked when one step up keeps less than this share of its area
LEVEL_REACH = 0.5  # how far towards the clicks' score the threshold may rise (0.4, 0.6: within 0.005)

__all__ = ["FILL_MODES", "Selection", "fill_outside", "overlay", "select_subject", "select_subject_batch"]

log = logging.getLogger("P3S")

_EMPTY = (
    "P3S: points: the selection around the positive point(s) is empty. Move or add a positive "
    "point onto the subject, remove negative points near it, or connect a MASK to skip point selection."
)


class Selection:
    """Result of :func:`select_subject`; masks are float 0/1 at image size.

    ``subject_image`` and ``lookalike`` are made on first use (the live preview needs only the mask);
    pass them, or functions that make them, to the constructor.
    """

    def __init__(self, mask: torch.Tensor, subject_image=None, similarity: torch.Tensor | None = None,
                 base_mask: torch.Tensor | None = None, lookalike=None, points: PointSet | None = None):
        self.mask = mask  # [H, W] (expanded) subject mask
        self.similarity = mask if similarity is None else similarity  # [h, w] smoothed score on the patch grid
        self.base_mask = mask if base_mask is None else base_mask  # [H, W] mask before expansion
        self.points = points if points is not None else PointSet()  # points in this image's pixels
        self._subject, self._lookalike = subject_image, lookalike

    @property
    def subject_image(self) -> torch.Tensor:
        """[H, W, 3] the image with everything outside ``mask`` filled."""
        if callable(self._subject):
            self._subject = self._subject()
        return self._subject

    @property
    def lookalike(self) -> torch.Tensor | None:
        """[H, W] everything subject-like, look-alikes included (the blur fill avoids it), or None."""
        if callable(self._lookalike):
            self._lookalike = self._lookalike()
        return self._lookalike


MIN_SIDE = 8  # px: below this there is nothing to select points on
FLAT = 2 / 255  # colour spread below which an image is one flat colour


def check_image(img: torch.Tensor, small: torch.Tensor) -> None:
    """Refuse images a selection cannot work on: too small, not finite, or one flat colour.

    A flat image gets a message rather than a whole-image mask (our choice): it is almost always a
    placeholder or a failed upstream node (all black), and injecting a flat colour as the subject would
    fail silently. ``small`` is the image at the working resolution, where the checks are cheap.
    """
    H, W = img.shape[:2]
    if min(H, W) < MIN_SIDE:
        raise ValueError(f"P3S: image: the image is {W}x{H} px; point selection needs at least "
                         f"{MIN_SIDE}x{MIN_SIDE} px. Connect the real reference photo.")
    if not bool(torch.isfinite(small).all()):
        raise ValueError("P3S: image: the image contains NaN or infinite values; check the node that made it.")
    spread = float((small.amax(dim=(0, 2, 3)) - small.amin(dim=(0, 2, 3))).max())
    if spread < FLAT:
        rgb = ", ".join(f"{v:.2f}" for v in small[0, :, 0, 0].tolist())
        raise ValueError(f"P3S: image: the image is one flat colour (RGB {rgb}), so there is no subject to "
                         "select. Connect the reference photo (a black image often means an upstream node "
                         "failed), or connect a MASK.")


def _feature_grid(x: torch.Tensor, lab: torch.Tensor, features: torch.Tensor | None, grid: int) -> torch.Tensor:
    """[D, h, w] features: the built-in ones of the working image ``x``, or the given grid, centred."""
    if features is None:
        return builtin_features_chw(x, max(1, round(max(x.shape[-2:]) / grid)), lab)
    f = torch.as_tensor(features).float()
    if f.ndim == 4 and f.shape[0] == 1:
        f = f[0]
    if f.ndim != 3 or min(f.shape) < 1:
        raise ValueError(f"P3S: features: expected a patch grid [h, w, D], got {tuple(f.shape)}.")
    f = f.permute(2, 0, 1)
    # Centring removes the direction all tokens share, which otherwise makes every cosine high.
    return f - f.mean(dim=(1, 2), keepdim=True)


def _regions_at(mask: np.ndarray, cells: list[tuple[int, int]]) -> np.ndarray:
    """The connected regions of ``mask`` that contain any of ``cells``, holes filled."""
    lab, _ = ndimage.label(mask)
    ids = {int(lab[r, c]) for r, c in cells} - {0}
    return fill_holes(np.isin(lab, list(ids))) if ids else np.zeros_like(mask)


def _similar_region(x: torch.Tensor, lab: torch.Tensor, features, pts: PointSet, grid: int,
                    cells: list[tuple[int, int]]):
    """Steps 1-3: (score [gh, gw] on the patch grid, subject-like pixels [h, w] at the working resolution,
    the region of them under the positive points' working-resolution ``cells``)."""
    h, w = x.shape[-2:]
    feats = _feature_grid(x, lab, features, grid)
    score = similarity_map(feats, pts.positive, pts.negative, pts.width, pts.height, builtin=features is None)
    score = gaussian_blur(score[None, None], 1.0)
    up = F.interpolate(score, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    t0 = otsu_threshold(up.flatten())
    up = up.numpy()
    alike = up > t0
    pos = [p for p in cells if alike[p]]
    region = _regions_at(alike, pos)
    if pos:
        tight = _stable_level(up, t0, pos, region)
        if tight is not None:  # the leaked background is not subject-like either (the blur fill may use it)
            alike, region = (alike & ~region) | tight, tight
    return score[0, 0], alike, region


def _stable_level(up: np.ndarray, t0: float, pos: list[tuple[int, int]], region: np.ndarray) -> np.ndarray | None:
    """The region under the clicks at a higher threshold when, at Otsu's, it leaked into a background of
    similar colour; None when it did not.

    A subject's score drops steeply at its edge, so raising the threshold a little barely shrinks its
    region; a background of the subject's colour scores a little above the threshold almost everywhere,
    so the leaked region loses much of its area (``LEAK``). Then the most stable level (MSER: the least
    relative change of area between its neighbours) up to ``LEVEL_REACH`` of the way to the clicks' score
    replaces it (bench/selection.py: touching seed 0's low-contrast leak went from precision 0.08 to
    0.71-0.99; regions that took in a neighbour or a background patch were cut back in every family but
    textured; no family's IoU down by more than 0.003 on seeds 0-2).
    """
    top = min(float(up[p]) for p in pos)
    step = (top - t0) / LEVELS
    if step <= 0:
        return None
    # Every higher level lies inside ``region``: label its box only (this runs on every selection).
    box = bbox(region, 1)
    sub, cells = up[box], [(r - box[0].start, c - box[1].start) for r, c in pos]
    ids, _ = ndimage.label(sub > t0 + step)  # the test first, without filling holes: usually no leak
    if np.isin(ids, list({int(ids[c]) for c in cells} - {0})).sum() >= LEAK * region.sum():
        return None
    regions, areas = [region[box]], [float(region.sum())]
    for k in range(1, round(LEVEL_REACH * LEVELS) + 2):
        regions.append(_regions_at(sub > t0 + k * step, cells))
        areas.append(float(regions[-1].sum()))
    change = [(areas[k - 1] - areas[k + 1]) / max(areas[k], 1.0) for k in range(1, len(areas) - 1)]
    out = np.zeros_like(region)
    out[box] = regions[1 + int(np.argmin(change))]
    return out


def _colour_region(lab: torch.Tensor, cell: tuple[int, int]) -> np.ndarray:
    """The fallback: the connected region of pixels whose colour is close to the colour at ``cell``
    (Otsu's threshold on the colour distance). Never empty: it contains ``cell``."""
    r, c = cell
    ref = lab[0, :, max(0, r - 1):r + 2, max(0, c - 1):c + 2].mean(dim=(1, 2))
    dist = (lab[0] - ref[:, None, None]).norm(dim=0)
    near = (dist <= max(otsu_threshold(dist.flatten()), float(dist[r, c]))).numpy()
    return _regions_at(near, [cell])


def _cancelled(p: tuple[int, int], neg: list[tuple[int, int]]) -> bool:
    """A positive point with a negative point on (next to) it: the user asked for nothing there."""
    return any(abs(p[0] - n[0]) <= 1 and abs(p[1] - n[1]) <= 1 for n in neg)


def _subject_region(lab: torch.Tensor, region: np.ndarray, pos: list, neg: list, split_touching: bool) -> np.ndarray:
    """Steps 3-4 at the working resolution: the region under the clicks, its boundary re-decided by
    colour, look-alikes cut off; every click that is not cancelled by a negative point ends inside."""
    if region.any():
        region = _regions_at(refine_region(lab, region, BAND, MODEL_RADIUS, LIMB_REACH), pos)
    region = _split(lab, region, pos, neg, split_touching)
    for p in pos:  # a click deep inside a subject always selects something around it
        if not region[p] and not _cancelled(p, neg):
            region |= _split(lab, _colour_region(lab, p), [p], neg, False)
    if not region.any():
        raise ValueError(_EMPTY)
    return region


def _split(lab: torch.Tensor, region: np.ndarray, pos: list, neg: list, auto: bool) -> np.ndarray:
    if not region.any() or not (auto or any(region[r, c] for r, c in neg)):
        return region
    return split_lookalikes(region, pos, neg, auto, lab)


def select_subject(
    image: torch.Tensor,
    points: PointSet | str,
    features: torch.Tensor | None = None,
    *,
    fill: str = "blur",
    split_touching: bool = True,
    dilation: float = 0.0,
    work_side: int = 256,
) -> Selection:
    """Select the clicked subject of ``image`` ([H, W, 3] or [1, H, W, 3], 0..1); see the module docstring.

    points: a PointSet or points JSON text. features: optional [h, w, D] patch grid (e.g.
    :func:`features.clip_patch_grid`); None uses the built-in weight-free features. fill: how the
    outside is removed ("blur"/"flat"). split_touching: cut unclicked look-alikes that touch the
    clicked subject off at the neck or outline between them (``split``); off keeps everything
    connected that looks alike (negative points still cut). dilation: expansion of the mask, as a
    fraction of the image's long side (0: the mask follows the subject's edges).
    """
    img = as_hwc(image)
    H, W = img.shape[:2]
    pts = PointSet.for_image(points, W, H)
    check_fill(fill)
    x = downsample(img, work_side)  # [1, 3, h, w]
    check_image(img, x)
    h, w = x.shape[-2:]
    lab = rgb_to_lab(x)
    pos, neg = pts.to_grid(h, w)
    score, alike, region = _similar_region(x, lab, features, pts, GRID, pos)
    region = _subject_region(lab, region, pos, neg, split_touching)
    radius = dilation * max(h, w)
    expanded = grow(region, radius)
    mask = upsample_mask(expanded, x, img)
    base_mask = upsample_mask(region, x, img) if radius > 0 else mask
    # Everything that looks like the subject (look-alikes included), slightly grown: the blur fill must
    # not paint their colours back into the background. Made on first use, like the fill.
    alike_small = functools.cache(lambda: grow(alike | region, radius + max(2, round(0.03 * max(h, w)))))

    def subject() -> torch.Tensor:
        if fill == "blur":  # the background estimate from the working resolution: no full-size pass
            return compose(img, mask, background_estimate(x, torch.from_numpy(alike_small())))
        return fill_outside(img, mask, fill)

    return Selection(mask=mask, subject_image=subject, lookalike=lambda: _upsample_plain(alike_small(), H, W),
                     similarity=score, base_mask=base_mask, points=pts)


def _upsample_plain(m: np.ndarray, H: int, W: int) -> torch.Tensor:
    """Working-resolution mask -> [H, W] 0/1 float, bilinear then thresholded (no edge snapping)."""
    t = torch.from_numpy(m.astype(np.float32))
    if t.shape == (H, W):
        return t
    return (F.interpolate(t[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0] > 0.5).float()


def select_subject_batch(
    images: torch.Tensor, points: PointSet | str, features: torch.Tensor | None = None, **kwargs
) -> list[Selection]:
    """Apply one point set to every image of a batch [B, H, W, 3]; features None or [B, h, w, D]."""
    imgs = torch.as_tensor(images)
    if imgs.ndim == 3:
        imgs = imgs[None]
    return [select_subject(imgs[i], points, None if features is None else features[i], **kwargs)
            for i in range(imgs.shape[0])]


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
