"""How big the reference pass is: the subject's box plus a margin, at (at most) the generation's scale.

The reference pass runs the U-Net over the subject-only reference at every step (``per_step``), and the
denoising pass attends to the banked subject tokens, so both cost what the reference latent's size is.
Neither should grow with the reference photo's resolution *(ours)*:

- **crop**: only the subject's bounding box plus ``CROP_MARGIN`` of its longer side on every side is
  encoded (the margin keeps some filled background around the subject, so border tokens see what they
  saw in the full image);
- **scale**: P3S Apply encodes that crop at a few sizes, ``LEVEL_STEP`` apart (real VAE encodes, never
  resampled latents); at sampling time the reference pass takes the largest level at which the *full*
  reference would cover no more latent cells than ``REFERENCE_SCALE`` times the generation, so the
  subject appears at most as large as the reference photo would when laid over the generated image.

These constants are what the world benchmark varies to measure identity against cost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CROP_MARGIN = 0.2            # of the subject box's longer side, added on every side
REFERENCE_SCALE = 1.0        # the full reference covers at most this many times the generation's cells
LEVEL_STEP = 2 ** -0.5       # linear size ratio between encoded levels (two levels per octave)
MIN_LEVEL_SIDE = 64          # px: the smallest level's short side (8 latent cells)
PIXELS_PER_CELL = 8          # VAE downscale of the supported families


def subject_box(masks: torch.Tensor, margin: float = CROP_MARGIN, multiple: int = PIXELS_PER_CELL,
                min_side: int = MIN_LEVEL_SIDE) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) in pixels of every mask's subject (their union), plus ``margin``.

    Sides are multiples of ``multiple`` and at least ``min_side`` (or the image's side when smaller);
    the box stays inside the image. An all-empty mask gives the whole image.
    """
    _, height, width = masks.shape
    any_rows = torch.nonzero((masks > 0.5).any(dim=0).any(dim=1)).flatten()
    any_cols = torch.nonzero((masks > 0.5).any(dim=0).any(dim=0)).flatten()
    if any_rows.numel() == 0:
        return 0, 0, height // multiple * multiple, width // multiple * multiple
    top, bottom = int(any_rows[0]), int(any_rows[-1]) + 1
    left, right = int(any_cols[0]), int(any_cols[-1]) + 1
    pad = margin * max(bottom - top, right - left)
    top, bottom = _span(top - pad, bottom + pad, height, multiple, min_side)
    left, right = _span(left - pad, right + pad, width, multiple, min_side)
    return top, left, bottom, right


def _span(lo: float, hi: float, size: int, multiple: int, min_side: int) -> tuple[int, int]:
    """[lo, hi) grown to a multiple of ``multiple`` (at least ``min_side``), centred, kept in [0, size)."""
    limit = size // multiple * multiple
    want = max(hi - lo, min_side)
    side = min(limit, int(math.ceil(want / multiple)) * multiple)
    start = int(round((lo + hi) / 2 - side / 2))
    start = min(max(start, 0), size - side)
    return start, start + side


def level_sizes(height: int, width: int, step: float = LEVEL_STEP, min_side: int = MIN_LEVEL_SIDE,
                multiple: int = PIXELS_PER_CELL) -> list[tuple[int, int, float]]:
    """(height, width, scale) of every level of a ``height`` x ``width`` crop, largest first.

    Level i is the crop scaled by ``step ** i`` (sides rounded to ``multiple``) while its short side
    stays at least ``min_side``; level 0 is the crop itself. ``scale`` is the level's true linear scale.
    """
    out: list[tuple[int, int, float]] = [(height, width, 1.0)]
    i = 1
    while True:
        s = step ** i
        h = int(round(height * s / multiple)) * multiple
        w = int(round(width * s / multiple)) * multiple
        if min(h, w) < min(min_side, min(height, width)) or s < 1e-3:
            return out
        if (h, w) != out[-1][:2]:
            out.append((h, w, math.sqrt(h * w / (height * width))))
        i += 1


@dataclass
class ReferenceLevels:
    """The encoded subject-only reference at every level: latents [R, C, h, w] and masks [R, h, w].

    ``full_cells``: latent cells of the whole (uncropped) reference at level 0's scale; ``scales``: each
    level's linear scale relative to level 0.
    """

    latents: list[torch.Tensor]
    masks: list[torch.Tensor]
    scales: list[float]
    full_cells: float

    @classmethod
    def single(cls, latent: torch.Tensor, mask: torch.Tensor) -> "ReferenceLevels":
        """One level, used as it is (a reference prepared by the caller, e.g. the trainer's)."""
        return cls([latent], [mask], [1.0], float(latent.shape[-2] * latent.shape[-1]))

    def target_scale(self, height: int, width: int, reference_scale: float = REFERENCE_SCALE) -> float:
        """The level-0-relative scale at which the full reference covers ``reference_scale`` times the
        generation's ``height`` x ``width`` latent cells."""
        return reference_scale * math.sqrt(height * width / self.full_cells)

    def pick(self, height: int, width: int, reference_scale: float = REFERENCE_SCALE) -> int:
        """The level for a ``height`` x ``width`` latent: the largest at or below the target scale (the
        smallest level when even that is larger)."""
        target = self.target_scale(height, width, reference_scale) * (1 + 1e-6)
        fitting = [i for i, s in enumerate(self.scales) if s <= target]
        return fitting[0] if fitting else len(self.scales) - 1
