"""Does the pack's point selection (``p3s_core.rngr.select_subject``) find the clicked subject on world
references at the world's resolution? One click at the deepest interior point of the clicked subject,
IoU of the selection's mask with that subject's instance mask, per case and by kind of scene."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from . import world


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(1.0, float((a | b).sum()))


def _clip_grid(clip_vision, img: torch.Tensor) -> torch.Tensor:
    """Patch grid of the world CLIP vision, as P3S computes it (nodes/features.py: crop=False)."""
    from p3s_core.features import clip_patch_grid
    with torch.no_grad():
        hidden = clip_vision.encode_image(img[None], crop=False)["penultimate_hidden_states"]
    return clip_patch_grid(hidden[:1])


def selection_check(count: int = 40, split: str = "val", side: int = 64, upscale: int = 1,
                    clip_vision=None) -> dict:
    """IoU of select_subject (one positive click) with the clicked subject's mask; built-in features, or
    the patch tokens of ``clip_vision`` (what P3S Apply uses when a CLIP vision model is connected, as
    adapter mode requires). ``upscale``: the reference enlarged (nearest) by this factor first."""
    from p3s_core.points import PointSet
    from p3s_core.rngr import select_subject
    ious, by_kind, fails = [], defaultdict(list), []
    for k in range(count):
        case = world.test_case(split, k, side)
        img = torch.from_numpy(case.reference.image).float() / 255
        truth = case.reference.mask(case.target)
        x, y = case.click
        if upscale > 1:
            img = img.repeat_interleave(upscale, 0).repeat_interleave(upscale, 1)
            x, y = x * upscale, y * upscale
        pts = PointSet.from_pixels(positive=[(x, y)], width=img.shape[1], height=img.shape[0])
        feats = None if clip_vision is None else _clip_grid(clip_vision, img)
        try:
            m = select_subject(img, pts, feats).mask.numpy() > 0.5
        except ValueError:
            m = np.zeros(img.shape[:2], bool)
        if upscale > 1:
            m = m[::upscale, ::upscale]
        iou = _iou(m, truth)
        ious.append(iou)
        others = [case.reference.mask(i) for i in range(len(case.reference.scene.subjects)) if i != case.target]
        touching = any(_touch(truth, o) for o in others)
        kind = f"{len(others) + 1} subjects, {'touching' if touching else 'apart'}"
        by_kind[kind].append(iou)
        by_kind["scene " + case.reference.scene.scene].append(iou)
        leak = max((float((m & o).sum()) / max(1.0, float(o.sum())) for o in others), default=0.0)
        if iou < 0.5:
            fails.append({"case": k, "scene": case.reference.scene.scene, "kind": kind, "iou": round(iou, 3),
                          "lookalike_covered": round(leak, 3)})
    return {"cases": count, "side": side * upscale, "features": "builtin" if clip_vision is None else "clip_vision",
            "mean_iou": float(np.mean(ious)),
            "share_iou_ge_0.5": float(np.mean([i >= 0.5 for i in ious])),
            "by_kind": {k: {"n": len(v), "mean_iou": float(np.mean(v))} for k, v in sorted(by_kind.items())},
            "failures": fails}


def _touch(a: np.ndarray, b: np.ndarray) -> bool:
    from scipy import ndimage
    return bool((ndimage.binary_dilation(a, iterations=1) & b).any())
