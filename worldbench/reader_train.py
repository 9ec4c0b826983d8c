"""Training and evaluating the attribute reader on rendered world images."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from . import world
from .reader import HEADS, IdentityNet, Reader, Segmenter, crops, identity_targets, pixel_targets
from .progress import progress

log = logging.getLogger("P3S")


@dataclass
class ReaderData:
    """Rendered images with every target the reader trains on (instances flattened with their owner)."""
    images: torch.Tensor  # [N, 3, S, S] float 0..1
    cls: torch.Tensor  # [N, S, S] long
    contact: torch.Tensor  # [N, S, S] float
    scene: torch.Tensor  # [N] long
    inst_masks: torch.Tensor  # [M, S, S] bool
    inst_owner: torch.Tensor  # [M]
    inst_target: torch.Tensor  # [M, 4]
    renders: list

    def roundtrip(self, fn: Callable[[torch.Tensor], torch.Tensor], batch: int = 64) -> torch.Tensor:
        return torch.cat([fn(self.images[i:i + batch]) for i in range(0, len(self.images), batch)])


def make_data(stream: str, count: int, side: int, start: int = 0, desc: str = "render") -> ReaderData:
    """``count`` renders of ``stream`` (images 1-3 subjects, every identity and scene, no twins)."""
    imgs, clss, cons, scenes, masks, owner, target, renders = [], [], [], [], [], [], [], []
    for k in progress(range(start, start + count), desc=desc):
        rng = world.rng_for(stream, k)
        r = world.render(world.sample_scene(rng, count_p=(0.4, 0.35, 0.25)), side)
        c, con = pixel_targets(r)
        imgs.append(r.image)
        clss.append(c)
        cons.append(con)
        scenes.append(world.SCENES.index(r.scene.scene))
        for i, s in enumerate(r.scene.subjects):
            if r.mask(i).sum() >= 4:
                masks.append(r.mask(i))
                owner.append(len(imgs) - 1)
                target.append(identity_targets(s.identity))
        renders.append(r)
    return ReaderData(torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255,
                      torch.from_numpy(np.stack(clss)), torch.from_numpy(np.stack(cons)).float(),
                      torch.tensor(scenes), torch.from_numpy(np.stack(masks)), torch.tensor(owner),
                      torch.tensor(target), renders)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur, noise and a slight brightness/contrast/channel jitter (never enough to change a colour's name)."""
    b = x.shape[0]
    u = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(*shape, generator=g)  # noqa: E731
    x = (x - 0.5) * u(0.9, 1.1, b, 1, 1, 1) + 0.5 + u(-0.05, 0.05, b, 1, 1, 1)
    x = x * u(0.95, 1.05, b, 3, 1, 1)
    sig = u(0.0, 1.0, b) * (torch.rand(b, generator=g) < 0.5)
    if float(sig.max()) > 0.05:
        r = 2
        t = torch.arange(-r, r + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t[None] / sig.clamp_min(1e-3)[:, None]) ** 2)
        k = k / k.sum(1, keepdim=True)
        xs = F.pad(x.reshape(1, b * 3, *x.shape[-2:]), (r, r, r, r), mode="replicate")
        kk = k.repeat_interleave(3, 0)
        xs = F.conv2d(xs, kk[:, None, None, :], groups=b * 3)
        x = F.conv2d(xs, kk[:, None, :, None], groups=b * 3).reshape(x.shape)
    x = x + torch.randn(x.shape, generator=g) * u(0.0, 0.04, b, 1, 1, 1)
    return x.clamp(0, 1)


def _perturb_masks(m: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Grow or shrink each mask by a pixel at random (predicted masks are never exact)."""
    mf = m[:, None].float()
    grow = F.max_pool2d(mf, 3, 1, 1)
    shrink = -F.max_pool2d(-mf, 3, 1, 1)
    pick = torch.randint(0, 3, (m.shape[0], 1, 1, 1), generator=g)
    return torch.where(pick == 0, grow, torch.where(pick == 1, shrink, mf))[:, 0]


def _optimise(params: list, steps: int, lr: float, loss_fn, desc: str) -> None:
    """AdamW with warm-up and cosine decay; ``loss_fn(step)`` -> (loss, shown value)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))
    bar = progress(range(steps), desc=desc)
    for step in bar:
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 20 == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.3f}")


def _batch(data: ReaderData, roundtrip: torch.Tensor | None, step: int, size: int, g: torch.Generator):
    """(image indices, augmented images, flipped mask): every other batch from the round trips if given
    (they are the first ``len(roundtrip)`` images of the data)."""
    use_rt = roundtrip is not None and step % 2 == 1
    idx = torch.randint(0, roundtrip.shape[0] if use_rt else data.images.shape[0], (size,), generator=g)
    x = augment((roundtrip if use_rt else data.images)[idx], g)
    flip = torch.rand(size, generator=g) < 0.5
    return idx, torch.where(flip[:, None, None, None], x.flip(-1), x), flip


