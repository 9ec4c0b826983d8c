"""Where ``bench/selection.py`` loses IoU, target by target (``--diagnose DIR``).

For every target whose IoU is below a line, one text row and one picture. The row gives the scene, the
target, IoU, precision and recall, the kind of loss (over, under, boundary: as ``loss_split`` counts it)
and, where the selection took in a look-alike, what the image and the shape offered the split there:

- ``outline``: the median colour gradient along the true border between the target and the look-alike it
  took most of, against the median inside the two (``split._outlines`` reads the same figure on its own
  borders; an outline the split acts on is above about 3);
- ``neck``: the two bodies' union thickness at that border against the smaller body's own thickness (below 1: a
  neck; at or above 1 the overlap is the thickest part, and the body behind has no hill of its own).

The picture, at the working resolution, cropped to the region and the target and enlarged 3x: the image | edge strength (``split.edge_strength``) | the landscape
the split floods (cuts included) | the image dimmed outside the selection | errors (red: selected, not the
target; blue: the target, not selected; green: right). Only for bench use: it reads the split's internals.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from p3s_core import rngr, split


@dataclass
class Finding:
    scene: int
    target: int
    iou: float
    precision: float
    recall: float
    kind: str  # "over", "under" or "boundary"
    taken: int | None = None  # the look-alike the selection holds most of (over-selection)
    outline: float = float("nan")
    neck: float = float("nan")

    def row(self) -> str:
        extra = "" if self.taken is None else f" took {self.taken} outline {self.outline:.2f} neck {self.neck:.2f}"
        return (f"scene {self.scene:3d} target {self.target}: IoU {self.iou:.2f} precision {self.precision:.2f} "
                f"recall {self.recall:.2f} {self.kind}{extra}")


@contextlib.contextmanager
def captured_split():
    """Records the region and Lab image each ``split_lookalikes`` call gets, and what it returns (the last call)."""
    seen: dict = {}
    real = rngr.split_lookalikes

    def spy(region, pos, neg, auto=True, lab=None):
        out = real(region, pos, neg, auto, lab)
        seen.update(region=region.copy(), lab=lab, out=out)
        return out
    rngr.split_lookalikes = spy
    try:
        yield seen
    finally:
        rngr.split_lookalikes = real


def _small(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=shape, mode="area")[0, 0].numpy() > 0.5


def border_figures(lab: torch.Tensor, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(outline, neck) of the true border between bodies ``a`` and ``b`` (working-resolution masks); NaN where
    they do not touch."""
    border = a & ndimage.binary_dilation(b)
    if not border.any():
        return float("nan"), float("nan")
    mag = split.gradient(lab)
    union = a | b
    inner = ndimage.binary_erosion(union, iterations=3) & ~ndimage.binary_dilation(border, iterations=3)
    ref = float(np.median(mag[inner])) if inner.any() else float(np.median(mag[union]))
    outline = float(np.median(ndimage.maximum_filter(mag, 3)[border])) / max(ref, 1e-6)
    thick = ndimage.distance_transform_edt(np.pad(union, 1))[1:-1, 1:-1]
    own = min(float(ndimage.distance_transform_edt(a).max()), float(ndimage.distance_transform_edt(b).max()))
    return outline, float(thick[border].max()) / max(own, 1e-6)


def finding(scene_i: int, j: int, masks: list[np.ndarray], sel: np.ndarray, lab: torch.Tensor | None,
            line: float = 0.75) -> Finding:
    """The row for target ``j`` (full-size ``masks`` and selection ``sel``)."""
    m = masks[j]
    inter = float((sel & m).sum())
    iou = inter / max(1.0, float((sel | m).sum()))
    p, r = inter / max(1.0, float(sel.sum())), inter / max(1.0, float(m.sum()))
    kind = "over" if p < line else "under" if r < line else "boundary"
    f = Finding(scene_i, j, iou, p, r, kind)
    others = [k for k in range(len(masks)) if k != j and (sel & masks[k]).any()]
    if kind == "over" and others and lab is not None:
        f.taken = max(others, key=lambda k: int((sel & masks[k]).sum()))
        shape = tuple(lab.shape[-2:])
        f.outline, f.neck = border_figures(lab, _small(m, shape), _small(masks[f.taken], shape))
    return f


def picture(image: np.ndarray, target: np.ndarray, seen: dict, path: Path) -> None:
    """The five panels (see the module docstring) for one selection, written to ``path``."""
    region, lab, out = seen["region"], seen["lab"], seen["out"]
    h, w = region.shape
    small = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=(h, w),
                                            mode="area")[0].permute(1, 2, 0).numpy()
    strength = split.edge_strength(split.gradient(lab), region)
    land = split._landscape(region, strength, cut=True)
    tgt = _small(target, (h, w))
    grey = lambda x: np.repeat(x[..., None], 3, 2)  # noqa: E731
    panels = [small, grey(strength), grey(land / max(float(land.max()), 1e-6)), small * (0.3 + 0.7 * out[..., None]),
              np.stack([out & ~tgt, out & tgt, tgt & ~out], -1).astype(np.float32)]
    rows, cols = np.nonzero(region | tgt)  # the region and the target with a margin, 3x: small subjects stay readable
    box = (slice(max(int(rows.min()) - 16, 0), int(rows.max()) + 17), slice(max(int(cols.min()) - 16, 0), int(cols.max()) + 17))
    strip = np.concatenate([x[box] for x in panels], 1)
    img = Image.fromarray((np.clip(strip, 0, 1) * 255).astype(np.uint8))
    img.resize((img.width * 3, img.height * 3), Image.NEAREST).save(path)
