"""Patch features for the selection (``rngr``): a weight-free built-in feature and the CLIP patch grid.

The built-in feature exists so selection works with no model at all (docs/design.md, section 1, step 1).
Its channels are our choice (the paper uses CLIP patch tokens): Lab colour mean and spread,
gradient energy and undirected orientation, each pooled over overlapping patches, z-scored per
channel so no single statistic dominates the cosine similarity.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from .filters import box_mean, sobel

log = logging.getLogger("P3S")

# sRGB (D65) -> XYZ, rows X, Y, Z; standard constants.
_RGB2XYZ = torch.tensor(
    [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
)
_WHITE = torch.tensor([0.9505, 1.0, 1.089])
# XYZ / white, as one matrix; and f(X, Y, Z) -> (L, a, b) / 100, a matrix plus an offset on L.
_RGB2XYZN = _RGB2XYZ / _WHITE[:, None]
_F2LAB = torch.tensor([[0.0, 1.16, 0.0], [5.0, -5.0, 0.0], [0.0, 2.0, -2.0]])
# sRGB decoding by table: 16 entries per 8-bit step, so 8-bit images are decoded exactly and any
# other value within 4e-4 (in L, a, b); a table look-up is ~3x faster than the power function on a CPU.
_LUT_STEPS = 255 * 16
_LUT = torch.linspace(0, 1, _LUT_STEPS + 1, dtype=torch.float64)
_LUT = torch.where(_LUT <= 0.04045, _LUT / 12.92, ((_LUT + 0.055) / 1.055) ** 2.4).float()

def as_hwc(image: torch.Tensor) -> torch.Tensor:
    """[H, W, 3] float view of an image given as [H, W, 3] or [1, H, W, 3] (0..1)."""
    if not isinstance(image, torch.Tensor):
        image = torch.as_tensor(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] < 3:
        raise ValueError(
            f"P3S: image: expected an IMAGE of shape [H, W, 3] or [1, H, W, 3], got {tuple(image.shape)}."
        )
    image = image[..., :3]  # drop alpha if present
    return image if image.dtype == torch.float32 else image.float()


def working_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) with the long side at most ``long_side``, aspect kept."""
    scale = min(1.0, long_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def downsample(image: torch.Tensor, long_side: int = 256) -> torch.Tensor:
    """Area-downsample [H, W, 3] to a working resolution (no-op when already small). Returns [1, 3, h, w]."""
    img = as_hwc(image)
    x = img.permute(2, 0, 1).unsqueeze(0)
    H, W = img.shape[:2]
    h, w = working_size(H, W, long_side)
    if (h, w) == (H, W):
        return x.contiguous()
    if H % h == 0 and W % w == 0 and H // h == W // w:
        # A whole factor: block means - the same as "area" resampling. Adding whole row slices, then
        # pixel slices, streams contiguous memory: several times faster than pooling a channels-last
        # image or a strided sum over the block axis.
        k = H // h
        rows = img.reshape(h, k, W * 3)
        acc = rows[:, 0].clone()
        for i in range(1, k):
            acc += rows[:, i]
        cols = acc.view(h, w, k * 3)
        out = cols[:, :, 0:3].clone()
        for i in range(1, k):
            out += cols[:, :, 3 * i:3 * i + 3]
        return (out / (k * k)).permute(2, 0, 1).unsqueeze(0).contiguous()
    return F.interpolate(x, size=(h, w), mode="area")


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """[1, 3, h, w] sRGB 0..1 -> Lab scaled to roughly unit range (L/100, a/100, b/100)."""
    n, _, h, w = x.shape
    idx = (x.float().clamp(0, 1) * _LUT_STEPS + 0.5).long()
    lin = torch.take(_LUT, idx).reshape(n, 3, h * w)
    xyz = torch.matmul(_RGB2XYZN, lin)  # [n, 3, h*w]
    eps = (6 / 29) ** 3
    # The cube root as exp(log / 3): about twice as fast as pow on a CPU; the same to float precision.
    f = torch.where(xyz > eps, torch.exp(torch.log(xyz.clamp_min(eps)) * (1 / 3)), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = torch.matmul(_F2LAB, f)
    lab[:, 0] -= 0.16
    return lab.view(n, 3, h, w)

def _pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Means over overlapping windows (2*stride+1) every ``stride`` px, so patch statistics vary smoothly
    across the grid; at the border over the part inside the image. The same as avg_pool2d(2s+1, s, s,
    count_include_pad=False), by box sums: several times faster on one thread."""
    return box_mean(x, stride)[..., ::stride, ::stride]


def builtin_features_chw(x: torch.Tensor, cell: int = 4, lab: torch.Tensor | None = None) -> torch.Tensor:
    """Weight-free features of a working-resolution image [1, 3, h, w] -> [D, h/cell, w/cell].

    ``lab``: the same image already converted by :func:`rgb_to_lab` (saves converting it twice)."""
    lab = rgb_to_lab(x) if lab is None else lab
    L = lab[:, :1]
    # Sobel gradients of lightness: texture energy and undirected orientation (doubled angle).
    gx, gy = sobel(L)
    mag2 = gx * gx + gy * gy
    mag = mag2.sqrt()
    c2 = (gx * gx - gy * gy) / (mag + 1e-6)  # mag*cos(2theta)
    s2 = 2 * gx * gy / (mag + 1e-6)  # mag*sin(2theta)
    pix = torch.cat([lab, lab * lab, mag, c2, s2], dim=1)
    pooled = _pool(pix, cell)
    mean = pooled[:, 0:3]
    std = (pooled[:, 3:6] - mean * mean).clamp_min(0).sqrt()
    grad = pooled[:, 6:9]
    # Wider context colour (3x the window): helps tell a subject's interior from similar clutter.
    ctx = _pool(mean, 1) if min(mean.shape[-2:]) > 2 else mean
    feats = torch.cat([mean, std, grad, ctx], dim=1)[0]
    # Channel weights: colour identifies a subject more reliably than texture statistics.
    w = torch.tensor([1.5, 1.5, 1.5, 0.8, 0.8, 0.8, 0.8, 0.5, 0.5, 0.7, 0.7, 0.7])
    return _zscore(feats) * w.view(-1, 1, 1)


def _zscore(f: torch.Tensor) -> torch.Tensor:
    mu = f.mean(dim=(1, 2), keepdim=True)
    sd = f.std(dim=(1, 2), keepdim=True)
    # Floor on the spread: a channel that is flat over the image carries no information, and
    # dividing by ~0 would turn its noise into a dominant channel.
    return (f - mu) / (sd + 0.02)


def builtin_features(image: torch.Tensor, grid: int = 64, work_side: int = 256) -> torch.Tensor:
    """Built-in weight-free patch features of an image [H, W, 3] -> [h, w, D] (long side = ``grid``)."""
    x = downsample(image, work_side)
    cell = max(1, round(max(x.shape[-2:]) / grid))
    return builtin_features_chw(x, cell).permute(1, 2, 0).contiguous()


def clip_patch_grid(tokens: torch.Tensor) -> torch.Tensor:
    """CLIP-vision penultimate hidden states [T, D] or [1, T, D] incl. CLS -> patch grid [g, g, D]."""
    t = torch.as_tensor(tokens)
    if t.ndim == 3:
        if t.shape[0] != 1:
            raise ValueError(
                f"P3S: clip_vision: expected hidden states for one image [1, T, D], got {tuple(t.shape)}."
            )
        t = t[0]
    if t.ndim != 2:
        raise ValueError(f"P3S: clip_vision: expected hidden states [T, D], got {tuple(t.shape)}.")
    n = t.shape[0] - 1  # drop CLS
    g = math.isqrt(max(n, 0))
    if n <= 0 or g * g != n:
        raise ValueError(
            f"P3S: clip_vision: got {t.shape[0]} tokens ({n} after the CLS token), which is not a "
            "square ViT patch grid as expected. Use a ViT-L/H CLIP vision model, or disconnect "
            "clip_vision to use the built-in features."
        )
    return t[1:].float().reshape(g, g, t.shape[1])
