"""An adapter's subject cross-attention: the denoising pass reads the subject directly (adapter mode, ours).

The paper injects the reference only through self-attention (the subject tokens appended to each
block's keys and values). On the world benchmark that read has to find, at high noise, where a subject of
a different pose sits in the reference before it can copy anything, and training lowered its gain at the
high-resolution blocks (docs/worldbench.md). This path gives every image token a position-free read of the
subject instead, the way IP-Adapter's decoupled cross-attention does: per transformer block, queries from
the block's cross-attention input, keys and values from the adapter's subject context (the resampler over
the masked CLIP-vision tokens), its output added to the block's cross-attention output. ``to_out`` starts
at zero, so a fresh adapter changes nothing; P3S Apply's weight scales the output (0: no read at all).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def heads_for(width: int) -> int:
    """32-wide heads (one head for widths that 32 does not divide)."""
    return width // 32 if width % 32 == 0 and width >= 32 else 1


class SubjectCrossAttention(nn.Module):
    """``n`` [B, T, dim] reads ``ctx`` [B, Q, ctx_dim] -> [B, T, dim] (zero while ``to_out`` is zero)."""

    def __init__(self, dim: int, ctx_dim: int, width: int) -> None:
        super().__init__()
        self.heads = heads_for(width)
        self.to_q = nn.Linear(dim, width, bias=False)
        self.to_k = nn.Linear(ctx_dim, width, bias=False)
        self.to_v = nn.Linear(ctx_dim, width, bias=False)
        self.to_out = nn.Linear(width, dim, bias=False)
        nn.init.zeros_(self.to_out.weight)

    def forward(self, n: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        b, t, _ = n.shape
        h = self.heads
        q = self.to_q(n).view(b, t, h, -1).transpose(1, 2)
        k = self.to_k(ctx).view(b, ctx.shape[1], h, -1).transpose(1, 2)
        v = self.to_v(ctx).view(b, ctx.shape[1], h, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)
        return self.to_out(out)


def read(module: SubjectCrossAttention, n: torch.Tensor, ctx: torch.Tensor, rows: torch.Tensor,
         weight: float) -> torch.Tensor:
    """The delta to add to a block's cross-attention output: row b reads subject context ``rows[b]``
    (-1: nothing, a zero delta), scaled by ``weight``. Computed in the module's dtype, returned in n's."""
    w = module.to_q.weight
    rows = rows.to(n.device)
    use = rows >= 0
    picked = ctx.to(device=n.device, dtype=w.dtype).index_select(0, rows.clamp(min=0))
    delta = module(n.to(w.dtype), picked) * float(weight)
    if not bool(use.all()):
        delta = delta * use.to(delta.dtype)[:, None, None]
    return delta.to(n.dtype)
