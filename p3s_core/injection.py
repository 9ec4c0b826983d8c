"""Multi-layers Condition Injection maths: the reference bank and the subject-only self-attention read.

The reference pass writes, at every transformer block, the subject tokens of its self-attention input
into a bank. The denoising pass appends them to the keys/values of its own self-attention. Each
appended token carries an additive attention bias of log(weight): weight 1 is plain concatenation
("reference-only"), weight w multiplies every reference token's attention share by w before
normalisation, and weight 0 (no tokens at all) is plain sampling. Padding and disabled rows get -inf,
so no token outside the subject mask can ever receive attention.

``subject_read`` computes exactly that without an additive mask where it can: the image's own keys go
through a fused attention kernel and each reference's subject tokens through another, for only the rows
that read them, and the parts are merged with their log-sum-exps plus log(weight)
(p3s_core/lse_attention.py). ``biased_attention`` is the masked formulation it is checked against and
falls back to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from . import lse_attention


def layer_grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) grid of a layer with ``tokens`` tokens for a latent of ``height`` x ``width``.

    U-Net levels halve with ceil rounding, so try each power-of-two downscale.
    """
    for s in (1, 2, 4, 8, 16, 32, 64):
        h, w = math.ceil(height / s), math.ceil(width / s)
        if h * w == tokens:
            return h, w
    raise ValueError(f"P3S: cannot map {tokens} tokens onto a {height}x{width} latent; this U-Net layout "
                     "is not supported (SD1.5 and SDXL are)")