def train_segmenter(seg: Segmenter, data: ReaderData, steps: int, *, batch: int = 32, lr: float = 3e-3,
                    seed: int = 0, roundtrip: torch.Tensor | None = None, desc: str = "reader: segmenter") -> None:
    g = torch.Generator().manual_seed(seed)
    seg.train()

    def loss_fn(step):
        idx, x, flip = _batch(data, roundtrip, step, batch, g)
        cls = torch.where(flip[:, None, None], data.cls[idx].flip(-1), data.cls[idx])
        con = torch.where(flip[:, None, None], data.contact[idx].flip(-1), data.contact[idx])
        pix, scene = seg(x)
        fgw = torch.where(cls > 0, 2.0, 1.0)
        return (F.cross_entropy(pix[:, :3], cls, reduction="none") * fgw).mean() \
            + F.binary_cross_entropy_with_logits(pix[:, 3], con, pos_weight=torch.tensor(4.0)) \
            + 0.5 * F.cross_entropy(scene, data.scene[idx])
    _optimise(list(seg.parameters()), steps, lr, loss_fn, desc)
    seg.eval()


def train_identity(ident: IdentityNet, data: ReaderData, steps: int, *, batch: int = 64, lr: float = 3e-3,
                   seed: int = 0, roundtrip: torch.Tensor | None = None, desc: str = "reader: identity") -> None:
    """On crops of single instances (their true masks, grown or shrunk a pixel at random)."""
    g = torch.Generator().manual_seed(seed + 1)
    ident.train()
    n_rt = None if roundtrip is None else int((data.inst_owner < roundtrip.shape[0]).sum())

    def loss_fn(step):
        use_rt = roundtrip is not None and step % 2 == 1
        inst = torch.randint(0, n_rt if use_rt else len(data.inst_owner), (batch,), generator=g)
        owners = data.inst_owner[inst]  # instances are stored in image order: the first n_rt own round trips
        x = augment((roundtrip if use_rt else data.images)[owners], g)
        flip = torch.rand(batch, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        m = torch.where(flip[:, None, None], data.inst_masks[inst].flip(-1), data.inst_masks[inst])
        logits = ident(crops(x, _perturb_masks(m, g), torch.arange(batch)))
        tgt = data.inst_target[inst]
        return sum(F.cross_entropy(logits[k], tgt[:, j]) for j, k in enumerate(HEADS))
    _optimise(list(ident.parameters()), steps, lr, loss_fn, desc)
    ident.eval()


def train_reader(data: ReaderData, seg_steps: int, id_steps: int, side: int, *, width: int = 16,
                 batch: int = 32, lr: float = 3e-3, seed: int = 0, roundtrip: torch.Tensor | None = None,
                 init: Reader | None = None) -> Reader:
    """Trains (or, from ``init``, fine-tunes at a third of the rate) the segmenter and the identity net.
    ``roundtrip``: autoencoder round trips of the first images of ``data``, used for every other batch."""
    torch.manual_seed(seed)
    seg, ident = (init.segmenter, init.identity) if init is not None else \
        (Segmenter(width), IdentityNet(width + width // 2))
    lr = lr / 3 if init is not None else lr
    train_segmenter(seg, data, seg_steps, batch=batch, lr=lr, seed=seed, roundtrip=roundtrip)
    train_identity(ident, data, id_steps, batch=2 * batch, lr=lr, seed=seed, roundtrip=roundtrip)
    return Reader(seg, ident, side)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(1.0, float((a | b).sum()))


def evaluate(reader: Reader, data: ReaderData, images: torch.Tensor | None = None, batch: int = 64) -> dict:
    """Accuracy on ``data`` (or on ``images``: the same renders after some transformation, e.g. an
    autoencoder round trip): per attribute and whole identity given the true masks; end to end
    (found, matched by IoU >= 0.5, identity right); count; scene."""
    images = data.images if images is None else images
    n = images.shape[0]
    ident_ok = {k: 0 for k in HEADS}
    whole_gt = whole_e2e = total = count_ok = scene_ok = extra = 0
    for b0 in range(0, n, batch):
        imgs = images[b0:b0 + batch]
        readings = reader.read_batch(imgs)
        sel = ((data.inst_owner >= b0) & (data.inst_owner < b0 + batch)).nonzero()[:, 0]
        with torch.no_grad():
            logits = reader.identity(crops(imgs, data.inst_masks[sel].float(), data.inst_owner[sel] - b0))
        pred = torch.stack([logits[k].argmax(1) for k in HEADS], 1)
        tgt = data.inst_target[sel]
        for j, k in enumerate(HEADS):
            ident_ok[k] += int((pred[:, j] == tgt[:, j]).sum())
        whole_gt += int((pred == tgt).all(1).sum())
        total += len(sel)
        for i, rd in enumerate(readings):
            r = data.renders[b0 + i]
            scene_ok += rd.scene == r.scene.scene
            gts = [(r.mask(j), s.identity) for j, s in enumerate(r.scene.subjects) if r.mask(j).sum() >= 4]
            count_ok += len(rd.subjects) == len(gts)
            used = set()
            for m, idt in gts:
                best = max(range(len(rd.subjects)), key=lambda q: _iou(m, rd.subjects[q].mask), default=None)
                if best is not None and best not in used and _iou(m, rd.subjects[best].mask) >= 0.5:
                    used.add(best)
                    whole_e2e += rd.subjects[best].identity == idt
            extra += len(rd.subjects) - len(used)
    out = {f"{k}_acc": ident_ok[k] / max(1, total) for k in HEADS}
    out.update(identity_acc=whole_gt / max(1, total), end_to_end_identity_acc=whole_e2e / max(1, total),
               count_acc=count_ok / n, scene_acc=scene_ok / n, extra_found_per_image=extra / n,
               images=n, subjects=total)
    return out


def labelled_components(mask: np.ndarray) -> int:
    return int(ndimage.label(mask)[1])
