"""The attribute reader: finds the subjects in an image and reads class, colour, pattern, collar and scene.

Two small CNNs trained on rendered world images (plain torch, no comfy):

- ``Segmenter``: a fully convolutional net giving, per pixel, background / dog / bird and a *contact*
  map (pixels where two subjects touch), and, per image, the scene. Instances are the connected
  components of the subject pixels minus the contact pixels; contact pixels go to the nearest instance.
- ``IdentityNet``: reads one instance from a square crop around it (RGB + that instance's mask):
  class, body colour, pattern and collar colour.

Training augments renders with blur, noise, slight colour/brightness jitter (never enough to move one
identity colour to another) and, when an autoencoder is given, its round trip: generated images come
through that decoder, so the reader must read its look.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage

from . import world

log = logging.getLogger("P3S")
CROP = 32  # identity crops are read at CROP x CROP pixels
HEADS = {"cls": world.CLASSES, "colour": world.COLOURS, "pattern": world.PATTERNS, "collar": world.COLLARS}


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(4, cout), nn.SiLU())


class Segmenter(nn.Module):
    """[B, 3, S, S] in 0..1 -> (pixel logits [B, 4, S, S]: bg, dog, bird, contact; scene logits [B, 5]).

    Cheap on a CPU: everything runs at half resolution and below; a 3x3 convolution of the full-size
    input sharpens the upsampled logits (edges are colour edges in this world)."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.e1 = _conv(3, w, 2)
        self.e2 = nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w))
        self.e3 = nn.Sequential(_conv(2 * w, 3 * w, 2), _conv(3 * w, 3 * w))
        self.d2, self.d1 = _conv(5 * w, 2 * w), _conv(3 * w, w)
        self.pixel = nn.Conv2d(w, 4, 1)
        self.fine = nn.Conv2d(3, 4, 3, 1, 1)
        self.scene = nn.Linear(3 * w, len(world.SCENES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x * 2 - 1
        e1 = self.e1(x)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        up = lambda a, b: torch.cat([F.interpolate(a, size=b.shape[-2:], mode="nearest"), b], 1)  # noqa: E731
        d1 = self.d1(up(self.d2(up(e3, e2)), e1))
        pix = F.interpolate(self.pixel(d1), size=x.shape[-2:], mode="bilinear", align_corners=False) + self.fine(x)
        return pix, self.scene(e3.mean((2, 3)))


class IdentityNet(nn.Module):
    """[N, 4, CROP, CROP] (RGB 0..1 + the instance's mask) -> dict of logits per attribute."""

    def __init__(self, width: int = 24):
        super().__init__()
        w = width
        self.body = nn.Sequential(_conv(4, w), _conv(w, 2 * w, 2), _conv(2 * w, 3 * w, 2), _conv(3 * w, 4 * w),
                                  _conv(4 * w, 5 * w, 2))
        self.heads = nn.ModuleDict({k: nn.Linear(10 * w, len(v)) for k, v in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.cat([x[:, :3] * 2 - 1, x[:, 3:]], 1)
        f = self.body(x)
        m = F.interpolate(x[:, 3:], size=f.shape[-2:], mode="area")
        # mean over the whole crop and over the instance only: the mask says which subject is meant
        pooled = torch.cat([f.mean((2, 3)), (f * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1e-3)], 1)
        return {k: h(pooled) for k, h in self.heads.items()}


def crops(images: torch.Tensor, masks: torch.Tensor, owner: torch.Tensor, margin: float = 0.15) -> torch.Tensor:
    """Square crops around each instance: images [B, 3, S, S], masks [N, S, S] (0/1), owner [N] (image index)
    -> [N, 4, CROP, CROP]."""
    n, s = masks.shape[0], masks.shape[-1]
    if n == 0:
        return torch.zeros(0, 4, CROP, CROP)
    ys = masks.amax(2)  # [N, S] rows with the instance
    xs = masks.amax(1)
    idx = torch.arange(s, dtype=torch.float32)
    big = torch.tensor(float(s))
    y0 = torch.where(ys > 0, idx, big).amin(1)
    y1 = torch.where(ys > 0, idx, -big).amax(1) + 1
    x0 = torch.where(xs > 0, idx, big).amin(1)
    x1 = torch.where(xs > 0, idx, -big).amax(1) + 1
    side = torch.maximum(y1 - y0, x1 - x0).clamp_min(6.0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = side / s
    theta[:, 1, 1] = side / s
    theta[:, 0, 2] = cx / s * 2 - 1
    theta[:, 1, 2] = cy / s * 2 - 1
    grid = F.affine_grid(theta, (n, 4, CROP, CROP), align_corners=False)
    src = torch.cat([images[owner], masks[:, None].float()], 1)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ---- targets from renders ----------------------------------------------------------------------------
def pixel_targets(r: world.Render) -> tuple[np.ndarray, np.ndarray]:
    """(class map: 0 bg / 1 dog / 2 bird, contact map 0/1) of a render."""
    cls = np.zeros(r.labels.shape, np.int64)
    contact = np.zeros(r.labels.shape, bool)
    n = len(r.scene.subjects)
    for i, s in enumerate(r.scene.subjects):
        m = r.mask(i)
        cls[m] = 1 + world.CLASSES.index(s.identity.cls)
        if n > 1:
            others = (r.labels > 0) & ~m
            contact |= m & ndimage.binary_dilation(others, iterations=2)
    return cls, contact


def identity_targets(ident: world.Identity) -> list[int]:
    return [world.CLASSES.index(ident.cls), world.COLOURS.index(ident.colour),
            world.PATTERNS.index(ident.pattern), world.COLLARS.index(ident.collar)]


# ---- reading -----------------------------------------------------------------------------------------
@dataclass
class Found:
    """One subject the reader found."""
    mask: np.ndarray  # [S, S] bool
    cls: str
    colour: str
    pattern: str
    collar: str
    confidence: float  # product of the four attribute probabilities

    @property
    def identity(self) -> world.Identity:
        return world.Identity(self.cls, self.colour, self.pattern, self.collar)

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class Reading:
    scene: str
    scene_confidence: float
    subjects: list[Found]  # largest first

    @property
    def main(self) -> Found | None:
        return self.subjects[0] if self.subjects else None


def instances(pixel_logits: torch.Tensor, min_area: int) -> list[np.ndarray]:
    """Instance masks from one image's pixel logits [4, S, S]."""
    cls = pixel_logits[:3].argmax(0).numpy()
    fg = cls > 0
    contact = (torch.sigmoid(pixel_logits[3]).numpy() > 0.4) & fg
    core, n = ndimage.label(fg & ~contact)
    if n == 0:
        return []
    sizes = ndimage.sum(np.ones_like(core), core, index=np.arange(1, n + 1))
    keep = [i + 1 for i in range(n) if sizes[i] >= max(3, min_area // 4)]
    if not keep:
        return []
    core = np.where(np.isin(core, keep), core, 0)
    # every subject pixel (contact pixels, small fragments) joins the nearest kept core
    _, (iy, ix) = ndimage.distance_transform_edt(core == 0, return_indices=True)
    owner = np.where(fg, core[iy, ix], 0)
    out = [owner == k for k in keep]
    return [m for m in out if m.sum() >= min_area]


class Reader:
    """The trained reader. ``read(image)`` -> :class:`Reading` (image: uint8 or float [S, S, 3] or [3, S, S])."""

    def __init__(self, segmenter: Segmenter, identity: IdentityNet, side: int):
        self.segmenter, self.identity, self.side = segmenter.eval(), identity.eval(), side
        self.min_area = max(8, int(0.006 * side * side))

    @staticmethod
    def to_tensor(images) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
        if x.dtype == torch.uint8:
            x = x.float() / 255
        if x.ndim == 3:
            x = x[None]
        if x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)
        return x.float().contiguous()

    @torch.no_grad()
    def read_batch(self, images) -> list[Reading]:
        x = self.to_tensor(images)
        if x.shape[-1] != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="area" if x.shape[-1] > self.side else "bilinear")
        pix, scene = self.segmenter(x)
        sp = scene.softmax(1)
        found_masks, owner = [], []
        for b in range(x.shape[0]):
            for m in instances(pix[b], self.min_area):
                found_masks.append(m)
                owner.append(b)
        outs = [Reading(world.SCENES[int(sp[b].argmax())], float(sp[b].max()), []) for b in range(x.shape[0])]
        if not found_masks:
            return outs
        masks = torch.from_numpy(np.stack(found_masks)).float()
        logits = self.identity(crops(x, masks, torch.tensor(owner)))
        probs = {k: v.softmax(1) for k, v in logits.items()}
        for j, (m, b) in enumerate(zip(found_masks, owner)):
            vals = {k: HEADS[k][int(probs[k][j].argmax())] for k in HEADS}
            conf = float(np.prod([float(probs[k][j].max()) for k in HEADS]))
            outs[b].subjects.append(Found(m, vals["cls"], vals["colour"], vals["pattern"], vals["collar"], conf))
        for r in outs:
            r.subjects.sort(key=lambda f: -f.area)
        return outs

    def read(self, image) -> Reading:
        return self.read_batch(image)[0]

    @torch.no_grad()
    def read_identities(self, images, masks) -> list[world.Identity]:
        """Identities of given instances (ground-truth masks): images [N, S, S, 3], masks [N, S, S]."""
        x = self.to_tensor(images)
        m = torch.as_tensor(np.asarray(masks)).float()
        logits = self.identity(crops(x, m, torch.arange(x.shape[0])))
        idx = {k: v.argmax(1).tolist() for k, v in logits.items()}
        return [world.Identity(*(HEADS[k][idx[k][j]] for k in HEADS)) for j in range(x.shape[0])]

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = {"segmenter." + k: v for k, v in self.segmenter.state_dict().items()}
        sd.update({"identity." + k: v for k, v in self.identity.state_dict().items()})
        return sd

    @classmethod
    def from_state_dict(cls, sd: dict, side: int, width: int = 16) -> "Reader":
        seg, ident = Segmenter(width), IdentityNet(width + width // 2)
        seg.load_state_dict({k[len("segmenter."):]: v for k, v in sd.items() if k.startswith("segmenter.")})
        ident.load_state_dict({k[len("identity."):]: v for k, v in sd.items() if k.startswith("identity.")})
        return cls(seg, ident, side)
