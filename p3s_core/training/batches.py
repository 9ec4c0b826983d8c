"""Training batches: clicks like a user's, the RNGR selection on them, the subject-only reference.

Each step draws fresh clicks well inside the subject's mask (or reads its points file), runs the same
selection P3S Apply runs (``p3s_core.rngr.select_subject``) on the reference image, and fills
everything outside it, so the adapter trains on the selections users get.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..points import PointSet
from ..rngr import fill_outside, select_subject
from .dataset import TrainSample


def interior_points(mask: torch.Tensor, n: int, generator: torch.Generator,
                    min_depth: float = 0.35) -> list[tuple[float, float]]:
    """``n`` random pixel centres (x, y) inside ``mask`` [H, W] whose distance to the boundary is at
    least ``min_depth`` x the largest distance in the mask (the deepest pixel is always eligible)."""
    from scipy import ndimage

    m = mask.detach().cpu().numpy() > 0.5
    if not m.any():
        raise ValueError("P3S: interior_points: the mask is empty")
    depth = ndimage.distance_transform_edt(m)
    ys, xs = np.nonzero(depth >= max(min_depth * depth.max(), 1e-6))
    pick = torch.randint(len(ys), (int(n),), generator=generator).tolist()
    return [(float(xs[j]) + 0.5, float(ys[j]) + 0.5) for j in pick]


@dataclass
class Reference:
    mask: torch.Tensor       # [H, W] 0/1 selection (what P3S Apply would use)
    subject: torch.Tensor    # [H, W, 3] subject-only reference
    points: PointSet
    fallback: bool = False   # True when RNGR selected nothing and the instance mask was used


def prepare_reference(sample: TrainSample, generator: torch.Generator, *, features: torch.Tensor | None = None,
                      points_range: tuple[int, int] = (1, 3), min_depth: float = 0.35,
                      fill: str = "blur") -> Reference:
    """Clicks (from the points file, else sampled inside the mask) -> RNGR selection -> filled reference.

    The subject is selected in ``sample.source``: the paired reference photo, else the target itself;
    ``features`` are that image's patch features.
    """
    src = sample.source
    h, w = src.image.shape[:2]
    if src.points is not None:
        pts = src.points
    else:
        lo, hi = points_range
        k = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        pts = PointSet.from_pixels(interior_points(src.mask, k, generator, min_depth), [], w, h)
    try:
        sel_mask = select_subject(src.image, pts, features, fill=fill).mask
        fallback = False
    except ValueError:
        if src.mask is None:
            raise
        sel_mask, fallback = src.mask, True  # RNGR found nothing: train on the instance mask
    return Reference(sel_mask.float(), fill_outside(src.image, sel_mask, fill), pts, fallback)


@dataclass
class Batch:
    stems: list[str]
    captions: list[str]            # after the prompt template
    images: torch.Tensor           # [B, S, S, 3] targets
    subjects: torch.Tensor         # [B, S, S, 3] subject-only references
    masks: torch.Tensor            # [B, S, S] selections (in the references)
    # [B, S, S] the subject's instance masks in the targets (None when a target has none): where
    # --subject-loss-weight puts the loss
    target_masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.stems)


def make_batch(dataset, indices: Sequence[int], generator: torch.Generator, *, template: str = "{caption}",
               features_fn: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
               points_range: tuple[int, int] = (1, 3), min_depth: float = 0.35, fill: str = "blur") -> Batch:
    samples = [dataset[int(i)] for i in indices]
    refs = [prepare_reference(s, generator, features=features_fn(s.source.image) if features_fn else None,
                              points_range=points_range, min_depth=min_depth, fill=fill) for s in samples]
    # a target that is its own reference and has clicks only: its selection is its subject mask
    targets = [s.mask if s.mask is not None else (r.mask if s.reference is None else None)
               for s, r in zip(samples, refs)]
    return Batch([s.stem for s in samples], [template.format(caption=s.caption) for s in samples],
                 torch.stack([s.image for s in samples]), torch.stack([r.subject for r in refs]),
                 torch.stack([r.mask for r in refs]),
                 torch.stack([m.float() for m in targets]) if all(m is not None for m in targets) else None)
