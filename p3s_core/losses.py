"""Training losses for P3S adapters (docs/design.md, section 1, "Attention Consistency Loss").

L = L_diffusion + lambda * mean_layers ||A_with - sg(A_without)||^2, where A are the denoising
U-Net's text cross-attention probabilities with and without injection. The stop-gradient keeps
the "without" branch a fixed target so identity injection cannot drag the prompt's own maps.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch

log = logging.getLogger("P3S")

__all__ = ["cross_attention_probs", "attention_consistency_loss", "diffusion_loss", "total_loss"]


def cross_attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) per head: q [B, Tq, heads*d], k [B, Tk, heads*d] -> [B*heads, Tq, Tk].

    Head layout matches ComfyUI's ``attention_basic`` (index ``b * heads + h``) and the maths is
    done in float32 as ComfyUI upcasts attention, so recorded maps compare across dtypes.
    """
    if q.ndim != 3 or k.ndim != 3 or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"P3S: cross_attention_probs needs q [B, Tq, C] and k [B, Tk, C], got "
                         f"{tuple(q.shape)} and {tuple(k.shape)}")
    b, tq, c = q.shape
    if heads <= 0 or c % heads:
        raise ValueError(f"P3S: cross_attention_probs: width {c} is not divisible by heads={heads}")
    d = c // heads
    qh = q.float().reshape(b, tq, heads, d).permute(0, 2, 1, 3).reshape(b * heads, tq, d)
    kh = k.float().reshape(b, -1, heads, d).permute(0, 2, 1, 3).reshape(b * heads, -1, d)
    return torch.softmax(torch.bmm(qh, kh.transpose(1, 2)) * d ** -0.5, dim=-1)


def attention_consistency_loss(maps_with: Sequence[torch.Tensor],
                               maps_without: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of mean((A_with - A_without.detach())**2); layers may differ in shape."""
    if len(maps_with) == 0 or len(maps_without) == 0:
        raise ValueError("P3S: attention_consistency_loss got no attention maps "
                         f"({len(maps_with)} with, {len(maps_without)} without): the cross-attention "
                         "recorders captured nothing; check that they are attached to the U-Net")
    if len(maps_with) != len(maps_without):
        raise ValueError(f"P3S: attention_consistency_loss got {len(maps_with)} maps with injection "
                         f"but {len(maps_without)} without: both passes must record the same layers")
    per_layer = []
    for i, (a, b) in enumerate(zip(maps_with, maps_without)):
        if a.shape != b.shape:
            raise ValueError(f"P3S: attention_consistency_loss layer {i}: map with injection has shape "
                             f"{tuple(a.shape)}, without has {tuple(b.shape)}: record the same "
                             "layers in the same order in both passes")
        # float32: fp16 squared differences of probabilities underflow.
        per_layer.append((a.float() - b.detach().float()).pow(2).mean())
    return torch.stack(per_layer).mean()


def subject_pixel_weights(mask: torch.Tensor, extra: float) -> torch.Tensor:
    """Per-pixel loss weights ``1 + extra * mask`` ([B, 1, h, w] from a [B, h, w] or [B, 1, h, w] mask in
    0..1), scaled to mean 1 in each sample: the subject's pixels count more, the loss keeps its size."""
    extra = float(extra)
    if not math.isfinite(extra) or extra < 0:
        raise ValueError(f"P3S: subject loss weight must be finite and >= 0, got {extra}")
    m = mask.float()
    if m.ndim == 3:
        m = m[:, None]
    w = 1.0 + extra * m.clamp(0.0, 1.0)
    return w / w.mean(dim=tuple(range(1, w.ndim)), keepdim=True)


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor,
                   weight: torch.Tensor | None = None, pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between prediction and target (float32).

    ``weight`` of shape [B]: per-sample weights, loss = mean_b(w_b * mse_b).
    ``weight`` with pred's number of dims (broadcastable, e.g. a [B, 1, H, W] mask): weighted mean
    sum(w * se) / sum(w); an all-zero mask gives 0 (with gradient graph intact).
    ``pixel_weight`` ([B, 1, H, W], e.g. from ``subject_pixel_weights``) multiplies the squared error
    before either; with per-sample mean 1 it moves the loss within an image, not its size.
    """
    if pred.shape != target.shape:
        raise ValueError(f"P3S: diffusion_loss: prediction {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    se = (pred.float() - target.float()).pow(2)
    if pixel_weight is not None:
        pw = pixel_weight.to(device=se.device, dtype=se.dtype)
        if pw.ndim != se.ndim or pw.shape[0] != se.shape[0] or pw.shape[2:] != se.shape[2:]:
            raise ValueError(f"P3S: diffusion_loss: pixel weights {tuple(pw.shape)} do not match the "
                             f"prediction {tuple(se.shape)} (expected [B, 1, H, W])")
        se = se * pw
    if weight is None:
        return se.mean()
    w = weight.to(device=se.device, dtype=se.dtype)
    if w.ndim == 1 and pred.ndim > 1:
        if w.shape[0] != pred.shape[0]:
            raise ValueError(f"P3S: diffusion_loss: per-sample weight has {w.shape[0]} entries "
                             f"for a batch of {pred.shape[0]}")
        return (se.flatten(1).mean(dim=1) * w).mean()
    try:
        w = torch.broadcast_to(w, se.shape)
    except RuntimeError:
        raise ValueError(f"P3S: diffusion_loss: weight/mask {tuple(weight.shape)} does not broadcast "
                         f"to {tuple(se.shape)}") from None
    return (se * w).sum() / w.sum().clamp_min(1e-8)


def total_loss(diff: torch.Tensor, acl: torch.Tensor | None, lam: float) -> torch.Tensor:
    """L = diff + lam * acl (``acl`` None or lam 0 gives the diffusion loss alone)."""
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"P3S: attention consistency weight lambda must be finite and >= 0, "
                         f"got {lam}")
    if acl is None or lam == 0.0:
        return diff
    return diff + lam * acl
