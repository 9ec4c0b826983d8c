"""The training dataset: a folder of images, captions and subject masks or clicks (docs/training.md).

```
images/<stem>.png|jpg            the target (what the diffusion loss is on)
captions/<stem>.txt              its caption
masks/<stem>.png                 instance mask of THE subject (white), or
points/<stem>.json               clicks on it (the Point Picker's JSON)
references/<stem>.png|jpg        optional: a different photo of the subject, used as the reference
reference_masks/<stem>.png       its subject mask, or
reference_points/<stem>.json     clicks on it
```
Without ``references/<stem>`` the target is its own reference (its mask or clicks select the subject).
Images are resized (short side) and centre-cropped to a square ``resolution``; masks and clicks follow.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..points import PointSet

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class SubjectView:
    """An image [S, S, 3] with its subject: an instance mask [S, S] and/or clicks in its pixels."""

    image: torch.Tensor
    mask: torch.Tensor | None = None
    points: PointSet | None = None


@dataclass
class TrainSample:
    stem: str
    image: torch.Tensor                  # [S, S, 3] float 0..1, the target
    caption: str
    mask: torch.Tensor | None = None     # [S, S] float 0/1 (instance mask of the subject in the target)
    points: PointSet | None = None       # clicks in the pixels of ``image``
    reference: SubjectView | None = None  # a paired reference photo; None: the target is its own reference

    @property
    def source(self) -> SubjectView:
        """Where the subject is selected from: the paired reference, else the target itself."""
        return self.reference if self.reference is not None else SubjectView(self.image, self.mask, self.points)


@dataclass(frozen=True)
class _Crop:
    width: int
    height: int
    x0: int
    y0: int
    side: int
    size: int  # the output side

    @classmethod
    def centre(cls, width: int, height: int, size: int) -> "_Crop":
        side = min(width, height)
        return cls(width, height, (width - side) // 2, (height - side) // 2, side, size)

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x0 + self.side, self.y0 + self.side


def _find_image(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{ext}" for ext in IMAGE_EXTS if (folder / f"{stem}{ext}").is_file()), None)


def _load_image(path: Path, size: int) -> tuple[torch.Tensor, _Crop]:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        crop = _Crop.centre(im.size[0], im.size[1], size)
        image = im.crop(crop.box).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0), crop


def _load_mask(path: Path, crop: _Crop, label: str, image_label: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as m:
        m = m.convert("L")
        if m.size != (crop.width, crop.height):
            raise ValueError(f"P3S: dataset: {label} is {m.size[0]}x{m.size[1]} but {image_label} is "
                             f"{crop.width}x{crop.height}: masks must have their image's size")
        m = m.crop(crop.box).resize((crop.size, crop.size), Image.BILINEAR)
    mask = (torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0) > 0.5).float()
    if mask.sum() == 0:
        raise ValueError(f"P3S: dataset: {label} has no white (subject) pixels inside the centre crop: "
                         "paint the subject white")
    return mask


def _load_points(path: Path, crop: _Crop, label: str) -> PointSet:
    w, h = crop.width, crop.height
    pts = PointSet.from_json(path.read_text(encoding="utf-8"), width=w, height=h).rescaled(w, h)
    sc = crop.size / crop.side

    def move(xy):
        return [((x - crop.x0) * sc, (y - crop.y0) * sc) for x, y in xy]
    points = PointSet.from_pixels(move(pts.positive), move(pts.negative), crop.size, crop.size)
    try:
        points.validate()
    except ValueError as exc:
        raise ValueError(f"P3S: dataset: {label} after the centre crop: {exc}") from None
    return points


class SubjectDataset:
    """Folder dataset, see the module docstring and docs/training.md. Samples load lazily."""

    def __init__(self, root: str | os.PathLike, resolution: int = 512):
        self.root = Path(root)
        self.resolution = int(resolution)
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"P3S: resolution {resolution} must be a multiple of 8 (>= 8)")
        images_dir = self.root / "images"
        if not images_dir.is_dir():
            raise ValueError(f"P3S: dataset {self.root}: no images/ folder. Expected images/, captions/ and "
                             "masks/ or points/ (see docs/training.md)")
        self.images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not self.images:
            raise ValueError(f"P3S: dataset {self.root}: images/ holds no {'/'.join(IMAGE_EXTS)} files")
        self.references = {p.stem: r for p in self.images if (r := _find_image(self.root / "references", p.stem))}
        problems = [problem for p in self.images for problem in self._problems(p.stem)]
        if problems:
            raise ValueError(f"P3S: dataset {self.root}: {len(problems)} problem(s): {'; '.join(problems[:5])}"
                             " — every image needs a caption and a mask or points file with the same stem; an "
                             "image with references/<stem> needs reference_masks/<stem>.png or "
                             "reference_points/<stem>.json instead")

    def _problems(self, stem: str) -> list[str]:
        out = [] if (self.root / "captions" / f"{stem}.txt").is_file() else [f"captions/{stem}.txt missing"]
        if stem in self.references:
            if not self._has("reference_masks", "reference_points", stem):
                out.append(f"references/{self.references[stem].name} has neither reference_masks/{stem}.png "
                           f"nor reference_points/{stem}.json")
        elif not self._has("masks", "points", stem):
            out.append(f"neither masks/{stem}.png nor points/{stem}.json")
        return out

    def _has(self, masks: str, points: str, stem: str) -> bool:
        return (self.root / masks / f"{stem}.png").is_file() or (self.root / points / f"{stem}.json").is_file()

    def _view(self, path: Path, masks: str, points: str, image_label: str) -> SubjectView:
        image, crop = _load_image(path, self.resolution)
        stem = path.stem
        mpath, ppath = self.root / masks / f"{stem}.png", self.root / points / f"{stem}.json"
        mask = _load_mask(mpath, crop, f"{masks}/{stem}.png", image_label) if mpath.is_file() else None
        pts = _load_points(ppath, crop, f"{points}/{stem}.json") if ppath.is_file() else None
        return SubjectView(image, mask, pts)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> TrainSample:
        path = self.images[i]
        stem = path.stem
        target = self._view(path, "masks", "points", "the image")
        caption = (self.root / "captions" / f"{stem}.txt").read_text(encoding="utf-8").strip()
        ref_path = self.references.get(stem)
        reference = (self._view(ref_path, "reference_masks", "reference_points", f"references/{ref_path.name}")
                     if ref_path is not None else None)
        return TrainSample(stem, target.image, caption, target.mask, target.points, reference)
