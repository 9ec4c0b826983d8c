"""Step 5 of the selection: remove everything outside the subject mask (docs/design.md, section 1).

How to fill is our choice (the paper does not say): ``blur`` paints a very wide blur of the
background that ignores the subject and its look-alikes, ``flat`` paints mid grey.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .features import as_hwc, working_size

FILL_MODES = ("blur", "flat")


def check_fill(mode: str, allowed: tuple[str, ...] = FILL_MODES) -> str:
    """``mode`` if it is one of ``allowed`` (the nodes add "inpaint"), else a user-facing error."""
    if mode not in allowed:
        raise ValueError(f"P3S: fill: unknown fill mode {mode!r}; use one of {', '.join(allowed)}.")
    return mode


def background_estimate(x: torch.Tensor, drop: torch.Tensor, side: int = 12) -> torch.Tensor:
    """A very wide blur of ``x`` ([1, 3, h, w]), [1, 3, ~side px], that ignores ``drop`` ([h, w]) pixels.

    Normalised convolution: dropped pixels (the subject and its look-alikes) get weight 0, and cells
    with no background at all are filled from their neighbours, so a removed look-alike leaves the
    surrounding background colour instead of a blurred blob of itself.
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


def compose(img: torch.Tensor, mask: torch.Tensor, small_bg: torch.Tensor) -> torch.Tensor:
    """[H, W, 3]: the image inside ``mask``, the upsampled background estimate ``small_bg`` outside."""
    bg = F.interpolate(small_bg, size=img.shape[:2], mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    return torch.where((mask > 0.5).unsqueeze(-1), img, bg.to(img.dtype))


def fill_outside(image: torch.Tensor, mask: torch.Tensor, mode: str = "blur",
                 exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Replace pixels outside ``mask`` ([H, W] 0/1) with a heavy blur or flat grey; inside is untouched.

    ``exclude`` ([H, W] 0/1, optional): pixels the blur must not draw colour from, e.g. the subject
    and look-alikes found by the selection; ``mask`` is always excluded.
    """
    img = as_hwc(image)
    check_fill(mode)
    if mode == "flat":
        return torch.where((mask > 0.5).unsqueeze(-1), img, torch.full((1, 1, 3), 0.5, dtype=img.dtype))
    drop = (mask > 0.5) if exclude is None else ((mask > 0.5) | (exclude > 0.5))
    return compose(img, mask, background_estimate(img.permute(2, 0, 1)[None].float(), drop))
