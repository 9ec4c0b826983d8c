"""Small image filters the selection runs many times (plain torch): Gaussian blur, box means, Sobel.

All are written as sums of shifted slices or cumulative sums rather than convolutions: on one CPU
thread and the small arrays of the working resolution that is several times faster.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _gauss1d(sigma: float) -> list[float]:
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).tolist()


def _taps(x: torch.Tensor, k: list[float], dim: int) -> torch.Tensor:
    """Weighted sum of shifted slices of ``x`` (already padded by len(k) // 2 along ``dim``)."""
    n = x.shape[dim] - len(k) + 1
    out = x.narrow(dim, 0, n) * k[0]
    for i in range(1, len(k)):
        out += x.narrow(dim, i, n) * k[i]
    return out


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, C, h, w] with replicate padding."""
    if sigma <= 0:
        return x
    k = _gauss1d(sigma)
    r = len(k) // 2
    x = _taps(F.pad(x, (r, r, 0, 0), mode="replicate"), k, 3)
    return _taps(F.pad(x, (0, 0, r, r), mode="replicate"), k, 2)


def _box_sum_1d(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Sum over a window of 2r+1 along ``dim`` (inside the image only), by cumulative sums: O(1) a pixel."""
    n = x.shape[dim]
    pad = [0, 0] * (x.ndim - 1 - dim % x.ndim) + [r + 1, r]
    cs = F.pad(x, pad).cumsum(dim)
    return cs.narrow(dim, 2 * r + 1, n) - cs.narrow(dim, 0, n)


def box_mean(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean of [N, C, h, w] over a (2r+1)^2 window; at the border, over the part inside the image."""
    if r <= 0:
        return x
    h, w = x.shape[-2:]
    count_h = _box_sum_1d(torch.ones(1, 1, h, 1, dtype=x.dtype), r, 2)
    count_w = _box_sum_1d(torch.ones(1, 1, 1, w, dtype=x.dtype), r, 3)
    return _box_sum_1d(_box_sum_1d(x, r, 3), r, 2) / (count_h * count_w)


def sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel gradients (x, y; kernel / 8) of every channel of [N, C, h, w], replicate padding.

    As differences of shifted slices: the kernel is separable, and slicing is several times faster
    than a 3x3 convolution on one thread."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dx = p[..., 2:] - p[..., :-2]  # [N, C, h + 2, w]
    dy = p[..., 2:, :] - p[..., :-2, :]  # [N, C, h, w + 2]
    gx = (dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]) / 8
    gy = (dy[..., :-2] + 2 * dy[..., 1:-1] + dy[..., 2:]) / 8
    return gx, gy


