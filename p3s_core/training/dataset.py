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

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..points import PointSet

log = logging.getLogger("P3S")

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


def _unreadable(label: str, exc: BaseException, what: str, fix: str) -> ValueError:
    return ValueError(f"P3S: dataset: {label} is not {what} ({type(exc).__name__}: {str(exc)[:160]}): {fix}")


def _load_image(path: Path, size: int, label: str) -> tuple[torch.Tensor, _Crop]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            crop = _Crop.centre(im.size[0], im.size[1], size)
            image = im.crop(crop.box).resize((size, size), Image.BICUBIC)
    except Exception as exc:  # PIL raises many types on bad bytes (OSError, SyntaxError, DecompressionBomb...)
        raise _unreadable(label, exc, "a readable image", "re-save it as PNG or JPEG, or remove it") from None
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0), crop


def _load_mask(path: Path, crop: _Crop, label: str, image_label: str) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as m:
            m = m.convert("L")
            size = m.size
            m = m.crop(crop.box).resize((crop.size, crop.size), Image.BILINEAR)
    except Exception as exc:  # as in _load_image
        raise _unreadable(label, exc, "a readable image", "re-save the mask as PNG") from None
    if size != (crop.width, crop.height):
        raise ValueError(f"P3S: dataset: {label} is {size[0]}x{size[1]} but {image_label} is "
                         f"{crop.width}x{crop.height}: masks must have their image's size")
    mask = (torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0) > 0.5).float()
    if mask.sum() == 0:
        raise ValueError(f"P3S: dataset: {label} has no white (subject) pixels inside the centre crop: "
                         "paint the subject white")
    return mask


def _read_text(path: Path, label: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _unreadable(label, exc, "UTF-8 text", "save it as UTF-8") from None


def _load_points(path: Path, crop: _Crop, label: str) -> PointSet:
    w, h = crop.width, crop.height
    try:
        pts = PointSet.from_json(_read_text(path, label), width=w, height=h).rescaled(w, h)
    except RecursionError:
        raise ValueError(f"P3S: dataset: {label}: the points JSON is nested too deeply; expected the Point "
                         "Picker's {\"width\", \"height\", \"positive\", \"negative\"} object") from None
    except ValueError as exc:
        if str(exc).startswith("P3S: dataset:"):
            raise
        raise ValueError(f"P3S: dataset: {label}: {str(exc).removeprefix('P3S: ')}") from None
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
    """Folder dataset, see the module docstring and docs/training.md.

    Every file is read once when the dataset is made (``check=True``, what the trainer does), so a bad
    image, caption, mask or points file stops the run before step 1 with one message listing every bad
    file; samples are then loaded again lazily, one batch at a time.
    """

    def __init__(self, root: str | os.PathLike, resolution: int = 512, check: bool = True):
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
        missing = {p.stem: self._missing(p.stem) for p in self.images}
        problems = [line for lines in missing.values() for line in lines]
        if check:
            t0 = time.perf_counter()
            problems += self.unreadable(skip={stem for stem, lines in missing.items() if lines})
            log.info("P3S: dataset %s: read all %d samples in %.1f s", self.root, len(self.images),
                     time.perf_counter() - t0)
        if problems:
            listing = "".join(f"\n  - {p}" for p in problems)
            raise ValueError(f"P3S: dataset {self.root}: {len(problems)} problem(s), all listed, found before "
                             f"training started:{listing}\nEvery image needs a readable image file, a UTF-8 "
                             "caption and a mask or points file with the same stem; an image with "
                             "references/<stem> needs reference_masks/<stem>.png or reference_points/<stem>.json "
                             "instead. Fix or remove these files")

    def _missing(self, stem: str) -> list[str]:
        out = [] if (self.root / "captions" / f"{stem}.txt").is_file() else [f"captions/{stem}.txt missing"]
        if stem in self.references:
            if not self._has("reference_masks", "reference_points", stem):
                out.append(f"references/{self.references[stem].name} has neither reference_masks/{stem}.png "
                           f"nor reference_points/{stem}.json")
        elif not self._has("masks", "points", stem):
            out.append(f"neither masks/{stem}.png nor points/{stem}.json")
        return out

    def targets_without_masks(self) -> list[str]:
        """Stems whose target has no subject mask: paired images without masks/<stem>.png (an unpaired
        image without one selects its subject with its clicks, which then stand for its mask)."""
        return [p.stem for p in self.images
                if p.stem in self.references and not (self.root / "masks" / f"{p.stem}.png").is_file()]

    def unreadable(self, skip: set[str] = frozenset()) -> list[str]:
        """Read every sample as training will; one line per bad file (the stems in ``skip`` are not read)."""
        out = []
        for i, path in enumerate(self.images):
            if path.stem in skip:
                continue
            for read in (self._caption, self._views):  # both: a bad caption does not hide a bad image
                try:
                    read(i)
                except ValueError as exc:
                    out.append(str(exc).removeprefix("P3S: dataset: "))
        return out

    def _has(self, masks: str, points: str, stem: str) -> bool:
        return (self.root / masks / f"{stem}.png").is_file() or (self.root / points / f"{stem}.json").is_file()

    def _view(self, path: Path, masks: str, points: str, image_label: str) -> SubjectView:
        image, crop = _load_image(path, self.resolution, image_label)
        stem = path.stem
        mpath, ppath = self.root / masks / f"{stem}.png", self.root / points / f"{stem}.json"
        mask = _load_mask(mpath, crop, f"{masks}/{stem}.png", image_label) if mpath.is_file() else None
        pts = _load_points(ppath, crop, f"{points}/{stem}.json") if ppath.is_file() else None
        return SubjectView(image, mask, pts)

    def _caption(self, i: int) -> str:
        label = f"captions/{self.images[i].stem}.txt"
        return _read_text(self.root / label, label).strip()

    def _views(self, i: int) -> tuple[SubjectView, SubjectView | None]:
        """The target and, when there is one, the paired reference."""
        path = self.images[i]
        ref_path = self.references.get(path.stem)
        target = self._view(path, "masks", "points", f"images/{path.name}")
        reference = (self._view(ref_path, "reference_masks", "reference_points", f"references/{ref_path.name}")
                     if ref_path is not None else None)
        return target, reference

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> TrainSample:
        caption = self._caption(i)
        target, reference = self._views(i)
        return TrainSample(self.images[i].stem, target.image, caption, target.mask, target.points, reference)
