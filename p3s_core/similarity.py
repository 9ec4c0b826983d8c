"""Step 2-3 of the selection: how much every patch looks like the clicked ones, and where to cut.

Similarity of every cell of a patch-feature grid to the features under the positive points (the max
over points), pushed down where a negative point's features match better; then Gaussian smoothing
and Otsu's threshold (docs/design.md, section 1, steps 2-3).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .filters import gaussian_blur

__all__ = ["gaussian_blur", "otsu_threshold", "similarity_map"]

Point = tuple[float, float]


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D set of values (maximises the between-class variance)."""
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return 0.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-6:
        return hi
    hist = torch.histc(finite, bins=bins, min=lo, max=hi).double()
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


def sample_at(feats: torch.Tensor, pts: list[Point], width: int, height: int) -> torch.Tensor:
    """Bilinear feature vectors [N, D] of ``feats`` [D, h, w] at pixel points of a width x height image."""
    g = torch.tensor([[2 * x / width - 1, 2 * y / height - 1] for x, y in pts], dtype=torch.float32)
    out = F.grid_sample(feats[None], g.view(1, -1, 1, 2), mode="bilinear", align_corners=False)
    return out[0, :, :, 0].t()


def cosine_map(feats: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """Max cosine similarity of each cell of ``feats`` [D, h, w] to any reference vector [N, D] -> [h, w]."""
    f = F.normalize(feats, dim=0)
    r = F.normalize(refs, dim=1)
    return torch.einsum("nd,dhw->nhw", r, f).amax(0)


def rbf_map(feats: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """Max Gaussian-kernel similarity (0..1) of each cell [D, h, w] to any reference [N, D] -> [h, w].

    Used for the built-in features instead of cosine (our choice): their channels are z-scores, where
    an average-looking background cell sits near the origin and its cosine to anything is noise. The
    bandwidth adapts to the image (half the median distance), so far cells go to ~0 and the score is
    bimodal, which is what Otsu's threshold needs.
    """
    d = torch.cdist(refs, feats.flatten(1).t()).view(refs.shape[0], *feats.shape[1:])
    tau = 0.5 * d.median().clamp_min(1e-6)
    return torch.exp(-0.5 * (d / tau) ** 2).amax(0)


def similarity_map(feats: torch.Tensor, positive: list[Point], negative: list[Point], width: int, height: int,
                   builtin: bool) -> torch.Tensor:
    """[h, w] score of every cell of ``feats`` [D, h, w]: similar to a positive point, unlike a negative one."""
    sim = rbf_map if builtin else cosine_map
    score = sim(feats, sample_at(feats, positive, width, height))
    if negative:
        neg = sim(feats, sample_at(feats, negative, width, height))
        score = score - 2.0 * (neg - score).clamp_min(0)
    return score
