"""Synthetic reference scenes with known instance masks, and a tiny training dataset made of them."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

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


def save_mask(mask: torch.Tensor, path) -> None:
    from PIL import Image
    Image.fromarray((mask.bool().numpy() * 255).astype(np.uint8)).save(path)


def write_dataset(root: Path, seeds: Iterable[int], side: int, caption: str = "a dog on the grass") -> Path:
    """A training dataset (docs/training.md layout) of two-subject scenes; the mask marks one of the two."""
    root = Path(root)
    for sub in ("images", "captions", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for n, seed in enumerate(seeds):
        image, masks, _ = two_subjects(side, side, seed=seed)
        stem = f"scene{seed}"
        save_png(image, root / "images" / f"{stem}.png")
        save_mask(masks[n % 2], root / "masks" / f"{stem}.png")
        (root / "captions" / f"{stem}.txt").write_text(caption + "\n")
    return root
