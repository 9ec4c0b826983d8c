"""Synthetic reference scenes with known instance masks (test data)."""
from __future__ import annotations

import numpy as np
import torch


def two_subjects(width: int = 256, height: int = 192, seed: int = 0, touching: bool = False):
    """Two look-alike textured blobs on a lit, textured background.

    Returns (image [H, W, 3] float 0..1, masks [2, H, W] bool, centers [(x, y), (x, y)]).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = np.stack([0.35 + 0.25 * xx / width, 0.55 - 0.15 * yy / height, 0.30 + 0.05 * np.sin(xx / 9)], -1)
    bg += rng.normal(0, 0.03, bg.shape)
    # Touching: the two ellipses meet at the centre line; separated: a clear background gap.
    rx, ry = (width * 0.2, height * 0.3) if touching else (width * 0.16, height * 0.3)
    centers = [(width * 0.3, height * 0.5), (width * 0.7, height * 0.5)]
    img = bg.copy()
    masks = []
    for i, (cx, cy) in enumerate(centers):
        m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        fur = 0.06 * np.sin(xx / 3.0 + i) * np.cos(yy / 4.0) + rng.normal(0, 0.02, m.shape)
        colour = np.array([0.62, 0.42, 0.22]) + rng.normal(0, 0.01, 3)
        img[m] = colour + fur[m, None]
        masks.append(m)
    image = torch.from_numpy(np.clip(img, 0, 1).astype(np.float32))
    return image, torch.from_numpy(np.stack(masks)), centers


def save_png(image: torch.Tensor, path) -> None:
    from PIL import Image
    Image.fromarray((image.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(path)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float((a & b).sum()) / max(1.0, float((a | b).sum()))
