"""The fast filters and transforms of the selection equal the plain formulas they replace."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from p3s_core.features import _pool, downsample, rgb_to_lab
from p3s_core.filters import box_mean, gaussian_blur, sobel
from p3s_core.refine import fill_holes, inside_distance, shrink


def _lab_formula(x: torch.Tensor) -> torch.Tensor:
    """sRGB -> Lab / 100 by the textbook formulas (power functions, no table)."""
    x = x.double().clamp(0, 1)
    lin = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    m = torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).double()
    xyz = torch.einsum("ij,bjhw->bihw", m, lin) / torch.tensor([0.9505, 1.0, 1.089]).double().view(1, 3, 1, 1)
    eps = (6 / 29) ** 3
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return torch.cat([1.16 * f[:, 1:2] - 0.16, 5 * (f[:, :1] - f[:, 1:2]), 2 * (f[:, 1:2] - f[:, 2:])], 1)


def test_lab_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (1, 3, 31, 47), generator=g).float() / 255  # 8-bit images: exact
    assert torch.allclose(rgb_to_lab(x8).double(), _lab_formula(x8), atol=1e-5)
    x = torch.rand(1, 3, 31, 47, generator=g) * 1.2 - 0.1  # any float, out-of-range clamped
    assert torch.allclose(rgb_to_lab(x).double(), _lab_formula(x), atol=1e-3)
    # Known colours: white is L=100, a=b=0; black is 0; pure red is about (53, 80, 67).
    known = torch.tensor([[1.0, 1, 1], [0, 0, 0], [1, 0, 0]]).t().reshape(1, 3, 3, 1)
    lab = rgb_to_lab(known)[0, :, :, 0].t() * 100
    assert torch.allclose(lab[0], torch.tensor([100.0, 0, 0]), atol=0.2)
    assert torch.allclose(lab[1], torch.zeros(3), atol=1e-3)
    assert torch.allclose(lab[2], torch.tensor([53.2, 80.1, 67.2]), atol=0.5)


@pytest.mark.parametrize("size", [(1024, 1024), (768, 512), (300, 200), (1000, 700)])
def test_downsample_is_area_resampling(size):
    img = torch.rand(*size, 3, generator=torch.Generator().manual_seed(1))
    out = downsample(img, 256)
    ref = F.interpolate(img.permute(2, 0, 1)[None], size=out.shape[-2:], mode="area")
    assert out.shape[-2:] == ref.shape[-2:] and max(out.shape[-2:]) == 256
    assert torch.allclose(out, ref, atol=1e-5)


def test_sobel_gaussian_box_match_convolutions():
    x = torch.rand(2, 3, 23, 40, generator=torch.Generator().manual_seed(2))
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1) / 8
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx, gy = sobel(x)
    assert torch.allclose(gx, F.conv2d(xp, kx, groups=3), atol=1e-6)
    assert torch.allclose(gy, F.conv2d(xp, kx.transpose(2, 3), groups=3), atol=1e-6)
    for sigma in (0.7, 1.0, 2.5):
        r = max(1, int(3 * sigma + 0.5))
        t = torch.arange(-r, r + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
        ref = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k, groups=3)
        ref = F.conv2d(F.pad(ref, (0, 0, r, r), mode="replicate"), k.transpose(2, 3), groups=3)
        assert torch.allclose(gaussian_blur(x, sigma), ref, atol=1e-5)
    for r in (1, 3, 8):  # window means inside the image only, and the strided patch pooling
        ref = F.avg_pool2d(x, 2 * r + 1, 1, r, count_include_pad=False)
        assert torch.allclose(box_mean(x, r), ref, atol=1e-5)
        ref = F.avg_pool2d(x, 2 * r + 1, r, r, count_include_pad=False)
        assert torch.allclose(_pool(x, r), ref, atol=1e-5)


def _blobs(seed: int, shape=(90, 120)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), 4) > 0.3


@pytest.mark.parametrize("seed", range(6))
def test_box_restricted_transforms_equal_the_whole_array(seed):
    m = _blobs(seed)
    if seed == 5:
        m[:, :3] = True  # touching the image border
    assert np.array_equal(inside_distance(m), ndimage.distance_transform_edt(m))
    assert np.array_equal(shrink(m, 3), ndimage.distance_transform_edt(m) > 3)
    ring = np.zeros((60, 60), bool)
    ring[10:50, 10:50] = True
    ring[20:40, 20:40] = False  # a hole
    ring[25:30, 25:30] = True  # an island in it
    for mask in (m, ring, np.zeros((5, 5), bool)):
        assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