def mask_to_tokens(mask: torch.Tensor, grid: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """Which tokens of a layer grid lie inside the subject: [R, H, W] mask -> [R, h*w] bool.

    A token is kept when at least ``threshold`` of its area is subject. At coarse layers a small subject
    may cover no token that much; then its best-covered token is kept so every layer sees the subject.
    """
    if mask.ndim == 2:
        mask = mask[None]
    m = F.adaptive_avg_pool2d(mask[:, None].float(), grid)[:, 0].flatten(1)
    keep = m >= threshold
    empty = ~keep.any(dim=1)
    if empty.any():
        best = m.argmax(dim=1)
        rows = torch.nonzero(empty & (m.amax(dim=1) > 0)).flatten()
        keep[rows, best[rows]] = True
    return keep


def gather_tokens(hidden: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subject tokens only: hidden [R, T, C], keep [R, T] -> tokens [R, N, C] (padded), valid [R, N]."""
    counts = keep.sum(dim=1)
    n = int(counts.max().item()) if keep.numel() else 0
    r, _, c = hidden.shape
    tokens = hidden.new_zeros(r, n, c)
    valid = torch.zeros(r, n, dtype=torch.bool, device=hidden.device)
    for i in range(r):
        idx = torch.nonzero(keep[i]).flatten()
        tokens[i, : idx.numel()] = hidden[i, idx]
        valid[i, : idx.numel()] = True
    return tokens, valid


def reference_rows(cond_or_uncond: list[int], total_rows: int, refs: int, uncond_sees_reference: bool
                   ) -> torch.Tensor:
    """For each row of a batched U-Net call, the reference row it reads (-1 = none).

    ComfyUI stacks chunks (cond, uncond, ...) of ``total_rows // len(cond_or_uncond)`` rows each; a
    reference batch of 1 is broadcast, a reference batch equal to the latent batch pairs row by row.
    """
    chunks = max(len(cond_or_uncond), 1)
    per_chunk = total_rows // chunks
    if refs not in (1, per_chunk):
        raise ValueError(f"P3S: the reference batch has {refs} images but the latent batch has {per_chunk}: "
                         "use one reference image (it is shared by the whole batch) or one per latent")
    out = torch.empty(total_rows, dtype=torch.long)
    for r in range(total_rows):
        kind = cond_or_uncond[min(r // per_chunk, chunks - 1)] if cond_or_uncond else 0
        out[r] = -1 if (kind == 1 and not uncond_sees_reference) else (0 if refs == 1 else r % per_chunk)
    return out


def reference_bias(valid: torch.Tensor, rows: torch.Tensor, weight: float, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias for the appended tokens: [B, N] with log(weight) or -inf."""
    b, n = rows.shape[0], valid.shape[1]
    bias = torch.full((b, n), float("-inf"), dtype=dtype, device=valid.device)
    if weight <= 0:
        return bias
    use = rows >= 0
    if use.any():
        v = valid[rows[use].to(valid.device)]
        bias[use.to(valid.device)] = torch.where(v, torch.tensor(math.log(weight), dtype=dtype, device=valid.device),
                                                 torch.tensor(float("-inf"), dtype=dtype, device=valid.device))
    return bias


def append_tokens(context: torch.Tensor, tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """context [B, T, C] + each row's reference tokens -> [B, T + N, C] (rows of -1 get zeros, masked)."""
    picked = tokens[rows.clamp(min=0).to(tokens.device)].to(context.dtype)
    return torch.cat([context, picked], dim=1)


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, offset: int,
                     bias: torch.Tensor) -> torch.Tensor:
    """Multi-head attention where keys ``offset : offset + N`` carry ``bias`` [B, N] (others 0).

    q, k, v are [B, T, heads * d] as ComfyUI's attention functions receive them.
    """
    b, tq, inner = q.shape
    d = inner // heads
    full = torch.zeros(b, k.shape[1], dtype=q.dtype, device=q.device)
    full[:, offset: offset + bias.shape[1]] = bias.to(q.dtype)
    qh, kh, vh = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=full[:, None, None, :])
    return out.transpose(1, 2).reshape(b, tq, inner)


class Appended(NamedTuple):
    """Reference tokens appended to the keys/values of one attention call: keys ``offset : offset + N``.

    Row b of the call reads reference row ``rows[b]`` (-1: none); of its N appended tokens only those
    with ``valid[rows[b]]`` exist (the rest is padding); every one carries the bias log(``weight``).
    ``query`` (an adapter's read delta, or None): maps the call's queries [B, T, inner] to the queries
    that read these tokens; the image's own keys are always read with the plain queries.
    ``gain`` (an adapter's learned log-gain [], or None): added to that bias, with its gradient on the
    split read (the trainer's path); the masked fallback takes its value only.
    """

    offset: int
    rows: torch.Tensor    # [B] long
    valid: torch.Tensor   # [R, N] bool
    weight: float
    query: Callable[[torch.Tensor], torch.Tensor] | None = None
    gain: torch.Tensor | None = None

    @property
    def own_read(self) -> bool:
        """True when the part needs a read of its own (a query map or a gain tensor)."""
        return self.query is not None or self.gain is not None

    def bias(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        weight = self.weight if self.gain is None else self.weight * math.exp(float(self.gain))
        return reference_bias(self.valid, self.rows, weight, dtype)


def _tail_layout(parts: Sequence[Appended], keys: int) -> int | None:
    """The number of the image's own keys when ``parts`` are contiguous after them up to the last key."""
    ordered = sorted(parts, key=lambda p: p.offset)
    end = keys
    for p in reversed(ordered):
        if p.offset + p.valid.shape[1] != end:
            return None
        end = p.offset
    return end


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, heads * d] -> a [B, heads, T, d] view (the layout the attention kernels take)."""
    b, n, inner = t.shape
    return t.view(b, n, heads, inner // heads).transpose(1, 2)


def _row_groups(rows: torch.Tensor) -> list[tuple[int, slice | torch.Tensor]]:
    """(reference row, the call's rows that read it): a slice when they are adjacent (ComfyUI stacks
    the cond and uncond chunks), else an index tensor."""
    groups = []
    for r in torch.unique(rows[rows >= 0]).tolist():
        idx = torch.nonzero(rows == r).flatten()
        first, last = int(idx[0]), int(idx[-1])
        groups.append((r, slice(first, last + 1) if last - first + 1 == idx.numel() else idx))
    return groups


def _part_keys(t: torch.Tensor, at, part: Appended, r: int) -> torch.Tensor:
    """Keys (or values) [b, n, C] of reference row ``r``'s real tokens for the rows ``at`` (no padding)."""
    idx = torch.nonzero(part.valid[r].to(t.device)).flatten()
    t = t[at]
    if idx.numel() == 0 or int(idx[-1]) == idx.numel() - 1:  # gathered tokens first, padding last
        return t[:, part.offset: part.offset + idx.numel()]
    return t.index_select(1, idx + part.offset)


def _own_keys(parts: Sequence[Appended], keys: int, device) -> slice | torch.Tensor:
    """The image's own keys (every key outside the parts): a slice when the parts close the key list."""
    own = _tail_layout(parts, keys)
    if own is not None:
        return slice(0, own)
    keep = torch.ones(keys, dtype=torch.bool)
    for p in parts:
        keep[p.offset: p.offset + p.valid.shape[1]] = False
    return torch.nonzero(keep).flatten().to(device)


def _split_read(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, parts: Sequence[Appended],
                attend) -> torch.Tensor | None:
    """The read as one attention over the image's own keys and one per (part, reference row), merged with
    their log-sum-exps plus log(weight); ``attend`` -> None aborts (no kernel for this input)."""
    own_idx = _own_keys(parts, k.shape[1], k.device)
    b, tq, inner = q.shape
    scale = (inner // heads) ** -0.5
    k_own = k[:, own_idx] if isinstance(own_idx, slice) else k.index_select(1, own_idx)
    v_own = v[:, own_idx] if isinstance(own_idx, slice) else v.index_select(1, own_idx)
    if k_own.shape[1] == 0:
        return None
    first = attend(_heads(q, heads), _heads(k_own, heads), _heads(v_own, heads), scale)
    if first is None:
        return None
    out, lse = first[0].transpose(1, 2), first[1].transpose(1, 2)  # [B, T, H, d], [B, T, H]
    for part in parts:
        if part.weight <= 0:
            continue
        qp = part.query(q) if part.query is not None else q
        for r, at in _row_groups(part.rows.to(q.device)):
            kr, vr = _part_keys(k, at, part, r), _part_keys(v, at, part, r)
            if kr.shape[1] == 0:
                continue
            got = attend(_heads(qp[at], heads), _heads(kr, heads), _heads(vr, heads), scale)
            if got is None:
                return None
            part_lse = got[1].transpose(1, 2) + math.log(part.weight)
            if part.gain is not None:
                part_lse = part_lse + part.gain.to(device=part_lse.device, dtype=part_lse.dtype)
            merged, merged_lse = lse_attention.merge(out[at], lse[at], got[0].transpose(1, 2), part_lse)
            if torch.is_grad_enabled() and (merged.requires_grad or out.requires_grad):
                out, lse = out.clone(), lse.clone()  # the trainer's path: no in-place writes on the graph
            out[at], lse[at] = merged.to(out.dtype), merged_lse
    return out.reshape(b, tq, inner)


def fused_subject_read(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                       parts: Sequence[Appended]) -> torch.Tensor | None:
    """``biased_attention`` computed without a mask: None where no fused kernel applies (see module doc).

    Works in the [B, T, heads, d] layout the CPU kernel writes, so the merge touches contiguous memory.
    """
    if not _tail_layout(parts, k.shape[1]):
        return None
    return _split_read(q, k, v, heads, parts, lse_attention.lse_attention)


def subject_read(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                 parts: Sequence[Appended]) -> torch.Tensor:
    """Self-attention whose keys end with appended reference tokens (``parts``), each with its bias:
    the fused read where a kernel allows it, else the masked ``biased_attention``; the same result.
    Parts with a read ``query`` need queries of their own, which one masked softmax cannot take: without
    a kernel (on CPU while training, for gradients) they use the same split read in float32 maths."""
    out = fused_subject_read(q, k, v, heads, parts)
    if out is not None:
        return out
    if any(p.own_read for p in parts):
        out = _split_read(q, k, v, heads, parts, lse_attention.math_attention)
        if out is not None:
            return out.to(q.dtype)
    offset, bias = merged_bias(parts, k.shape[1])
    return biased_attention(q, k, v, heads, offset, bias)


def merged_bias(parts: Sequence[Appended], keys: int) -> tuple[int, torch.Tensor]:
    """(offset, bias) covering every part: one part as is, several merged into one row of keys."""
    if len(parts) == 1:
        return parts[0].offset, parts[0].bias()
    first = parts[0].bias()
    full = torch.zeros(first.shape[0], keys, dtype=first.dtype, device=first.device)
    for p in parts:
        full[:, p.offset: p.offset + p.valid.shape[1]] = p.bias(full.dtype)
    return 0, full


@dataclass
class ReferenceBank:
    """Subject tokens per transformer block of the reference pass: key -> (tokens [R, N, C], valid [R, N])."""

    store: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def write(self, key: str, tokens: torch.Tensor, valid: torch.Tensor) -> None:
        self.store[key] = (tokens, valid)

    def read(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.store.get(key)

    def clear(self) -> None:
        self.store.clear()

    def __len__(self) -> int:
        return len(self.store)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t, _ in self.store.values())


def layer_key(block: tuple, block_index: int) -> str:
    """'input.1.0' style key from ComfyUI's extra_options block tuple and block_index."""
    return f"{block[0]}.{block[1]}.{block_index}"
